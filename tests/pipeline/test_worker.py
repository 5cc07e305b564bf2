"""The worker on a real SQLite file with a frozen clock: poison events are retried a bounded
number of times, then `failed` with their error, and never hold up other work."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.clock import FrozenClock
from router.config import parse_settings
from router.errors import StoreCorrupt
from router.events import Contact, Event, EventStatus
from router.ids import new_ulid
from router.metrics import Metrics
from router.pipeline.worker import Worker
from router.rules import load_ruleset
from router.store.base import EventFilter, IngestItem
from router.store.records import OutboxFilter
from router.store.sqlite import SQLiteStore

T0 = datetime(2026, 11, 27, 15, 0, tzinfo=UTC)
RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms}
    then:
      - reply: {text: "got it"}
"""


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "switchboard.db")
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(T0)


def make_worker(store: SQLiteStore, clock: FrozenClock, tmp_path: Path) -> tuple[Worker, Metrics]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "echo.yaml").write_text(RULES)
    ruleset = load_ruleset(rules)
    settings = parse_settings("[worker]\nmax_attempts = 2\n")
    metrics = Metrics()
    return Worker(store, settings, lambda: ruleset, clock, metrics), metrics


def sms(n: int, customer: str) -> Event:
    return Event(
        id=new_ulid(T0),
        source="twilio",
        type="message.received",
        provider_type="message.received",
        dedupe_key=f"twilio:SM{n}",
        channel="sms",  # type: ignore[arg-type]
        contact=Contact(address=customer),
        conversation_key=f"sms:{customer}:+15559870000",
        text=f"message {n}",
        data={"to": "+15559870000"},
        received_at=T0,
        correlation_id=f"c{n}",
    )


async def put(store: SQLiteStore, *events: Event) -> None:
    for event in events:
        await store.ingest(IngestItem(event=event, raw_body=b"", content_type="text/plain"))


def corrupt(db: Path, sql: str, *params: str) -> None:
    """What a bad disk or an older release could leave behind."""
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)


async def status(store: SQLiteStore, event: Event) -> EventStatus:
    found = await store.get_event(event.id)
    assert found is not None
    return found.status


async def test_an_unreadable_event_fails_at_once_and_its_conversation_goes_on(
    store: SQLiteStore, clock: FrozenClock, tmp_path: Path
) -> None:
    worker, metrics = make_worker(store, clock, tmp_path)
    bad, good = sms(1, "+15551230001"), sms(2, "+15551230001")
    await put(store, bad, good)
    corrupt(store.path, "UPDATE events SET body = ? WHERE id = ?", '{"id": 1', bad.id)
    assert await worker.run_once()
    with closing(sqlite3.connect(store.path)) as conn:  # its body cannot be decoded to show
        [(stored,)] = conn.execute("SELECT status FROM events WHERE id = ?", (bad.id,))
    assert stored == "failed"
    assert await status(store, good) is EventStatus.PROCESSED
    [run] = await store.runs(bad.id)
    assert run.error is not None and "cannot be read" in run.error
    # Reading it says so, rather than crash a listing or a command.
    assert [e.id for e in await store.list_events(EventFilter())] == [good.id]
    with pytest.raises(StoreCorrupt, match=f"event {bad.id} cannot be read"):
        await store.get_event(bad.id)
    rows = await store.list_outbox(OutboxFilter())
    assert [row.event_id for row in rows] == [good.id]
    assert 'switchboard_events_routed_total{outcome="processed"} 1.0' in metrics.render().decode()


async def test_a_raising_event_is_retried_then_failed_without_holding_up_others(
    store: SQLiteStore, clock: FrozenClock, tmp_path: Path
) -> None:
    worker, metrics = make_worker(store, clock, tmp_path)
    first = sms(1, "+15551230001")
    await put(store, first)
    assert await worker.run_once()  # makes the conversation
    corrupt(store.path, "UPDATE conversations SET body = ?", "not json")
    poison, other = sms(2, "+15551230001"), sms(3, "+15557770000")
    await put(store, poison, other)

    assert await worker.run_once()
    assert await status(store, poison) is EventStatus.PROCESSING  # one try, waiting to retry
    assert await status(store, other) is EventStatus.PROCESSED  # another conversation goes on
    assert not await worker.run_once()  # the retry waits for its backoff
    clock.advance(timedelta(seconds=3))
    assert await worker.run_once()
    assert await status(store, poison) is EventStatus.FAILED
    [run] = await store.runs(poison.id)
    assert run.error is not None and run.error.startswith("failed after 2 tries")
    rendered = metrics.render().decode()
    assert 'switchboard_events_routed_total{outcome="failed"} 1.0' in rendered
    assert 'switchboard_events_routed_total{outcome="retry"} 1.0' in rendered


async def test_worker_routes_everything_woken_or_not(
    store: SQLiteStore, clock: FrozenClock, tmp_path: Path
) -> None:
    worker, _ = make_worker(store, clock, tmp_path)
    events = [sms(n, f"+1555123{n % 7:04d}") for n in range(100)]
    await put(store, *events)
    while await worker.run_once():
        pass
    assert worker.routed == 100
    rows = await store.list_outbox(OutboxFilter(limit=1000))
    assert sorted(row.id for row in rows) == sorted(f"{e.id}:echo:0" for e in events)
