"""The ingest path: verify -> parse -> commit -> answer. Nothing else waits on a request.

Framework-free: the HTTP app turns a request into an `InboundRequest` and the returned `Ack`
into a response. Every client mistake maps to a 4xx; a store that cannot commit maps to 503 so
the provider retries; 2xx is returned only once the event is durably committed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from typing import Any

import msgspec

from channels.base import Ack, InboundAdapter, InboundRequest, Parsed, PayloadError, SignatureError
from router.errors import StoreUnavailable, UnstorableEvent
from router.events import Event, EventStatus
from router.ids import new_ulid
from router.logs import get_logger, mask_address, scrub
from router.metrics import Metrics
from router.store.base import IngestItem, IngestOutcome, QuarantinedRequest, Store
from router.store.blobs import BlobStore

log = get_logger("switchboard.ingest")


def error_ack(status: int, message: str) -> Ack:
    """A JSON error answer: `{"error": message}`."""
    return Ack(status=status, body=msgspec.json.encode({"error": message}))


UNAVAILABLE = error_ack(503, "store unavailable, retry later")


class Ingestor:
    """Runs the ingest path for any adapter against one store."""

    def __init__(
        self,
        store: Store,
        blobs: BlobStore,
        metrics: Metrics,
        *,
        accept_types: Mapping[str, Sequence[str]],
        blob_threshold_bytes: int,
    ) -> None:
        self._store = store
        self._blobs = blobs
        self._metrics = metrics
        self._accept = accept_types
        self._blob_threshold = blob_threshold_bytes
        #: Metric children by label values: `labels()` validates and locks on every call.
        self._counters: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}

    async def handle(self, adapter: InboundAdapter, request: InboundRequest) -> Ack:
        """Answer one webhook; never raises for anything the client sent."""
        started = time.perf_counter()
        source = adapter.source
        if request.content_type not in adapter.content_types:
            self._count(source, "unsupported_media_type")
            expected = ", ".join(sorted(adapter.content_types))
            return error_ack(415, f"content type must be {expected}")
        try:
            adapter.verify(request)
        except SignatureError as exc:
            self._count(source, "unauthorized")
            log.info(
                "rejected",
                source=source,
                stage="verify",
                outcome="unauthorized",
                reason=exc.reason,
                correlation_id=request.correlation_id,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            return error_ack(401, f"signature check failed: {exc.reason}")
        try:
            parsed = adapter.parse(request)
        except Exception as exc:  # a parser bug must not become a 500 or lose the body
            return await self._quarantine(source, request, exc)
        try:
            outcome = await self._commit(adapter, request, parsed)
        except UnstorableEvent as exc:  # a parser bug seen by the store: same as a raising parser
            return await self._quarantine(source, request, exc)
        except StoreUnavailable as exc:
            self._count(source, "unavailable")
            log.error(
                "store unavailable",
                source=source,
                stage="commit",
                outcome="unavailable",
                error=str(exc),
                correlation_id=request.correlation_id,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
            )
            return UNAVAILABLE
        if outcome is IngestOutcome.REPLAY:
            self._count(source, "replay")
            return error_ack(401, "signature check failed: token already used")
        self._observe(source, time.perf_counter() - started)
        self._log_events(parsed.events, outcome, started)
        return parsed.ack

    async def _commit(
        self, adapter: InboundAdapter, request: InboundRequest, parsed: Parsed
    ) -> IngestOutcome | None:
        if not parsed.events:
            return None
        if parsed.blobs:
            await self._put_blobs(parsed.blobs)
        raw_blob = await self._raw_blob(request.body) if self._is_large(request.body) else None
        outcomes = []
        for event in parsed.events:
            event = self._apply_accept_types(adapter.source, event)
            item = IngestItem(
                event=event,
                raw_body=request.body,
                raw_blob=raw_blob,
                content_type=request.content_type,
                nonce=parsed.nonce,
            )
            outcome = await self._store.ingest(item)
            ignored = outcome is IngestOutcome.STORED and event.status is EventStatus.IGNORED
            self._count(adapter.source, "ignored" if ignored else outcome.value)
            outcomes.append(outcome)
        if IngestOutcome.REPLAY in outcomes:
            return IngestOutcome.REPLAY
        return IngestOutcome.STORED if IngestOutcome.STORED in outcomes else outcomes[0]

    def _apply_accept_types(self, source: str, event: Event) -> Event:
        patterns = self._accept.get(source, ("*",))
        if "*" in patterns:  # the default: no pattern matching per event
            return event
        if any(fnmatchcase(event.provider_type, p) or fnmatchcase(event.type, p) for p in patterns):
            return event
        return msgspec.structs.replace(event, status=EventStatus.IGNORED)

    async def _put_blobs(self, blobs: dict[str, bytes]) -> None:
        for content in blobs.values():
            await self._put_blob(content)

    def _is_large(self, body: bytes) -> bool:
        return len(body) > self._blob_threshold

    async def _raw_blob(self, body: bytes) -> str | None:
        if not self._is_large(body):
            return None
        return await self._put_blob(body)

    async def _put_blob(self, content: bytes) -> str:
        """Write to the blob store off the event loop; a disk error means the store is down."""
        try:
            return await asyncio.to_thread(self._blobs.put, content)
        except OSError as exc:
            raise StoreUnavailable(f"blob store: {exc.strerror}") from exc

    async def _quarantine(self, source: str, request: InboundRequest, exc: Exception) -> Ack:
        reason = str(exc) if isinstance(exc, PayloadError) else f"parser error: {exc!r}"
        reason = scrub(reason)[:500]
        if not isinstance(exc, PayloadError):
            log.error(
                "parser raised",
                source=source,
                stage="parse",
                error=reason,
                correlation_id=request.correlation_id,
            )
        try:
            raw_blob = await self._raw_blob(request.body)
            await self._store.quarantine(
                QuarantinedRequest(
                    id=new_ulid(request.received_at),
                    source=source,
                    received_at=request.received_at,
                    reason=reason,
                    content_type=request.content_type,
                    raw_body=None if raw_blob else request.body,
                    raw_blob=raw_blob,
                    correlation_id=request.correlation_id,
                )
            )
        except StoreUnavailable:
            self._count(source, "unavailable")
            return UNAVAILABLE
        self._count(source, "malformed")
        log.info(
            "quarantined",
            source=source,
            stage="parse",
            outcome="malformed",
            reason=reason,
            correlation_id=request.correlation_id,
        )
        return error_ack(400, f"malformed payload: {reason}")

    def _count(self, source: str, outcome: str) -> None:
        counter = self._counters.get((source, outcome))
        if counter is None:
            counter = self._metrics.webhooks.labels(source, outcome)
            self._counters[(source, outcome)] = counter
        counter.inc()

    def _observe(self, source: str, seconds: float) -> None:
        histogram = self._latency.get(source)
        if histogram is None:
            histogram = self._latency[source] = self._metrics.ingest_seconds.labels(source)
        histogram.observe(seconds)

    @staticmethod
    def _log_events(events: list[Event], outcome: IngestOutcome | None, started: float) -> None:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        for event in events:
            log.info(
                "ingested",
                event_id=event.id,
                source=event.source,
                type=event.type,
                stage="ingest",
                outcome=outcome.value if outcome else "acknowledged",
                status=event.status.value,
                correlation_id=event.correlation_id,
                contact=mask_address(event.contact.address if event.contact else None),
                duration_ms=duration_ms,
            )
