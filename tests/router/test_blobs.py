"""Blob temp files: a failed write removes its own; those of dead writers are swept."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from router.clock import FrozenClock
from router.config import parse_settings
from router.store.blobs import STALE_TEMP_SECONDS, BlobStore
from router.store.housekeeping import upkeep_once
from router.store.sqlite import SQLiteStore

#: In a child process: file size capped at 64 KiB, SIGXFSZ ignored, so writing past it fails
#: with EFBIG exactly as a full disk fails with ENOSPC (both OSError in the middle of `put`).
_PUT_PAST_THE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from router.store.blobs import BlobStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
try:
    BlobStore(Path(sys.argv[1])).put(b"x" * (256 * 1024))
except OSError as exc:
    print(type(exc).__name__, exc.errno)
"""


def files_under(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def test_a_failed_write_leaves_no_temp_file(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    for _ in range(3):  # every retry on a full disk used to leave another one
        result = subprocess.run(
            [sys.executable, "-c", _PUT_PAST_THE_LIMIT, str(root)],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        assert result.stdout.startswith("OSError"), result.stderr
    assert files_under(root) == []


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def temp_file(root: Path, pid: int, age_s: float = 0.0) -> Path:
    digest = hashlib.sha256(os.urandom(8)).hexdigest()
    path = root / digest[:2] / f".{digest}.{pid}.{os.urandom(8).hex()}.tmp"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"partial")
    stamp = time.time() - age_s
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_temp_files_of_dead_or_stuck_writers_only(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    kept_blob = blobs.path(blobs.put(b"a stored blob"))
    of_dead = temp_file(blobs.root, dead_pid())
    stuck = temp_file(blobs.root, os.getpid(), age_s=STALE_TEMP_SECONDS + 60)
    in_progress = temp_file(blobs.root, os.getpid())
    assert blobs.sweep_temp_files() == 2
    assert not of_dead.exists() and not stuck.exists()
    assert in_progress.exists() and kept_blob.exists()


async def test_housekeeping_sweeps_at_its_first_pass(tmp_path: Path, clock: FrozenClock) -> None:
    store = SQLiteStore(tmp_path / "db.sqlite")
    await store.open()
    try:
        left = temp_file(store.blobs.root, dead_pid())
        await upkeep_once(store, clock, parse_settings(""))
        assert not left.exists()
    finally:
        await store.close()
