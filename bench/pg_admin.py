"""What bench/postgres.py needs of the PostgreSQL server itself: fresh databases it drops, the
server's version and settings, and the CPU its processes use (read from /proc: the database runs
on this box, beside the routers it is measured with)."""

from __future__ import annotations

import asyncio
import os
import secrets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import proc_stats

#: The settings that decide what a commit costs, printed in the header of every run.
SETTINGS = (
    "synchronous_commit",
    "fsync",
    "wal_sync_method",
    "shared_buffers",
    "max_connections",
    "autovacuum",
    "jit",
)


def _run(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Every row of one statement on `url`, from code outside an event loop."""
    import asyncpg

    async def once() -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(url)
        try:
            return [tuple(record) for record in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(once())


class Databases:
    """Databases `switchboard_bench_<random>_<name>` on the server of `admin_url` (a database
    that exists, such as `postgres`), created one per store and dropped by `drop_all`."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.prefix = f"switchboard_bench_{secrets.token_hex(4)}"
        self.names: list[str] = []

    def create(self, name: str) -> str:
        """A fresh, empty database; its URL (the store migrates it when it opens)."""
        database = f"{self.prefix}_{name}"
        _run(self.admin_url, f'CREATE DATABASE "{database}"')
        self.names.append(database)
        return urlsplit(self.admin_url)._replace(path=f"/{database}").geturl()

    def drop_all(self) -> None:
        for database in self.names:
            _run(self.admin_url, f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        self.names.clear()


def analyze(url: str) -> None:
    """Gather the planner's statistics of the database at `url` now (autovacuum would, later)."""
    _run(url, "ANALYZE")


def describe(admin_url: str) -> str:
    """The server's version, the settings that decide a commit's cost, and its data folder."""
    [(version,)] = _run(admin_url, "SELECT version()")
    values = [f"{name} {_run(admin_url, f'SHOW {name}')[0][0]}" for name in SETTINGS]
    [(data,)] = _run(admin_url, "SHOW data_directory")
    return f"{version.split(' on ')[0]}; {', '.join(values)}; data in {data}"


def data_directory(admin_url: str) -> Path:
    return Path(_run(admin_url, "SHOW data_directory")[0][0])


def same_disk(a: Path, b: Path) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


#: The server's own processes, named in their command line (`postgres: 15/main: walwriter`).
BACKGROUND = ("checkpointer", "background writer", "walwriter", "autovacuum launcher")


def bench_processes(prefix: str) -> dict[int, float]:
    """CPU seconds so far of the PostgreSQL processes that work for the bench: backends (and
    autovacuum workers) of its databases, whose command line names the database, and the
    server's own background processes (shared with any other user of the server)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "comm").read_text().strip() != "postgres":
                continue
            title = (entry / "cmdline").read_bytes().decode(errors="replace").strip(" \0")
            if prefix not in title and not title.endswith(BACKGROUND):
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # exited meanwhile
            continue
        found[int(entry.name)] = (int(fields[11]) + int(fields[12])) / proc_stats.TICKS
    return found


class ServerMeter:
    """What the PostgreSQL server spent for the bench between `start` and `stop`: CPU, and WAL
    written (the whole server's: other users' too). A thread samples the processes every
    `interval_s`, so a backend that exits meanwhile (the servers' pools close when they stop)
    counts up to its last sample; one that starts meanwhile counts from zero."""

    def __init__(self, admin_url: str, prefix: str, interval_s: float = 0.2) -> None:
        self.admin_url, self.prefix, self.interval_s = admin_url, prefix, interval_s
        #: WAL bytes written between the last `start` and `stop`.
        self.wal_bytes = 0
        self._lsn = "0/0"
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._lsn = _run(self.admin_url, "SELECT pg_current_wal_lsn()::text")[0][0]
        self._first = bench_processes(self.prefix)
        self._last = dict(self._first)
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._last.update(bench_processes(self.prefix))

    def stop(self) -> float:
        """CPU seconds since `start`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._last.update(bench_processes(self.prefix))
        sql = "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::bigint"
        self.wal_bytes = _run(self.admin_url, sql, self._lsn)[0][0]
        return sum(cpu - self._first.get(pid, 0.0) for pid, cpu in self._last.items())


def _statement_name(query: str, named: dict[str, str]) -> str:
    """The named query (router/store/sql/postgres/queries.sql) a pg_stat_statements entry
    is: the one sharing its longest prefix (pg_stat_statements keeps the comments and the
    text, but replaces literals with $n); else the entry's own first words."""
    best, longest = "", 0
    for name, sql in named.items():
        pairs = zip(query, sql, strict=False)
        length = next((i for i, (a, b) in enumerate(pairs) if a != b), min(len(query), len(sql)))
        if length > longest:
            best, longest = name, length
    return best if longest >= 40 else " ".join(query.split())[:40]


def statements_available(admin_url: str) -> str | None:
    """None if pg_stat_statements can be read through `admin_url`, else why not."""
    loaded = _run(admin_url, "SHOW shared_preload_libraries")[0][0]
    if "pg_stat_statements" not in loaded:
        return "shared_preload_libraries lacks pg_stat_statements (set it, restart the server)"
    if not _run(admin_url, "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"):
        return "run CREATE EXTENSION pg_stat_statements in the admin database"
    return None


def statements(admin_url: str, database: str) -> list[tuple[str, int, float, int, int]]:
    """What each statement run in `database` cost, most first: (name, calls, total ms, rows,
    WAL bytes). A fresh database starts at zero: no reset needed."""
    from router.store.queries import queries

    named = queries("postgres")
    found = _run(
        admin_url,
        "SELECT s.query, s.calls, s.total_exec_time, s.rows, s.wal_bytes::bigint"
        " FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid"
        " WHERE d.datname = $1 ORDER BY s.total_exec_time DESC",
        database,
    )
    return [(_statement_name(query, named), *rest) for query, *rest in found]
