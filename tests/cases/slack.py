"""Slack cases (Events API and interactions), signed with slack_sdk's own
`SignatureVerifier.generate_signature`."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from slack_sdk.signature import SignatureVerifier

from tests.cases.base import ProviderCase, SignedRequest

EVENTS_PATH = "/webhooks/slack/events"
INTERACTIONS_PATH = "/webhooks/slack/interactions"
CHANNEL = "C0ESCALATE"
USER = "U0CUSTOMER"
AGENT = "U0AGENT"
TS = "1700000000.000100"


def message_ts(unique: str) -> str:
    """A Slack `ts` of its own for each `unique` (a message's ts is part of its dedupe key)."""
    digits = int(hashlib.sha256(unique.encode()).hexdigest()[:15], 16) % 10**15
    return f"1700000000.{digits:015d}"


def signed(path: str, body: bytes, content_type: str, secret: str, timestamp: int) -> SignedRequest:
    """A request signed as Slack signs: v0 HMAC of `v0:timestamp:body`."""
    signature = SignatureVerifier(secret).generate_signature(timestamp=str(timestamp), body=body)
    assert signature is not None
    return SignedRequest(
        path=path,
        body=body,
        headers={
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": signature,
        },
    )


def callback(event_id: str, event: dict[str, Any], event_time: int = 1700000000) -> bytes:
    """An Events API `event_callback` body around `event`."""
    envelope = {
        "token": "legacy-verification-token",
        "team_id": "T0TEAM",
        "api_app_id": "A0APP",
        "type": "event_callback",
        "event_id": event_id,
        "event_time": event_time,
        "event": event,
    }
    return json.dumps(envelope).encode()


def user_message(unique: str, **fields: Any) -> dict[str, Any]:
    """A person's top-level channel message (override any field)."""
    return {
        "type": "message",
        "channel": CHANNEL,
        "channel_type": "channel",
        "user": USER,
        "text": f"Hello {unique} — ünïcödé ✓",
        "ts": TS,
        "event_ts": TS,
        **fields,
    }


def block_actions(trigger_id: str, value: str = "claim:sms:+15551230001") -> dict[str, Any]:
    """An interactivity `block_actions` payload: an agent pressed a button on a thread root."""
    return {
        "type": "block_actions",
        "trigger_id": trigger_id,
        "user": {"id": AGENT, "username": "ann.agent", "team_id": "T0TEAM"},
        "team": {"id": "T0TEAM", "domain": "acme"},
        "api_app_id": "A0APP",
        "container": {"type": "message", "message_ts": TS, "channel_id": CHANNEL},
        "channel": {"id": CHANNEL, "name": "support"},
        "message": {"type": "message", "ts": TS, "text": "Escalation"},
        "response_url": "https://hooks.slack.com/actions/T0TEAM/1/abc",
        "actions": [
            {
                "action_id": "claim",
                "block_id": "escalation",
                "type": "button",
                "value": value,
                "action_ts": "1700000100.000200",
            }
        ],
    }


def form_body(payload: dict[str, Any]) -> bytes:
    return urlencode({"payload": json.dumps(payload)}).encode()


def _sign_event(secret: str, unique: str, timestamp: int) -> SignedRequest:
    ts = message_ts(unique)
    body = callback(f"Ev{unique}", user_message(unique, ts=ts, event_ts=ts))
    return signed(EVENTS_PATH, body, "application/json", secret, timestamp)


def _sign_interaction(secret: str, unique: str, timestamp: int) -> SignedRequest:
    body = form_body(block_actions(f"1337.42.{unique}"))
    return signed(INTERACTIONS_PATH, body, "application/x-www-form-urlencoded", secret, timestamp)


def _strip(request: SignedRequest) -> SignedRequest:
    return request.with_headers(X_Slack_Signature=None)


CASES = [
    ProviderCase(
        id="slack-events",
        source="slack",
        sign=_sign_event,
        strip_signature=_strip,
        tamper=lambda req: replace(req, body=req.body.replace(b"Hello", b"Hallo", 1)),
        expected=lambda unique: {
            "source": "slack",
            "type": "message.received",
            "provider_type": "message",
            "channel": "slack",
            "contact": {"address": USER},
            "conversation_key": f"slack:{CHANNEL}:{message_ts(unique)}",
            "text": f"Hello {unique} — ünïcödé ✓",
            "status": "received",
        },
        dedupe_key=lambda unique: f"slack:{CHANNEL}:{message_ts(unique)}",
        ack_media_type="text/plain",
    ),
    ProviderCase(
        id="slack-interactions",
        source="slack",
        sign=_sign_interaction,
        strip_signature=_strip,
        tamper=lambda req: replace(req, body=req.body.replace(b"claim", b"close", 1)),
        expected=lambda unique: {
            "source": "slack",
            "type": "agent.action",
            "provider_type": "block_actions.button",
            "channel": "slack",
            "contact": {"address": AGENT, "name": "ann.agent"},
            "conversation_key": f"slack:{CHANNEL}:{TS}",
            "status": "received",
        },
        dedupe_key=lambda unique: f"slack:1337.42.{unique}",
        ack_media_type="text/plain",
    ),
]
