"""A throwaway PostgreSQL database for the test session, and a clean schema per test.

The server is `SWITCHBOARD_TEST_POSTGRES_URL` (default: trust auth on 127.0.0.1). The session
creates `switchboard_test_<random>` through the `postgres` database and drops it at the end.
Unreachable, the PostgreSQL half of the suite is skipped (the terminal summary says so), unless
`SWITCHBOARD_REQUIRE_POSTGRES=1` (CI), where it fails instead.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"
T = TypeVar("T")


def run_blocking(work: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `work()` to the end on a loop of its own, in a thread: callable from sync code
    whether or not an event loop runs in this thread (fixtures, hooks)."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, work()).result()


class PostgresServer:
    """The session's database: created on first use, dropped at the end of the session."""

    def __init__(self) -> None:
        self.base_url = os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL", DEFAULT_URL)
        self.required = os.environ.get("SWITCHBOARD_REQUIRE_POSTGRES") == "1"
        self.name = f"switchboard_test_{secrets.token_hex(6)}"
        self.url: str | None = None
        #: Why the PostgreSQL half cannot run, once that is known.
        self.unavailable: str | None = None
        self.skipped = 0

    def database_url(self) -> str:
        """The session database's URL; skips (or fails, when required) if there is none."""
        if self.url is None and self.unavailable is None:
            try:
                run_blocking(lambda: self._admin(f'CREATE DATABASE "{self.name}"'))
                self.url = with_database(self.base_url, self.name)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.unavailable = f"{type(exc).__name__}: {exc}"
        if self.url is None:
            reason = f"PostgreSQL unreachable at {redacted(self.base_url)}: {self.unavailable}"
            if self.required:
                pytest.fail(f"{reason} (SWITCHBOARD_REQUIRE_POSTGRES=1)", pytrace=False)
            self.skipped += 1
            pytest.skip(reason)
        return self.url

    @contextmanager
    def own_database(self) -> Iterator[str]:
        """A database of its own on the same server, for a test that wants one no other test
        touches (several server processes, say); dropped on exit, connections and all. Skips or
        fails as `database_url` does."""
        self.database_url()
        name = f"switchboard_test_{secrets.token_hex(6)}"
        run_blocking(lambda: self._admin(f'CREATE DATABASE "{name}"'))
        try:
            yield with_database(self.base_url, name)
        finally:
            run_blocking(lambda: self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def drop(self) -> None:
        if self.url is not None:
            run_blocking(lambda: self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)'))
            self.url = None

    async def _admin(self, statement: str) -> None:
        """Run one statement in the server's `postgres` database (the name is ours, not input)."""
        conn = await asyncpg.connect(with_database(self.base_url, "postgres"), timeout=5)
        try:
            await conn.execute(statement)
        finally:
            await conn.close()


async def clean_schema(url: str) -> None:
    """Empty every table but the migration record: each test starts from a fresh store."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        tables = await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
            "AND tablename <> 'schema_migrations'"
        )
        if tables:
            names = ", ".join(f'"{row[0]}"' for row in tables)
            await conn.execute(f"TRUNCATE {names} RESTART IDENTITY")
    finally:
        await conn.close()


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


def redacted(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


SERVER = PostgresServer()


async def drop_schema(url: str) -> None:
    """Drop every table, migrations record included: the next store opened migrates afresh."""
    conn = await asyncpg.connect(url, timeout=5)
    try:
        await conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    finally:
        await conn.close()
