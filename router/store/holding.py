"""Who holds a SQLite store: an advisory lock on `<db>.lock` beside the database.

Every process that opens the store (`serve`, `worker`, any command) holds a shared `flock`
on the file for as long as it has the store open; `switchboard restore` takes it exclusively,
so it refuses while anything holds the store, and nothing opens the store while a restore
puts a copy in place. The kernel drops the lock when its process ends, `kill -9` included,
so a crashed server never leaves a stale marker behind (a pid file would).

Why not SQLite's own locks: in WAL mode an idle server holds no lock on the database file a
second process could test for, and the locks it does hold on the `-shm` file are internals.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class StoreHeld(Exception):
    """Another process holds the store (or a restore is putting a copy in place)."""


def lock_path(db: Path) -> Path:
    """The lock file of the database at `db`."""
    return db.with_name(db.name + ".lock")


def flock_now(path: Path, *, exclusive: bool) -> int | None:
    """A descriptor of `path` (made if missing) holding a `flock` taken without waiting, or
    None if another process holds one in the way. Closing the descriptor drops the lock, and
    so does the process ending, `kill -9` included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


class Hold:
    """A held lock on `<db>.lock`; `release()` (or the process ending) drops it."""

    def __init__(self, db: Path, *, exclusive: bool) -> None:
        """Take the lock now, without waiting; StoreHeld if another process is in the way."""
        self._fd = flock_now(lock_path(db), exclusive=exclusive)
        if self._fd is None:
            raise StoreHeld(_held_message(db, exclusive))

    def release(self) -> None:
        """Drop the lock (closing the descriptor drops it); a second call does nothing."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _held_message(db: Path, exclusive: bool) -> str:
    if exclusive:
        return (
            f"{db} is in use: a server (`switchboard serve` or `worker`) or another command"
            " has it open; stop it first"
        )
    return f"{db} is being restored (`switchboard restore`); start again when it is done"
