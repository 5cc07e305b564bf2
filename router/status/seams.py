"""What other parts of the product tell status: one function each, to wire when they land.

Each function returns its section of the status object and the alerts it calls for. Backups
are read from the manifests under `backup.dir`; reconciliation (`Store.reconcile_state()`,
`[reconcile]`) is not built yet: until it is, it reports nothing and raises no alert.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import msgspec

from router.config import Settings
from router.status.alerts import duration
from router.status.model import BackupStatus, ReconcileSource
from router.store.backup import latest_backup
from router.store.backup_schedule import interval_seconds
from router.store.base import Store


class ReconcileReading(msgspec.Struct, frozen=True, kw_only=True):
    #: Per source: when its last pass succeeded, and how many events passes recovered.
    sources: dict[str, ReconcileSource] = {}
    #: "reconciliation failing for twilio: ..." for each source whose last pass failed.
    alerts: list[str] = []


class BackupReading(msgspec.Struct, frozen=True, kw_only=True):
    status: BackupStatus = BackupStatus(last=None, age_seconds=None)
    #: "the last backup is 3d old, older than twice backup.interval (1d)" when it is.
    alerts: list[str] = []


async def reconcile_reading(store: Store, settings: Settings, now: datetime) -> ReconcileReading:
    """SEAM (reconciliation, SPEC §12): read `store.reconcile_state()` into `{source:
    {last_success, recovered}}`, with an alert for each source whose last pass failed. Until
    reconciliation is merged there is no state to read: no sources, no alerts."""
    del store, settings, now
    return ReconcileReading()


async def backup_reading(settings: Settings, now: datetime) -> BackupReading:
    """The newest complete backup under `backup.dir` as `{last, age_seconds}`, with an alert
    when `[backup] interval` is set and the last backup is older than twice it, or there is
    none. Backups taken by hand into other folders are not seen."""
    folder = Path(settings.backup.dir)
    found = await asyncio.to_thread(latest_backup, folder)
    every = interval_seconds(settings.backup)
    if found is None:
        missing = f"no backup in {folder} although backup.interval is {settings.backup.interval}"
        return BackupReading(alerts=[missing] if every else [])
    created, _ = found
    age = max(0.0, (now - created).total_seconds())
    late = every is not None and age > 2 * every
    alert = (
        f"the last backup is {duration(age)} old, older than twice backup.interval "
        f"({settings.backup.interval})"
    )
    return BackupReading(
        status=BackupStatus(last=created, age_seconds=age), alerts=[alert] if late else []
    )
