"""The ingest path: verify -> parse -> commit -> answer. Nothing else waits on a request.

Framework-free: the HTTP app turns a request into an `InboundRequest` and the returned `Ack`
into a response. Every client mistake maps to a 4xx; a store that cannot commit maps to 503 so
the provider retries; 2xx is returned only once the event is durably committed.

No request costs the event loop more than a small, bounded amount of work before its signature
is checked: bodies are capped per source (by the HTTP edge), forms by field count, and a body
over PARSE_INLINE_MAX bytes is verified and parsed in one dedicated thread, so a large or
hostile body delays other large bodies, never the small webhooks of other providers. A
one-time token (Mailgun) that comes back with another body is refused before that body is
parsed.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fnmatch import fnmatchcase
from typing import Any, TypeVar

import msgspec

from channels.base import (
    Ack,
    InboundAdapter,
    InboundRequest,
    LimitExceeded,
    Parsed,
    PayloadError,
    SignatureError,
)
from router.errors import StoreUnavailable, UnstorableEvent
from router.events import Event, EventStatus
from router.ids import new_ulid
from router.logs import get_logger, mask_address, scrub
from router.metrics import Metrics
from router.store.base import IngestItem, IngestOutcome, QuarantinedRequest, Store
from router.store.blobs import Blobs

log = get_logger("switchboard.ingest")
T = TypeVar("T")

#: Bodies up to this size are verified and parsed on the event loop (a thread hop costs more
#: than the work); larger ones in the parse thread.
PARSE_INLINE_MAX = 64 * 1024


def error_ack(status: int, message: str) -> Ack:
    """A JSON error answer: `{"error": message}`."""
    return Ack(status=status, body=msgspec.json.encode({"error": message}))


UNAVAILABLE = error_ack(503, "store unavailable, retry later")


class Ingestor:
    """Runs the ingest path for any adapter against one store."""

    def __init__(
        self,
        store: Store,
        blobs: Blobs,
        metrics: Metrics,
        *,
        accept_types: Mapping[str, Sequence[str]],
        blob_threshold_bytes: int,
        on_stored: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        #: Called after a commit that stored a new event: wakes the worker in this process.
        self._on_stored = on_stored
        self._blobs = blobs
        self._metrics = metrics
        self._accept = accept_types
        self._blob_threshold = blob_threshold_bytes
        #: Metric children by label values: `labels()` validates and locks on every call.
        self._counters: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        #: One thread for large bodies: at most one of them competes with the loop at a time.
        self._heavy = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ingest-parse")

    def close(self) -> None:
        """Stop the parse thread (app shutdown); work queued there is dropped unanswered."""
        self._heavy.shutdown(wait=False, cancel_futures=True)

    async def handle(self, adapter: InboundAdapter, request: InboundRequest) -> Ack:
        """Answer one webhook; never raises for anything the client sent."""
        started = time.perf_counter()
        source = adapter.source
        if request.content_type not in adapter.content_types:
            self._count(source, "unsupported_media_type")
            expected = ", ".join(sorted(adapter.content_types))
            return error_ack(415, f"content type must be {expected}")
        try:
            nonce = await self._run(adapter.verify, request)
            if nonce is not None and await self._reused(source, nonce, request):
                return self._replay(source)
        except SignatureError as exc:
            return self._refuse(source, request, exc.reason, started)
        except LimitExceeded as exc:
            self._count(source, "too_large")
            return error_ack(413, str(exc))
        except StoreUnavailable as exc:
            return self._unavailable(source, request, exc, started)
        try:
            parsed = await self._run(adapter.parse, request)
        except Exception as exc:  # a parser bug must not become a 500 or lose the body
            return await self._quarantine(source, request, exc)
        try:
            outcome = await self._commit(adapter, request, parsed, nonce)
        except UnstorableEvent as exc:  # a parser bug seen by the store: same as a raising parser
            return await self._quarantine(source, request, exc)
        except StoreUnavailable as exc:
            return self._unavailable(source, request, exc, started)
        if outcome is IngestOutcome.REPLAY:
            return self._replay(source)
        if outcome is IngestOutcome.STORED and self._on_stored is not None:
            self._on_stored()
        self._observe(source, time.perf_counter() - started)
        self._log_events(parsed.events, outcome, started)
        return parsed.ack

    async def _run(self, step: Callable[[InboundRequest], T], request: InboundRequest) -> T:
        """`step(request)`, in the parse thread when the body is large."""
        if len(request.body) <= PARSE_INLINE_MAX:
            return step(request)
        return await asyncio.get_running_loop().run_in_executor(self._heavy, step, request)

    async def _reused(self, source: str, nonce: str, request: InboundRequest) -> bool:
        """Was `nonce` committed before with another body?

        The same body again is a redelivery, left to the dedupe; two first uses racing each
        other are settled by the store at commit (REPLAY).
        """
        first = await self._store.nonce_first_body(source, nonce)
        if first is None:
            return False
        if first.blob is not None:
            return await self._run(_sha256_hex, request) != first.blob
        return first.body != request.body

    def _replay(self, source: str) -> Ack:
        self._count(source, "replay")
        return error_ack(401, "signature check failed: token already used")

    def _refuse(self, source: str, request: InboundRequest, reason: str, started: float) -> Ack:
        self._count(source, "unauthorized")
        log.info(
            "rejected",
            source=source,
            stage="verify",
            outcome="unauthorized",
            reason=reason,
            correlation_id=request.correlation_id,
            duration_ms=round((time.perf_counter() - started) * 1000, 3),
        )
        return error_ack(401, f"signature check failed: {reason}")

    def _unavailable(
        self, source: str, request: InboundRequest, exc: StoreUnavailable, started: float
    ) -> Ack:
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

    async def _commit(
        self, adapter: InboundAdapter, request: InboundRequest, parsed: Parsed, nonce: str | None
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
                nonce=nonce,
            )
            outcome = await self._store.ingest(item)
            ignored = outcome is IngestOutcome.STORED and event.status is EventStatus.IGNORED
            self._count(adapter.source, "ignored" if ignored else outcome.value)
            outcomes.append(outcome)
        if IngestOutcome.REPLAY in outcomes:
            return IngestOutcome.REPLAY
        return IngestOutcome.STORED if IngestOutcome.STORED in outcomes else outcomes[0]

    def _apply_accept_types(self, source: str, event: Event) -> Event:
        return apply_accept_types(self._accept.get(source, ("*",)), event)

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
        """Count one webhook outcome (`stored`, `unauthorized`, `too_large`, `replay`...)."""
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


def apply_accept_types(patterns: Sequence[str], event: Event) -> Event:
    """The event, `ignored` when its type matches none of its source's `accept_types`."""
    if "*" in patterns:  # the default: no pattern matching per event
        return event
    if any(fnmatchcase(event.provider_type, p) or fnmatchcase(event.type, p) for p in patterns):
        return event
    return msgspec.structs.replace(event, status=EventStatus.IGNORED)


def _sha256_hex(request: InboundRequest) -> str:
    return hashlib.sha256(request.body).hexdigest()
