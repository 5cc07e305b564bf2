# ruff: noqa: F811  (the `sqlite_store` fixture is imported, then named by the tests)
"""SQLite's writer: writes queued while a commit is under way share the next transaction, each
in a savepoint, so one that raises is undone alone and the others commit."""

from __future__ import annotations

import asyncio
import sqlite3

from router.errors import StoreUnavailable
from router.store.base import EventFilter
from router.store.sqlite import SQLiteStore
from tests.router.test_store import event, item, sqlite_store  # noqa: F401  (fixture)


def probe(at: str):  # type: ignore[no-untyped-def]
    return lambda conn: conn.execute(
        "INSERT INTO store_probe (id, at) VALUES (1, ?) ON CONFLICT (id) DO UPDATE SET at = ?",
        (at, at),
    )


def broken(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE store_probe SET at = 'undone'")  # made, then undone with the raise
    conn.execute("INSERT INTO no_such_table VALUES (1)")


async def test_one_write_that_raises_fails_alone_in_a_shared_transaction(
    sqlite_store: SQLiteStore,
) -> None:
    store = sqlite_store
    await store._transact(probe("before"))
    committed = store.batches_committed
    results = await asyncio.gather(
        store.ingest(item(event("W1"))),
        store._transact(broken),
        store._transact(probe("after")),
        store.ingest(item(event("W2"))),
        return_exceptions=True,
    )
    assert [type(r).__name__ for r in results] == [
        "IngestOutcome",
        "StoreUnavailable",
        "Cursor",
        "IngestOutcome",
    ]
    assert isinstance(results[1], StoreUnavailable) and "no_such_table" in str(results[1])
    # Both ingests landed in one commit with the writes beside them.
    assert store.batches_committed == committed + 1
    stored = await store.list_events(EventFilter())
    assert {e.dedupe_key for e in stored} == {"twilio:W1", "twilio:W2"}
    rows = await store._read("SELECT at FROM store_probe", {})
    assert [tuple(r) for r in rows] == [("after",)]  # the broken write's update was undone


async def test_many_queued_writes_land_in_the_order_queued(sqlite_store: SQLiteStore) -> None:
    count = 200
    await asyncio.gather(*(sqlite_store._transact(probe(f"t{n:03}")) for n in range(count)))
    rows = await sqlite_store._read("SELECT at FROM store_probe", {})
    assert [tuple(r) for r in rows] == [(f"t{count - 1:03}",)]  # in the order queued
