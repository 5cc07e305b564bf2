# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""What `switchboard status` reads of the store, on every backend: the counts of a store with
known contents, the sizes, and the plans of its queries (each count through an index that
holds only what it counts, never a scan of a table that grows)."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import asyncpg
import pytest

from router.ids import new_ulid, ulid_time
from router.store.base import Store
from router.store.queries import filtered, queries
from router.store.records import StatusCounts
from tests.postgres import SERVER, clean_schema, run_blocking
from tests.router.status_scene import NOW, build_scene
from tests.router.test_store import T0, backend, open_backend, store  # noqa: F401  (fixtures)

#: Each status query and the indexes its plan must read, one of each tuple: the same names on
#: both backends. Waiting outbox rows are read through the status index or the partial index
#: of exactly the waiting ones (PostgreSQL's choice): either holds only rows still moving.
PLANS: dict[str, list[tuple[str, ...]]] = {
    "status_events": [("events_unfinished",), ("events_failed",)],
    "status_escalations": [("conversations_by_state",)],
    "status_outbox_due": [("outbox_by_status", "outbox_waiting_by_contact")],
}


async def test_counts_of_a_known_store(store: Store) -> None:
    await build_scene(store)
    counts = await store.status_counts(NOW)
    assert counts.oldest_waiting_id is not None
    assert ulid_time(counts.oldest_waiting_id) == T0
    assert counts == StatusCounts(
        events_waiting=2,
        oldest_waiting_id=counts.oldest_waiting_id,
        events_failed=1,
        escalated=2,
        agent=1,
        outbox_due=3,
        oldest_due=T0,
    )


async def test_an_empty_store_counts_nothing(store: Store) -> None:
    assert await store.status_counts(NOW) == StatusCounts(
        events_waiting=0,
        oldest_waiting_id=None,
        events_failed=0,
        escalated=0,
        agent=0,
        outbox_due=0,
        oldest_due=None,
    )


async def test_rows_fall_due_as_time_passes(store: Store) -> None:
    await build_scene(store)
    # Two hours on, the row for later and the held one are due as well.
    later = await store.status_counts(NOW + timedelta(hours=2))
    assert later.outbox_due == 5


async def test_storage_use_counts_the_blobs(store: Store, backend: str) -> None:
    before = await store.storage_use()
    await asyncio.to_thread(store.blobs.put, os.urandom(5000))  # random: TOAST cannot shrink it
    after = await store.storage_use()
    assert after.database_bytes > 0
    if backend == "sqlite":
        assert after.blobs_bytes == before.blobs_bytes + 5000
        assert after.disk_free_bytes is not None and after.disk_total_bytes is not None
        assert 0 < after.disk_free_bytes <= after.disk_total_bytes
    else:  # the blob table's pages: at least what was put; the server's disk is not visible
        assert after.blobs_bytes >= before.blobs_bytes + 5000
        assert after.disk_free_bytes is None


def test_ulid_time_reads_the_time_an_id_was_made_for() -> None:
    at = T0 + timedelta(milliseconds=1234)
    assert ulid_time(new_ulid(at)) == at


@pytest.mark.parametrize("name", sorted(PLANS))
async def test_sqlite_counts_through_indexes(name: str, tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path):
        pass
    sql, _ = filtered("sqlite", queries("sqlite")[name], {"now": NOW.isoformat()})
    with sqlite3.connect(tmp_path / "var" / "switchboard.db") as conn:
        plan = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, {"now": "x"})]
    reads = [s for s in plan if s.startswith(("SCAN", "SEARCH")) and "CONSTANT ROW" not in s]
    assert reads and all("INDEX" in step for step in reads), plan
    for either in PLANS[name]:
        assert any(f"INDEX {index}" in step for step in reads for index in either), plan


@pytest.mark.postgres
@pytest.mark.parametrize("name", sorted(PLANS))
async def test_postgres_counts_through_indexes(
    name: str, postgres_url: str, tmp_path: Path
) -> None:
    """The generic plan (no values known) of each query, sequential scans discouraged as
    `test_store_filters` does: an index the query cannot use leaves a Seq Scan."""
    run_blocking(lambda: clean_schema(postgres_url))
    async with open_backend("postgres", tmp_path):
        pass
    assert SERVER.url is not None
    sql, names = filtered("postgres", queries("postgres")[name], {"now": NOW})
    conn = await asyncpg.connect(SERVER.url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        await conn.execute(f"PREPARE counting AS {sql.rstrip(';')}")
        args = f"('{NOW.isoformat()}')" if names else ""
        plan = "\n".join(row[0] for row in await conn.fetch(f"EXPLAIN EXECUTE counting{args}"))
    finally:
        await conn.close()
    assert "Seq Scan" not in plan, plan
    for either in PLANS[name]:
        assert any(f" {index} " in plan or plan.endswith(f" {index}") for index in either), plan
