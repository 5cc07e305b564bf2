# ruff: noqa: F811  (fixtures are imported, then named by the tests)
"""Two dispatchers on one store (two processes on one database) share what holds sends back:
a destination's outage that one of them saw stops the other too, and a probe that goes through
in one closes the breaker in both. Real stores (both backends), the real SlackSender against
the fake Slack Web API on loopback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

from router.clock import FrozenClock
from router.pipeline.dispatch import Dispatcher
from router.store.base import Store
from tests.fakes.slack_api import FakeSlack, server_error
from tests.pipeline.dispatching import dispatcher_on
from tests.router.test_store import T0, backend, open_backend  # noqa: F401
from tests.router.test_store_dispatch import routed
from tests.router.test_store_routing import message, row

CHANNEL = "C0SUPPORT1"
KEY = f"slack:{CHANNEL}"


def dispatcher(
    store: Store,
    fake: FakeSlack,
    clock: FrozenClock,
    tmp_path: Path,
    name: str,
    dispatch: str = "",
) -> AbstractAsyncContextManager[Dispatcher]:
    config = f"""
[channels.slack]
mode = "live"
api_base = "{fake.base_url}"
bot_token = "{fake.token}"
escalation_channel = "{CHANNEL}"
rate_per_second = 1000

[dispatch]
breaker_failures = 2
breaker_open_seconds = 30
backoff_base_seconds = 60
{dispatch or "timeout_seconds = 3"}
"""
    return dispatcher_on(store, clock, tmp_path, config, name)


async def post_rows(store: Store, first: int, count: int) -> None:
    """`count` Slack posts, each in a conversation of its own (a lane each)."""
    for n in range(first, first + count):
        ev = message(n, f"sms:+1555{n:07}:+15559870000", at_ms=n)
        post = row(
            ev,
            "post",
            channel="slack",
            to=CHANNEL,
            kind="escalation",
            contact_key=None,
            payload={"text": "a customer asks for a person"},
        )
        await routed(store, ev, post)


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def round_of(one: Dispatcher) -> None:
    """One dispatch round, and the attempts it started, to their recorded end."""
    before = sum(one.finished.values())
    started = one.in_flight
    await one.run_once()
    expected = before + one.in_flight - started
    await wait_until(lambda: sum(one.finished.values()) >= expected)


async def test_an_outage_one_dispatcher_saw_holds_the_other_back_until_a_probe_closes_it(
    backend: str, tmp_path: Path
) -> None:
    clock = FrozenClock(T0)
    with FakeSlack(channels=[CHANNEL]) as fake:
        async with (
            open_backend(backend, tmp_path) as store_a,
            open_backend(backend, tmp_path) as store_b,
            dispatcher(store_a, fake, clock, tmp_path, "a") as a,
            dispatcher(store_b, fake, clock, tmp_path, "b") as b,
        ):
            fake.fail_always(server_error(503), op="chat.postMessage")
            await post_rows(store_a, 1, 2)
            await round_of(a)  # both posts fail: A's breaker opens
            assert a.breakers.state(KEY) == "open"
            await a.run_once()  # its next round (woken by the change) tells the store
            posted = fake.calls["chat.postMessage"]

            await post_rows(store_a, 10, 2)  # new posts, due now
            await round_of(b)  # B never failed, but it hears of A's outage
            assert b.breakers.state(KEY) == "open"
            assert fake.calls["chat.postMessage"] == posted  # and sends nothing

            fake.clear_faults()
            clock.advance(timedelta(seconds=31))
            await round_of(b)  # B's probe goes through: closed, for A too
            assert b.breakers.state(KEY) == "closed"
            assert fake.calls["chat.postMessage"] > posted
            await b.run_once()  # its next round tells the store
            clock.advance(timedelta(seconds=2))
            await round_of(a)
            assert a.breakers.state(KEY) == "closed"


#: A 1.5 s lease (renewed every 0.5 s) and a send allowed 4 s (the sender's own timeout).
LONG_SENDS = "lease_seconds = 1.5\ntimeout_seconds = 5"


async def test_a_row_held_longer_than_its_lease_stays_its_dispatchers(
    backend: str, tmp_path: Path
) -> None:
    """A send slower than the lease: the holder renews the lease every third of it, so the
    other dispatcher never takes the row as in doubt (it would look the post up, and could
    post it again)."""
    clock = FrozenClock(T0)
    with FakeSlack(channels=[CHANNEL]) as fake:
        async with (
            open_backend(backend, tmp_path) as store_a,
            open_backend(backend, tmp_path) as store_b,
            dispatcher(store_a, fake, clock, tmp_path, "a", LONG_SENDS) as a,
            dispatcher(store_b, fake, clock, tmp_path, "b", LONG_SENDS) as b,
        ):
            fake.slow = 2.5  # Slack answers after 2.5 s: longer than the lease
            await post_rows(store_a, 1, 1)
            await a.start()  # its loop claims the row and sends; its heartbeat renews
            try:
                await wait_until(lambda: fake.calls["chat.postMessage"] == 1)
                clock.advance(timedelta(seconds=1))  # two thirds of the lease gone
                later = T0 + timedelta(seconds=2)  # past the lease it was claimed with

                async def renewed() -> bool:
                    return await store_b.due_rows(later, 10) == []

                await wait_until_async(renewed)
                assert sum(a.finished.values()) == 0  # renewed while the post is under way
                clock.set(later)
                await b.run_once()  # nothing due for B: the row is still A's
                assert b.in_flight == 0
                await wait_until(lambda: sum(a.finished.values()) == 1)
            finally:
                await a.stop()
            assert a.finished == {"sent": 1}
            assert len(fake.posts) == 1
            assert fake.calls["conversations.history"] == 0  # never looked up as in doubt


async def wait_until_async(condition: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
