"""asyncio helpers every layer's loops share (the pipeline, the stores, the rules watcher)."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` (if any) and wait until it has stopped.

    The task's own CancelledError ends here; a cancel of the caller (a timeout around the
    stop, a shutdown) goes on up instead of being swallowed with it."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if current is not None and current.cancelling():
            raise


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait until `event` is set, at most `seconds`; True if it was set.

    Not `asyncio.wait_for`: on Python 3.11 it returns instead of raising when a cancel arrives
    just as the event is set, so a loop waiting that way swallows its stop and runs on."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
