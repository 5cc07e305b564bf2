"""Content-addressed files for large payloads: each distinct content is stored once.

A blob is written to a temp file named `.<sha>.<pid>.<random>.tmp` beside its final place,
fsync'd, then renamed. A failed write removes its temp file; one left by a process that died
mid-write is swept at start-up and by housekeeping.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

#: A temp file of a live process is left alone unless it is older than this (a write that
#: takes an hour is stuck, and the process reusing a dead one's pid cannot be told apart).
STALE_TEMP_SECONDS = 3600.0
#: A blob's name, its sha256 hex, and its folder's, the first two characters of it.
_DIGEST = re.compile(r"[0-9a-f]{64}")
_FOLDER = re.compile(r"[0-9a-f]{2}")


class Blobs(Protocol):
    """What the rest of the code asks of a blob store. Every method blocks: call it in a
    thread (`asyncio.to_thread`), never on the event loop."""

    #: Why the last write failed, until one succeeds; /readyz reports it.
    failing: str | None

    def put(self, content: bytes) -> str:
        """Store `content` durably and return its sha256 hex; an existing digest is a no-op."""
        ...

    def get(self, digest: str) -> bytes:
        """The content stored under `digest`; raises FileNotFoundError if absent."""
        ...

    def probe(self) -> None:
        """Raise OSError (or StoreUnavailable) unless a blob can be written now."""
        ...

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Remove leftovers of writes that died; how many were removed."""
        ...


class BlobStore:
    """Files named by the sha256 of their content under `root/ab/abcdef...`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: Why the last write failed, until one succeeds (a full disk): /readyz reports it.
        self.failing: str | None = None

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, content: bytes) -> str:
        """Store `content` durably (fsync file and folder) and return its sha256 hex.

        Blocking: call it in a thread. Writing an existing digest again is a no-op.
        """
        try:
            digest = self._put(content)
        except OSError as exc:
            self.failing = exc.strerror or str(exc)
            raise
        self.failing = None
        return digest

    def files(self) -> Iterator[os.DirEntry[str]]:
        """Every finished blob file, by folder (temp files of writes under way left out; one
        removed meanwhile may still be named). Blocking: reads the folder listings."""
        if not self.root.is_dir():
            return
        for folder in sorted(os.scandir(self.root), key=lambda entry: entry.name):
            if folder.is_dir() and _FOLDER.fullmatch(folder.name):
                for entry in sorted(os.scandir(folder.path), key=lambda entry: entry.name):
                    if entry.name[:2] == folder.name and _DIGEST.fullmatch(entry.name):
                        yield entry

    def total_bytes(self) -> int:
        """The bytes of every blob file. Blocking: one `stat` per blob."""
        return sum(entry.stat().st_size for entry in self.files())

    def probe(self) -> None:
        """Write, fsync and remove a small temp file: OSError unless blobs can be written now.
        Blocking. Clears `failing` when it succeeds."""
        folder = self.root / "00"
        folder.mkdir(parents=True, exist_ok=True)
        temp = folder / f".probe.{os.getpid()}.{secrets.token_hex(8)}.tmp"
        try:
            _write_synced(temp, bytes(4096))
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        self.failing = None

    def _put(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        target = self.path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        # Unique per call: two requests carrying the same attachment write it concurrently.
        temp = target.with_name(f".{digest}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
        try:
            _write_synced(temp, content)
            os.replace(temp, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
        return digest

    def get(self, digest: str) -> bytes:
        """The content stored under `digest`; raises FileNotFoundError if absent."""
        if not _DIGEST.fullmatch(digest):
            raise FileNotFoundError(digest)
        return self.path(digest).read_bytes()

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Remove temp files of writes that cannot finish any more: their process is gone,
        or they are older than STALE_TEMP_SECONDS. Returns how many were removed. Blocking."""
        moment = time.time() if now is None else now
        removed = 0
        for temp in self.root.glob("??/.*.tmp"):
            with contextlib.suppress(OSError):  # another sweep, or the writer, got there first
                age = moment - temp.stat().st_mtime
                if age > STALE_TEMP_SECONDS or not _process_alive(_writer_pid(temp.name)):
                    temp.unlink()
                    removed += 1
        return removed


def _write_synced(path: Path, content: bytes) -> None:
    """Write `content` to a new file at `path` and fsync it."""
    with open(path, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _writer_pid(name: str) -> int:
    """The pid in `.<sha>.<pid>.<random>.tmp`; 0 if the name is not ours."""
    parts = name.split(".")
    return int(parts[2]) if len(parts) == 5 and parts[2].isdigit() else 0


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
