"""Correctly signed sample webhooks, for `switchboard simulate` (a newcomer's first look).

Signatures come from the providers' official signing code where they ship one (twilio,
slack_sdk, stripe, standardwebhooks); Mailgun's documented HMAC is computed here.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from urllib.parse import urlencode

import msgspec

from router.config import Settings


class Sample(msgspec.Struct, frozen=True, kw_only=True):
    """One request ready to send: path below the server, headers, body, optional basic auth."""

    path: str
    headers: dict[str, str]
    body: bytes
    auth: tuple[str, str] | None = None


def build_sample(
    provider: str,
    settings: Settings,
    *,
    text: str,
    sender: str | None = None,
    event_type: str | None = None,
) -> Sample:
    """A signed sample for `provider` using the first configured secret; LookupError if the
    source is not configured."""
    builder = _BUILDERS[provider]
    return builder(settings, text, sender, event_type)


def _require(value: object, provider: str) -> None:
    if value is None:
        raise LookupError(f"[sources.{provider}] is not configured in the config file")


def _twilio(settings: Settings, text: str, sender: str | None, _: str | None) -> Sample:
    from twilio.request_validator import RequestValidator

    source = settings.sources.twilio
    _require(source, "twilio")
    assert source is not None
    path = "/webhooks/twilio/messages"
    params = {
        "MessageSid": "SM" + secrets.token_hex(16),
        "AccountSid": "AC" + "0" * 32,
        "From": sender or "+15551230001",
        "To": settings.channels.sms.from_ or "+15559870000",
        "Body": text,
        "NumMedia": "0",
    }
    url = settings.server.public_url.rstrip("/") + path
    signature = RequestValidator(source.auth_tokens[0]).compute_signature(url, params)
    return Sample(
        path=path,
        body=urlencode(params).encode(),
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )


def _slack(settings: Settings, text: str, sender: str | None, _: str | None) -> Sample:
    from slack_sdk.signature import SignatureVerifier

    source = settings.sources.slack
    _require(source, "slack")
    assert source is not None
    now = int(time.time())
    body = json.dumps(
        {
            "type": "event_callback",
            "team_id": "T0001",
            "api_app_id": "A0001",
            "event_id": "Ev" + secrets.token_hex(8).upper(),
            "event_time": now,
            "event": {
                "type": "message",
                "channel": settings.channels.slack.escalation_channel or "C0001",
                "user": sender or "U0001",
                "text": text,
                "ts": f"{now}.000100",
                "channel_type": "channel",
            },
        }
    ).encode()
    signature = SignatureVerifier(source.signing_secrets[0]).generate_signature(
        timestamp=str(now), body=body
    )
    return Sample(
        path="/webhooks/slack/events",
        body=body,
        headers={
            "Content-Type": "application/json",
            "X-Slack-Request-Timestamp": str(now),
            "X-Slack-Signature": signature or "",
        },
    )


def _stripe(settings: Settings, _text: str, sender: str | None, event_type: str | None) -> Sample:
    from stripe import WebhookSignature

    source = settings.sources.stripe
    _require(source, "stripe")
    assert source is not None
    now = int(time.time())
    payload = json.dumps(
        {
            "id": "evt_" + secrets.token_hex(12),
            "object": "event",
            "created": now,
            "type": event_type or "invoice.payment_failed",
            "livemode": False,
            "data": {
                "object": {
                    "id": "in_" + secrets.token_hex(12),
                    "object": "invoice",
                    "customer": "cus_demo",
                    "customer_email": sender or "ann@example.com",
                    "customer_phone": "+15551230001",
                    "amount_due": 2900,
                    "currency": "usd",
                    "hosted_invoice_url": "https://invoice.stripe.com/i/demo",
                }
            },
        }
    )
    header = WebhookSignature.generate_signature_header(payload, source.signing_secrets[0], now)
    return Sample(
        path="/webhooks/stripe",
        body=payload.encode(),
        headers={"Content-Type": "application/json", "Stripe-Signature": header},
    )


def _mailgun(settings: Settings, text: str, sender: str | None, _: str | None) -> Sample:
    source = settings.sources.mailgun
    _require(source, "mailgun")
    assert source is not None
    timestamp, token = str(int(time.time())), secrets.token_hex(25)
    signature = hmac.new(
        source.signing_keys[0].encode(), (timestamp + token).encode(), hashlib.sha256
    ).hexdigest()
    fields = {
        "recipient": "support@example.com",
        "sender": sender or "ann@example.com",
        "from": f"Ann <{sender or 'ann@example.com'}>",
        "subject": "Hello",
        "body-plain": text,
        "stripped-text": text,
        "Message-Id": f"<{secrets.token_hex(8)}@example.com>",
        "timestamp": timestamp,
        "token": token,
        "signature": signature,
    }
    return Sample(
        path="/webhooks/email/mailgun",
        body=urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def _sendgrid(settings: Settings, text: str, sender: str | None, _: str | None) -> Sample:
    source = settings.sources.sendgrid
    _require(source, "sendgrid")
    assert source is not None
    user, _, password = source.credentials[0].partition(":")
    address = sender or "ann@example.com"
    message_id = f"<{secrets.token_hex(8)}@example.com>"
    fields = {
        "headers": f"Message-ID: {message_id}\nFrom: Ann <{address}>\nTo: support@example.com\n",
        "from": f"Ann <{address}>",
        "to": "support@example.com",
        "subject": "Hello",
        "text": text,
        "envelope": json.dumps({"to": ["support@example.com"], "from": address}),
    }
    boundary = "switchboard" + secrets.token_hex(8)
    body = (
        b"".join(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{name}"\r\n\r\n{value}\r\n'.encode()
            for name, value in fields.items()
        )
        + f"--{boundary}--\r\n".encode()
    )
    return Sample(
        path="/webhooks/email/sendgrid",
        body=body,
        auth=(user, password),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )


def custom_sample(name: str, secret: str, payload: dict[str, object]) -> Sample:
    """A Standard Webhooks request for the custom source `name`."""
    from standardwebhooks import Webhook

    body = json.dumps(payload)
    msg_id = "msg_" + secrets.token_hex(12)
    now = datetime.now(UTC)
    signature = Webhook(secret).sign(msg_id, now, body)
    return Sample(
        path=f"/webhooks/custom/{name}",
        body=body.encode(),
        headers={
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature,
        },
    )


_BUILDERS: dict[str, Callable[[Settings, str, str | None, str | None], Sample]] = {
    "twilio": _twilio,
    "slack": _slack,
    "stripe": _stripe,
    "mailgun": _mailgun,
    "sendgrid": _sendgrid,
}
