"""Backup benchmark (SPEC §12, issue 18): what `switchboard backup` of a ~1 GB store costs a
`serve` that is ingesting meanwhile.

Builds (once, cached under var/bench/) a SQLite store of ~1 GB: processed Twilio events with
12 KB raw bodies, written straight into the schema. Each run copies it into a temp folder, starts
`switchboard serve` on it (ingest only, pinned to core 0 when it can), and drives it from this
process with signed Twilio webhooks on a few keep-alive connections (closed loop, each
request's latency recorded). In the same run:

1. **baseline**: `--baseline` seconds of that load, no backup;
2. **backup**: the same load while `python -m router backup DIR --json` runs as a process of
   its own (pinned to core 1 with the load), until it ends.

It prints ingest latency p50/p99/max and req/s of both phases and their ratios, the backup's
time, step count and longest single step (`--pages` pages each), its size, the WAL size before
and after, and checks that the copy holds every event acknowledged before it began.

Run: .venv/bin/python bench/backup.py                   (~1 GB, 10 s baseline)
     .venv/bin/python bench/backup.py --size-mb 200     (quicker)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import urlencode

import httpx
from harness import ROOT, pct, start_serve
from proc_stats import stop
from signed_requests import params
from twilio.request_validator import RequestValidator

from router.store.backup import PAGES_PER_STEP
from router.store.sqlite import SQLiteStore

PUBLIC_URL = "https://switchboard.example.com"
TOKEN = "bench-twilio-token"
PATH = "/webhooks/twilio/messages"
RAW_BYTES = 12 * 1024


def build_store(db: Path, size_mb: int) -> None:
    """A migrated store with processed events until the file is about `size_mb` MB."""
    import asyncio

    async def migrate() -> None:
        store = SQLiteStore(db)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    rows = size_mb * 1024 * 1024 // (RAW_BYTES + 600)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = OFF")
        for start in range(0, rows, 5000):
            conn.execute("BEGIN")
            conn.executemany(
                "INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0)",
                (_row(n) for n in range(start, min(rows, start + 5000))),
            )
            conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _row(n: int) -> tuple[object, ...]:
    at = f"2026-01-01T00:00:00.{n % 1_000_000:06d}+00:00"
    body = json.dumps({"id": f"OLD{n:09d}", "text": "hello " * 50}).encode()
    raw = os.urandom(RAW_BYTES)
    return (
        f"OLD{n:09d}",
        "twilio",
        "message.received",
        "message.received",
        f"twilio:SMOLD{n}",
        "sms",
        "+15551230001",
        f"sms:+1555{n % 5000:07d}:+15559870000",
        "processed",
        at,
        None,
        f"c{n}",
        body,
        "application/x-www-form-urlencoded",
        raw,
        None,
    )


def config_text(port: int, folder: Path) -> str:
    (folder / "rules").mkdir(exist_ok=True)
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"

[storage]
url = "sqlite:///{folder / "switchboard.db"}"

[rules]
path = "{folder / "rules"}"

[sources.twilio]
auth_tokens = ["{TOKEN}"]

[worker]
in_serve = false

[logging]
level = "warning"
"""


class Load:
    """Closed-loop senders; each answer's (end time, latency, status)."""

    def __init__(self, base: str, connections: int) -> None:
        self.base, self.connections = base, connections
        self.samples: list[tuple[float, float, int]] = []
        self.acked: list[tuple[float, int]] = []
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._validator = RequestValidator(TOKEN)
        self._threads = [threading.Thread(target=self._run) for _ in range(connections)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join()

    def _take(self) -> int:
        with self._lock:
            self._next += 1
            return self._next

    def _run(self) -> None:
        with httpx.Client(base_url=self.base, timeout=30) as client:
            while not self._stop.is_set():
                n = self._take()
                fields = params(10_000_000 + n)
                signature = self._validator.compute_signature(PUBLIC_URL + PATH, fields)
                headers = {
                    "Content-Type": "application/x-www-form-urlencoded",
                    "X-Twilio-Signature": signature,
                }
                started = time.perf_counter()
                answer = client.post(PATH, content=urlencode(fields), headers=headers)
                ended = time.perf_counter()
                with self._lock:
                    self.samples.append((ended, ended - started, answer.status_code))
                    if answer.status_code == 200:
                        self.acked.append((ended, 10_000_000 + n))

    def window(self, start: float, end: float) -> list[float]:
        with self._lock:
            return [lat for at, lat, _ in self.samples if start <= at - lat and at <= end]


def phase_figures(latencies: list[float], seconds: float) -> dict[str, float]:
    return {
        "req_s": len(latencies) / seconds if seconds else float("nan"),
        "p50_ms": pct(latencies, 0.50) * 1000,
        "p99_ms": pct(latencies, 0.99) * 1000,
        "max_ms": max(latencies, default=float("nan")) * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024)
    parser.add_argument("--baseline", type=float, default=10.0, help="seconds without backup")
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--pages", type=int, default=PAGES_PER_STEP, help="pages per step")
    parser.add_argument("--no-pin", action="store_true")
    args = parser.parse_args()
    cache = ROOT / "var" / "bench" / f"backup-{args.size_mb}mb.db"
    if not cache.exists():
        cache.parent.mkdir(parents=True, exist_ok=True)
        print(f"building {cache} (~{args.size_mb} MB, once) ...", flush=True)
        started = time.perf_counter()
        build_store(cache.with_suffix(".building"), args.size_mb)
        cache.with_suffix(".building").rename(cache)
        print(f"  built in {time.perf_counter() - started:.0f}s", flush=True)
    pin = not args.no_pin and (os.cpu_count() or 1) >= 2 and shutil.which("taskset")
    with tempfile.TemporaryDirectory(prefix="sb-backup-bench-") as temp:
        run(Path(temp), cache, args, bool(pin))


def run(folder: Path, cache: Path, args: argparse.Namespace, pin: bool) -> None:
    shutil.copyfile(cache, folder / "switchboard.db")
    port = _free_port()
    config = folder / "switchboard.toml"
    config.write_text(config_text(port, folder))
    base = f"http://127.0.0.1:{port}"
    print(_header(folder, args, pin), flush=True)
    server = start_serve(
        config, folder / "serve.log", base=base, cpu=0 if pin else None, verbose=False
    )
    load = Load(base, args.connections)
    try:
        load.start()
        time.sleep(1.0)  # warm-up, not measured
        t0 = time.perf_counter()
        time.sleep(args.baseline)
        t1 = time.perf_counter()
        wal_before = _size(folder / "switchboard.db-wal")
        acked_before = {n for _, n in list(load.acked)}
        report, t2, t3 = _backup(config, folder / "copy", args.pages, pin)
        wal_after = _size(folder / "switchboard.db-wal")
        load.stop()
    finally:
        stop(server)
    baseline = phase_figures(load.window(t0, t1), t1 - t0)
    during = phase_figures(load.window(t2, t3), t3 - t2)
    _print(baseline, during, report, wal_before, wal_after)
    _check_copy(folder / "copy" / "switchboard.db", acked_before)


#: The backup, in a process of its own, reporting its steps (what `switchboard backup` runs).
_BACKUP_PROCESS = """
import sys, json, datetime, pathlib
from router.store.backup import take_backup
db, target, pages = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), int(sys.argv[3])
r = take_backup(db, target, now=datetime.datetime.now(datetime.UTC), pages_per_step=pages)
steps = sorted(r.steps)
print(json.dumps({"seconds": r.seconds, "steps": len(steps), "longest_step": steps[-1],
                  "p99_step": steps[int(len(steps) * 0.99)], "bytes": r.bytes}))
"""


def _backup(
    config: Path, target: Path, pages: int, pin: bool
) -> tuple[dict[str, float], float, float]:
    db = config.parent / "switchboard.db"
    cmd = [sys.executable, "-c", _BACKUP_PROCESS, str(db), str(target), str(pages)]
    if pin:
        cmd = ["taskset", "-c", "1", *cmd]
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
    ended = time.perf_counter()
    report: dict[str, float] = json.loads(done.stdout)
    return report, started, ended


def _check_copy(copy: Path, acked_before: set[int]) -> None:
    with closing(sqlite3.connect(copy)) as conn:
        ok = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        new = conn.execute("SELECT dedupe_key FROM events WHERE id NOT LIKE 'OLD%'")
        keys = {row[0] for row in new}
    missing = [n for n in acked_before if f"twilio:{params(n)['MessageSid']}" not in keys]
    print(
        f"copy: integrity_check {'ok' if ok else 'FAILED'}; events acknowledged before the"
        f" backup began: {len(acked_before)}, missing from the copy: {len(missing)}"
    )


def _print(
    baseline: dict[str, float],
    during: dict[str, float],
    report: dict[str, float],
    wal_before: int,
    wal_after: int,
) -> None:
    print(f"\n{'':22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}")
    for name, fig in (("ingest, no backup", baseline), ("ingest, during backup", during)):
        print(
            f"{name:22}{fig['req_s']:9.0f}{fig['p50_ms']:9.1f}{fig['p99_ms']:9.1f}{fig['max_ms']:9.1f}"
        )
    ratio = {k: during[k] / baseline[k] for k in baseline}
    print(
        f"{'ratio during/without':22}{ratio['req_s']:9.2f}{ratio['p50_ms']:9.2f}"
        f"{ratio['p99_ms']:9.2f}{ratio['max_ms']:9.2f}"
    )
    print(
        f"\nbackup: {report['bytes'] / 1e6:,.0f} MB in {report['seconds']:.1f}s,"
        f" {report['steps']:.0f} steps, longest step {report['longest_step'] * 1000:.1f} ms,"
        f" p99 step {report['p99_step'] * 1000:.1f} ms"
    )
    print(f"WAL: {wal_before / 1e6:.1f} MB before the backup, {wal_after / 1e6:.1f} MB after")


def _header(folder: Path, args: argparse.Namespace, pin: bool) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    load = os.getloadavg()[0]
    size = _size(folder / "switchboard.db") / 1e6
    return (
        f"bench/backup.py  commit {commit}  store {size:,.0f} MB"
        f"  pages/step {args.pages}  connections {args.connections}  pinned {pin}"
        f"  sqlite {sqlite3.sqlite_version}  loadavg {load:.2f}"
    )


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


if __name__ == "__main__":
    main()
