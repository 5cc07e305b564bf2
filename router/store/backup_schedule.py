"""Scheduled backups (`[backup] interval`): `serve` takes one every interval into a new dated
folder under `backup.dir`, in a thread (off the request path), and keeps the newest `keep`."""

from __future__ import annotations

import asyncio
import re
import shutil
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from router.clock import Clock
from router.config import BackupConfig, Settings
from router.logs import get_logger
from router.store.backup import MANIFEST, BackupRefused, BackupReport, take_backup
from router.store.sqlite import sqlite_path
from router.timeutil import parse_interval

log = get_logger("switchboard.backup")

#: `20261207T201757.123Z`: sorts by time; only folders named so are ever removed.
_DATED = re.compile(r"^\d{8}T\d{6}\.\d{3}Z(-\d+)?$")


def interval_seconds(config: BackupConfig) -> float | None:
    """The configured interval in seconds; None when scheduled backups are off ("0")."""
    every = parse_interval(config.interval)
    return every.total_seconds() if every is not None else None


def dated_folder(root: Path, now: datetime) -> Path:
    """A new folder name under `root` for a backup taken at `now` (UTC)."""
    at = now.astimezone(UTC)
    name = at.strftime("%Y%m%dT%H%M%S") + f".{at.microsecond // 1000:03d}Z"
    candidate, n = root / name, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{name}-{n}"
    return candidate


def scheduled_backup(db: Path, root: Path, now: datetime, keep: int) -> BackupReport:
    """One scheduled backup of `db` into a dated folder under `root`, then `prune`. Blocking."""
    report = take_backup(db, dated_folder(root, now), now=now)
    prune(root, keep)
    return report


def prune(root: Path, keep: int) -> list[Path]:
    """Remove dated folders older than the `keep` newest complete backups (a folder without a
    manifest is one that died mid-way); the removed, oldest first."""
    dated = sorted(p for p in root.iterdir() if p.is_dir() and _DATED.match(p.name))
    complete = [p for p in dated if (p / MANIFEST).is_file()]
    if len(complete) <= keep:
        return []
    oldest_kept = complete[-keep]
    removed = [p for p in dated if p.name < oldest_kept.name]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


async def backups_forever(settings: Settings, clock: Clock) -> None:
    """Every `backup.interval`, a scheduled backup; failures are logged, never fatal. Returns
    at once when the interval is "0" or the store is not SQLite (the config check refuses an
    interval there)."""
    seconds = interval_seconds(settings.backup)
    if seconds is None or not settings.storage.url.startswith("sqlite:///"):
        return
    db, root = sqlite_path(settings.storage.url), Path(settings.backup.dir)
    while True:
        await asyncio.sleep(seconds)
        await backup_once(db, root, clock.now(), settings.backup.keep)


async def backup_once(db: Path, root: Path, now: datetime, keep: int) -> BackupReport | None:
    """`scheduled_backup` in a thread; None (and a warning in the log) if it failed."""
    try:
        report = await asyncio.to_thread(scheduled_backup, db, root, now, keep)
    except (OSError, sqlite3.Error, BackupRefused) as exc:
        log.warning("backup failed", stage="backup", error=str(exc))
        return None
    log.info(
        "backup taken",
        stage="backup",
        path=str(report.path),
        bytes=report.bytes,
        duration_ms=round(report.seconds * 1000),
        events=report.manifest.counts["events"],
    )
    return report
