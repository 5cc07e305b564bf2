# ruff: noqa: F811  (fixtures are imported, then named by the tests)
"""Conversation timers: a due timer becomes one `timer.<name>` event in the store, once.

apscheduler runs on real time (the FrozenClock only stamps the events), so timers here fall due
a fraction of a second from now, and tests wait on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from router.clock import FrozenClock
from router.events import Event
from router.ids import new_ulid
from router.logs import configure_logging
from router.pipeline.timers import TimerScheduler, timer_event
from router.store.base import EventFilter, IngestItem, IngestOutcome, Store
from router.store.records import LaneCommit, TimerRecord
from router.store.sqlite import SQLiteStore
from tests.router.test_store import backend, open_backend, sqlite_store  # noqa: F401

KEY = "sms:+15551230001:+15559870000"
PHONE = "+15551230001"
REMINDER = "timer.claim_reminder"


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Await until `condition` holds, or fail after `timeout` seconds (the loop keeps running,
    unlike tests.support.wait_for, which blocks it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)


def soon(seconds: float) -> datetime:
    """A real-time moment `seconds` from now (negative: in the past)."""
    return datetime.now(UTC) + timedelta(seconds=seconds)


class Wakes:
    """A `wake` callback that counts its calls."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


class ReadClock(FrozenClock):
    """The frozen clock, counting its reads. A firing reads it to stamp its event and hands
    the event to the store at once, so a read says that a firing is under way."""

    def __init__(self, at: datetime) -> None:
        super().__init__(at)
        self.reads = 0

    def now(self) -> datetime:
        self.reads += 1
        return super().now()


@contextmanager
def write_lock(db: Path) -> Iterator[None]:
    """Another connection holds the database's write lock until exit, as another process
    writing would: the store's writes wait for it, up to the store's busy timeout."""
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        other.execute("BEGIN IMMEDIATE")
        yield


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as opened:
        yield opened


@pytest.fixture
def log_buffer() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


async def reminders(store: Store) -> list[Event]:
    return await store.list_events(EventFilter(type=REMINDER))


def log_lines(buffer: io.BytesIO, event: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in buffer.getvalue().splitlines()]
    return [line for line in lines if line["event"] == event]


async def started(
    store: Store, clock: FrozenClock, wake: Callable[[], None], **options: Any
) -> TimerScheduler:
    scheduler = TimerScheduler(store, clock, wake, **options)
    await scheduler.start()
    return scheduler


def test_timer_event_is_the_record_as_an_event(clock: FrozenClock) -> None:
    due = datetime(2026, 11, 23, 14, 30, tzinfo=UTC)
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=due)

    event = timer_event(record, clock.now())
    again = timer_event(record, clock.now())

    assert event.source == "switchboard"
    assert event.type == event.provider_type == REMINDER
    assert event.conversation_key == KEY
    assert event.data == {"timer": "claim_reminder", "due_at": due.isoformat()}
    assert event.received_at == clock.now()
    assert event.dedupe_key == f"switchboard:timer:{KEY}:claim_reminder:{due.isoformat()}"
    # Every process that sees it due builds the same key, with ids of its own.
    assert again.dedupe_key == event.dedupe_key
    assert len({event.id, event.correlation_id, again.id}) == 3
    assert event.id[:10] == again.id[:10]  # ULID time part: the clock's now
    # A re-armed timer (another due time) is another firing.
    later = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=due + timedelta(1))
    assert timer_event(later, clock.now()).dedupe_key != event.dedupe_key
    # The same moment in another zone is the same firing.
    elsewhere = TimerRecord(
        conversation_key=KEY,
        timer="claim_reminder",
        due_at=due.astimezone(timezone(timedelta(hours=-5))),
    )
    assert timer_event(elsewhere, clock.now()).dedupe_key == event.dedupe_key


async def arm_in_store(store: Store, record: TimerRecord, now: datetime) -> None:
    """Arm a timer as the worker does: in the commit of a lane of its conversation."""
    event = Event(
        id=new_ulid(now),
        source="twilio",
        type="message.received",
        provider_type="message.received",
        dedupe_key=f"twilio:{new_ulid(now)}",
        conversation_key=record.conversation_key,
        received_at=now,
        correlation_id=new_ulid(now),
    )
    item = IngestItem(event=event, raw_body=b"", content_type="application/json")
    assert await store.ingest(item) == IngestOutcome.STORED
    [lane] = await store.claim("test", now, 30, max_lanes=1, max_events=10)
    outcome = await store.commit([LaneCommit(lease=lane.lease, timers_set=[record])], now)
    assert outcome.applied == [True]


async def test_timers_in_the_store_fire_at_start_once_across_restarts(
    store: Store, clock: FrozenClock
) -> None:
    due = soon(-60)
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=due)
    await arm_in_store(store, record, clock.now())
    assert await store.timers() == [record]
    wakes = Wakes()
    first = await started(store, clock, wakes)
    await eventually(lambda: wakes.count == 1)
    await first.stop()
    # The worker has not cleared the row yet: the next start sees it due again.
    restarted = await started(store, clock, wakes)
    try:
        await eventually(lambda: wakes.count == 2)
        events = await reminders(store)
        assert [(e.conversation_key, e.data["due_at"]) for e in events] == [(KEY, due.isoformat())]
    finally:
        await restarted.stop()


async def test_past_due_timer_fires_once_at_start(store: Store, clock: FrozenClock) -> None:
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-3600))
    await arm_in_store(store, record, clock.now())
    wakes = Wakes()
    scheduler = await started(store, clock, wakes)
    try:
        await eventually(lambda: wakes.count == 1)
        events = await reminders(store)
        assert [(e.conversation_key, e.data["due_at"]) for e in events] == [
            (KEY, record.due_at.isoformat())
        ]
        assert events[0].received_at == clock.now()
        assert scheduler.armed() == []
    finally:
        await scheduler.stop()


async def test_a_timer_seen_by_two_schedulers_and_a_restart_is_one_event(
    store: Store, clock: FrozenClock, log_buffer: io.BytesIO
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    await arm_in_store(store, record, clock.now())
    wakes = Wakes()
    first = await started(store, clock, wakes)
    second = await started(store, clock, wakes)
    await eventually(lambda: wakes.count == 2)
    await first.stop()
    await second.stop()
    # Restart: the row is still in the store (the worker has not cleared it): it fires again.
    restarted = await started(store, clock, wakes)
    try:
        await eventually(lambda: wakes.count == 3)
        assert len(await reminders(store)) == 1
    finally:
        await restarted.stop()
    # Three firings, one stored: the others met its dedupe key.
    fired = log_lines(log_buffer, "timer_fired")
    assert sorted(line["outcome"] for line in fired) == ["duplicate", "duplicate", "stored"]


async def test_disarmed_timer_never_fires(store: Store, clock: FrozenClock) -> None:
    wakes = Wakes()
    scheduler = await started(store, clock, wakes)
    try:
        scheduler.arm(TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(0.1)))
        scheduler.disarm(KEY, "claim_reminder")
        scheduler.disarm(KEY, "claim_reminder")  # not armed: nothing happens
        scheduler.disarm("sms:+15550000000:+15559870000", "nothing")
        # A fence: a later timer of another conversation fires; the disarmed one never did.
        other = "sms:+15551230002:+15559870000"
        scheduler.arm(TimerRecord(conversation_key=other, timer="claim_reminder", due_at=soon(0.2)))
        await eventually(lambda: wakes.count == 1)
        assert [e.conversation_key for e in await reminders(store)] == [other]
    finally:
        await scheduler.stop()


async def test_rearming_keeps_only_the_latest_due_time(store: Store, clock: FrozenClock) -> None:
    wakes = Wakes()
    scheduler = await started(store, clock, wakes)
    try:
        scheduler.arm(TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(0.1)))
        latest = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(0.2))
        scheduler.arm(latest)
        assert scheduler.armed() == [latest]
        await eventually(lambda: wakes.count == 1)
        events = await reminders(store)
        assert [e.data["due_at"] for e in events] == [latest.due_at.isoformat()]
        assert scheduler.armed() == []
    finally:
        await scheduler.stop()


async def test_unavailable_store_is_retried_and_logged_masked(
    tmp_path: Path, clock: FrozenClock, log_buffer: io.BytesIO
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    wakes = Wakes()
    async with open_backend("sqlite", tmp_path, busy_timeout_ms=50) as store:
        await arm_in_store(store, record, clock.now())
        scheduler = TimerScheduler(store, clock, wakes, retry_seconds=0.05)
        try:
            with write_lock(store.path):  # each ingest gives up after 50 ms: "database is locked"
                await scheduler.start()
                await eventually(lambda: len(log_lines(log_buffer, "timer_ingest_failed")) >= 2)
            await eventually(lambda: wakes.count == 1)
            assert len(await reminders(store)) == 1
        finally:
            await scheduler.stop()
    assert PHONE not in log_buffer.getvalue().decode()
    # At least the two seen under the lock (a third if the loop was slow to see them).
    failed = log_lines(log_buffer, "timer_ingest_failed")
    assert len(failed) >= 2
    assert all(line["retry"] and line["timer"] == "claim_reminder" for line in failed)
    assert all("database is locked" in line["error"] for line in failed)
    assert len(log_lines(log_buffer, "timer_fired")) == 1


async def test_stop_lets_a_firing_under_way_finish(
    sqlite_store: SQLiteStore, clock: FrozenClock
) -> None:
    store = sqlite_store  # held up by SQLite's write lock
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    await arm_in_store(store, record, clock.now())
    stamps = ReadClock(clock.now())
    wakes = Wakes()
    # The firing's ingest waits for the lock (the store's busy timeout is 5 s).
    with write_lock(store.path):
        scheduler = await started(store, stamps, wakes)
        await eventually(lambda: stamps.reads == 1)  # the firing has handed its event over
        stopping = asyncio.create_task(scheduler.stop())
        done, _ = await asyncio.wait({stopping}, timeout=0.05)
        assert not done  # stop waits for the ingest held up by the lock
    await asyncio.wait_for(stopping, 5)
    assert wakes.count == 1
    assert len(await reminders(store)) == 1


async def test_a_timer_beyond_the_horizon_waits_in_the_store_until_it_comes_near(
    store: Store, clock: FrozenClock
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="inactivity", due_at=soon(1.2))
    await arm_in_store(store, record, clock.now())
    wakes = Wakes()
    scheduler = await started(store, clock, wakes, horizon=timedelta(seconds=0.8))
    try:
        assert scheduler.armed() == []  # far off: not held as a job
        scheduler.arm(record)  # re-armed by a message: still far off, still not held
        assert scheduler.armed() == []
        await eventually(lambda: scheduler.armed() == [record])  # a refresh brought it near
        await eventually(lambda: wakes.count >= 1)
        assert len(await store.list_events(EventFilter(type="timer.inactivity"))) == 1
    finally:
        await scheduler.stop()


async def test_a_timer_another_process_armed_fires_at_a_refresh_and_only_once(
    store: Store, clock: FrozenClock, log_buffer: io.BytesIO
) -> None:
    """Several processes share a store: one that did not arm a timer (or outlived the one
    that did) fires it at its next refresh; later refreshes, while the worker has not cleared
    the row yet, read it again and fire nothing."""
    wakes = Wakes()
    scheduler = await started(store, clock, wakes, refresh=timedelta(seconds=0.1))
    try:
        record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
        await arm_in_store(store, record, clock.now())  # this scheduler is not told
        await eventually(lambda: wakes.count == 1)
        await asyncio.sleep(0.6)  # several refreshes go by
        assert wakes.count == 1
        assert [line["outcome"] for line in log_lines(log_buffer, "timer_fired")] == ["stored"]
    finally:
        await scheduler.stop()
