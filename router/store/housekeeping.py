"""Background upkeep of the store while the server runs (one task, cancelled at shutdown)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from router.clock import Clock
from router.config import Settings
from router.errors import StoreUnavailable
from router.logs import get_logger
from router.store.base import Store
from router.store.records import Pruned

log = get_logger("switchboard.housekeeping")

#: How often the upkeep runs.
INTERVAL_SECONDS = 600.0


def nonce_retention(settings: Settings) -> timedelta:
    """How long one-time tokens must be remembered: past that, their signed timestamp is
    refused anyway (twice the tolerance, for clock skew in both directions)."""
    mailgun = settings.sources.mailgun
    tolerance = mailgun.tolerance_seconds if mailgun else 300
    return timedelta(seconds=2 * tolerance + 60)


#: Events one retention transaction removes at most: short transactions, so ingest's
#: commits (on SQLite, the same writer) go on between them.
PRUNE_BATCH = 500


#: Told what each pass's retention removed (the server counts it in /metrics).
OnPruned = Callable[[Pruned], None]


async def upkeep_once(
    store: Store, clock: Clock, settings: Settings, on_pruned: OnPruned | None = None
) -> None:
    """One pass: remove blob temp files of writes that died (the first pass runs at start-up),
    forget one-time tokens no verifier would accept any more, and, with
    `storage.retention_days`, remove what is older than that (`prune_old`)."""
    now = clock.now()
    await sweep_blob_temp_files(store)
    await store.prune_nonces(now - nonce_retention(settings))
    if settings.storage.retention_days:
        pruned = await prune_old(store, now - timedelta(days=settings.storage.retention_days))
        if on_pruned is not None:
            on_pruned(pruned)


async def prune_old(store: Store, before: datetime) -> Pruned:
    """`Store.prune` batch after batch until a batch finds less than a full one; the total."""
    total = Pruned()
    while True:
        batch = await store.prune(before, PRUNE_BATCH)
        total += batch
        if batch.events < PRUNE_BATCH and batch.quarantined < PRUNE_BATCH:
            break
        await asyncio.sleep(0)
    if total != Pruned():
        log.info(
            "pruned",
            stage="housekeeping",
            before=before.isoformat(),
            events=total.events,
            outbox_rows=total.outbox_rows,
            quarantined=total.quarantined,
            receipts=total.receipts,
        )
    return total


async def sweep_blob_temp_files(store: Store) -> None:
    """`BlobStore.sweep_temp_files` in a thread; a disk error is logged, never fatal."""
    try:
        removed = await asyncio.to_thread(store.blobs.sweep_temp_files)
    except OSError as exc:
        log.warning("blob sweep failed", stage="housekeeping", error=str(exc))
        return
    if removed:
        log.info("blob temp files removed", stage="housekeeping", count=removed)


async def upkeep_forever(
    store: Store, clock: Clock, settings: Settings, on_pruned: OnPruned | None = None
) -> None:
    """Run `upkeep_once` every INTERVAL_SECONDS; a store hiccup is logged, never fatal."""
    while True:
        try:
            await upkeep_once(store, clock, settings, on_pruned)
        except StoreUnavailable as exc:
            log.warning("upkeep skipped", stage="housekeeping", error=str(exc))
        await asyncio.sleep(INTERVAL_SECONDS)
