# ruff: noqa: F811  (fixtures are imported, then named by the tests)
"""A reply left in doubt by crashes is sent exactly once (SPEC §8, §11; issue 17).

Each dispatcher here is one life of a process: it claims the row and sends through the real
TwilioSender to the fake Twilio API on loopback, and is then killed where the scenario says,
as `kill -9` would leave it (its attempt abandoned where it waits, nothing recorded), or its
outcome's commit fails for real (the database is locked by another connection). The next life
starts a lease and a minute later on the injected clock, on the same store, both backends.
What is asserted is what a customer sees, the Messages the fake holds, and what `outbox list`
shows: one Message, and the row `sent` naming it.

Twilio keeps nothing of ours on a Message, so the look before a resend searches by number,
text and time: it must search from the first attempt that may have sent the message. Each
claim used to restart that window, so a second crash made the third life look too late and
send again.

A dispatcher whose lease renewals fail (the outbox locked by someone else) does not start a
send in the last third of its lease: another dispatcher may be taking the row as in doubt.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from router.clock import FrozenClock, SystemClock
from router.pipeline.dispatch import Dispatcher
from router.store.base import Store
from router.store.records import OutboxFilter, OutboxRow, OutboxStatus
from tests.fakes._http import accept_then_drop, timeout
from tests.fakes.twilio_api import FakeTwilio, server_error
from tests.pipeline.dispatching import dispatcher_on, twilio_channel
from tests.postgres import SERVER
from tests.router.test_store import backend, open_backend  # noqa: F401
from tests.router.test_store_dispatch import routed
from tests.router.test_store_routing import message, row

OURS = "+15559870000"
CUSTOMER = "+15551230001"
TEXT = "Your table for two is booked for 8 pm"
LEASE = 30.0
#: Between two lives: the lease runs out, and a restart takes a while.
RESTART = timedelta(seconds=LEASE + 60)
#: Held answers: far longer than any scenario waits (the held attempt is killed first).
HELD = 30.0


def life(
    store: Store, fake: FakeTwilio, clock: FrozenClock, tmp_path: Path
) -> AbstractAsyncContextManager[Dispatcher]:
    """One life of a dispatcher process: its senders open, its rounds run by the test."""
    dispatch = f"""
[dispatch]
lease_seconds = {LEASE}
timeout_seconds = 5
backoff_base_seconds = 1
backoff_cap_seconds = 2
"""
    return dispatcher_on(store, clock, tmp_path, twilio_channel(fake, OURS) + dispatch, "life")


async def kill(dispatcher: Dispatcher) -> None:
    """What `kill -9` leaves of a dispatcher whose attempts wait on the provider: their leases
    in the store and no outcome. Its attempts are cancelled where they wait."""
    attempts = list(dispatcher._inflight.values())
    assert attempts, "nothing in flight to kill"
    for attempt in attempts:
        attempt.cancel()
    await asyncio.gather(*attempts, return_exceptions=True)


async def until(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)


async def attempts_end(dispatcher: Dispatcher) -> None:
    await until(lambda: dispatcher.in_flight == 0, "the attempts to end")


async def reply_waiting(store: Store, clock: FrozenClock) -> OutboxRow:
    """One conversational SMS to the customer, committed by routing, due now."""
    event = message(1, f"sms:{CUSTOMER}:{OURS}")
    reply = row(event, "reply", to=CUSTOMER, payload={"text": TEXT}, created_at=clock.now())
    await routed(store, event, reply)
    return reply


async def the_row(store: Store, reply: OutboxRow) -> OutboxRow:
    [found] = [r for r in await store.list_outbox(OutboxFilter()) if r.id == reply.id]
    return found


@dataclass
class Scene:
    """One reply waiting in a store, the fake Twilio, and the clock the lives share."""

    store: Store
    fake: FakeTwilio
    clock: FrozenClock
    tmp_path: Path
    reply: OutboxRow

    def life(self) -> AbstractAsyncContextManager[Dispatcher]:
        return life(self.store, self.fake, self.clock, self.tmp_path)

    async def row(self) -> OutboxRow:
        return await the_row(self.store, self.reply)

    async def killed_mid_send(self) -> None:
        """A life that sends: Twilio creates the Message, and the process dies before the
        answer comes; the next life starts a lease and a minute later."""
        self.fake.fail_next(1, accept_then_drop(HELD), op="create")
        async with self.life() as first:
            await first.run_once()
            await until(lambda: self.fake.accepted_count() == 1, "the Message to be created")
            await kill(first)
        self.clock.advance(RESTART)

    async def last_life_settles(self) -> None:
        """A life that runs to the end: exactly one Message, and the row `sent` naming it."""
        async with self.life() as last:
            await last.run_once()
            await attempts_end(last)
        [sent] = self.fake.snapshot()
        assert (sent.to, sent.body) == (CUSTOMER, TEXT)
        settled = await self.row()
        assert (settled.status, settled.provider_message_id) == (OutboxStatus.SENT, sent.sid)


@asynccontextmanager
async def scene(backend: str, tmp_path: Path, **store_options: Any) -> AsyncIterator[Scene]:
    """The injected clock starts at the wall clock's second: the fake dates its Messages by
    the wall clock, and the look compares the two."""
    clock = FrozenClock(datetime.now(UTC).replace(microsecond=0))
    with FakeTwilio() as fake:
        async with open_backend(backend, tmp_path, **store_options) as store:
            reply = await reply_waiting(store, clock)
            yield Scene(store, fake, clock, tmp_path, reply)


async def test_killed_right_after_the_claim_the_next_life_looks_then_sends_once(
    backend: str, tmp_path: Path
) -> None:
    async with scene(backend, tmp_path) as sc:
        sc.fake.fail_next(1, timeout(HELD), op="create")  # held before Twilio acts on it
        async with sc.life() as first:
            await first.run_once()
            await until(lambda: sc.fake.calls["create"] == 1, "the send to go out")
            await kill(first)
        assert sc.fake.accepted_count() == 0
        sc.clock.advance(RESTART)
        await sc.last_life_settles()
        assert sc.fake.calls["list"] == 1  # it looked before sending


async def test_killed_mid_send_the_next_life_finds_the_message_and_sends_nothing(
    backend: str, tmp_path: Path
) -> None:
    async with scene(backend, tmp_path) as sc:
        await sc.killed_mid_send()
        await sc.last_life_settles()
        assert sc.fake.calls["create"] == 1


async def test_killed_mid_send_then_mid_look_the_third_life_still_finds_it(
    backend: str, tmp_path: Path
) -> None:
    async with scene(backend, tmp_path) as sc:
        await sc.killed_mid_send()
        sc.fake.fail_next(1, timeout(HELD), op="list")  # the look's answer never comes
        async with sc.life() as second:
            await second.run_once()
            await until(lambda: sc.fake.calls["list"] == 1, "the look")
            await kill(second)
        sc.clock.advance(RESTART)
        await sc.last_life_settles()
        assert sc.fake.calls["create"] == 1


async def test_a_look_that_found_it_but_whose_outcome_was_never_stored_is_found_again(
    backend: str, tmp_path: Path
) -> None:
    """The second life finds the Message, and the commit of that outcome fails (the database
    is locked by someone else meanwhile): the third life must search from the first send."""
    options: dict[str, Any] = {"busy_timeout_ms": 200} if backend == "sqlite" else {}
    async with scene(backend, tmp_path, **options) as sc:
        await sc.killed_mid_send()
        sc.fake.slow = 0.5  # the look's answer takes a while: time to lock the table first
        async with sc.life() as second:
            await second.run_once()  # the claim is committed; the look is under way
            async with outcome_commit_fails(backend, tmp_path):
                await attempts_end(second)
            assert sc.fake.calls["list"] == 1 and "sent" not in second.finished
        sc.fake.slow = 0.0
        assert (await sc.row()).status == OutboxStatus.SENDING
        sc.clock.advance(RESTART)
        await sc.last_life_settles()
        assert sc.fake.calls["create"] == 1


async def test_a_failed_look_keeps_the_row_in_doubt_and_the_next_look_finds_it(
    backend: str, tmp_path: Path
) -> None:
    async with scene(backend, tmp_path) as sc:
        await sc.killed_mid_send()
        sc.fake.fail_next(1, server_error(503), op="list")
        async with sc.life() as second:
            await second.run_once()
            await attempts_end(second)
            assert second.finished == {"retry": 1}
        waiting = await sc.row()
        assert waiting.status == OutboxStatus.PENDING and "looking" in (waiting.last_error or "")
        sc.clock.advance(RESTART)  # past its retry
        await sc.last_life_settles()
        assert sc.fake.calls["list"] == 2 and sc.fake.calls["create"] == 1


@asynccontextmanager
async def outcome_commit_fails(backend: str, tmp_path: Path) -> AsyncIterator[None]:
    """While inside, a commit of the outbox fails: another connection holds the lock it needs.
    SQLite: the write lock, past the store's busy timeout. PostgreSQL: a SHARE lock on the
    table, and the backend that waits for it is terminated (a commit that fails, not one that
    goes through once the lock is released)."""
    if backend == "sqlite":
        locker = sqlite3.connect(tmp_path / "var" / "switchboard.db", isolation_level=None)
        try:
            locker.execute("BEGIN IMMEDIATE")
            yield
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        return
    assert SERVER.url is not None
    locker_pg = await asyncpg.connect(SERVER.url)
    stop = asyncio.Event()

    async def terminate_waiters() -> None:
        watcher = await asyncpg.connect(SERVER.url)
        try:
            while not stop.is_set():
                await watcher.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks"
                    " WHERE NOT granted AND relation = 'outbox'::regclass"
                )
                await asyncio.sleep(0.01)
        finally:
            await watcher.close()

    try:
        async with locker_pg.transaction():
            await locker_pg.execute("LOCK TABLE outbox IN SHARE MODE")
            terminating = asyncio.create_task(terminate_waiters())
            try:
                yield
            finally:
                stop.set()
                await terminating
    finally:
        await locker_pg.close()


async def test_a_reply_whose_lease_renewals_fail_is_not_sent_once_its_lease_is_nearly_over(
    backend: str, tmp_path: Path
) -> None:
    """Renewals that really fail: one place, taken by a send whose answer never comes, and a
    second reply waiting for it; meanwhile the outbox is locked by someone else, so every
    renewal of the leases fails (`leases not renewed`). When the place frees, the second
    reply's lease is nearly over: another dispatcher may take it as in doubt at any moment,
    look, find nothing and send it. So it is not sent; the next life sends each reply once.
    The real clock: the dispatcher's own loop and renewals run on it."""
    options: dict[str, Any] = {"busy_timeout_ms": 100} if backend == "sqlite" else {}
    clock = SystemClock()
    hanging, waiting = CUSTOMER, "+15551230002"
    dispatch = """
[dispatch]
concurrency = 1
lease_seconds = 0.6
timeout_seconds = 1
backoff_base_seconds = 0.1
backoff_cap_seconds = 0.2
"""
    with FakeTwilio() as fake:
        config = twilio_channel(fake, OURS) + dispatch
        async with open_backend(backend, tmp_path, **options) as store:
            for n, to in enumerate((hanging, waiting), start=1):
                event = message(n, f"sms:{to}:{OURS}", at_ms=n)
                reply = row(event, "reply", to=to, payload={"text": TEXT}, created_at=clock.now())
                await routed(store, event, reply)
            fake.fail_for(hanging, timeout(HELD), op="create")  # no answer in time
            async with dispatcher_on(store, clock, tmp_path, config, "renewals") as one:
                await one.start()
                try:
                    await until(lambda: fake.calls["create"] == 1, "the first send to hang")
                    assert one.in_flight == 2  # the second reply waits for the place
                    async with outcome_commit_fails(backend, tmp_path):
                        await attempts_end(one)
                        await one.stop()  # before the lock goes: it would send them now
                finally:
                    await one.stop()
            assert fake.calls["create"] == 1  # the waiting reply was never sent
            fake.clear_faults()

            async def all_sent() -> bool:
                rows = await store.list_outbox(OutboxFilter())
                return all(r.status is OutboxStatus.SENT for r in rows)

            async with dispatcher_on(store, clock, tmp_path, config, "next") as last:
                await last.start()  # once their leases (or retries) are over: looked for, sent
                try:
                    deadline = asyncio.get_running_loop().time() + 10
                    while not await all_sent():
                        assert asyncio.get_running_loop().time() < deadline, "not sent"
                        await asyncio.sleep(0.02)
                finally:
                    await last.stop()
            assert sorted(m.to for m in fake.snapshot()) == [hanging, waiting]  # once each
