"""The sections of status that other parts of the product keep: backups and reconciliation.

Each function returns its section of the status object and the alerts it calls for. Backups
are read from the manifests under `backup.dir`, reconciliation from the marks its passes leave
in the store (`Store.reconcile_state()`).
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


async def reconcile_reading(store: Store) -> ReconcileReading:
    """Each source a pass ever ran for, as `{last_success, recovered}`, with an alert for each
    whose last pass failed (cleared by the next success)."""
    state = await store.reconcile_state()
    sources = {
        name: ReconcileSource(last_success=record.last_success, recovered=record.recovered)
        for name, record in sorted(state.items())
    }
    alerts = [
        f"reconciliation failing for {name}: {record.last_error}"
        for name, record in sorted(state.items())
        if record.last_error is not None
    ]
    return ReconcileReading(sources=sources, alerts=alerts)


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
