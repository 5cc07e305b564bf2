"""Stripe cases, signed with stripe-python's own `WebhookSignature.generate_signature_header`."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from stripe import WebhookSignature

from tests.cases.base import ProviderCase, SignedRequest

PATH = "/webhooks/stripe"
CREATED = 1_700_000_000


def invoice(unique: str) -> dict[str, Any]:
    """The `data.object` of an invoice.payment_failed event."""
    return {
        "id": f"in_{unique}",
        "object": "invoice",
        "customer": "cus_ann",
        "customer_email": "ann@example.com",
        "customer_name": "Ann Example",
        "customer_phone": "+15551230001",
        "amount_due": 2900,
        "currency": "usd",
        "hosted_invoice_url": "https://invoice.stripe.com/i/demo",
    }


def stripe_event(
    event_id: str,
    event_type: str,
    obj: dict[str, Any],
    previous_attributes: dict[str, Any] | None = None,
) -> str:
    """A snapshot event body as Stripe sends it."""
    data: dict[str, Any] = {"object": obj}
    if previous_attributes is not None:
        data["previous_attributes"] = previous_attributes
    return json.dumps(
        {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": CREATED,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": event_type,
        }
    )


def signed(payload: str, secret: str, timestamp: int) -> SignedRequest:
    header = WebhookSignature.generate_signature_header(payload, secret, timestamp)
    return SignedRequest(
        path=PATH,
        body=payload.encode(),
        headers={"Content-Type": "application/json; charset=utf-8", "Stripe-Signature": header},
    )


def _sign(secret: str, unique: str, timestamp: int) -> SignedRequest:
    payload = stripe_event(f"evt_{unique}", "invoice.payment_failed", invoice(unique))
    return signed(payload, secret, timestamp)


CASES = [
    ProviderCase(
        id="stripe",
        source="stripe",
        sign=_sign,
        strip_signature=lambda req: req.with_headers(Stripe_Signature=None),
        tamper=lambda req: replace(req, body=req.body.replace(b"2900", b"290", 1)),
        expected=lambda unique: {
            "source": "stripe",
            "type": "invoice.payment_failed",
            "provider_type": "invoice.payment_failed",
            "channel": None,
            "contact": {"address": "ann@example.com", "name": "Ann Example"},
            "conversation_key": None,
            "data": invoice(unique),
            "occurred_at": "2023-11-14T22:13:20Z",
            "status": "received",
        },
        dedupe_key=lambda unique: f"stripe:evt_{unique}",
        ack_contains=b'"received":true',
    ),
]
