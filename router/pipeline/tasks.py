"""Background tasks of the pipeline's loops."""

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
