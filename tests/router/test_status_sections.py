# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""The backup and reconcile sections of `switchboard status` (SPEC §12): the newest backup under
`backup.dir`, read from its manifest, and the alert when it is too old; the marks reconciliation
passes leave in the store, and the alert for a source whose last pass failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from router.config import BackupConfig, Settings
from router.status.model import BackupStatus, ReconcileSource
from router.status.sections import backup_reading, reconcile_reading
from router.store.backup import take_backup
from router.store.base import Store
from router.store.sqlite import SQLiteStore
from tests.router.test_store import backend, store  # noqa: F401  (fixtures)

T0 = datetime(2026, 12, 7, 3, 0, tzinfo=UTC)


async def _backups(tmp_path: Path, *moments: datetime) -> Path:
    """A real store, backed up once per moment into `tmp_path/backups/N`."""
    db = tmp_path / "var" / "switchboard.db"
    store = SQLiteStore(db)
    await store.open()
    await store.close()
    folder = tmp_path / "backups"
    for n, moment in enumerate(moments):
        take_backup(db, folder / str(n), now=moment)
    return folder


def _settings(folder: Path, interval: str) -> Settings:
    return Settings(backup=BackupConfig(dir=str(folder), interval=interval))


async def test_the_newest_backup_and_its_age_and_no_alert_while_it_is_recent(
    tmp_path: Path,
) -> None:
    folder = await _backups(tmp_path, T0 - timedelta(hours=5), T0)
    reading = await backup_reading(_settings(folder, "1h"), T0 + timedelta(minutes=90))
    assert reading.status == BackupStatus(last=T0, age_seconds=5400.0)
    assert reading.alerts == []


async def test_a_backup_older_than_twice_the_interval_needs_a_person(tmp_path: Path) -> None:
    folder = await _backups(tmp_path, T0)
    late = T0 + timedelta(hours=2, minutes=1)
    reading = await backup_reading(_settings(folder, "1h"), late)
    assert reading.alerts == [
        "the last backup is 2h 1m old, older than twice backup.interval (1h)"
    ]
    assert (await backup_reading(_settings(folder, "0"), late)).alerts == []  # none scheduled


async def test_no_backup_at_all_is_an_alert_only_when_backups_are_scheduled(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "backups"
    scheduled = await backup_reading(_settings(empty, "6h"), T0)
    assert scheduled.status == BackupStatus(last=None, age_seconds=None)
    assert scheduled.alerts == [f"no backup in {empty} although backup.interval is 6h"]
    assert (await backup_reading(_settings(empty, "0"), T0)).alerts == []


async def test_reconciliation_marks_and_a_failing_source_on_both_backends(
    store: Store,
) -> None:
    """The reconcile section is what the passes left in the store: a source that succeeded,
    and one whose last pass failed, which needs a person until a pass succeeds again."""
    await store.record_reconcile("twilio", T0, until=T0, recovered=3, error=None)
    await store.record_reconcile("stripe", T0, until=T0, recovered=1, error=None)
    failed_at = T0 + timedelta(minutes=10)
    await store.record_reconcile("stripe", failed_at, until=None, recovered=0, error="HTTP 500")
    reading = await reconcile_reading(store)
    assert reading.sources == {
        "stripe": ReconcileSource(last_success=T0, recovered=1),
        "twilio": ReconcileSource(last_success=T0, recovered=3),
    }
    assert reading.alerts == ["reconciliation failing for stripe: HTTP 500"]
    later = failed_at + timedelta(minutes=10)
    await store.record_reconcile("stripe", later, until=later, recovered=0, error=None)
    assert (await reconcile_reading(store)).alerts == []
