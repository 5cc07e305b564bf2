"""Retention benchmark (`storage.retention_days`): how long each `Store.prune` batch holds the
store, on SQLite and PostgreSQL in one run.

Fills a fresh store with N routed events (one delivered reply each, its routing run, a 600-byte
raw body, 2,000 conversations) through the store's own verbs, then prunes them all in batches
of `housekeeping.PRUNE_BATCH` and prints the batch times: on SQLite a batch holds the one
writer, so an ingest commit may wait that long. PostgreSQL runs twice: right after the load
(no statistics yet, as before autovacuum has looked: the plans are made blind) and after
`ANALYZE`. Needs a PostgreSQL on `--admin-url` that may create databases (dropped at the end);
`--no-postgres` skips it.

Run: .venv/bin/python bench/prune.py                 (100,000 events)
     .venv/bin/python bench/prune.py --events 20000  (quicker)
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pg_admin

from router.events import Contact, Event, EventStatus
from router.ids import new_ulid
from router.store.base import IngestItem, Store
from router.store.housekeeping import PRUNE_BATCH
from router.store.postgres import PostgresStore
from router.store.records import EventResult, LaneCommit, OutboxRow, OutboxStatus, RunRecord
from router.store.sqlite import SQLiteStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def events(count: int) -> list[Event]:
    made = []
    for n in range(count):
        at = T0 + timedelta(seconds=n)
        made.append(
            Event(
                id=new_ulid(at),
                source="twilio",
                type="message.received",
                provider_type="message.received",
                dedupe_key=f"twilio:SM{n}",
                contact=Contact(address="+15551230001"),
                conversation_key=f"sms:+1555{n % 2000:07d}:+15559870000",
                text="hello " * 20,
                received_at=at,
                correlation_id=f"c{n}",
            )
        )
    return made


async def fill(store: Store, made: list[Event]) -> None:
    """Ingest and route every event, each with one delivered reply."""
    raw = b"x" * 600
    for start in range(0, len(made), 2000):
        await asyncio.gather(
            *(
                store.ingest(IngestItem(event=e, raw_body=raw, content_type="text/plain"))
                for e in made[start : start + 2000]
            )
        )
    while lanes := await store.claim("bench", T0, 30, 200, 50):
        commits = []
        for lane in lanes:
            results = [
                EventResult(
                    event_id=e.id,
                    status=EventStatus.PROCESSED,
                    run=RunRecord(event_id=e.id, at=T0, rules_version="v", matched=["r"]),
                )
                for e in lane.events
            ]
            rows = [
                OutboxRow(
                    id=f"{e.id}:reply",
                    event_id=e.id,
                    conversation_key=e.conversation_key,
                    channel="sms",
                    to="+15551230001",
                    category="conversational",
                    status=OutboxStatus.DELIVERED,
                    kind="reply",
                    payload={"text": "hi"},
                    created_at=T0,
                    contact_key="+15551230001",
                )
                for e in lane.events
            ]
            commits.append(LaneCommit(lease=lane.lease, results=results, outbox=rows))
        await store.commit(commits, T0)


async def prune_all(store: Store, count: int) -> list[float]:
    before = T0 + timedelta(seconds=count)
    took = []
    while True:
        started = time.perf_counter()
        pruned = await store.prune(before, PRUNE_BATCH)
        took.append(time.perf_counter() - started)
        if pruned.events < PRUNE_BATCH:
            return took


def report(label: str, took: list[float], count: int) -> None:
    ordered = sorted(took)
    p50, p99 = ordered[len(ordered) // 2], ordered[min(len(ordered) - 1, len(ordered) * 99 // 100)]
    print(
        f"  {label:<42} {len(took):>4} batches  p50 {p50 * 1000:6.1f} ms  p99 {p99 * 1000:6.1f} ms"
        f"  max {ordered[-1] * 1000:6.1f} ms  total {sum(took):5.1f} s"
        f"  ({count / sum(took):,.0f} events/s)"
    )


async def one(label: str, store: Store, count: int, analyze_url: str | None = None) -> None:
    await store.open()
    try:
        started = time.perf_counter()
        await fill(store, events(count))
        filled = time.perf_counter() - started
        if analyze_url is not None:
            await asyncio.to_thread(pg_admin.analyze, analyze_url)
        took = await prune_all(store, count)
        report(f"{label} (filled in {filled:.0f} s)", took, count)
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    print(f"Retention: prune {args.events:,} routed events in batches of {PRUNE_BATCH}")
    with tempfile.TemporaryDirectory(prefix="switchboard-prune-") as tmp:
        asyncio.run(one("sqlite", SQLiteStore(Path(tmp) / "switchboard.db"), args.events))
    if args.no_postgres:
        return
    dbs = pg_admin.Databases(args.admin_url)
    try:
        for label, analyze in (("postgres, no statistics", False), ("postgres, analyzed", True)):
            url = dbs.create(label.split(",")[0] + ("_analyzed" if analyze else ""))
            asyncio.run(one(label, PostgresStore(url), args.events, url if analyze else None))
    finally:
        dbs.drop_all()


if __name__ == "__main__":
    main()
