"""A custom Standard Webhooks source, signed with the `standardwebhooks` reference library."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook

from tests.cases.base import ProviderCase, SignedRequest
from tests.support import CUSTOM_SOURCE

PATH = f"/webhooks/custom/{CUSTOM_SOURCE}"


def payload(unique: str) -> dict[str, Any]:
    """The Standard Webhooks payload convention: {type, timestamp, data}."""
    return {
        "type": "customer.updated",
        "timestamp": "2026-11-23T14:59:00Z",
        "data": {"id": f"cus_{unique}", "email": "ann@example.com", "plan": "pro", "seats": 3},
    }


def signed(secret: str, msg_id: str, timestamp: int, body: str) -> SignedRequest:
    """`body` as sent, with the library's signature for `msg_id` at `timestamp`."""
    signature = Webhook(secret).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body)
    return SignedRequest(
        path=PATH,
        body=body.encode(),
        headers={
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": signature,
        },
    )


def sign(secret: str, unique: str, timestamp: int) -> SignedRequest:
    return signed(secret, f"msg_{unique}", timestamp, json.dumps(payload(unique)))


def tamper(request: SignedRequest) -> SignedRequest:
    return replace(request, body=request.body.replace(b'"pro"', b'"enterprise"', 1))


CASES = [
    ProviderCase(
        id="crm",
        source=CUSTOM_SOURCE,
        sign=sign,
        strip_signature=lambda req: req.with_headers(webhook_signature=None),
        tamper=tamper,
        expected=lambda unique: {
            "source": CUSTOM_SOURCE,
            "type": "customer.updated",
            "provider_type": "customer.updated",
            "channel": None,
            "contact": None,
            "data": payload(unique),
            "status": "received",
        },
        dedupe_key=lambda unique: f"{CUSTOM_SOURCE}:msg_{unique}",
        ack_contains=b'"received":true',
    ),
]
