"""PostgreSQL faults soak (issue 17, part 4): `switchboard serve` on a fresh PostgreSQL database,
signed Twilio webhooks from `--posters` threads and /readyz polled from `--pollers` threads,
while every connection to the database is ended (`pg_terminate_backend`) every `--interval`
seconds for `--duration` seconds. After each round one more /readyz is timed (the first call
after a termination). `--idle` runs no posters (the pool's connections sit idle when ended).

Prints the webhook and /readyz answers by status (a 500 is a bug: SPEC §4 and §10 allow 2xx or
503), the acknowledged webhooks missing from the store afterwards (must be 0), whether /readyz
is 200 again within 20 s after the last round, and the server log's lines by event and those
naming the driver's protocol refusal ("another operation", must be 0).

Run: .venv/bin/python bench/pg_faults.py                 (60 s, 6 posters, a round each 0.7 s)
     .venv/bin/python bench/pg_faults.py --duration 10   (a smoke run)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pg_admin

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.support, tests.cases

from tests.cases.twilio import message_params, signed  # noqa: E402
from tests.support import PUBLIC_URL, SECRETS, server_process  # noqa: E402


class Tally:
    """What the load threads saw, under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.webhooks: Counter[int | str] = Counter()
        self.readyz: Counter[int | str] = Counter()
        self.acked: set[str] = set()
        self.stop = threading.Event()


def post_loop(base_url: str, poster: int, tally: Tally) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        n = 0
        while not tally.stop.is_set():
            n += 1
            unique = f"P{poster}N{n}"
            params = {**message_params(unique), "From": f"+1555123{poster:04d}"}
            request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
            try:
                status: int | str = client.post(
                    request.path, content=request.body, headers=request.headers
                ).status_code
            except httpx.HTTPError as exc:
                status = type(exc).__name__
            with tally.lock:
                tally.webhooks[status] += 1
                if status == 200:
                    tally.acked.add(f"twilio:SM{unique}")


def readyz(client: httpx.Client) -> int | str:
    try:
        return client.get("/readyz").status_code
    except httpx.HTTPError as exc:
        return type(exc).__name__


def poll_loop(base_url: str, tally: Tally) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        while not tally.stop.is_set():
            status = readyz(client)
            with tally.lock:
                tally.readyz[status] += 1


def query(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one statement on `url`, on a connection of its own."""

    async def once() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()

    return asyncio.run(once())


def terminate_all(admin_url: str, database: str) -> int:
    [(ended,)] = query(
        admin_url,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    return int(ended)


def log_summary(log: str) -> Counter[str]:
    events: Counter[str] = Counter()
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a driver's traceback or warning: counted below by its text only
        events[f"{record.get('level')} {record.get('event')}"] += 1
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=0.7)
    parser.add_argument("--posters", type=int, default=6)
    parser.add_argument("--pollers", type=int, default=2)
    parser.add_argument("--idle", action="store_true", help="no posters")
    args = parser.parse_args()

    databases = pg_admin.Databases(args.admin_url)
    url = databases.create("faults")
    name = url.rsplit("/", 1)[1]
    tally = Tally()
    first_after: Counter[int | str] = Counter()
    rounds = ended = 0
    try:
        with (
            tempfile.TemporaryDirectory() as tmp,
            server_process(Path(tmp), storage_url=url) as server,
        ):
            posters = 0 if args.idle else args.posters
            threads = [
                threading.Thread(target=post_loop, args=(server.base_url, i, tally))
                for i in range(posters)
            ] + [
                threading.Thread(target=poll_loop, args=(server.base_url, tally))
                for _ in range(args.pollers)
            ]
            for thread in threads:
                thread.start()
            end = time.monotonic() + args.duration
            with httpx.Client(base_url=server.base_url, timeout=30) as client:
                while time.monotonic() < end:
                    time.sleep(args.interval)
                    ended += terminate_all(args.admin_url, name)
                    rounds += 1
                    first_after[readyz(client)] += 1
                tally.stop.set()
                for thread in threads:
                    thread.join()
                deadline = time.monotonic() + 20
                while readyz(client) != 200 and time.monotonic() < deadline:
                    time.sleep(0.1)
                recovered = readyz(client) == 200
            stored = {row[0] for row in query(url, "SELECT dedupe_key FROM events")}
            log = (Path(tmp) / "server.log").read_text()
    finally:
        databases.drop_all()

    print(f"{rounds} rounds, {ended} connections ended, {args.duration:.0f} s, {posters} posters")
    print(f"webhooks: {dict(tally.webhooks)}")
    print(f"/readyz: {dict(tally.readyz)}; first call after each round: {dict(first_after)}")
    print(f"acknowledged: {len(tally.acked)}, missing from the store: {len(tally.acked - stored)}")
    print(f"/readyz 200 again within 20 s: {recovered}")
    print(f"log: {dict(log_summary(log))}")
    print(f"log lines naming 'another operation': {log.count('another operation')}")


if __name__ == "__main__":
    main()
