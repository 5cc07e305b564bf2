"""Custom sources signed with Standard Webhooks (https://www.standardwebhooks.com).

The signature is base64 HMAC-SHA256 over `webhook-id.webhook-timestamp.body` with the secret
after `whsec_` (base64-decoded); `webhook-signature` holds one or more space-separated
`v1,<base64>` entries. The scheme is implemented here rather than through
`standardwebhooks.Webhook.verify`, because the library reads the wall clock with a fixed
5-minute window and we need the injected clock and `tolerance_seconds`; it also tries several
secrets (rotation) in one pass. tests/channels/test_standard.py holds agreement with the
library's verifier on every fixture.

Outbound, `HttpForwardSender` (at the end) POSTs forwards signed the same way, with the
reference library's `Webhook.sign`.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar

import httpx
import msgspec
from standardwebhooks import Webhook
from standardwebhooks.webhooks import EmptyWebhookSecretError

from channels.base import Ack, InboundRequest, Parsed, PayloadError, SignatureError
from channels.outbound import FailureKind, NotCheckable, Outgoing, SendFailed, Sent
from router.clock import Clock, SystemClock
from router.events import Event
from router.ids import new_ulid

if TYPE_CHECKING:
    from router.config import HttpChannelConfig

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


# -- outbound: HTTP forwards signed with Standard Webhooks ----------------------------------

#: Seconds a forward may take (notes §4: 15-30 s).
FORWARD_TIMEOUT_SECONDS = 15.0
#: Most bytes of an answer read (the rest is dropped with the connection); a snippet of an
#: error answer goes into the reason.
_ANSWER_MAX = 64 * 1024
_SNIPPET = 200


class HttpForwardSender:
    """POSTs a forward's `event` as JSON to its destination, signed as Standard Webhooks.

    `webhook-id` is the outbox id, the same on every attempt; `webhook-timestamp` is the
    attempt's time, so each attempt is signed anew. Receivers dedupe on `webhook-id` (that is
    the contract of the scheme), which makes a forward safe to send again: a timeout after the
    request went out is transient, not in doubt, and `find` need not look (NotCheckable, with
    the dispatcher's default to resend).
    """

    channels: tuple[str, ...] = ("http",)

    def __init__(
        self,
        forwards: Mapping[str, tuple[str, str | None]],
        *,
        timeout_seconds: float = FORWARD_TIMEOUT_SECONDS,
        clock: Clock | None = None,
    ) -> None:
        """`forwards`: destination name -> (url, `whsec_` secret or None to send unsigned).
        ValueError names a forward whose secret is not `whsec_` + base64."""
        self._forwards: dict[str, tuple[str, Webhook | None]] = {}
        for name, (url, secret) in forwards.items():
            try:
                signer = Webhook(secret) if secret else None
            except (ValueError, EmptyWebhookSecretError) as exc:  # ValueError: binascii.Error
                raise ValueError(f"forward {name!r}: the secret is not whsec_ + base64") from exc
            self._forwards[name] = (url, signer)
        self._clock = clock or SystemClock()
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_seconds),
            follow_redirects=False,
            headers={"user-agent": "switchboard"},
        )

    @classmethod
    def from_config(
        cls, config: HttpChannelConfig, *, timeout_seconds: float = FORWARD_TIMEOUT_SECONDS
    ) -> HttpForwardSender:
        forwards = {name: (f.url, f.secret) for name, f in config.forwards.items()}
        return cls(forwards, timeout_seconds=timeout_seconds)

    def destination(self, message: Outgoing) -> str:
        return message.to

    def units(self, message: Outgoing) -> int:
        return 1

    async def send(self, message: Outgoing) -> Sent:
        target = self._forwards.get(message.to)
        if target is None:
            reason = f"no forward named {message.to!r} in channels.http.forwards"
            raise SendFailed(FailureKind.PERMANENT, reason)
        url, signer = target
        body = _forward_body(message)
        headers = self._headers(message.id, body, signer)
        try:
            async with self._client.stream("POST", url, content=body, headers=headers) as answer:
                snippet = await _snippet(answer)
        except (httpx.UnsupportedProtocol, httpx.InvalidURL) as exc:
            reason = f"forward {message.to!r} has an unusable url: {exc}"
            raise SendFailed(FailureKind.PERMANENT, reason) from exc
        except httpx.TransportError as exc:
            # Connect errors, and timeouts or resets after the request went out alike: the
            # receiver dedupes on webhook-id, so sending again cannot deliver twice.
            detail = str(exc) or type(exc).__name__
            reason = f"forward {message.to!r} failed: {detail}"
            raise SendFailed(FailureKind.TRANSIENT, reason) from exc
        failure = forward_failure(
            message.to, answer.status_code, answer.headers.get("retry-after"), snippet, self._clock
        )
        if failure is not None:
            raise failure
        return Sent(provider_message_id=message.id)

    def _headers(self, outbox_id: str, body: bytes, signer: Webhook | None) -> dict[str, str]:
        timestamp = math.floor(self._clock.now().timestamp())
        headers = {
            "content-type": "application/json",
            "webhook-id": outbox_id,
            "webhook-timestamp": str(timestamp),
        }
        if signer is not None:
            at = datetime.fromtimestamp(timestamp, UTC)
            headers["webhook-signature"] = signer.sign(outbox_id, at, body.decode())
        return headers

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        raise NotCheckable("a forward cannot be looked up, and resending it is safe")

    async def start(self) -> None:
        return None  # nothing to build ahead

    async def close(self) -> None:
        await self._client.aclose()


def _forward_body(message: Outgoing) -> bytes:
    if "event" not in message.payload:
        raise SendFailed(FailureKind.PERMANENT, "the forward's payload has no event")
    try:
        return msgspec.json.encode(message.payload["event"])
    except (TypeError, msgspec.EncodeError) as exc:
        raise SendFailed(FailureKind.PERMANENT, f"the event is not JSON: {exc}") from exc


async def _snippet(answer: httpx.Response) -> str:
    """The start of the answer; reading it whole (when small) keeps the connection usable.
    A body that breaks off changes nothing: the status line has said what happened."""
    read = bytearray()
    with contextlib.suppress(httpx.TransportError):
        async for chunk in answer.aiter_bytes():
            read += chunk
            if len(read) >= _ANSWER_MAX:
                break
    return " ".join(read[:_SNIPPET].decode("utf-8", "replace").split())


def forward_failure(
    name: str, status: int, retry_after: str | None, snippet: str, clock: Clock
) -> SendFailed | None:
    """What a forward's answer means (notes §4); None for a 2xx."""
    said = f"{name!r} answered {status}" + (f": {snippet}" if snippet else "")
    if 200 <= status < 300:
        return None
    if status == 410:
        return SendFailed(FailureKind.PERMANENT, f"destination gone (410): {said}", code="410")
    if 300 <= status < 400:
        reason = f"{said} (redirects are not followed: configure the final url)"
        return SendFailed(FailureKind.PERMANENT, reason, code=str(status))
    if status in (408, 429) or status >= 500:
        wait = retry_after_seconds(retry_after, clock.now())
        return SendFailed(FailureKind.TRANSIENT, said, code=str(status), retry_after=wait)
    return SendFailed(FailureKind.PERMANENT, said, code=str(status))


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (delay in seconds or an HTTP date) as seconds from `now`."""
    if not value or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            at = parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        at = at if at.tzinfo else at.replace(tzinfo=UTC)
        seconds = (at - now).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None
