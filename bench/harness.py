"""What the benchmarks that start a real `switchboard serve` share: the server process, the
read-only view of its store, percentiles, CPU pinning and the client's event loop."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, ClassVar, NoReturn

from ingest import wait_healthy

ROOT = Path(__file__).resolve().parents[1]
Popen = subprocess.Popen[bytes]
#: Where py-spy is looked for last (`python3 -m venv /tmp/pyspy && /tmp/pyspy/bin/pip install
#: py-spy`: kept out of the project's venv, it is not a dependency).
PY_SPY_FALLBACK = "/tmp/pyspy/bin/py-spy"


def find_py_spy(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """`args.py_spy`: py-spy on PATH, in the venv, or at PY_SPY_FALLBACK (the parser exits if
    none); its folder is put on PATH for the profilers that call it by name."""
    args.py_spy = (
        shutil.which("py-spy")
        or shutil.which("py-spy", path=str(Path(sys.executable).parent))
        or shutil.which("py-spy", path=str(Path(PY_SPY_FALLBACK).parent))
    )
    if args.py_spy is None:
        parser.error("--profile needs py-spy: pip install py-spy (not a dependency)")
    os.environ["PATH"] = f"{Path(args.py_spy).parent}{os.pathsep}{os.environ['PATH']}"


def _spawn(config: Path, command: str, log: Path, cpu: int | None, verbose: bool) -> Popen:
    """`python -m router --config CONFIG COMMAND` with the code of this checkout, pinned to
    `cpu` if given, output to `log`. A PYTHONPATH given to the bench is kept after the checkout
    (a sitecustomize that instruments the server for an experiment, say)."""
    cmd = [sys.executable, "-m", "router", "--config", str(config), command]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    if verbose:
        print(f"  $ {shlex.join(cmd)}", flush=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": path},
        )


def _give_up(proc: Popen, log: Path, why: str) -> NoReturn:
    """Stop `proc` and exit the bench with `why` and the tail of its log."""
    import proc_stats

    proc_stats.stop(proc)
    tail = log.read_text(errors="replace").splitlines()[-20:]
    sys.exit(f"{why}\n  its log ({log}):\n    " + "\n    ".join(tail))


def start_serve(
    config: Path, log: Path, *, base: str, cpu: int | None, verbose: bool, name: str = "server"
) -> Popen:
    """`serve`, returned once healthy at `base`; otherwise the bench exits with its log."""
    proc = _spawn(config, "serve", log, cpu, verbose)
    try:
        wait_healthy(base, proc, deadline_s=60)
    except RuntimeError as exc:
        _give_up(proc, log, f"{name}: {exc}")
    return proc


def start_worker(config: Path, log: Path, *, cpu: int | None, verbose: bool) -> Popen:
    """`worker` (routing and dispatch without HTTP), returned once its log says it started;
    otherwise the bench exits with its log."""
    proc = _spawn(config, "worker", log, cpu, verbose)
    deadline = time.monotonic() + 60
    while b"worker.started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            _give_up(proc, log, "worker did not start")
        time.sleep(0.05)
    return proc


def connect_ro(db: Path) -> sqlite3.Connection:
    """The server's SQLite file, read-only, as the benchmark watches it."""
    return sqlite3.connect(f"file:{db}?mode=ro", uri=True, isolation_level=None)


#: Where a bench server's store is: a SQLite file, or a PostgreSQL URL (`postgresql://...`).
StoreTarget = Path | str


class StoreReader:
    """Read-only queries on a bench server's store, the same SQL on both backends: the SQLite
    file opened read-only (the stdlib `sqlite3`, blocking for well under a millisecond, as the
    benches always did), or the PostgreSQL database through asyncpg on the caller's loop."""

    #: CPU seconds that the PostgreSQL backends of every reader closed so far spent (read from
    #: /proc when the server is on this box): what the bench's own polling cost the database.
    backend_cpu_s: ClassVar[float] = 0.0

    def __init__(self, target: StoreTarget) -> None:
        self.target = target
        self._sqlite: sqlite3.Connection | None = None
        self._pg: Any = None
        self._backend: Path | None = None

    async def __aenter__(self) -> StoreReader:
        if isinstance(self.target, Path):
            self._sqlite = connect_ro(self.target)
        else:
            import asyncpg

            self._pg = await asyncpg.connect(self.target)
            self._backend = Path(f"/proc/{await self._pg.fetchval('SELECT pg_backend_pid()')}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            StoreReader.backend_cpu_s += _cpu_s(self._backend)
            await self._pg.close()

    async def rows(self, sql: str) -> list[tuple[Any, ...]]:
        """Every row of `sql`, as tuples."""
        if self._sqlite is not None:
            return self._sqlite.execute(sql).fetchall()
        return [tuple(record) for record in await self._pg.fetch(sql)]


def _cpu_s(proc: Path | None) -> float:
    """User + system CPU seconds of the process `proc` (a /proc entry); 0 if unreadable."""
    try:
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()  # type: ignore[operator]
    except (OSError, TypeError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def query(target: StoreTarget, sql: str) -> list[tuple[Any, ...]]:
    """Every row of one read-only query on the store, from code outside an event loop."""

    async def once() -> list[tuple[Any, ...]]:
        async with StoreReader(target) as reader:
            return await reader.rows(sql)

    return asyncio.run(once())


def pct(values: list[float], q: float) -> float:
    """The `q` quantile (nearest rank); NaN for no values."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def settle_pinning(args: argparse.Namespace) -> None:
    """`--no-pin`, or a machine that cannot pin: server and client run anywhere."""
    if args.no_pin:
        args.server_cpu = args.client_cpu = None
    elif (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("WARNING: fewer than 2 CPUs or no taskset: server and client are not pinned")
        args.server_cpu = args.client_cpu = None


def client_loop(args: argparse.Namespace) -> None:
    """uvloop for the load generator when installed, on the client's core when pinned."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
