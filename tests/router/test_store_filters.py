"""Filtered listings (`events list`, `outbox list`, `dlq list`, `events show`'s outbox rows,
timers): only the filters given reach the SQL, so each backend's planner can use the index
that filter has. With `(:x IS NULL OR col = :x)` SQLite scanned the whole outbox to show one
event's rows (39 ms at 300,000 rows, 0.03 ms through `outbox_by_event`)."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from router.store.base import EventFilter
from router.store.queries import filtered, queries
from router.store.shared import id_bounds
from router.store.sqlite import SQLiteStore
from tests.postgres import SERVER, clean_schema, run_blocking
from tests.router.test_store import open_backend

SINCE = datetime(2026, 11, 23, tzinfo=UTC)
UNTIL = datetime(2026, 11, 24, tzinfo=UTC)

#: (query, the filters given besides the limit, what its plan must read: SQLite's index and
#: condition, PostgreSQL's). A time range reads the primary key by the id bounds made from it
#: (`shared.id_bounds`): ids are ULIDs of `received_at`.
SINCE_ID, UNTIL_ID = id_bounds(EventFilter(since=SINCE, until=UNTIL))
INDEXED = [
    ("list_outbox", {"event_id": "E1"}, "outbox_by_event (event_id=?)", "outbox_by_event"),
    ("list_outbox", {"status": "dead"}, "outbox_by_status (status=?)", "outbox_by_status"),
    (
        "list_events",
        {"since": SINCE, "until": UNTIL, "since_id": SINCE_ID, "until_id": UNTIL_ID},
        "sqlite_autoindex_events_1 (id>? AND id<?)",
        "events_pkey",
    ),
    (
        "list_events",
        {"since": SINCE, "since_id": SINCE_ID},
        "sqlite_autoindex_events_1 (id>?)",
        "events_pkey",
    ),
    (
        "list_events",
        {"source": "stripe"},
        "events_by_source_type (source=?)",
        "events_by_source_type",
    ),
    (
        "list_events",
        {"source": "twilio", "type": "message.received", "before": "01M8G7TP22X71V3PDQJSMMW70V"},
        "events_by_source_type (source=? AND type=? AND id<?)",
        "events_by_source_type",
    ),
    ("list_timers", {"due_before": SINCE}, "timers_by_due (due_at<?)", "timers_by_due"),
    # Reconciliation's rows awaiting a receipt: a page of `sent` rows, newest first.
    (
        "sent_rows_page",
        {"before": 2**62},
        "outbox_by_status (status=? AND seq<?)",
        "outbox_by_status",
    ),
]

EVENTS = queries("sqlite")["list_events"]


def test_only_the_filters_given_are_written() -> None:
    sql, names = filtered("sqlite", EVENTS, {"source": "stripe", "type": None, "limit": 5})
    assert names == ("source", "limit")
    assert "source = :source" in sql and ":type" not in sql and "received_at" not in sql
    assert "-- optional" not in sql and "--" not in sql


def test_postgres_numbers_the_placeholders_in_order_and_keeps_casts() -> None:
    sql = (
        "SELECT x::text FROM t\nWHERE TRUE\n"
        "  AND a = :a -- optional\n  AND b = :b -- optional\nLIMIT :n;"
    )
    text, names = filtered("postgres", sql, {"a": None, "b": 2, "n": 5})
    assert names == ("b", "n")
    assert text == "SELECT x::text FROM t\nWHERE TRUE\n  AND b = $1\nLIMIT $2;"


def test_nothing_given_lists_everything() -> None:
    sql, names = filtered("postgres", queries("postgres")["list_timers"], {"due_before": None})
    assert names == ()
    assert "$" not in sql


def test_an_optional_line_must_hold_one_parameter() -> None:
    with pytest.raises(ValueError):
        filtered("sqlite", "SELECT 1 WHERE TRUE\n  AND a BETWEEN :a AND :b -- optional", {"a": 1})


def _args(params: dict[str, Any]) -> dict[str, Any]:
    values = dict(params)
    values["limit"] = 51
    return values


@pytest.mark.parametrize(("name", "given", "index", "pg_index"), INDEXED)
async def test_sqlite_reads_the_filters_index(
    name: str, given: dict[str, Any], index: str, pg_index: str, tmp_path: Path
) -> None:
    store = SQLiteStore(tmp_path / "switchboard.db")
    await store.open()
    await store.close()
    values = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in _args(given).items()}
    sql, names = filtered("sqlite", queries("sqlite")[name], values)
    with sqlite3.connect(tmp_path / "switchboard.db") as conn:
        bound = {n: values[n] for n in names}
        plan = " ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, bound))
    assert f"INDEX {index}" in plan, plan


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        value = value.isoformat()
    return "'" + str(value).replace("'", "''") + "'"


@pytest.mark.postgres
@pytest.mark.parametrize(("name", "given", "index", "pg_index"), INDEXED)
async def test_postgres_generic_plan_reads_the_filters_index(
    name: str, given: dict[str, Any], index: str, pg_index: str, postgres_url: str, tmp_path: Path
) -> None:
    """The plan a pooled connection settles on after five calls: generic, no values known."""
    run_blocking(lambda: clean_schema(postgres_url))
    async with open_backend("postgres", tmp_path):
        pass
    assert SERVER.url is not None
    values = _args(given)
    sql, names = filtered("postgres", queries("postgres")[name], values)
    conn = await asyncpg.connect(SERVER.url)
    try:
        await conn.execute("SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off")
        await conn.execute(f"PREPARE listing AS {sql.rstrip(';')}")
        args = ", ".join(_literal(values[n]) for n in names)
        rows = await conn.fetch(f"EXPLAIN EXECUTE listing({args})")
    finally:
        await conn.close()
    plan = "\n".join(row[0] for row in rows)
    assert f"using {pg_index} " in plan or f"on {pg_index}" in plan, plan
    assert "Index Cond" in plan or "Bitmap Index Scan" in plan, plan
    if "id<?" in index:  # the index holds the listing's order: pages need no sort
        assert "Sort" not in plan, plan


#: Reconciliation's open escalation threads (Slack), on SQLite: the conversations with people
#: through their state's index, then each one's posts through the escalations' index.
THREAD_INDEXES = ("conversations_by_state", "outbox_escalations")


async def test_sqlite_open_threads_read_two_indexes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "switchboard.db")
    await store.open()
    await store.close()
    with sqlite3.connect(tmp_path / "switchboard.db") as conn:
        rows = conn.execute("EXPLAIN QUERY PLAN " + queries("sqlite")["open_threads"])
        plan = " ".join(row[3] for row in rows)
    for index in THREAD_INDEXES:
        assert f"INDEX {index}" in plan, plan
    assert "SCAN c" not in plan and "SCAN o" not in plan, plan


@pytest.mark.postgres
async def test_postgres_open_threads_read_two_indexes(postgres_url: str, tmp_path: Path) -> None:
    run_blocking(lambda: clean_schema(postgres_url))
    async with open_backend("postgres", tmp_path):
        pass
    assert SERVER.url is not None
    conn = await asyncpg.connect(SERVER.url)
    try:
        await conn.execute("SET enable_seqscan = off")
        rows = await conn.fetch("EXPLAIN " + queries("postgres")["open_threads"].rstrip(";"))
    finally:
        await conn.close()
    plan = "\n".join(row[0] for row in rows)
    # The planner may start from either side; neither table is read whole: the outbox only
    # through the partial index of escalation posts, the conversations by an index.
    assert "using outbox_escalations on outbox" in plan, plan
    assert "Seq Scan" not in plan, plan
