"""`switchboard backup DIR` (SPEC §12): a consistent copy of a SQLite store while it serves.

The database is copied with SQLite's online backup API, a few MiB of pages per step, from
one read transaction opened before the first step: every step reads the same snapshot (a
commit by the server meanwhile does not restart the copy), and in WAL mode a reader never
blocks the writer, so ingest goes on while the copy is made. The content-addressed blob
files are copied after the snapshot is taken: a blob is written before the commit of the
event that names it, so every blob the snapshot refers to is already there.

`DIR/manifest.json` is written last, through a rename: a folder with a manifest is a
complete backup, and its checksums let `restore` prove the copy is the one written.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import msgspec

from router.store.blobs import BlobStore

DB_NAME = "switchboard.db"
MANIFEST = "manifest.json"
BLOBS = "blobs"
#: Pages copied per backup step (1 MiB at SQLite's default 4 KiB page): on 1 GB, p99 step
#: 42 ms against 170 ms with 1,024 pages, for the same total time (bench/backup.py).
PAGES_PER_STEP = 256
#: What `counts` of a manifest holds.
COUNTED = ("events", "outbox", "contacts", "conversations")
_COUNT = {table: f"SELECT count(*) FROM {table}" for table in COUNTED}  # noqa: S608 (constants)
#: A file a manifest may name: the database, or a blob `blobs/ab/ab…` (64 hex digits).
SAFE_NAME = re.compile(r"^(switchboard\.db|blobs/([0-9a-f]{2})/\2[0-9a-f]{62})$")
_CHUNK = 1024 * 1024


class Manifest(msgspec.Struct, frozen=True, kw_only=True):
    """`DIR/manifest.json`."""

    #: When the backup was taken (UTC).
    created_at: datetime
    #: The schema migration the copy is at.
    schema_version: int
    #: Rows in the copy: events, outbox, contacts, conversations.
    counts: dict[str, int]
    #: Every file of the backup (relative to DIR) and its sha256 hex.
    files: dict[str, str]


class BackupRefused(Exception):
    """The backup cannot be taken (a non-empty DIR, no database); the message says why."""


@dataclass
class BackupReport:
    """What one backup did, and how long its steps held the source."""

    path: Path
    manifest: Manifest
    bytes: int = 0
    seconds: float = 0.0
    #: Duration of every backup step, in order.
    steps: list[float] = field(default_factory=list)


def take_backup(
    db: Path, target: Path, *, now: datetime, pages_per_step: int = PAGES_PER_STEP
) -> BackupReport:
    """Copy the store at `db` (with its blobs) into the new or empty folder `target`.

    Blocking: call it in a thread. Raises BackupRefused, or OSError / sqlite3.Error.
    """
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupRefused(f"{target} is not empty: a backup goes into a new or empty folder")
    if not db.is_file():
        raise BackupRefused(f"no store at {db} (storage.url): nothing to back up")
    started = time.perf_counter()
    target.mkdir(parents=True, exist_ok=True)
    steps = copy_database(db, target / DB_NAME, pages_per_step)
    files = {DB_NAME: sha256_of(target / DB_NAME)}
    files.update(_copy_blobs(db.parent / BLOBS, target / BLOBS))
    schema_version, counts = _describe(target / DB_NAME)
    manifest = Manifest(created_at=now, schema_version=schema_version, counts=counts, files=files)
    write_atomically(target / MANIFEST, msgspec.json.format(msgspec.json.encode(manifest)))
    size = sum((target / name).stat().st_size for name in files)
    return BackupReport(target, manifest, size, time.perf_counter() - started, steps)


def copy_database(db: Path, copy: Path, pages_per_step: int = PAGES_PER_STEP) -> list[float]:
    """The online backup of `db` into the new file `copy`, from one snapshot; each step's
    duration. The copy is left in rollback-journal mode: one self-contained file."""
    with (
        closing(sqlite3.connect(db, isolation_level=None)) as source,
        closing(sqlite3.connect(copy, isolation_level=None)) as dest,
    ):
        source.execute("PRAGMA busy_timeout = 10000")
        dest.execute("PRAGMA synchronous = OFF")  # flushed step by step, and at the end
        source.execute("BEGIN")
        source.execute("SELECT count(*) FROM sqlite_schema").fetchone()  # the snapshot
        with open(copy, "rb") as flusher:
            timer = _StepTimer(flusher.fileno())
            source.backup(dest, pages=pages_per_step, progress=timer)
        source.execute("COMMIT")
        dest.execute("PRAGMA journal_mode = DELETE")
    _fsync(copy)
    return timer.steps


class _StepTimer:
    """The `progress` callback of `Connection.backup`: it runs after every step, flushes the
    step's pages to disk (one large flush at the end would stall the server's own fsyncs
    behind a gigabyte of writeback) and times the step."""

    def __init__(self, fd: int) -> None:
        self.steps: list[float] = []
        self._fd = fd
        self._last = time.perf_counter()

    def __call__(self, status: int, remaining: int, total: int) -> None:
        os.fsync(self._fd)
        now = time.perf_counter()
        self.steps.append(now - self._last)
        self._last = now


def _copy_blobs(source: Path, target: Path) -> dict[str, str]:
    """Copy every finished blob file (temp files of writes under way are left out)."""
    files: dict[str, str] = {}
    for entry in BlobStore(source).files():
        folder = entry.name[:2]
        try:
            files[f"{BLOBS}/{folder}/{entry.name}"] = copy_hashed(
                Path(entry.path), target / folder / entry.name
            )
        except FileNotFoundError:  # pruned since the listing: no longer referred to
            continue
    return files


def _describe(copy: Path) -> tuple[int, dict[str, int]]:
    with closing(sqlite3.connect(copy)) as conn:
        version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations")
        schema_version: int = version.fetchone()[0]
        counts = {t: conn.execute(_COUNT[t]).fetchone()[0] for t in COUNTED}
    return schema_version, counts


def sha256_of(path: Path) -> str:
    """The sha256 hex of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def copy_hashed(source: Path, target: Path) -> str:
    """Copy `source` to the new file `target` (fsync'd) and return the sha256 of what was
    copied; the folder is created."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with open(source, "rb") as reader, open(target, "xb") as writer:
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            writer.write(chunk)
        writer.flush()
        os.fsync(writer.fileno())
    return digest.hexdigest()


def write_atomically(path: Path, content: bytes) -> None:
    """Write `content` to a temp file beside `path`, fsync, rename, fsync the folder."""
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, path)
    fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make the names in `folder` (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def read_manifest(folder: Path) -> Manifest:
    """The manifest of the backup in `folder`; ValueError if missing or unreadable."""
    try:
        return msgspec.json.decode((folder / MANIFEST).read_bytes(), type=Manifest)
    except OSError as exc:
        raise ValueError(f"{folder / MANIFEST}: cannot read: {exc.strerror}") from exc
    except msgspec.DecodeError as exc:
        raise ValueError(f"{folder / MANIFEST}: not a backup manifest: {exc}") from exc


def latest_backup(folder: Path) -> tuple[datetime, Path] | None:
    """`(created_at, path)` of the newest complete backup among the sub-folders of `folder`
    (`backup.dir`), by the manifests' `created_at`; None if there is none. Unreadable
    manifests are skipped. For `switchboard status`."""
    found: list[tuple[datetime, Path]] = []
    for manifest in folder.glob(f"*/{MANIFEST}"):
        try:
            found.append((read_manifest(manifest.parent).created_at, manifest.parent))
        except ValueError:
            continue
    return max(found, default=None)
