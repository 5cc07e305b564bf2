"""Standard Webhooks custom sources: our clock-aware verifier against the reference library.

Every request is signed with `standardwebhooks.Webhook.sign`; on each fixture our verdict must
equal the library's own `Webhook.verify` (tried with each configured secret).
"""

from __future__ import annotations

import base64
import json
import string
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from channels.base import InboundRequest, PayloadError, SignatureError
from channels.standard import StandardWebhooksAdapter, decode_secret
from router.clock import FrozenClock
from tests.cases.base import SignedRequest
from tests.cases.custom import payload, sign, signed
from tests.support import CUSTOM_SOURCE, SECRETS, WRONG_SECRETS, LiveServer

SECRET, ROTATED = SECRETS["custom"]
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
T = int(NOW.timestamp())


def adapter(at: datetime = NOW, tolerance: int = 300) -> StandardWebhooksAdapter:
    return StandardWebhooksAdapter(CUSTOM_SOURCE, SECRETS["custom"], tolerance, FrozenClock(at))


def inbound(request: SignedRequest, received_at: datetime = NOW) -> InboundRequest:
    return InboundRequest(
        body=request.body,
        headers={name.lower(): value for name, value in request.headers.items()},
        url="https://switchboard.example.com" + request.path,
        content_type="application/json",
        received_at=received_at,
        correlation_id="test",
    )


def with_signature(request: SignedRequest, value: str) -> SignedRequest:
    return request.with_headers(webhook_signature=value)


def good_sig(secret: str, now: int, body: str = "{}") -> str:
    return signed(secret, "msg_1", now, body).headers["webhook-signature"]


# --- our verifier agrees with the library --------------------------------------------------

Fixture = Callable[[int], SignedRequest]
FIXTURES: dict[str, tuple[Fixture, bool]] = {
    "valid": (lambda now: sign(SECRET, "a", now), True),
    "rotated-secret": (lambda now: sign(ROTATED, "a", now), True),
    "wrong-secret": (lambda now: sign(WRONG_SECRETS["custom"], "a", now), False),
    "tampered-body": (
        lambda now: replace(sign(SECRET, "a", now), body=sign(SECRET, "b", now).body),
        False,
    ),
    "other-webhook-id": (
        lambda now: sign(SECRET, "a", now).with_headers(webhook_id="msg_other"),
        False,
    ),
    "several-signatures-second-good": (
        lambda now: with_signature(
            signed(SECRET, "msg_1", now, "{}"),
            f"v1,{'A' * 44} {good_sig(SECRET, now)}",
        ),
        True,
    ),
    "good-signature-under-unknown-version": (
        lambda now: with_signature(
            signed(SECRET, "msg_1", now, "{}"),
            good_sig(SECRET, now).replace("v1,", "v2,"),
        ),
        False,
    ),
    "garbage-signature": (
        lambda now: with_signature(signed(SECRET, "msg_1", now, "{}"), "v1,!!!notbase64"),
        False,
    ),
    "stale": (lambda now: sign(SECRET, "a", now - 301), False),
    "from-the-future": (lambda now: sign(SECRET, "a", now + 301), False),
    "just-inside-the-window": (lambda now: sign(SECRET, "a", now - 299), True),
    "timestamp-not-a-number": (
        lambda now: sign(SECRET, "a", now).with_headers(webhook_timestamp="yesterday"),
        False,
    ),
    "missing-signature": (
        lambda now: sign(SECRET, "a", now).with_headers(webhook_signature=None),
        False,
    ),
    "missing-id": (lambda now: sign(SECRET, "a", now).with_headers(webhook_id=None), False),
    "missing-timestamp": (
        lambda now: sign(SECRET, "a", now).with_headers(webhook_timestamp=None),
        False,
    ),
    "unicode-body": (
        lambda now: signed(SECRET, "msg_u", now, json.dumps({"name": "Zoë ✓"}, ensure_ascii=False)),
        True,
    ),
}


def library_accepts(request: SignedRequest) -> bool:
    return any(_library_verifies(secret, request) for secret in SECRETS["custom"])


def _library_verifies(secret: str, request: SignedRequest) -> bool:
    try:
        Webhook(secret).verify(request.body, dict(request.headers))
    except (WebhookVerificationError, ValueError):  # ValueError: odd headers it cannot split
        return False
    return True


def ours_accepts(request: SignedRequest, now: datetime) -> bool:
    try:
        adapter(at=now).verify(inbound(request))
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_verdict_matches_the_reference_library(name: str) -> None:
    make, expected = FIXTURES[name]
    now = datetime.now(UTC)  # the library reads the wall clock
    request = make(int(now.timestamp()))
    assert library_accepts(request) is expected
    assert ours_accepts(request, now) is expected


#: Secrets as a sender issues them: `whsec_` + base64 of 1 to 64 random bytes.
SW_SECRET = st.binary(min_size=1, max_size=64).map(
    lambda key: "whsec_" + base64.b64encode(key).decode()
)
MSG_ID = st.text(string.ascii_letters + string.digits + "_-.", min_size=1, max_size=40)
#: Seconds from now; the 300 s edge is left out (the library reads the clock a moment later).
SW_OFFSET = st.sampled_from([-3600, -601, -450, -306, -294, 0, 294, 306, 450, 3600]) | st.integers(
    -1000, 1000
).filter(lambda offset: not 295 <= abs(offset) <= 305)


def _flip(signature: str, pick: int) -> str:
    """`v1,<base64>` with one base64 character changed (still base64, no longer the MAC)."""
    version, _, mac = signature.partition(",")
    at = pick % (len(mac) - 1)  # not the final padding
    return f"{version},{mac[:at]}{'A' if mac[at] != 'A' else 'B'}{mac[at + 1 :]}"


#: Ways a request goes wrong after signing: (request, pick) -> the request sent.
SW_TAMPERINGS: dict[str, Callable[[SignedRequest, int], SignedRequest]] = {
    "none": lambda request, pick: request,
    "body": lambda request, pick: replace(request, body=request.body + b" "),
    "id": lambda request, pick: request.with_headers(
        webhook_id=request.headers["webhook-id"] + "x"
    ),
    "timestamp": lambda request, pick: request.with_headers(
        webhook_timestamp=str(int(request.headers["webhook-timestamp"]) + 1 + pick % 100)
    ),
    "signature": lambda request, pick: with_signature(
        request, _flip(request.headers["webhook-signature"], pick)
    ),
    "other-version": lambda request, pick: with_signature(
        request, request.headers["webhook-signature"].replace("v1,", "v2,")
    ),
    "good-second": lambda request, pick: with_signature(
        request, f"v1,{'A' * 43}= {request.headers['webhook-signature']}"
    ),
    "bad-only": lambda request, pick: with_signature(
        request, f"v1,{'A' * 43}= {_flip(request.headers['webhook-signature'], pick)}"
    ),
}


def _library_verdict(secrets: list[str], request: SignedRequest) -> bool:
    """The library's verdict on the signature alone (json_parse off: bodies need not be JSON)."""
    for secret in secrets:
        try:
            Webhook(secret).verify(request.body, dict(request.headers), json_parse=False)
        except (WebhookVerificationError, ValueError):
            continue
        return True
    return False


@settings(max_examples=300, deadline=None)
@given(
    body=st.text(max_size=200),
    msg_id=MSG_ID,
    configured=st.lists(SW_SECRET, min_size=1, max_size=2),
    signer=st.integers(0, 2),
    stranger=SW_SECRET,
    offset=SW_OFFSET,
    tampering=st.just("none") | st.sampled_from(sorted(SW_TAMPERINGS)),
    pick=st.integers(0, 63),
)
def test_verdict_matches_the_reference_library_on_generated_requests(
    body: str,
    msg_id: str,
    configured: list[str],
    signer: int,
    stranger: str,
    offset: int,
    tampering: str,
    pick: int,
) -> None:
    """Signed with `Webhook.sign` by a configured secret (or a stranger's), at any time, then
    maybe tampered with: ours and the library's `verify` give the same verdict. The library
    reads the wall clock, so ours is frozen at the real time."""
    now = datetime.now(UTC)
    secret = [*configured, stranger][min(signer, len(configured))]
    request = SW_TAMPERINGS[tampering](
        signed(secret, msg_id, int(now.timestamp()) + offset, body), pick
    )
    ours = StandardWebhooksAdapter(CUSTOM_SOURCE, configured, 300, FrozenClock(now))
    try:
        ours.verify(inbound(request, now))
        accepted = True
    except SignatureError:
        accepted = False
    assert accepted == _library_verdict(configured, request)


@pytest.mark.parametrize(("offset", "accepted"), [(-60, True), (-61, False), (61, False)])
def test_our_clock_and_tolerance_decide_freshness(offset: int, accepted: bool) -> None:
    request = inbound(sign(SECRET, "a", T + offset))
    if accepted:
        adapter(tolerance=60).verify(request)
    else:
        with pytest.raises(SignatureError, match="tolerance"):
            adapter(tolerance=60).verify(request)


def test_secrets_are_decoded_like_the_library() -> None:
    assert decode_secret(SECRET) == Webhook(SECRET)._whsecret
    assert (
        decode_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
        == Webhook("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")._whsecret
    )
    with pytest.raises(ValueError, match="empty"):
        decode_secret("whsec_")


# --- normalisation -------------------------------------------------------------------------


def parse(body: Any, msg_id: str = "msg_1") -> Any:
    text = body if isinstance(body, str) else json.dumps(body)
    return adapter().parse(inbound(signed(SECRET, msg_id, T, text)))


def test_payload_is_normalised() -> None:
    parsed = parse(payload("a"), "msg_a")
    [event] = parsed.events
    assert (event.source, event.type, event.provider_type) == (
        CUSTOM_SOURCE,
        "customer.updated",
        "customer.updated",
    )
    assert event.dedupe_key == f"{CUSTOM_SOURCE}:msg_a"
    assert event.channel is None and event.contact is None
    assert event.data == payload("a")
    assert event.occurred_at == datetime(2026, 11, 23, 14, 59, tzinfo=UTC)
    assert parsed.ack.status == 200 and json.loads(parsed.ack.body) == {"received": True}


@pytest.mark.parametrize(
    ("body", "kind", "occurred"),
    [
        ({"data": {}}, "webhook", None),
        ({"type": 7, "timestamp": "not a time"}, "webhook", None),
        ({"type": "", "timestamp": True}, "webhook", None),
        ({"type": "a.b", "timestamp": T}, "a.b", NOW),
        ({"type": "a.b", "timestamp": "2026-11-23T16:00:00+01:00"}, "a.b", NOW),
        ({"type": "a.b", "timestamp": "2026-11-23T15:00:00"}, "a.b", NOW),
        ({"type": "a.b", "timestamp": 10**30}, "a.b", None),
    ],
)
def test_type_and_timestamp_fall_back_gracefully(
    body: dict[str, Any], kind: str, occurred: datetime | None
) -> None:
    event = parse(body).events[0]
    assert (event.type, event.provider_type, event.occurred_at) == (kind, kind, occurred)


@pytest.mark.parametrize("body", ["[1, 2]", '"text"', "null", "42", "{not json", ""])
def test_non_object_json_is_a_payload_error(body: str) -> None:
    with pytest.raises(PayloadError):
        parse(body)


# --- through the live server ---------------------------------------------------------------


def test_retry_signed_again_later_is_one_event(server: LiveServer) -> None:
    now = int(datetime.now(UTC).timestamp())
    first = server.post(sign(SECRET, "retry", now - 120))
    again = server.post(sign(ROTATED, "retry", now))
    assert (first.status_code, again.status_code) == (200, 200)
    [event] = server.events()
    assert event["dedupe_key"] == f"{CUSTOM_SOURCE}:msg_retry"
    assert event["occurred_at"] == "2026-11-23T14:59:00Z"


def test_signed_array_body_is_400_and_nothing_stored(server: LiveServer) -> None:
    now = int(datetime.now(UTC).timestamp())
    response = server.post(signed(SECRET, "msg_array", now, "[1, 2, 3]"))
    assert response.status_code == 400, response.text
    assert server.events() == []
