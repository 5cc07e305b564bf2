"""`switchboard backup DIR` and `switchboard restore DIR` (SPEC §9, §12): SQLite only."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import click

from router.cli.common import Failure, console, print_json, settings_of
from router.clock import SystemClock
from router.store.backup import BackupRefused, BackupReport, take_backup
from router.store.holding import StoreHeld
from router.store.restore import BackupInvalid, RestoreRefused, restore_backup
from router.store.sqlite import sqlite_path

#: Where an operator on PostgreSQL is sent: the README section with pg_dump / pg_restore.
POSTGRES_POINTER = (
    "storage.url is PostgreSQL: `switchboard backup` and `restore` copy a SQLite store only."
    ' Use pg_dump and pg_restore: see README.md, section "Backups on PostgreSQL".'
)


def _sqlite_store(ctx: click.Context) -> Path:
    url = settings_of(ctx).storage.url
    if not url.startswith("sqlite:///"):
        raise Failure(POSTGRES_POINTER)
    return sqlite_path(url)


@click.command("backup")
@click.argument("folder", metavar="DIR", type=click.Path(file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def backup_command(ctx: click.Context, folder: Path, as_json: bool) -> None:
    """Write a consistent copy of the store into DIR (new or empty), also while `serve`
    runs: DIR/switchboard.db, DIR/blobs/ and DIR/manifest.json with the files' checksums."""
    db = _sqlite_store(ctx)
    try:
        report = take_backup(db, folder, now=SystemClock().now())
    except BackupRefused as exc:
        raise Failure(str(exc)) from exc
    except (OSError, sqlite3.Error) as exc:
        raise Failure(f"backup failed: {exc}") from exc
    if as_json:
        print_json(_summary(report))
        return
    counts = ", ".join(f"{n} {table}" for table, n in report.manifest.counts.items())
    console().print(
        f"Backed up {counts} ({len(report.manifest.files)} files, {report.bytes:,} bytes)"
        f" to {folder} in {report.seconds:.1f}s.",
        highlight=False,
    )


def _summary(report: BackupReport) -> dict[str, Any]:
    manifest = report.manifest
    return {
        "path": str(report.path),
        "created_at": manifest.created_at.isoformat(),
        "schema_version": manifest.schema_version,
        "counts": manifest.counts,
        "files": len(manifest.files),
        "bytes": report.bytes,
        "seconds": round(report.seconds, 3),
        "longest_step_seconds": round(max(report.steps, default=0.0), 4),
    }


@click.command("restore")
@click.argument(
    "folder", metavar="DIR", type=click.Path(exists=True, file_okay=False, path_type=Path)
)
@click.option(
    "--force", is_flag=True, help="Replace a store already there (kept as *.pre-restore)."
)
@click.pass_context
def restore_command(ctx: click.Context, folder: Path, force: bool) -> None:
    """Check the backup in DIR (manifest checksums, integrity_check) and put it in place of
    storage.url. Stop `serve` and `worker` first: a store in use is refused."""
    db = _sqlite_store(ctx)
    try:
        report = restore_backup(folder, db, force=force)
    except (StoreHeld, RestoreRefused) as exc:
        raise Failure(str(exc)) from exc
    except BackupInvalid as exc:
        raise Failure(f"not restored: {exc}") from exc
    except (OSError, sqlite3.Error) as exc:
        raise Failure(f"restore failed: {exc}") from exc
    kept = f"; the previous store is kept as {report.kept}" if report.kept else ""
    console().print(
        f"Restored {db} from the backup of {report.manifest.created_at.isoformat()}"
        f" ({report.manifest.counts['events']} events, {report.blobs_added} blobs added){kept}.",
        highlight=False,
    )
