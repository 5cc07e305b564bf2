# ruff: noqa: F811  (the `backend` fixture is imported, then named by the tests)
"""`Store.watch`: a commit made through another store on the same storage (another process's
ingest, a CLI command) wakes whoever watches, so `switchboard worker` beside `serve` needs no
fast poll. A store's own commits do not wake its watcher (its process already knows)."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from tests.router.test_store import backend, event, item, open_backend  # noqa: F401

DEADLINE = 10.0


async def test_a_commit_elsewhere_wakes_the_watcher(backend: str, tmp_path: Path) -> None:
    # SQLite reads the data version only while its WAL file changes, and every few seconds
    # anyway: with that safety net pushed out of reach, only the WAL's change can wake it.
    options = {"watch_read_every": 3600.0} if backend == "sqlite" else {}
    async with (
        open_backend(backend, tmp_path, **options) as watched,
        open_backend(backend, tmp_path) as other,
    ):
        woken = asyncio.Event()
        watch = asyncio.create_task(watched.watch(woken.set))
        try:
            await asyncio.sleep(0.2)  # the watcher has started (it may wake once as it starts:
            woken.clear()  # PostgreSQL's does, for whatever was committed before it listened)
            await asyncio.sleep(0.2)
            assert not woken.is_set()  # nothing committed: no wake-up
            # Its own commits wake nobody: they wake its process's worker directly.
            await watched.ingest(item(event("own-1")))
            await asyncio.sleep(0.2)
            assert not woken.is_set()
            await other.ingest(item(event("watched-1")))
            await asyncio.wait_for(woken.wait(), DEADLINE)
            woken.clear()
            await asyncio.sleep(0.2)
            assert not woken.is_set()  # one commit, not a wake-up at every poll
            await other.ingest(item(event("watched-2")))
            await asyncio.wait_for(woken.wait(), DEADLINE)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch
