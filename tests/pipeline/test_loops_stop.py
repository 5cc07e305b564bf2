# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""The pipeline's loops stop when asked, even when the ask comes in the same moment as a wake-up.

On Python 3.11, `asyncio.wait_for` returns the result instead of raising when a cancel arrives
just as the awaited event is set: a loop waiting that way swallowed its stop and ran on, and the
shutdown that awaited it hung for ever (seen in CI). Real store, real loops."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from router.clock import FrozenClock
from router.config import parse_settings
from router.metrics import Metrics
from router.pipeline.dispatch import Dispatcher
from router.pipeline.worker import Worker
from router.store.sqlite import SQLiteStore
from tests.pipeline.test_worker import T0, store  # noqa: F401  (the fixture)


async def stop_as_woken(
    start: Callable[[], Awaitable[None] | None],
    wake: Callable[[], None],
    stop: Callable[[], Awaitable[None]],
) -> None:
    started = start()
    if started is not None:
        await started
    for _ in range(5):  # let the loop reach its wait for a wake-up
        await asyncio.sleep(0.02)
    wake()
    await asyncio.sleep(0)  # the wait is over, the loop not yet resumed: now the stop comes
    async with asyncio.timeout(5):
        await stop()


async def test_the_worker_stops_when_the_stop_comes_as_it_is_woken(store: SQLiteStore) -> None:
    settings = parse_settings("[worker]\npoll_seconds = 30\n")
    worker = Worker(store, settings, lambda: None, FrozenClock(T0), Metrics())
    await stop_as_woken(worker.start, worker.wake, worker.stop)


async def test_the_dispatcher_stops_when_the_stop_comes_as_it_is_woken(
    store: SQLiteStore,
) -> None:
    settings = parse_settings("[dispatch]\npoll_seconds = 30\n")
    dispatcher = Dispatcher(store, settings, {}, FrozenClock(T0), Metrics())
    await stop_as_woken(dispatcher.start, dispatcher.wake, dispatcher.stop)
