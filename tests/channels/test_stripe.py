"""Stripe adapter: our clock-aware verification against stripe-python's verifier, and parsing.

Requests are signed with stripe-python's `WebhookSignature.generate_signature_header`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from stripe import SignatureVerificationError, WebhookSignature

from channels.base import InboundRequest, SignatureError
from channels.stripe import StripeAdapter, contact_of
from router.clock import FrozenClock, SystemClock
from tests.cases.base import SignedRequest
from tests.cases.stripe import PATH, invoice, signed, stripe_event
from tests.support import SECRETS, WRONG_SECRETS, LiveServer

SECRET, ROTATED = SECRETS["stripe"]
PAYLOAD = stripe_event("evt_1", "invoice.payment_failed", invoice("1"))


def inbound(body: bytes, header: str | None, received_at: Any = None) -> InboundRequest:
    headers = {"stripe-signature": header} if header is not None else {}
    return InboundRequest(
        body=body,
        headers=headers,
        url="https://switchboard.example.com" + PATH,
        content_type="application/json",
        received_at=received_at or SystemClock().now(),
        correlation_id="test",
    )


# --- our verifier agrees with stripe-python's ------------------------------------------------


def sig(secret: str, t: int, payload: str = PAYLOAD) -> str:
    """The bare v1 hex of `payload` at `t` (from the library's own header)."""
    return WebhookSignature.generate_signature_header(payload, secret, t).split("v1=")[1]


Fixture = Callable[[int], tuple[bytes, str]]

FIXTURES: dict[str, Fixture] = {
    "valid": lambda now: (PAYLOAD.encode(), f"t={now},v1={sig(SECRET, now)}"),
    "rotated-secret": lambda now: (PAYLOAD.encode(), f"t={now},v1={sig(ROTATED, now)}"),
    "wrong-secret": lambda now: (
        PAYLOAD.encode(),
        f"t={now},v1={sig(WRONG_SECRETS['stripe'], now)}",
    ),
    "tampered": lambda now: (
        PAYLOAD.replace("2900", "290").encode(),
        f"t={now},v1={sig(SECRET, now)}",
    ),
    "multiple-v1-second-good": lambda now: (
        PAYLOAD.encode(),
        f"t={now},v1={'0' * 64},v1={sig(SECRET, now)}",
    ),
    "multiple-v1-first-good": lambda now: (
        PAYLOAD.encode(),
        f"t={now},v1={sig(SECRET, now)},v1={'f' * 64},v0={'a' * 64}",
    ),
    "multiple-v1-none-good": lambda now: (PAYLOAD.encode(), f"t={now},v1={'0' * 64},v1=abc"),
    "wrong-scheme": lambda now: (PAYLOAD.encode(), f"t={now},v0={sig(SECRET, now)}"),
    "stale": lambda now: (PAYLOAD.encode(), f"t={now - 3600},v1={sig(SECRET, now - 3600)}"),
    "future": lambda now: (PAYLOAD.encode(), f"t={now + 3600},v1={sig(SECRET, now + 3600)}"),
    "timestamp-swapped": lambda now: (PAYLOAD.encode(), f"t={now - 1},v1={sig(SECRET, now)}"),
    "missing-t": lambda now: (PAYLOAD.encode(), f"v1={sig(SECRET, now)}"),
    "t-not-a-number": lambda now: (PAYLOAD.encode(), f"t=soon,v1={sig(SECRET, now)}"),
    "v1-without-value": lambda now: (PAYLOAD.encode(), f"t={now},v1"),
    "spaces-after-commas": lambda now: (PAYLOAD.encode(), f"t={now}, v1={sig(SECRET, now)}"),
    "two-t-first-wins": lambda now: (
        PAYLOAD.encode(),
        f"t={now},t={now - 1},v1={sig(SECRET, now)}",
    ),
    "empty-header": lambda now: (PAYLOAD.encode(), ""),
    "body-not-utf8": lambda now: (b"\xff" + PAYLOAD.encode(), f"t={now},v1={sig(SECRET, now)}"),
}


def library_accepts(body: bytes, header: str, secrets: list[str] | None = None) -> bool:
    """stripe-python's verdict: does `verify_header` pass under any active secret?"""
    for secret in secrets or [SECRET, ROTATED]:
        try:
            WebhookSignature.verify_header(body, header, secret, 300)
        except (SignatureVerificationError, ValueError):  # ValueError: body not UTF-8
            continue
        return True
    return False


def ours_accepts(body: bytes, header: str) -> bool:
    try:
        StripeAdapter([SECRET, ROTATED], 300, SystemClock()).verify(inbound(body, header))
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize("name", FIXTURES)
def test_verification_agrees_with_stripe_python(name: str) -> None:
    body, header = FIXTURES[name](int(time.time()))
    assert ours_accepts(body, header) == library_accepts(body, header)


def test_the_fixtures_cover_both_verdicts() -> None:
    now = int(time.time())
    verdicts = {name: library_accepts(*make(now)) for name, make in FIXTURES.items()}
    assert verdicts["valid"] and verdicts["multiple-v1-second-good"] and verdicts["future"]
    assert not verdicts["stale"] and not verdicts["wrong-scheme"] and not verdicts["tampered"]


#: Secrets as configured (`whsec_` and any text after it); bodies of any UTF-8 text
#: (stripe-python cannot read other bytes; ours checks the raw bytes, and the parser then
#: refuses them as malformed: tests/integration/test_fuzz.py).
STRIPE_SECRET = st.text(min_size=1, max_size=40).map(lambda text: "whsec_" + text)
ANY_BODY = st.text(max_size=200).map(str.encode)
#: Seconds from now; the tolerance's edge (300 s) is left out: both sides read the clock a
#: moment apart, and the library compares with a float.
OFFSET = st.sampled_from([-3600, -601, -450, -306, -294, 0, 294, 306, 3600]) | st.integers(
    -1000, 1000
).filter(lambda offset: not 295 <= abs(offset) <= 305)


def _flip(text: str, at: int) -> str:
    """`text` with one hex digit changed (a forged or corrupted signature)."""
    at %= len(text)
    return text[:at] + ("0" if text[at] != "0" else "1") + text[at + 1 :]


#: Ways a request goes wrong after signing: (body, t, v1 hex, pick) -> (body sent, header).
TAMPERINGS: dict[str, Callable[[bytes, int, str, int], tuple[bytes, str]]] = {
    "none": lambda body, t, v1, pick: (body, f"t={t},v1={v1}"),
    "body": lambda body, t, v1, pick: (body + b" ", f"t={t},v1={v1}"),
    "timestamp": lambda body, t, v1, pick: (body, f"t={t + 1 + pick % 100},v1={v1}"),
    "signature": lambda body, t, v1, pick: (body, f"t={t},v1={_flip(v1, pick)}"),
    "scheme": lambda body, t, v1, pick: (body, f"t={t},v0={v1}"),
    "garbage-first": lambda body, t, v1, pick: (body, f"t={t},v1={'0' * 64},v1={v1}"),
    "garbage-only": lambda body, t, v1, pick: (body, f"t={t},v1={_flip(v1, pick)},v1=abc"),
    "no-t": lambda body, t, v1, pick: (body, f"v1={v1}"),
    "space": lambda body, t, v1, pick: (body, f"t={t}, v1={v1}"),
}


@settings(max_examples=300, deadline=None)
@given(
    body=ANY_BODY,
    configured=st.lists(STRIPE_SECRET, min_size=1, max_size=2),
    signer=st.integers(0, 2),
    stranger=STRIPE_SECRET,
    offset=OFFSET,
    tampering=st.just("none") | st.sampled_from(sorted(TAMPERINGS)),
    pick=st.integers(0, 63),
)
def test_verification_agrees_with_stripe_python_on_generated_requests(
    body: bytes,
    configured: list[str],
    signer: int,
    stranger: str,
    offset: int,
    tampering: str,
    pick: int,
) -> None:
    """Signed by a configured secret (or a stranger's), at any time, then maybe tampered
    with: ours and stripe-python's `verify_header` give the same verdict. The library reads
    the real clock, so ours is frozen at the real time."""
    clock = FrozenClock(datetime.now(UTC))
    t = int(clock.now().timestamp()) + offset
    secret = [*configured, stranger][min(signer, len(configured))]
    v1 = hmac.new(secret.encode(), b"%d." % t + body, hashlib.sha256).hexdigest()
    assert v1 == WebhookSignature.generate_signature_header(body.decode(), secret, t)[-64:]
    sent, header = TAMPERINGS[tampering](body, t, v1, pick)
    try:
        StripeAdapter(configured, 300, clock).verify(inbound(sent, header, clock.now()))
        ours = True
    except SignatureError:
        ours = False
    assert ours == library_accepts(sent, header, configured)


def test_tolerance_comes_from_config_and_the_injected_clock(clock: FrozenClock) -> None:
    adapter = StripeAdapter([SECRET], 60, clock)
    at = int(clock.now().timestamp()) - 60
    request = inbound(PAYLOAD.encode(), f"t={at},v1={sig(SECRET, at)}", clock.now())
    adapter.verify(request)
    clock.advance(timedelta(seconds=1))
    with pytest.raises(SignatureError, match="stale"):
        adapter.verify(request)


# --- parsing ---------------------------------------------------------------------------------


def test_updated_event_carries_previous_attributes(server: LiveServer) -> None:
    customer = {"id": "cus_1", "object": "customer", "email": "bo@example.com", "name": "Bo"}
    payload = stripe_event(
        "evt_upd", "customer.updated", customer, previous_attributes={"email": "old@example.com"}
    )
    response = server.post(signed(payload, SECRET, int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json() == {"received": True}
    [row] = server.events()
    assert row["type"] == row["provider_type"] == "customer.updated"
    assert row["data"] == {**customer, "previous_attributes": {"email": "old@example.com"}}
    assert row["contact"] == {"address": "bo@example.com", "name": "Bo"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"id": "evt_1", "type": "invoice.paid", "created": 1',
        b'{"id": "evt_1", "type": "invoice.paid", "created": 1}',
        b'{"id": "evt_1", "type": "invoice.paid", "created": "soon", "data": {"object": {}}}',
        b'{"id": "evt_1", "object": "v2.core.event", "type": "x", "created": "2024-01-01T00:00Z"}',
        b"[]",
    ],
    ids=["truncated", "no-data", "created-not-int", "thin-event", "not-an-object"],
)
def test_malformed_after_valid_signature_is_400_and_quarantined(
    server: LiveServer, tmp_path: Path, body: bytes
) -> None:
    response = server.post(signed(body.decode(), SECRET, int(time.time())))
    assert response.status_code == 400, response.text
    assert "malformed payload" in response.json()["error"]
    assert server.events() == []
    with sqlite3.connect(tmp_path / "var" / "switchboard.db") as db:
        assert db.execute("SELECT source FROM quarantine").fetchall() == [("stripe",)]


def test_authentic_body_that_is_not_utf8_is_400_and_quarantined(
    server: LiveServer, tmp_path: Path
) -> None:
    """A correct HMAC over bytes that are not UTF-8: authentic, so malformed, not unsigned."""
    body = PAYLOAD.encode().replace(b"invoice.payment_failed", b"invoice.\xff")
    at = int(time.time())
    digest = hmac.new(SECRET.encode(), b"%d.%s" % (at, body), hashlib.sha256).hexdigest()
    request = SignedRequest(
        PATH, body, {"Content-Type": "application/json", "Stripe-Signature": f"t={at},v1={digest}"}
    )
    response = server.post(request)
    assert response.status_code == 400, response.text
    assert server.events() == []
    with sqlite3.connect(tmp_path / "var" / "switchboard.db") as db:
        assert db.execute("SELECT source, raw_body FROM quarantine").fetchall() == [
            ("stripe", body)
        ]


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"object": "charge", "receipt_email": "c@example.com"}, ("c@example.com", None)),
        ({"object": "invoice", "customer_phone": "+1 (555) 123-0001"}, ("+15551230001", None)),
        ({"object": "invoice", "customer_phone": "555 123 0001"}, None),
        (
            {"object": "checkout.session", "customer_details": {"email": "d@example.com"}},
            ("d@example.com", None),
        ),
        (
            {
                "object": "payment_method",
                "billing_details": {"phone": "+447700900123", "name": "E"},
            },
            ("+447700900123", "E"),
        ),
        ({"object": "product", "name": "Gold plan"}, None),
        ({"object": "invoice", "customer_email": "not-an-email"}, None),
        ({"object": "invoice", "customer_email": 42}, None),
    ],
    ids=[
        "receipt-email",
        "phone-to-e164",
        "phone-without-country",
        "nested-email",
        "nested-phone-and-name",
        "no-person",
        "not-an-email",
        "not-a-string",
    ],
)
def test_contact_is_taken_only_where_obvious(
    obj: dict[str, Any], expected: tuple[str, str | None] | None
) -> None:
    contact = contact_of(obj)
    assert (None if contact is None else (contact.address, contact.name)) == expected


def test_occurred_at_is_created(clock: FrozenClock) -> None:
    at = int(clock.now().timestamp())
    payload = json.loads(PAYLOAD)
    body = json.dumps(payload)
    header = WebhookSignature.generate_signature_header(body, SECRET, at)
    adapter = StripeAdapter([SECRET], 300, clock)
    request = inbound(body.encode(), header, clock.now())
    adapter.verify(request)
    [event] = adapter.parse(request).events
    assert event.occurred_at is not None
    assert event.occurred_at.timestamp() == payload["created"]
    assert (event.channel, event.conversation_key, event.dedupe_key) == (None, None, "stripe:evt_1")
