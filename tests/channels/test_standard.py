"""Standard Webhooks custom sources: our clock-aware verifier against the reference library.

Every request is signed with `standardwebhooks.Webhook.sign`; on each fixture our verdict must
equal the library's own `Webhook.verify` (tried with each configured secret).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
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
