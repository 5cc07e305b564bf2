"""Twilio cases, signed with twilio's own `RequestValidator.compute_signature`."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from twilio.request_validator import RequestValidator

from tests.cases.base import ProviderCase, SignedRequest
from tests.support import PUBLIC_URL, SECRETS


def message_params(unique: str) -> dict[str, str]:
    return {
        "MessageSid": f"SM{unique}",
        "AccountSid": "AC" + "1" * 32,
        "From": "+15551230001",
        "To": "+15559870000",
        "Body": f"Hello {unique} — ünïcödé ✓",
        "NumMedia": "1",
        "MediaUrl0": "https://api.twilio.com/media/ME1",
        "MediaContentType0": "image/jpeg",
    }


def status_params(unique: str) -> dict[str, str]:
    return {
        "MessageSid": f"SM{unique}",
        "MessageStatus": "delivered",
        "AccountSid": "AC" + "1" * 32,
        "From": "+15559870000",
        "To": "whatsapp:+15551230001",
    }


def sms(sid: str, body: str, sender: str = "+15551230001") -> SignedRequest:
    """An SMS from `sender` to +15559870000, signed as Twilio sends it to the test server."""
    params = {
        "MessageSid": sid,
        "AccountSid": "AC" + "1" * 32,
        "From": sender,
        "To": "+15559870000",
        "Body": body,
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def signed(public_url: str, path: str, params: dict[str, str], token: str) -> SignedRequest:
    signature = RequestValidator(token).compute_signature(public_url + path, params)
    return SignedRequest(
        path=path,
        body=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def _case(kind: str, params_for: Any, expected: Any, dedupe: Any) -> ProviderCase:
    path = f"/webhooks/twilio/{kind}"

    def sign(secret: str, unique: str, _timestamp: int) -> SignedRequest:
        return signed(PUBLIC_URL, path, params_for(unique), secret)

    return ProviderCase(
        id=f"twilio-{kind}",
        source="twilio",
        sign=sign,
        strip_signature=lambda req: req.with_headers(X_Twilio_Signature=None),
        tamper=lambda req: replace(req, body=req.body.replace(b"%2B1555", b"%2B1666", 1)),
        expected=expected,
        dedupe_key=dedupe,
        signs_timestamp=False,
        ack_media_type="text/xml",
        ack_contains=b"<Response/>",
    )


CASES = [
    _case(
        "messages",
        message_params,
        lambda unique: {
            "source": "twilio",
            "type": "message.received",
            "channel": "sms",
            "contact": {"address": "+15551230001"},
            "conversation_key": "sms:+15551230001:+15559870000",
            "text": f"Hello {unique} — ünïcödé ✓",
            "status": "received",
            "via": "webhook",
            "attachments": [
                {"url": "https://api.twilio.com/media/ME1", "content_type": "image/jpeg"}
            ],
        },
        lambda unique: f"twilio:SM{unique}",
    ),
    _case(
        "status",
        status_params,
        lambda unique: {
            "source": "twilio",
            "type": "message.status",
            "channel": "whatsapp",
            "provider_type": "message.delivered",
            "contact": {"address": "+15551230001"},
            "status": "received",
        },
        lambda unique: f"twilio:SM{unique}:delivered",
    ),
]
