from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.clock import FrozenClock
from tests.support import LiveServer, live_server


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real app on loopback with every source configured (tests/support.py SECRETS)."""
    with live_server(tmp_path) as running:
        yield running
