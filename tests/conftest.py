from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.clock import FrozenClock
from tests.postgres import SERVER
from tests.support import LiveServer, live_server


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    """The real app on loopback with every source configured (tests/support.py SECRETS)."""
    with live_server(tmp_path) as running:
        yield running


@pytest.fixture
def postgres_url() -> str:
    """The session's own PostgreSQL database (created on first use, dropped at the end);
    skipped when no server is reachable, failed instead under SWITCHBOARD_REQUIRE_POSTGRES=1."""
    return SERVER.database_url()


def pytest_sessionfinish(session: pytest.Session) -> None:
    SERVER.drop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVER.skipped:
        terminalreporter.write_sep(
            "=",
            f"PostgreSQL half skipped ({SERVER.skipped} tests): {SERVER.unavailable}",
            yellow=True,
        )
