# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Conversation timers: a due timer becomes one `timer.<name>` event in the store, once.

apscheduler runs on real time (the FrozenClock only stamps the events), so timers here fall due
a fraction of a second from now, and tests wait on a condition with a deadline.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, cast

import pytest

from router.clock import FrozenClock
from router.errors import StoreUnavailable
from router.events import Event
from router.ids import new_ulid
from router.logs import configure_logging
from router.pipeline.timers import TimerScheduler, timer_event
from router.store.base import EventFilter, IngestItem, IngestOutcome, Store
from router.store.records import LaneCommit, TimerRecord
from tests.router.test_store import backend, store  # noqa: F401  (fixtures)

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


class SeededStore:
    """A real store whose `timers()` answers a given list, and whose ingest can be made to fail
    its first `failures` calls (as a locked or full store does)."""

    def __init__(self, inner: Store, timers: list[TimerRecord], failures: int = 0) -> None:
        self.inner = inner
        self.seeded = timers
        self.failures = failures
        self.ingests = 0

    async def timers(self, due_before: datetime | None = None) -> list[TimerRecord]:
        return [t for t in self.seeded if due_before is None or t.due_at < due_before]

    async def ingest(self, item: IngestItem) -> IngestOutcome:
        self.ingests += 1
        if self.failures > 0:
            self.failures -= 1
            raise StoreUnavailable(f"sqlite: database is locked ({item.event.conversation_key})")
        return await self.inner.ingest(item)


@pytest.fixture
def log_buffer() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


async def reminders(store: Store) -> list[Event]:
    return await store.list_events(EventFilter(type=REMINDER))


async def started(
    store: Any, clock: FrozenClock, wake: Callable[[], None], **options: Any
) -> TimerScheduler:
    scheduler = TimerScheduler(cast(Store, store), clock, wake, **options)
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
    wakes = Wakes()
    scheduler = await started(SeededStore(store, [record]), clock, wakes)
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
    store: Store, clock: FrozenClock
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    seeded = SeededStore(store, [record])
    wakes = Wakes()
    first = await started(seeded, clock, wakes)
    second = await started(seeded, clock, wakes)
    await eventually(lambda: wakes.count == 2)
    await first.stop()
    await second.stop()
    # Restart: the row is still in the store (the worker has not cleared it): it fires again.
    restarted = await started(seeded, clock, wakes)
    try:
        await eventually(lambda: wakes.count == 3)
        assert seeded.ingests == 3
        assert len(await reminders(store)) == 1
    finally:
        await restarted.stop()


async def test_disarmed_timer_never_fires(store: Store, clock: FrozenClock) -> None:
    wakes = Wakes()
    scheduler = await started(SeededStore(store, []), clock, wakes)
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
    scheduler = await started(SeededStore(store, []), clock, wakes)
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
    store: Store, clock: FrozenClock, log_buffer: io.BytesIO
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    seeded = SeededStore(store, [record], failures=2)
    wakes = Wakes()
    scheduler = await started(seeded, clock, wakes, retry_seconds=0.05)
    try:
        await eventually(lambda: wakes.count == 1)
        assert seeded.ingests == 3
        assert len(await reminders(store)) == 1
    finally:
        await scheduler.stop()
    text = log_buffer.getvalue().decode()
    assert PHONE not in text
    lines = [json.loads(line) for line in text.splitlines()]
    failed = [line for line in lines if line["event"] == "timer_ingest_failed"]
    assert len(failed) == 2
    assert all(line["retry"] and line["timer"] == "claim_reminder" for line in failed)
    assert [line["event"] for line in lines].count("timer_fired") == 1


async def test_stop_lets_a_firing_under_way_finish(store: Store, clock: FrozenClock) -> None:
    release = asyncio.Event()

    class SlowStore(SeededStore):
        async def ingest(self, item: IngestItem) -> IngestOutcome:
            self.ingests += 1
            await release.wait()
            return await self.inner.ingest(item)

    record = TimerRecord(conversation_key=KEY, timer="claim_reminder", due_at=soon(-1))
    slow = SlowStore(store, [record])
    wakes = Wakes()
    scheduler = await started(slow, clock, wakes)
    await eventually(lambda: slow.ingests == 1)
    stopping = asyncio.create_task(scheduler.stop())
    await asyncio.sleep(0.02)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 2)
    assert wakes.count == 1
    assert len(await reminders(store)) == 1


async def test_a_timer_beyond_the_horizon_waits_in_the_store_until_it_comes_near(
    store: Store, clock: FrozenClock
) -> None:
    record = TimerRecord(conversation_key=KEY, timer="inactivity", due_at=soon(1.2))
    seeded = SeededStore(store, [record])
    wakes = Wakes()
    scheduler = await started(seeded, clock, wakes, horizon=timedelta(seconds=0.8))
    try:
        assert scheduler.armed() == []  # far off: not held as a job
        scheduler.arm(record)  # re-armed by a message: still far off, still not held
        assert scheduler.armed() == []
        await eventually(lambda: scheduler.armed() == [record])  # a refresh brought it near
        await eventually(lambda: wakes.count == 1)
        assert len(await store.list_events(EventFilter(type="timer.inactivity"))) == 1
    finally:
        await scheduler.stop()
