from __future__ import annotations

import os
import sys
import threading
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    SERVER.drop()
    session.config.stash[_EXIT_STATUS] = exitstatus


_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """A test cut short (a timeout) leaves what it opened open: an aiosqlite connection's
    thread is not a daemon, so the interpreter would wait for it for ever after the summary
    (a CI run hung so). Name such threads, then end with the run's own status."""
    left = [
        t.name for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon
    ]
    if not left:
        return
    sys.stderr.write(f"threads left running by the tests, not waited for: {', '.join(left)}\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(config.stash.get(_EXIT_STATUS, 1))


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SERVER.skipped:
        terminalreporter.write_sep(
            "=",
            f"PostgreSQL half skipped ({SERVER.skipped} tests): {SERVER.unavailable}",
            yellow=True,
        )
