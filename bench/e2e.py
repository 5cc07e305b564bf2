"""End-to-end benchmark (issue 9): signed inbound SMS -> rule reply -> accepted by a fake Twilio.

One real `python -m router serve` (worker and dispatcher in it, as shipped), on a fresh SQLite
store (WAL, `synchronous=FULL`), logs at `info`, pinned to one core, with one rule:

    - id: echo
      when: {channel: sms, type: message.received}
      then: [reply: {text: "got {{ text }}"}]

`channels.sms` is `mode = "live"` against `tests.fakes.twilio_api.FakeTwilio` on loopback, through
the official twilio client (`api_base`). Customers write to 20 of our numbers (`--numbers`), and
the reply leaves from the number the customer wrote to, so the per-sender rate limit applies per
number: `rate_per_second = 100` each (`--rate-per-number`), what a short code allows.

The load is open-loop: arrivals at the offered rate (Poisson by default, or fixed intervals), each
request sent at its time whatever the earlier ones are doing (a pool of keep-alive connections
that grows when every connection is busy); requests are built and signed before the clock
starts. Phases run one after the other on the same server, each drained before the next:
100/s for 20 s, then 1,000/s for 10 s (`--phases`).

FakeTwilio runs in a child process pinned with this client to the other core (in a thread here
it shares the client's GIL and delays the sends; `--fake thread` to compare).

Per message: latency = when the fake accepted the reply (its wall clock) - when the webhook
request was written to the socket (ours; same host, same clock). Each body carries a unique
reference, echoed in the reply, which is how a reply is matched to its webhook. Every second the
store is read (read-only sqlite3): outbox rows pending / sending, and events not yet routed.

Exit 1 if a webhook is not answered 200, or a reply is missing (lost), accepted twice
(duplicate), or unknown to the bench, once the drain deadline has passed.

Run: .venv/bin/python bench/e2e.py                          (100/s for 20 s, 1,000/s for 10 s)
     .venv/bin/python bench/e2e.py --phases 100:5,1000:3    (a smoke run)
     .venv/bin/python bench/e2e.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import math
import multiprocessing
import os
import platform
import random
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.fakes

import proc_stats  # noqa: E402
import signed_requests  # noqa: E402
from harness import (  # noqa: E402
    client_loop,
    connect_ro,
    find_py_spy,
    pct,
    settle_pinning,
    start_serve,
    start_worker,
)
from ingest import PATH, PUBLIC_URL, TOKEN, free_port  # noqa: E402

ADMIN_TOKEN = "bench-admin-token"
ACCOUNT_SID = "AC" + "e2" * 16
API_TOKEN = "bench-twilio-api-token"
RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms, type: message.received}
    then:
      - reply: {text: "got {{ text }}"}
"""
#: The unique reference in every inbound body, echoed in the reply.
REF = re.compile(r"\(ref e2e-(\d+)\)")


def customer(conversation: int) -> str:
    """Area code 415 (California: no state window of quiet hours; a reply is conversational
    anyway, never held), exchange 555 onwards: 10,000 customers per exchange."""
    return f"+1415{555 + conversation // 10_000:03d}{conversation % 10_000:04d}"


def our_number(index: int) -> str:
    return f"+1628200{index:04d}"


# -- the load --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PhaseSpec:
    rate: float
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.rate:,.0f}/s for {self.seconds:g} s"


@dataclass
class Plan:
    """One phase's messages: global ids, arrival offsets (s), raw signed requests."""

    spec: PhaseSpec
    ids: list[int]
    arrivals: list[float]
    requests: list[bytes]
    #: id -> (customer, our number): the reply must go to the one from the other.
    routes: dict[int, tuple[str, str]]


def arrivals(spec: PhaseSpec, kind: str, rng: random.Random) -> list[float]:
    if kind == "fixed":
        return [i / spec.rate for i in range(round(spec.rate * spec.seconds))]
    out, t = [], rng.expovariate(spec.rate)
    while t < spec.seconds:
        out.append(t)
        t += rng.expovariate(spec.rate)
    return out


def plan(spec: PhaseSpec, first_id: int, args: argparse.Namespace, rng: random.Random) -> Plan:
    """The phase's requests: real-looking Twilio inbound SMS, each its own MessageSid, signed
    with twilio's RequestValidator for the public URL (the signature does not cover the port)."""
    from twilio.request_validator import RequestValidator

    offsets = arrivals(spec, args.arrivals, rng)
    validator = RequestValidator(TOKEN)
    url = PUBLIC_URL + PATH
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "Content-Type: application/x-www-form-urlencoded\r\n"
    ids = list(range(first_id, first_id + len(offsets)))
    requests, routes = [], {}
    for ident in ids:
        conversation = rng.randrange(args.conversations)
        fields = signed_requests.params(ident)
        frm, to = customer(conversation), our_number(conversation % args.numbers)
        fields["From"], fields["To"] = frm, to
        text = signed_requests.TEXTS[ident % len(signed_requests.TEXTS)]
        fields["Body"] = f"{text} (ref e2e-{ident})"
        routes[ident] = (frm, to)
        body = urlencode(fields).encode()
        signature = validator.compute_signature(url, fields)
        requests.append(
            f"{head}X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return Plan(spec, ids, offsets, requests, routes)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


class Pool:
    """Keep-alive connections to the server; a new one is opened when every one is busy (up
    to `limit`, then a send waits: the wait shows as send lag)."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.opened = 0
        self.waited = 0
        self.reconnects = 0

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port)

    async def prewarm(self, count: int) -> None:
        for _ in range(min(count, self.limit) - self.opened):
            self.opened += 1
            self.idle.put_nowait(await self._open())

    async def get(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.idle.empty():
            return self.idle.get_nowait()
        if self.opened < self.limit:
            self.opened += 1
            return await self._open()
        self.waited += 1
        return await self.idle.get()

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


@dataclass
class Sends:
    """What the client saw, per message of a phase (index in the plan)."""

    scheduled: list[float]  # monotonic
    sent_wall: list[float]
    lag: list[float]  # sent - scheduled, s
    answer: list[float]  # webhook answer latency, s
    status: list[int]
    answered: int = 0
    started_wall: float = 0.0
    started_mono: float = 0.0


async def exchange(pool: Pool, request: bytes, sends: Sends, index: int) -> None:
    """Send one webhook on a free connection and read its answer; a connection that broke is
    replaced and the request sent again (the store dedupes on MessageSid)."""
    reader, writer = await pool.get()
    for attempt in range(3):
        try:
            sent_mono = time.monotonic()
            if attempt == 0:
                sends.sent_wall[index] = time.time()
                sends.lag[index] = sent_mono - sends.scheduled[index]
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = _CONTENT_LENGTH.search(head)
            if length is None:
                raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
            if int(length[1]):
                await reader.readexactly(int(length[1]))
            sends.answer[index] = time.monotonic() - sent_mono
            sends.status[index] = int(head[9:12])
            sends.answered += 1
            pool.idle.put_nowait((reader, writer))
            return
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            if attempt == 2:
                sends.status[index] = -1
                sends.answered += 1
                pool.opened -= 1
                return
            pool.reconnects += 1
            reader, writer = await pool._open()


async def drive(pool: Pool, load: Plan, sends: Sends) -> None:
    """Open loop: each request leaves at its arrival time, whatever the others are doing."""
    tasks = []
    start = sends.started_mono
    for index, offset in enumerate(load.arrivals):
        due = start + offset
        sends.scheduled[index] = due
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(exchange(pool, load.requests[index], sends, index)))
    await asyncio.gather(*tasks)


def preflight(port: int, request: bytes) -> None:
    """One signed request outside the load must be answered 200 (and its reply accepted)."""

    async def once() -> int:
        pool = Pool(port, 1)
        sends = Sends([time.monotonic()], [0.0], [0.0], [0.0], [0])
        await exchange(pool, request, sends, 0)
        pool.close()
        return sends.status[0]

    status = asyncio.run(once())
    if status != 200:
        sys.exit(f"pre-flight signed request answered {status}, expected 200")


# -- the fake Twilio -------------------------------------------------------------------------


@dataclass(frozen=True)
class Accepted:
    body: str
    to: str
    from_: str | None
    wall: float  # epoch seconds


class Fake:
    """FakeTwilio in a thread of this process (`thread`) or in a child process (`process`),
    so the load generator and the fake do not share a GIL. Same interface either way."""

    def __init__(self, where: str) -> None:
        self.where = where
        self._lock = threading.Lock()
        if where == "thread":
            from tests.fakes.twilio_api import FakeTwilio

            self._fake = FakeTwilio(ACCOUNT_SID, API_TOKEN).start()
            self.url = self._fake.url
            self.pid = os.getpid()
        else:
            context = multiprocessing.get_context("spawn")
            self._conn, child = context.Pipe()
            self._proc = context.Process(target=_fake_child, args=(child,), daemon=True)
            self._proc.start()
            self.url = self._conn.recv()
            self.pid = self._proc.pid or 0

    def count(self) -> int:
        if self.where == "thread":
            return self._fake.accepted_count()
        with self._lock:
            self._conn.send(("count", None))
            return int(self._conn.recv())

    def since(self, start: int) -> list[Accepted]:
        if self.where == "thread":
            return _records(self._fake, start)
        with self._lock:
            self._conn.send(("since", start))
            return list(self._conn.recv())

    def errors(self) -> list[str]:
        if self.where == "thread":
            return list(self._fake.errors)
        with self._lock:
            self._conn.send(("errors", None))
            return list(self._conn.recv())

    def stop(self) -> None:
        if self.where == "thread":
            self._fake.stop()
            return
        with self._lock:
            self._conn.send(("stop", None))
            self._conn.recv()
        self._proc.join(10)


def _records(fake: Any, start: int) -> list[Accepted]:
    return [
        Accepted(m.body, m.to, m.from_, m.accepted_wall.timestamp())
        for m in fake.snapshot()[start:]
    ]


def _fake_child(conn: Connection) -> None:
    from tests.fakes.twilio_api import FakeTwilio

    fake = FakeTwilio(ACCOUNT_SID, API_TOKEN).start()
    conn.send(fake.url)
    while True:
        command, arg = conn.recv()
        if command == "count":
            conn.send(fake.accepted_count())
        elif command == "since":
            conn.send(_records(fake, arg))
        elif command == "errors":
            conn.send(list(fake.errors))
        else:
            fake.stop()
            conn.send(None)
            return


# -- the server ------------------------------------------------------------------------------


def config_text(port: int, folder: Path, fake_url: str, args: argparse.Namespace) -> str:
    return (
        f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"
max_body_bytes = 1048576
admin_token = "{ADMIN_TOKEN}"

[storage]
url = "sqlite:///{folder / "bench.db"}"

[rules]
path = "{folder / "rules"}"

[sources.twilio]
auth_tokens = ["{TOKEN}"]

[channels.sms]
account_sid = "{ACCOUNT_SID}"
auth_token = "{API_TOKEN}"
from = "{our_number(0)}"
mode = "live"
api_base = "{fake_url}"
# Per sender number; each reply leaves from the number its customer wrote to.
rate_per_second = {args.rate_per_number:g}

[logging]
level = "{args.log_level}"
"""
        + (
            f"\n[dispatch]\nconcurrency = {args.dispatch_concurrency}\n"
            if args.dispatch_concurrency
            else ""
        )
        + ("\n[worker]\nin_serve = false\n" if args.split else "")
    )


class Server:
    """`python -m router --config <folder>/switchboard.toml serve`, pinned to one core; with
    `--split`, `serve` only ingests and `switchboard worker` routes and sends beside it."""

    def __init__(self, folder: Path, fake_url: str, args: argparse.Namespace) -> None:
        self.folder = folder
        self.db = folder / "bench.db"
        self.port = free_port()
        (folder / "rules").mkdir(parents=True, exist_ok=True)
        (folder / "rules" / "echo.yaml").write_text(RULES)
        config = folder / "switchboard.toml"
        config.write_text(config_text(self.port, folder, fake_url, args))
        self.log = folder / "server.log"
        self.cpu = args.server_cpu
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = start_serve(
            config, self.log, base=self.base, cpu=self.cpu, verbose=args.verbose
        )
        self.worker: subprocess.Popen[bytes] | None = None
        if args.split:
            self.worker = start_worker(
                config, folder / "worker.log", cpu=args.worker_cpu, verbose=args.verbose
            )

    @property
    def sender_pid(self) -> int:
        """The process that routes and sends (profiled by `--profile`)."""
        return (self.worker or self.proc).pid

    def cpu_sample(self) -> proc_stats.CpuSample:
        return proc_stats.cpu_sample(self.proc.pid, self.cpu)

    def worker_cpu_s(self) -> float:
        """CPU seconds the worker process has used (0 without `--split`)."""
        if self.worker is None:
            return 0.0
        sample = proc_stats.cpu_sample(self.worker.pid, None)
        return sample.user_s + sample.system_s

    def stop(self) -> None:
        if self.worker is not None:
            proc_stats.stop(self.worker)
        proc_stats.stop(self.proc)


# -- watching the store ----------------------------------------------------------------------


_DEPTH = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM outbox),"
    " (SELECT count(*) FROM outbox WHERE status IN ('pending', 'deferred')),"
    " (SELECT count(*) FROM outbox WHERE status = 'sending')"
)


@dataclass
class Sample:
    t: float  # seconds since the phase's first arrival
    offered: int  # webhooks sent so far
    stored: int  # webhooks answered 200 so far (each one event committed)
    routed: int  # outbox rows created so far (one per event)
    pending: int  # outbox rows waiting to be sent (pending or deferred)
    sending: int  # outbox rows leased by the dispatcher, send under way
    accepted: int  # replies the fake accepted so far

    @property
    def unrouted(self) -> int:
        """Events stored but not yet routed (the worker's queue)."""
        return max(self.stored - self.routed, 0)

    @property
    def depth(self) -> int:
        return self.unrouted + self.pending + self.sending


class Sampler(threading.Thread):
    """Every `interval` s: the store (read-only) and the fake's count. A thread, so a slow read
    never delays a send."""

    def __init__(
        self, db: Path, fake: Fake, sends: Sends, base_seq: int, base_accepted: int, interval: float
    ) -> None:
        super().__init__(name="sampler", daemon=True)
        self.db, self.fake, self.sends = db, fake, sends
        self.base_seq, self.base_accepted, self.interval = base_seq, base_accepted, interval
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def sample(self, conn: sqlite3.Connection) -> Sample:
        offered = sum(1 for s in self.sends.sent_wall if s)
        stored = sum(1 for s in self.sends.status if s == 200)
        max_seq, pending, sending = conn.execute(_DEPTH).fetchone()
        accepted = self.fake.count() - self.base_accepted
        t = time.monotonic() - self.sends.started_mono
        return Sample(t, offered, stored, max_seq - self.base_seq, pending, sending, accepted)

    def run(self) -> None:
        conn = connect_ro(self.db)
        try:
            next_at = self.sends.started_mono
            while not self.halt.is_set():
                wait = next_at - time.monotonic()
                if wait > 0 and self.halt.wait(wait):
                    break
                self.samples.append(self.sample(conn))
                next_at += self.interval
        finally:
            conn.close()


def store_depth(db: Path) -> tuple[int, int, int]:
    conn = connect_ro(db)
    try:
        max_seq, pending, sending = conn.execute(_DEPTH).fetchone()
        return int(max_seq), int(pending), int(sending)
    finally:
        conn.close()


def epoch(text: str | None) -> float | None:
    return datetime.fromisoformat(text).timestamp() if text else None


@dataclass
class Trace:
    """One message's stages, epoch seconds, from the store (None where unknown)."""

    received: float | None = None  # events.received_at: the body read by the server
    routed: float | None = None  # outbox.created_at: start of the routing batch
    attempt_start: float | None = None  # outbox_attempts.at - duration_ms
    attempt_end: float | None = None  # outbox_attempts.at: the answer parsed
    status: str | None = None
    attempts: int = 0


def read_traces(db: Path, ids: set[int]) -> dict[int, Trace]:
    """Per message id (from its MessageSid, `SM{id:032x}`): the store's timestamps."""
    conn = connect_ro(db)
    try:
        events = {}
        for event_id, dedupe_key, received_at in conn.execute(
            "SELECT id, dedupe_key, received_at FROM events WHERE source = 'twilio'"
        ):
            sid = dedupe_key.removeprefix("twilio:")
            if sid.startswith("SM") and len(sid) == 34:
                ident = int(sid[2:], 16)
                if ident in ids:
                    events[event_id] = (ident, epoch(received_at))
        traces: dict[int, Trace] = {ident: Trace() for ident in ids}
        for ident, received in events.values():
            traces[ident].received = received
        rows: dict[str, int] = {}
        for row_id, event_id, created_at, status in conn.execute(
            "SELECT id, event_id, created_at, status FROM outbox"
        ):
            found = events.get(event_id)
            if found is None:
                continue
            trace = traces[found[0]]
            trace.routed, trace.status = epoch(created_at), status
            rows[row_id] = found[0]
        for outbox_id, at, duration_ms in conn.execute(
            "SELECT outbox_id, at, duration_ms FROM outbox_attempts ORDER BY seq"
        ):
            owner = rows.get(outbox_id)
            if owner is None:
                continue
            trace = traces[owner]
            end = epoch(at)
            trace.attempts += 1
            trace.attempt_end = end
            if trace.attempt_start is None and end is not None:  # the first attempt's start
                trace.attempt_start = end - (duration_ms or 0.0) / 1000
        return traces
    finally:
        conn.close()


# -- a phase ---------------------------------------------------------------------------------


@dataclass
class Result:
    spec: PhaseSpec
    sent: int
    refused: dict[int, int]  # non-200 answers by status (-1: no answer)
    latencies: list[float]  # ms, per reply accepted once
    lost: list[int]
    duplicates: dict[int, int]
    misrouted: list[int]
    unknown: list[str]
    accepted_per_s: float
    accepted_in_load_per_s: float
    offered_per_s: float
    drain_s: float
    lag_ms: list[float]
    answer_ms: list[float]
    samples: list[Sample]
    stages: dict[str, list[float]]
    statuses: Counter[str]
    attempts: Counter[int]
    server_cpu: proc_stats.CpuShare
    worker_cpu: float
    cpu_ms_per_message: float
    connections: int
    pool_waits: int
    reconnects: int
    slope: float = float("nan")  # queue growth in the load's second half, messages/s

    @property
    def ok(self) -> bool:
        return not (self.refused or self.lost or self.duplicates or self.misrouted or self.unknown)


@dataclass
class Load:
    """A phase as the client and the sampler saw it."""

    sends: Sends
    samples: list[Sample]
    base_accepted: int
    cpu: proc_stats.CpuShare
    #: The worker process's CPU during the load, in cores (0 without `--split`).
    worker_cpu: float
    #: CPU time of the server (and worker) from the first webhook to the drain, per message.
    cpu_ms_per_message: float
    pool: Pool


async def run_load(load: Plan, server: Server, fake: Fake, args: argparse.Namespace) -> Load:
    n = len(load.ids)
    sends = Sends([0.0] * n, [0.0] * n, [0.0] * n, [0.0] * n, [0] * n)
    pool = Pool(server.port, args.max_connections)
    await pool.prewarm(args.connections)
    base_seq, _, _ = store_depth(server.db)
    base_accepted = fake.count()
    sends.started_mono, sends.started_wall = time.monotonic() + 0.05, time.time() + 0.05
    sampler = Sampler(server.db, fake, sends, base_seq, base_accepted, args.sample_s)
    cpu_before = server.cpu_sample()
    worker_before, load_started = server.worker_cpu_s(), time.monotonic()
    sampler.start()
    await drive(pool, load, sends)
    cpu_after = server.cpu_sample()
    worker_cpu = (server.worker_cpu_s() - worker_before) / max(
        time.monotonic() - load_started, 1e-9
    )
    # Drain: until the fake has every reply and the outbox is empty, or the deadline.
    deadline = time.monotonic() + args.drain_deadline
    while time.monotonic() < deadline:
        _, pending, sending = await asyncio.to_thread(store_depth, server.db)
        if fake.count() - base_accepted >= n and pending == 0 and sending == 0:
            break
        await asyncio.sleep(0.02)
    drained = server.cpu_sample()
    cpu_ms = 1000 * (
        drained.user_s
        + drained.system_s
        - cpu_before.user_s
        - cpu_before.system_s
        + server.worker_cpu_s()
        - worker_before
    )
    await asyncio.sleep(args.settle)  # a late duplicate has time to show
    sampler.halt.set()
    sampler.join()
    conn = connect_ro(server.db)
    try:
        sampler.samples.append(sampler.sample(conn))  # the state after the drain
    finally:
        conn.close()
    pool.close()
    cpu = proc_stats.cpu_share(cpu_before, cpu_after)
    return Load(sends, sampler.samples, base_accepted, cpu, worker_cpu, cpu_ms / n, pool)


def run_phase(
    load: Plan, server: Server, fake: Fake, args: argparse.Namespace, number: int
) -> Result:
    n = len(load.ids)
    print(
        f"\n== phase {number}: {load.spec.label} offered ({args.arrivals} arrivals), "
        f"{n:,} signed SMS",
        flush=True,
    )
    run = asyncio.run(run_load(load, server, fake, args))
    sends, samples, pool = run.sends, run.samples, run.pool
    refused = Counter(s for s in sends.status if s != 200)
    accepted = fake.since(run.base_accepted)
    index = {ident: i for i, ident in enumerate(load.ids)}
    seen: dict[int, list[Accepted]] = {}
    unknown = []
    for message in accepted:
        match = REF.search(message.body)
        ident = int(match[1]) if match else -1
        if ident not in index:
            unknown.append(message.body[:80])
            continue
        seen.setdefault(ident, []).append(message)
    lost = [ident for ident in load.ids if ident not in seen]
    duplicates = {ident: len(found) for ident, found in seen.items() if len(found) > 1}
    misrouted = [
        ident
        for ident, found in seen.items()
        if (found[0].to, found[0].from_) != load.routes[ident]
    ]
    latencies = [
        (found[0].wall - sends.sent_wall[index[ident]]) * 1000
        for ident, found in seen.items()
        if len(found) == 1
    ]
    first_sent = min((s for s in sends.sent_wall if s), default=sends.started_wall)
    last_sent = max(sends.sent_wall, default=first_sent)
    last_accepted = max((m.wall for m in accepted), default=last_sent)
    arrival_span = load.arrivals[-1] - load.arrivals[0] if n > 1 else 1.0
    traces = read_traces(server.db, set(load.ids))
    stages: dict[str, list[float]] = {name: [] for name, _ in STAGES}
    for ident, found in seen.items():
        trace = traces[ident]
        points = (
            sends.sent_wall[index[ident]],
            trace.received,
            trace.routed,
            trace.attempt_start,
            found[0].wall,
            trace.attempt_end,
        )
        if None in points or trace.attempts != 1:
            continue
        for (name, _), a, b in zip(STAGES, points, points[1:], strict=False):
            stages[name].append((b - a) * 1000)  # type: ignore[operator]
    result = Result(
        spec=load.spec,
        sent=n,
        refused=dict(refused),
        latencies=latencies,
        lost=lost,
        duplicates=duplicates,
        misrouted=misrouted,
        unknown=unknown,
        accepted_per_s=len(accepted) / max(last_accepted - first_sent, 1e-9),
        accepted_in_load_per_s=sum(1 for m in accepted if m.wall <= last_sent)
        / max(last_sent - first_sent, 1e-9),
        offered_per_s=(n - 1) / arrival_span if n > 1 else float(n),
        drain_s=max(last_accepted - last_sent, 0.0),
        lag_ms=[x * 1000 for x in sends.lag],
        answer_ms=[x * 1000 for x in sends.answer if x],
        samples=samples,
        stages=stages,
        statuses=Counter(t.status or "no row" for t in traces.values()),
        attempts=Counter(t.attempts for t in traces.values()),
        server_cpu=run.cpu,
        worker_cpu=run.worker_cpu,
        cpu_ms_per_message=run.cpu_ms_per_message,
        connections=pool.opened,
        pool_waits=pool.waited,
        reconnects=pool.reconnects,
    )
    result.slope = growth(samples, load.spec.seconds)
    print_phase(result)
    return result


#: Stages of one message, between consecutive timestamps (names, what they hold).
STAGES = (
    ("webhook sent -> body read", "network, HTTP parse, waiting for the server's loop"),
    ("body read -> routing batch start", "ingest commit (fsync), waiting for the worker"),
    ("batch start -> send starts", "routing the batch, its commit, the dispatcher's claim"),
    ("send starts -> fake accepts", "twilio client + aiohttp out, the fake's parse"),
    ("fake accepts -> answer read", "the 201 back into the twilio client"),
)


def growth(samples: list[Sample], seconds: float) -> float:
    """Least-squares slope (messages/s) of the queue depth over the second half of the load."""
    points = [(s.t, s.depth) for s in samples if seconds / 2 <= s.t <= seconds]
    if len(points) < 3:
        return float("nan")
    mean_t = sum(t for t, _ in points) / len(points)
    mean_d = sum(d for _, d in points) / len(points)
    num = sum((t - mean_t) * (d - mean_d) for t, d in points)
    den = sum((t - mean_t) ** 2 for t, _ in points)
    return num / den if den else float("nan")


# -- printing --------------------------------------------------------------------------------


def print_phase(r: Result) -> None:
    print(
        f"  {'t s':>5}{'offered':>9}{'stored':>8}{'accepted':>10}{'unrouted':>10}"
        f"{'pending':>9}{'sending':>9}{'depth':>7}"
    )
    previous = Sample(0.0, 0, 0, 0, 0, 0, 0)
    for number, sample in enumerate(r.samples, 1):
        when = "end" if number == len(r.samples) else f"{sample.t:.1f}"
        print(
            f"  {when:>5}{sample.offered - previous.offered:>9,}"
            f"{sample.stored - previous.stored:>8,}{sample.accepted - previous.accepted:>10,}"
            f"{sample.unrouted:>10,}{sample.pending:>9,}{sample.sending:>9,}{sample.depth:>7,}"
        )
        previous = sample
    print(
        "  (offered, stored, accepted: webhooks sent, webhooks answered 200, replies accepted\n"
        "   by the fake, in each interval; unrouted: events stored and not routed yet;\n"
        "   pending / sending: outbox rows waiting / under way (read-only sqlite); depth: sum;\n"
        "   end: after the drain)"
    )
    print(
        f"  sent {r.sent:,} at {r.offered_per_s:,.0f}/s; accepted {r.accepted_per_s:,.0f} msg/s "
        f"(first send to last acceptance), {r.accepted_in_load_per_s:,.0f} msg/s while the load "
        f"lasted; last reply {r.drain_s * 1000:,.0f} ms after the "
        f"last webhook; server CPU {r.server_cpu.server:.0%} of its core (other "
        f"{r.server_cpu.others:.0%}) during the load"
        + (f"; worker process {r.worker_cpu:.0%} of a core" if r.worker_cpu else "")
        + f"; {r.cpu_ms_per_message:.2f} ms of server CPU per message, load and drain"
    )
    lat = r.latencies
    print(
        f"  webhook sent -> reply accepted, ms: p50 {pct(lat, 0.5):.1f}  p95 {pct(lat, 0.95):.1f}"
        f"  p99 {pct(lat, 0.99):.1f}  max {max(lat, default=float('nan')):.1f}  ({len(lat):,})"
    )
    print(
        f"  webhook answered (client), ms: p50 {pct(r.answer_ms, 0.5):.1f}  "
        f"p99 {pct(r.answer_ms, 0.99):.1f}; send lag behind schedule, ms: p50 "
        f"{pct(r.lag_ms, 0.5):.2f}  p99 {pct(r.lag_ms, 0.99):.2f}  max {max(r.lag_ms):.1f}; "
        f"{r.connections} connections"
        + (f", {r.pool_waits} sends waited for one" if r.pool_waits else "")
        + (f", {r.reconnects} reconnects" if r.reconnects else "")
    )
    print(f"  {'stage (one attempt each), ms':<36}{'p50':>8}{'p99':>8}   what it holds")
    for name, what in STAGES:
        values = r.stages[name]
        print(f"  {name:<36}{pct(values, 0.5):>8.1f}{pct(values, 0.99):>8.1f}   {what}")
    statuses = ", ".join(f"{s} {n:,}" for s, n in sorted(r.statuses.items()))
    attempts = ", ".join(f"{a}: {n:,}" for a, n in sorted(r.attempts.items()))
    print(f"  outbox rows: {statuses}; attempts per row: {attempts}")
    print(f"  queue growth over the load's second half: {r.slope:+,.1f} messages/s")
    if not r.ok:
        print("  !! " + problems(r), file=sys.stderr)


def problems(r: Result) -> str:
    out = []
    if r.refused:
        out.append(f"webhooks not answered 200: {r.refused}")
    if r.lost:
        out.append(f"{len(r.lost)} replies lost (e.g. ids {r.lost[:5]})")
    if r.duplicates:
        some = dict(list(r.duplicates.items())[:5])
        out.append(f"{len(r.duplicates)} replies accepted more than once (id: times {some})")
    if r.misrouted:
        out.append(f"{len(r.misrouted)} replies to the wrong number or from the wrong one")
    if r.unknown:
        out.append(
            f"{len(r.unknown)} accepted messages of no webhook of this phase: {r.unknown[:2]}"
        )
    return "; ".join(out)


def print_summary(results: list[Result]) -> None:
    print("\n== Summary")
    print(
        f"  {'offered':>10}{'sent':>8}{'acc/s load':>12}{'acc/s all':>11}{'p50 ms':>8}{'p95 ms':>8}"
        f"{'p99 ms':>8}{'max ms':>8}{'peak depth':>12}{'growth/s':>10}{'lost':>6}{'dup':>5}"
        f"{'srv CPU':>9}"
    )
    for r in results:
        lat = r.latencies
        print(
            f"  {r.spec.rate:>8,.0f}/s{r.sent:>8,}{r.accepted_in_load_per_s:>12,.0f}"
            f"{r.accepted_per_s:>11,.0f}"
            f"{pct(lat, 0.5):>8.1f}{pct(lat, 0.95):>8.1f}{pct(lat, 0.99):>8.1f}"
            f"{max(lat, default=float('nan')):>8.1f}"
            f"{max((s.depth for s in r.samples), default=0):>12,}{r.slope:>+10.1f}"
            f"{len(r.lost):>6}{len(r.duplicates):>5}{r.server_cpu.server:>9.0%}"
        )
    print(
        "  (acc/s: replies accepted per second while the load lasted / from the first webhook to\n"
        "   the last reply; latency: webhook written to the socket -> reply accepted by the fake,\n"
        "   wall clock; growth: slope of the queue depth over the load's second half)"
    )
    for r in results:
        if r.spec.rate <= 100:
            verdict = "met" if pct(r.latencies, 0.5) <= 50 else "MISSED"
            print(f"  aim at {r.spec.rate:,.0f}/s, p50 <= 50 ms: {verdict}")
        else:
            if math.isnan(r.slope):
                judged = "not judged (too short for a slope)" if r.ok else "MISSED"
            else:
                judged = "met" if r.slope <= 0.02 * r.spec.rate and r.ok else "MISSED"
            print(
                f"  aim at {r.spec.rate:,.0f}/s, no unbounded growth and no loss: {judged} "
                f"(growth {r.slope:+,.1f}/s, drained {r.drain_s:.1f} s after the last webhook, "
                f"{len(r.lost)} lost, {len(r.duplicates)} duplicated)"
            )


def print_environment(args: argparse.Namespace, folder: Path, fake: Fake) -> None:
    from importlib.metadata import version

    libs = ", ".join(
        f"{p} {version(p)}" for p in ("litestar", "uvicorn", "uvloop", "aiosqlite", "twilio")
    )
    print("End-to-end benchmark: signed SMS -> ingest -> worker -> dispatcher -> fake Twilio")
    print(f"  command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(ROOT)}")
    print(f"  host    : {platform.node()}, {proc_stats.cpu_model()}, {os.cpu_count()} CPUs")
    print(f"  python  : {platform.python_version()}, sqlite {sqlite3.sqlite_version}; {libs}")
    print(
        f"  load    : {args.conversations:,} customers writing to {args.numbers} of our numbers "
        f"(rate_per_second = {args.rate_per_number:g} each), {args.arrivals} arrivals; "
        f"server on CPU {args.server_cpu}, this client and the fake ({fake.where}) on CPU "
        f"{args.client_cpu}; logs at {args.log_level}"
        + (
            f"; split: serve ingests, a worker process (CPU {args.worker_cpu}) routes and sends"
            if args.split
            else ""
        )
    )
    print(f"  store   : {folder}, {proc_stats.fsync_latency(folder)}")
    print(f"  loadavg : {proc_stats.loadavg()} (before)")


# -- main ------------------------------------------------------------------------------------


def parse_phases(text: str) -> list[PhaseSpec]:
    out = []
    for part in text.split(","):
        rate, _, seconds = part.partition(":")
        try:
            spec = PhaseSpec(float(rate), float(seconds))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: want RATE:SECONDS") from None
        if spec.rate <= 0 or spec.seconds <= 0:
            raise argparse.ArgumentTypeError(f"{part!r}: rate and seconds must be > 0")
        out.append(spec)
    return out


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--phases",
        type=parse_phases,
        default=parse_phases("100:20,1000:10"),
        help="RATE:SECONDS,... offered messages/s and duration, in order (100:20,1000:10)",
    )
    parser.add_argument("--arrivals", choices=("poisson", "fixed"), default="poisson")
    parser.add_argument("--seed", type=int, default=9, help="arrivals and senders (9)")
    parser.add_argument("--conversations", type=int, default=2_000, help="customers (2,000)")
    parser.add_argument("--numbers", type=int, default=20, help="our numbers written to (20)")
    parser.add_argument(
        "--rate-per-number", type=float, default=100, help="channels.sms.rate_per_second (100)"
    )
    parser.add_argument(
        "--fake",
        choices=("process", "thread"),
        default="process",
        help="run FakeTwilio in a child process (default) or a thread of this process",
    )
    parser.add_argument(
        "--dispatch-concurrency",
        type=int,
        help="[dispatch] concurrency: sends in flight at once (default: the shipped default)",
    )
    parser.add_argument("--connections", type=int, default=16, help="opened before a phase (16)")
    parser.add_argument(
        "--max-connections", type=int, default=512, help="at most, when all are busy (512)"
    )
    parser.add_argument("--sample-s", type=float, default=1.0, help="queue depth interval (1 s)")
    parser.add_argument(
        "--drain-deadline",
        type=float,
        default=120,
        help="seconds after the load for every reply to be accepted (120)",
    )
    parser.add_argument(
        "--settle", type=float, default=1.0, help="seconds to wait for late duplicates (1)"
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the server (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for this client (1)")
    parser.add_argument("--no-pin", action="store_true", help="pin nothing to a core")
    parser.add_argument(
        "--split",
        action="store_true",
        help="serve only ingests ([worker] in_serve = false); a `switchboard worker` process "
        "routes and sends",
    )
    parser.add_argument(
        "--worker-cpu",
        type=int,
        default=None,
        help="core for the worker process with --split (default: not pinned)",
    )
    parser.add_argument("--log-level", default="info", help="server logging.level (info)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the server (with --split: the worker) with py-spy for every phase "
        "(FILE.svg flamegraph, FILE.txt collapsed stacks); a profiled run's figures are low",
    )
    parser.add_argument("--db-dir", help="where the store goes (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (store, log)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the server command")
    args = parser.parse_args()
    if args.conversations < 1 or args.numbers < 1 or args.rate_per_number <= 0:
        parser.error("--conversations and --numbers must be >= 1, --rate-per-number > 0")
    if args.profile:
        find_py_spy(args, parser)
    settle_pinning(args)
    return args


def main() -> None:
    args = parse_args()
    client_loop(args)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-e2e-", dir=args.db_dir))
    fake = Fake(args.fake)
    print_environment(args, tmp, fake)
    rng = random.Random(args.seed)
    started = time.perf_counter()
    plans, next_id = [], 1
    for spec in args.phases:
        plans.append(plan(spec, next_id, args, rng))
        next_id += len(plans[-1].ids)
    spare = plan(PhaseSpec(1, 1), 0, argparse.Namespace(**{**vars(args), "arrivals": "fixed"}), rng)
    print(
        f"  requests: signed {sum(len(p.ids) for p in plans) + 1:,} in "
        f"{time.perf_counter() - started:.1f} s"
    )
    results: list[Result] = []
    server = None
    profiler = None
    try:
        server = Server(tmp, fake.url, args)
        preflight(server.port, spare.requests[0])
        if not _wait(lambda: fake.count() >= 1, 30):
            sys.exit(f"the pre-flight reply never reached the fake (server log: {server.log})")
        if args.profile:
            fmt = "raw" if args.profile.endswith(".txt") else "flamegraph"
            cmd = [args.py_spy, "record", "--threads", "-r", "100", "-f", fmt]
            profiler = subprocess.Popen(
                [*cmd, "-o", args.profile, "-p", str(server.sender_pid)], stdout=subprocess.DEVNULL
            )
            time.sleep(0.5)
        for number, load in enumerate(plans, 1):
            results.append(run_phase(load, server, fake, args, number))
            time.sleep(0.5)
        if profiler is not None:
            profiler.send_signal(signal.SIGINT)
            profiler.wait(timeout=60)
            print(f"\n  profile of the server: {args.profile}")
        print_summary(results)
        print(f"  loadavg after: {proc_stats.loadavg()}")
        errors = fake.errors()
        if errors:
            print(f"  !! the fake failed {len(errors)} requests: {errors[:3]}", file=sys.stderr)
        bad = [r for r in results if not r.ok]
        if bad or errors:
            for r in bad:
                print(f"\n!! {r.spec.label}: {problems(r)}", file=sys.stderr)
            print(f"   server log: {server.log}", file=sys.stderr)
            args.keep = True
            sys.exit(1)
    except SystemExit:
        args.keep = True
        raise
    finally:
        if profiler is not None and profiler.poll() is None:
            profiler.kill()
        if server is not None:
            server.stop()
        fake.stop()
        if args.keep:
            print(f"\n  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _wait(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


if __name__ == "__main__":
    main()
