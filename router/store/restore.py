"""`switchboard restore DIR` (SPEC §12): check a backup, then put it in place of the store.

The order keeps every step undoable: the store's lock is taken (nothing may hold the store),
the copy is proven (manifest checksums, `PRAGMA integrity_check`), its blobs are added beside
the store (content-addressed: existing ones are the same bytes), the database is staged next
to its final place, and only then is the old file, with its `-wal` and `-shm`, moved aside as
`*.pre-restore` and the staged copy renamed in. The old WAL must never stay beside the
restored file: SQLite would replay its frames into a database they do not belong to.
"""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

from router.store.backup import (
    BLOBS,
    DB_NAME,
    SAFE_NAME,
    Manifest,
    copy_hashed,
    fsync_folder,
    read_manifest,
    sha256_of,
)
from router.store.holding import Hold
from router.store.queries import migrations

#: What SQLite keeps beside a WAL database, moved with it.
COMPANIONS = ("-wal", "-shm")


class BackupInvalid(Exception):
    """The backup is incomplete, changed or damaged; the message names what."""


class RestoreRefused(Exception):
    """The restore would overwrite something without `--force`, or cannot proceed."""


@dataclass
class RestoreReport:
    """What a restore did."""

    manifest: Manifest
    #: Where the replaced store was kept (None if there was none).
    kept: Path | None
    blobs_added: int


def verify_backup(folder: Path) -> Manifest:
    """The manifest of the backup in `folder`, after checking every file's checksum and the
    database's `PRAGMA integrity_check`; BackupInvalid otherwise. Blocking."""
    try:
        manifest = read_manifest(folder)
    except ValueError as exc:
        raise BackupInvalid(str(exc)) from exc
    if DB_NAME not in manifest.files:
        raise BackupInvalid(f"{folder}: the manifest lists no {DB_NAME}")
    for name, digest in manifest.files.items():
        _check_file(folder, name, digest)
    _check_integrity(folder / DB_NAME)
    known = migrations("sqlite")[-1][0]
    if manifest.schema_version > known:
        raise BackupInvalid(
            f"the backup is at schema version {manifest.schema_version}, newer than this"
            f" Switchboard knows ({known}): restore it with the version that wrote it"
        )
    return manifest


def _check_file(folder: Path, name: str, digest: str) -> None:
    if not SAFE_NAME.match(name):
        raise BackupInvalid(f"the manifest names {name!r}, which is not a file of a backup")
    path = folder / name
    if not path.is_file():
        raise BackupInvalid(f"{path}: listed in the manifest but missing")
    if sha256_of(path) != digest:
        raise BackupInvalid(
            f"{path}: checksum does not match the manifest (the copy was changed or damaged)"
        )


def _check_integrity(db: Path) -> None:
    try:
        with closing(sqlite3.connect(db.absolute().as_uri() + "?mode=ro", uri=True)) as conn:
            rows = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        raise BackupInvalid(f"{db}: not a readable SQLite database: {exc}") from exc
    if rows != ["ok"]:
        raise BackupInvalid(f"{db}: integrity_check failed: {'; '.join(rows[:5])}")


def restore_backup(folder: Path, db: Path, *, force: bool) -> RestoreReport:
    """Put the backup in `folder` in place of the store at `db`. Blocking.

    Raises StoreHeld while a process has the store open, BackupInvalid for a copy that fails
    its checks, RestoreRefused when a store is there and `force` is false.
    """
    hold = Hold(db, exclusive=True)
    try:
        manifest = verify_backup(folder)
        aside = _aside_of(db, force)
        added = _add_blobs(folder, db.parent, manifest)
        staged = db.with_name(db.name + ".restoring")
        staged.unlink(missing_ok=True)  # left by a restore that died: never a live file
        if copy_hashed(folder / DB_NAME, staged) != manifest.files[DB_NAME]:
            raise BackupInvalid(f"{folder / DB_NAME}: changed while it was being restored")
        kept = _move_aside(db, aside) if aside is not None else None
        os.replace(staged, db)
        fsync_folder(db.parent)
    finally:
        hold.release()
    return RestoreReport(manifest, kept, added)


def _files_of(db: Path) -> list[Path]:
    return [db, *(db.with_name(db.name + suffix) for suffix in COMPANIONS)]


def _aside_of(db: Path, force: bool) -> Path | None:
    """Where the current store goes (None: there is none); refuses without `force`."""
    if not db.exists() and not db.with_name(db.name + "-wal").exists():
        return None
    if not force:
        raise RestoreRefused(
            f"{db} exists: pass --force to replace it (it is kept as {db.name}.pre-restore)"
        )
    aside = db.with_name(db.name + ".pre-restore")
    taken = [path for path in _files_of(aside) if path.exists()]
    if taken:
        raise RestoreRefused(f"{taken[0]} exists from an earlier restore: move it away first")
    return aside


def _move_aside(db: Path, aside: Path) -> Path:
    """Rename the store and its `-wal`/`-shm` to `aside` (+ the same suffixes)."""
    for current, kept in zip(_files_of(db), _files_of(aside), strict=True):
        if current.exists():
            os.replace(current, kept)
    fsync_folder(db.parent)
    return aside


def _add_blobs(folder: Path, store_folder: Path, manifest: Manifest) -> int:
    """Copy the backup's blobs the store does not have (through a temp name); how many."""
    added = 0
    for name, digest in manifest.files.items():
        target = store_folder / name
        if not name.startswith(f"{BLOBS}/") or target.exists():
            continue
        temp = target.with_name(f".{target.name}.{os.getpid()}.restore.tmp")
        temp.unlink(missing_ok=True)
        if copy_hashed(folder / name, temp) != digest:
            temp.unlink()
            raise BackupInvalid(f"{folder / name}: changed while it was being restored")
        os.replace(temp, target)
        added += 1
    return added
