"""Reconciliation passes (SPEC §12): ask each provider what its webhooks should have brought.

A pass, per source with a `History`: from the source's last successful pass (less
`OVERLAP`, for clock skew and messages dated late), or `reconcile.lookback` ago for the
first, until now; everything fetched goes through the store's ordinary ingest, so what a
webhook brought already is a duplicate, and what is new is routed by the worker like any
other event. The mark moves only after the whole window is in: a pass that fails or dies
half-way is asked again, whole, by the next (ingest dedupes what it had stored).

One pass at a time for the whole fleet: the store's reconcile lock. The core never imports a
provider SDK: histories come from `channels/` (built in `router/http/providers.py`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta

import msgspec

from channels.history import AnyHistory, HistoryError, ReceiptHistory, Recovered, ThreadHistory
from router.clock import Clock
from router.config import ReconcileConfig
from router.errors import StoreUnavailable, UnstorableEvent
from router.logs import get_logger, scrub
from router.metrics import Metrics
from router.pipeline.ingest import apply_accept_types
from router.store.base import IngestItem, IngestOutcome, Store
from router.store.records import ReconcileRecord
from router.timeutil import parse_duration, parse_interval

log = get_logger("switchboard.reconcile")

#: How far before the last successful pass's end the next one starts asking again.
OVERLAP = timedelta(minutes=5)
#: How long after its send a row still `sent` gets its status fetched (a callback is late).
RECEIPT_AFTER = timedelta(minutes=10)
#: Statuses fetched in one pass at most (the provider's rate limits; the next pass goes on).
RECEIPT_LIMIT = 500
SOURCES = ("twilio", "stripe", "slack")
HELD_ELSEWHERE = "another process is running a reconciliation pass"
#: Items of a pass handed to the store at once (one group commit, not one commit each).
INGEST_CHUNK = 100


class SourceReport(msgspec.Struct, kw_only=True):
    """What one pass did for one source (one item of `switchboard reconcile --json`)."""

    source: str
    since: datetime | None = None
    until: datetime | None = None
    #: Items the provider listed in the window.
    seen: int = 0
    #: Of those, events stored now (with `--dry-run`: that would be).
    recovered: int = 0
    #: Delivery receipts fetched and applied (outbound rows with no final status).
    receipts: int = 0
    #: Why the pass of this source failed (it is tried again at the next pass).
    error: str | None = None
    #: Why this source was not asked (sandbox, no credentials, a pass elsewhere).
    skipped: str | None = None
    #: Dedupe keys of the events recovered (or that would be).
    new: list[str] = []


class Reconciler:
    """Runs passes over the configured histories against one store."""

    def __init__(
        self,
        store: Store,
        histories: Mapping[str, AnyHistory],
        config: ReconcileConfig,
        clock: Clock,
        metrics: Metrics,
        *,
        skipped: Mapping[str, str] | None = None,
        accept_types: Mapping[str, Sequence[str]] | None = None,
        on_stored: Callable[[], None] | None = None,
        log_passes: bool = True,
    ) -> None:
        """`skipped`: sources not asked, and why (each reported so by every pass).
        `log_passes`: log each pass (the server); a command printing its report does not."""
        self._store = store
        self._histories = dict(histories)
        self._skipped = dict(skipped or {})
        self._lookback = parse_duration(config.lookback)
        self._clock = clock
        self._metrics = metrics
        self._accept = accept_types or {}
        self._on_stored = on_stored
        self._log = log_passes

    async def run(
        self, only: str | None = None, *, since: datetime | None = None, dry_run: bool = False
    ) -> list[SourceReport]:
        """One pass over every source (or `only` that one); `since` replaces each source's
        own start; `dry_run` stores nothing and moves no mark."""
        names = [s for s in SOURCES if only is None or s == only]
        async with self._store.reconcile_lock() as held:
            if not held:
                return [SourceReport(source=name, skipped=HELD_ELSEWHERE) for name in names]
            state = await self._store.reconcile_state()
            reports = []
            for name in names:
                history = self._histories.get(name)
                if history is None:
                    reason = self._skipped.get(name, "not configured")
                    reports.append(SourceReport(source=name, skipped=reason))
                    continue
                report = await self._pass(history, state.get(name), since, dry_run)
                reports.append(report)
            return reports

    async def close(self) -> None:
        """Release every history's client."""
        for history in self._histories.values():
            await history.close()

    async def _pass(
        self,
        history: AnyHistory,
        record: ReconcileRecord | None,
        since: datetime | None,
        dry_run: bool,
    ) -> SourceReport:
        until = self._clock.now()
        start = since or self._start(record, until)
        report = SourceReport(source=history.source, since=start, until=until)
        try:
            fetched = await self._fetch(history, start, until)
            report.seen = len(fetched)
            if dry_run:
                report.new = await self._unknown(fetched)
            else:
                report.new = await self._ingest(history.source, fetched)
            report.recovered = len(report.new)
            if isinstance(history, ReceiptHistory):
                report.receipts = await self._receipts(history, until, dry_run)
        except (HistoryError, StoreUnavailable) as exc:
            report.error = scrub(str(exc) or type(exc).__name__)[:500]
        if not dry_run:
            await self._record(report)
        return report

    async def _fetch(
        self, history: AnyHistory, since: datetime, until: datetime
    ) -> list[Recovered]:
        """What `history` lists in the window; a thread-by-thread one is told the open
        escalation threads first (the store's, so the history needs no store)."""
        if isinstance(history, ThreadHistory):
            return await history.fetch_threads(await self._store.open_threads(), since, until)
        return await history.fetch(since, until)

    def _start(self, record: ReconcileRecord | None, until: datetime) -> datetime:
        if record is None or record.last_success is None:
            return until - self._lookback
        return record.last_success - OVERLAP

    async def _receipts(self, history: ReceiptHistory, until: datetime, dry_run: bool) -> int:
        """Rows still `sent` RECEIPT_AFTER after their send (within the lookback): their
        status, fetched, is ingested as the status callback it stands for, which the worker
        applies as it applies the callback itself (forward only). Returns how many are new."""
        ids = await self._store.awaiting_receipt(
            history.receipt_channels, until - RECEIPT_AFTER, until - self._lookback, RECEIPT_LIMIT
        )
        fetched = await history.receipts(ids) if ids else []
        if dry_run:
            return len(await self._unknown(fetched))
        return len(await self._ingest(history.source, fetched))

    async def _unknown(self, fetched: list[Recovered]) -> list[str]:
        known = await self._store.known_dedupe_keys([r.event.dedupe_key for r in fetched])
        return [r.event.dedupe_key for r in fetched if r.event.dedupe_key not in known]

    async def _ingest(self, source: str, fetched: list[Recovered]) -> list[str]:
        """Store what was fetched, INGEST_CHUNK items at a time handed to the store together,
        so its writer commits each chunk as one group (as it does concurrent webhooks) instead
        of one commit an item; they join its queue in fetch order. The dedupe keys stored."""
        patterns = self._accept.get(source, ("*",))
        new = []
        for start in range(0, len(fetched), INGEST_CHUNK):
            items = [
                IngestItem(
                    event=apply_accept_types(patterns, item.event),
                    raw_body=item.raw_body,
                    content_type=item.content_type,
                )
                for item in fetched[start : start + INGEST_CHUNK]
            ]
            outcomes = await asyncio.gather(
                *(self._store.ingest(item) for item in items), return_exceptions=True
            )
            for item, outcome in zip(items, outcomes, strict=True):
                if isinstance(outcome, UnstorableEvent):
                    key = item.event.dedupe_key
                    raise HistoryError(f"{key} cannot be stored: {outcome}") from outcome
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is IngestOutcome.STORED:
                    new.append(item.event.dedupe_key)
            if new and self._on_stored is not None:
                self._on_stored()
        return new

    async def _record(self, report: SourceReport) -> None:
        source = report.source
        if report.recovered:
            self._metrics.reconcile_recovered.labels(source).inc(report.recovered)
        if report.error is not None:
            self._metrics.reconcile_errors.labels(source).inc()
        elif report.until is not None:
            self._metrics.reconcile_last_success.labels(source).set(report.until.timestamp())
        if self._log:
            _log_pass(report)
        try:
            await self._store.record_reconcile(
                source,
                self._clock.now(),
                until=None if report.error else report.until,
                recovered=report.recovered,
                error=report.error,
            )
        except StoreUnavailable as exc:  # the next pass asks again from the old mark
            report.error = report.error or f"could not record the pass: {exc}"


def _log_pass(report: SourceReport) -> None:
    fields = {"source": report.source, "stage": "reconcile", "seen": report.seen}
    if report.error is not None:
        log.warning("reconcile.failed", **fields, outcome="failed", error=report.error)
    else:
        log.info("reconcile.pass", **fields, outcome="ok", recovered=report.recovered)


async def reconcile_forever(reconciler: Reconciler, config: ReconcileConfig) -> None:
    """`serve`'s (or `worker`'s) passes: one at start when `on_start`, then one every
    `interval` ("0": none). A failure is logged and left to the next pass, never fatal.
    Runs until cancelled."""
    every = parse_interval(config.interval)
    if config.on_start:
        await _pass_logged(reconciler)
    while every is not None:
        await asyncio.sleep(every.total_seconds())
        await _pass_logged(reconciler)


async def _pass_logged(reconciler: Reconciler) -> None:
    try:
        await reconciler.run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a store or provider trouble: the next pass tries again
        log.error("reconcile.crashed", stage="reconcile", error=f"{type(exc).__name__}: {exc}")
