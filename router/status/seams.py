"""What other parts of the product tell status: one function each, to wire when they land.

Reconciliation (`Store.reconcile_state()`, `[reconcile]`) and backups (`[backup]`,
`latest_backup(dir)`) are built on branches of their own; until they are merged these report
nothing, and status raises no alert about them. Each function returns its section of the
status object and the alerts it calls for, so wiring one is a change to this file alone.
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from router.config import Settings
from router.status.model import BackupStatus, ReconcileSource
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
    """SEAM (backups, SPEC §12): `latest_backup(settings.backup.dir)` as `{last, age_seconds}`,
    with an alert when `[backup] interval` is set and the last backup is older than twice it
    (or there is none). Until backups are merged: none known, no alert."""
    del settings, now
    return BackupReading()
