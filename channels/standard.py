"""Custom sources signed with Standard Webhooks (https://www.standardwebhooks.com).

The signature is base64 HMAC-SHA256 over `webhook-id.webhook-timestamp.body` with the secret
after `whsec_` (base64-decoded); `webhook-signature` holds one or more space-separated
`v1,<base64>` entries. The scheme is implemented here rather than through
`standardwebhooks.Webhook.verify`, because the library reads the wall clock with a fixed
5-minute window and we need the injected clock and `tolerance_seconds`; it also tries several
secrets (rotation) in one pass. tests/channels/test_standard.py holds agreement with the
library's verifier on every fixture.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import msgspec

from channels.base import Ack, InboundRequest, Parsed, PayloadError, SignatureError
from router.clock import Clock
from router.events import Event
from router.ids import new_ulid

WHSEC_PREFIX = "whsec_"
RECEIVED_ACK = Ack(body=b'{"received":true}')


def decode_secret(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret, decoded as the reference library does."""
    encoded = secret.removeprefix(WHSEC_PREFIX)
    try:
        key = base64.b64decode(encoded + "==")
    except binascii.Error as exc:
        raise ValueError("a Standard Webhooks secret must be whsec_ + base64") from exc
    if not key:
        raise ValueError("a Standard Webhooks secret may not be empty")
    return key


def signed_content(msg_id: str, timestamp: int, body: bytes) -> bytes:
    """What the signature covers: `id.timestamp.body`, on the raw body bytes."""
    return f"{msg_id}.{timestamp}.".encode() + body


def given_signatures(header: str) -> list[bytes]:
    """The decoded `v1` signatures of a webhook-signature header; other versions are skipped."""
    found = []
    for entry in header.split():
        version, sep, encoded = entry.partition(",")
        if not sep or version != "v1":
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except binascii.Error:
            continue
    return found


class StandardWebhooksAdapter:
    """POST /webhooks/custom/{name}: any JSON sender that signs with Standard Webhooks."""

    content_types: ClassVar[frozenset[str]] = frozenset({"application/json"})

    def __init__(
        self, name: str, secrets: Sequence[str], tolerance_seconds: int, clock: Clock
    ) -> None:
        self.source = name
        self._keys = [decode_secret(secret) for secret in secrets]
        self._tolerance = tolerance_seconds
        self._clock = clock

    def verify(self, request: InboundRequest) -> None:
        headers = request.headers
        msg_id = headers.get("webhook-id")
        raw_timestamp = headers.get("webhook-timestamp")
        header = headers.get("webhook-signature")
        if not (msg_id and raw_timestamp and header):
            raise SignatureError("missing webhook-id, webhook-timestamp or webhook-signature")
        timestamp = self._fresh_timestamp(raw_timestamp)
        content = signed_content(msg_id, timestamp, request.body)
        expected = [hmac.new(key, content, hashlib.sha256).digest() for key in self._keys]
        found = False
        for signature in given_signatures(header):
            for candidate in expected:
                found |= hmac.compare_digest(candidate, signature)
        if not found:
            raise SignatureError("no matching v1 signature")

    def _fresh_timestamp(self, raw: str) -> int:
        if not raw.strip().isdigit():
            raise SignatureError("webhook-timestamp is not a unix time in seconds")
        timestamp = int(raw.strip())
        if abs(self._clock.now().timestamp() - timestamp) > self._tolerance:
            raise SignatureError("webhook-timestamp outside the tolerance window")
        return timestamp

    def parse(self, request: InboundRequest) -> Parsed:
        try:
            payload = msgspec.json.decode(request.body)
        except msgspec.DecodeError as exc:
            raise PayloadError("body is not valid JSON") from exc
        if not isinstance(payload, dict):
            raise PayloadError("body is not a JSON object")
        kind = payload.get("type")
        kind = kind if isinstance(kind, str) and kind else "webhook"
        event = Event(
            id=new_ulid(request.received_at),
            source=self.source,
            type=kind,
            provider_type=kind,
            dedupe_key=f"{self.source}:{request.headers.get('webhook-id', '')}",
            data=payload,
            received_at=request.received_at,
            occurred_at=occurred_at(payload.get("timestamp")),
            correlation_id=request.correlation_id,
        )
        return Parsed(events=[event], ack=RECEIVED_ACK)


def occurred_at(value: Any) -> datetime | None:
    """The payload's `timestamp` (RFC 3339 string or unix seconds) as aware UTC, else None."""
    try:
        if isinstance(value, str):
            moment = datetime.fromisoformat(value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            moment = datetime.fromtimestamp(value, UTC)
        else:
            return None
    except (ValueError, OverflowError, OSError):
        return None
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
