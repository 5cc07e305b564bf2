"""Pipeline benchmark: signed inbound SMS through HTTP, routed by the worker in the same server.

In one run, with the same distinct signed requests (one MessageSid each) spread over
`--conversations` senders, each phase on a fresh `switchboard serve` (a real process, pinned to
one core, logs at `info` as shipped) with a rules folder of its own holding one rule that
replies to every SMS, so every event makes exactly one outbox row (`<event_id>:echo:0`):

A. ingest alone: `[worker] in_serve = false`; req/s of N webhooks (the baseline);
B. the pipeline: the worker on (the default); req/s of ingest while the worker runs, then the
   wait until every event is `processed`: events processed per second (first request to last
   event processed) and per-event latency from the webhook's arrival to its outbox row;
C. backlog drain: A's store (N events waiting), served again with the worker on: events/s of
   the worker alone on a backlog (no ingest beside it).

The client is a lean asyncio HTTP/1.1 client in this process (keep-alive connections, requests
built and signed before the clock starts), pinned to the other core. While the worker runs, a
poll of the SQLite file (read-only, every `--poll-ms`) records when outbox rows become visible,
so a row's commit time is known to within one poll.

The run fails (exit 1) if any event is not `processed` in time, or any outbox row is missing.

Run: .venv/bin/python bench/pipeline.py                       (10,000 SMS, 1,000 conversations)
     .venv/bin/python bench/pipeline.py --events 1000         (a smoke run)
     .venv/bin/python bench/pipeline.py --rounds 3            (medians)
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import os
import platform
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from statistics import median
from urllib.parse import urlencode

import proc_stats
import signed_requests
from harness import (
    StoreReader,
    StoreTarget,
    client_loop,
    find_py_spy,
    pct,
    query,
    settle_pinning,
    start_serve,
    start_worker,
)
from ingest import PATH, PUBLIC_URL, TOKEN, free_port

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
ADMIN_TOKEN = "bench-admin-token"
TO_NUMBER = "+15559870000"
#: One rule: every SMS gets a reply, so every event makes one outbox row `<event_id>:echo:0`.
RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms}
    then:
      - reply: {text: "got it"}
"""
RULE_ID = "echo"


def sender(conversation: int) -> str:
    """A US number in California (area code 415: none of the state windows of
    statemachines.quiet_hours; replies are `conversational` anyway, never held), in the 555
    exchange and the ones after it: 10,000 conversations per exchange."""
    return f"+1415{555 + conversation // 10_000:03d}{conversation % 10_000:04d}"


# -- requests --------------------------------------------------------------------------------


def build_requests(count: int, conversations: int) -> list[bytes]:
    """`count` raw HTTP/1.1 requests (keep-alive), each a real-looking Twilio inbound SMS with
    its own MessageSid, message i from conversation i % conversations, signed with twilio's own
    RequestValidator for the public URL (the signature does not cover the port)."""
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    url = PUBLIC_URL + PATH
    head = f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    head += "Content-Type: application/x-www-form-urlencoded\r\n"
    out = []
    for index in range(count):
        fields = signed_requests.params(index)
        fields["From"] = sender(index % conversations)
        fields["To"] = TO_NUMBER
        body = urlencode(fields).encode()
        signature = validator.compute_signature(url, fields)
        out.append(
            (
                f"{head}X-Twilio-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode()
            + body
        )
    return out


# -- the client ------------------------------------------------------------------------------


@dataclass
class LoadRun:
    """What the client saw: wall times (epoch seconds) and per-request latencies."""

    started: float
    finished: float
    latencies: list[float]
    statuses: dict[int, int]
    reconnects: int

    @property
    def rps(self) -> float:
        return len(self.latencies) / max(self.finished - self.started, 1e-9)

    @property
    def non_200(self) -> int:
        return sum(n for status, n in self.statuses.items() if status != 200)


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = _CONTENT_LENGTH.search(head)
    if length is None:
        raise RuntimeError(f"answer without Content-Length: {head[:200]!r}")
    if int(length[1]):
        await reader.readexactly(int(length[1]))
    return int(head[9:12])


async def drive(port: int, requests: list[bytes], concurrency: int) -> LoadRun:
    """Send every request once over `concurrency` keep-alive connections; a request whose
    connection broke is sent again on a new one (the store dedupes on MessageSid)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    cursor = iter(requests)
    reconnects = 0

    async def connection() -> None:
        nonlocal reconnects
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for request in cursor:
                for attempt in range(3):
                    sent = time.perf_counter()
                    try:
                        status = await _exchange(reader, writer, request)
                        break
                    except (ConnectionError, asyncio.IncompleteReadError):
                        if attempt == 2:
                            raise
                        reconnects += 1
                        writer.close()
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                latencies.append(time.perf_counter() - sent)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    started = time.time()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return LoadRun(started, time.time(), latencies, statuses, reconnects)


def preflight(port: int, request: bytes) -> None:
    """One signed request outside the load must be answered 200, or the run is pointless."""

    async def once() -> int:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return await _exchange(reader, writer, request)
        finally:
            writer.close()

    status = asyncio.run(once())
    if status != 200:
        sys.exit(f"pre-flight signed request answered {status}, expected 200")


# -- watching the store ----------------------------------------------------------------------


@dataclass
class Watch:
    """Samples of (epoch seconds, max outbox seq, unfinished events) taken while the worker runs."""

    times: list[float] = field(default_factory=list)
    max_seq: list[int] = field(default_factory=list)
    unfinished: list[int] = field(default_factory=list)

    def seen_at(self, seq: int) -> float:
        """When the row `seq` was first seen committed (at most one poll after its commit)."""
        return self.times[bisect.bisect_left(self.max_seq, seq)]

    @property
    def interval_ms(self) -> float:
        gaps = [b - a for a, b in zip(self.times, self.times[1:], strict=False)]
        return median(gaps) * 1000 if gaps else 0.0


_PROBE = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM outbox),"
    " (SELECT count(*) FROM events WHERE status IN ('received', 'processing'))"
)


async def watch_until_done(
    store: StoreTarget, poll_s: float, load: asyncio.Future[LoadRun] | None, deadline_s: float
) -> tuple[Watch, bool]:
    """Poll the store until the load (if any) has finished and no event is unfinished; False
    if `deadline_s` passed after the load without that."""
    watch = Watch()
    deadline: float | None = None if load is not None else time.monotonic() + deadline_s
    async with StoreReader(store) as reader:
        while True:
            [(max_seq, unfinished)] = await reader.rows(_PROBE)
            watch.times.append(time.time())
            watch.max_seq.append(max_seq)
            watch.unfinished.append(unfinished)
            if load is None or load.done():
                if unfinished == 0:
                    return watch, True
                if deadline is None:
                    deadline = time.monotonic() + deadline_s
                elif time.monotonic() > deadline:
                    return watch, False
            await asyncio.sleep(poll_s)


def wait_idle(store: StoreTarget, deadline_s: float = 30) -> None:
    """Until no event is unfinished (the pre-flight's event routed before the clock starts)."""

    async def idle() -> bool:
        async with StoreReader(store) as reader:
            deadline = time.monotonic() + deadline_s
            while (await reader.rows(_PROBE))[0][1]:
                if time.monotonic() > deadline:
                    return False
                await asyncio.sleep(0.01)
            return True

    if not asyncio.run(idle()):
        sys.exit("the pre-flight event was not processed in time")


def epoch(value: str | datetime) -> float:
    """Epoch seconds of a stored time: ISO text in SQLite, a `datetime` from PostgreSQL."""
    return (value if isinstance(value, datetime) else datetime.fromisoformat(value)).timestamp()


@dataclass
class Rows:
    """The store after a phase: every event with its outbox rows."""

    events: int
    statuses: dict[str, int]
    problems: list[str]
    #: Per event with exactly one row: (received_at, outbox created_at, outbox seq), epoch s.
    timings: list[tuple[float, float, int]]


def read_rows(store: StoreTarget, *, routed: bool) -> Rows:
    """Every event and its outbox rows; what is wrong with them (`routed`: each event must be
    `processed` with exactly its one `<id>:echo:0` row; else each `received`, no rows)."""
    events = query(store, "SELECT id, status, received_at FROM events")
    outbox: dict[str, list[tuple[str, str | datetime, int]]] = {}
    for event_id, row_id, created_at, seq in query(
        store, "SELECT event_id, id, created_at, seq FROM outbox"
    ):
        outbox.setdefault(event_id, []).append((row_id, created_at, seq))
    statuses: dict[str, int] = {}
    problems: list[str] = []
    timings = []
    want = "processed" if routed else "received"
    for event_id, status, received_at in events:
        statuses[status] = statuses.get(status, 0) + 1
        rows = outbox.pop(event_id, [])
        if status != want:
            problems.append(f"event {event_id} is {status}, expected {want}")
        if not routed:
            if rows:
                problems.append(f"event {event_id} has outbox rows with the worker off")
            continue
        if [row_id for row_id, _, _ in rows] != [f"{event_id}:{RULE_ID}:0"]:
            problems.append(f"event {event_id} has outbox rows {[r for r, _, _ in rows]}")
            continue
        _, created_at, seq = rows[0]
        timings.append((epoch(received_at), epoch(created_at), seq))
    for event_id, rows in outbox.items():
        problems.append(f"outbox rows {[r for r, _, _ in rows]} of no event {event_id}")
    return Rows(len(events), statuses, problems, timings)


# -- the server ------------------------------------------------------------------------------


def config_text(
    port: int, folder: Path, store: StoreTarget, *, worker: bool, log_level: str
) -> str:
    url = store if isinstance(store, str) else f"sqlite:///{store}"
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"
max_body_bytes = 1048576
admin_token = "{ADMIN_TOKEN}"

[storage]
url = "{url}"

[rules]
path = "{folder / "rules"}"

[sources.twilio]
auth_tokens = ["{TOKEN}"]

[worker]
in_serve = {"true" if worker else "false"}

[logging]
level = "{log_level}"
"""


class Server:
    """`python -m router --config <folder>/switchboard.toml serve`, pinned to one core, on
    `store`: a PostgreSQL URL, or by default the SQLite file `<folder>/bench.db`."""

    def __init__(
        self,
        folder: Path,
        args: argparse.Namespace,
        *,
        worker: bool,
        name: str,
        store: StoreTarget | None = None,
        split: bool = False,
    ) -> None:
        """`worker`: routing in `serve`; `split`: in a `switchboard worker` process beside it
        instead (not pinned), on the same store."""
        self.folder, self.name = folder, name
        self.store: StoreTarget = folder / "bench.db" if store is None else store
        self.port = free_port()
        (folder / "rules").mkdir(parents=True, exist_ok=True)
        (folder / "rules" / "echo.yaml").write_text(RULES)
        config = folder / "switchboard.toml"
        text = config_text(
            self.port, folder, self.store, worker=worker and not split, log_level=args.log_level
        )
        config.write_text(text)
        self.log = folder / f"{name}.log"
        self.cpu = args.server_cpu
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = start_serve(
            config, self.log, base=self.base, cpu=self.cpu, verbose=args.verbose, name=name
        )
        self.worker: subprocess.Popen[bytes] | None = None
        if split:
            self.worker = start_worker(
                config, folder / f"{name}-worker.log", cpu=None, verbose=args.verbose
            )

    def cpu_sample(self) -> proc_stats.CpuSample:
        return proc_stats.cpu_sample(self.proc.pid, self.cpu)

    def worker_cpu_s(self) -> float:
        """CPU seconds the worker process has used (0 without one)."""
        if self.worker is None:
            return 0.0
        sample = proc_stats.cpu_sample(self.worker.pid, None)
        return sample.user_s + sample.system_s

    def metrics(self, processed: int) -> dict[str, float]:
        """The routing figures of /metrics (batches, their seconds, events routed), once they
        count `processed` events: the store shows a commit a moment before the worker, back
        from its thread, counts it."""
        deadline = time.monotonic() + 5
        while True:
            found = self._scrape()
            if found.get("processed", 0) >= processed or time.monotonic() > deadline:
                return found
            time.sleep(0.01)

    def _scrape(self) -> dict[str, float]:
        request = urllib.request.Request(
            self.base + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            text = resp.read().decode()
        wanted = {
            "switchboard_route_batch_seconds_count": "batches",
            "switchboard_route_batch_seconds_sum": "batch_seconds",
            'switchboard_events_routed_total{outcome="processed"}': "processed",
        }
        found: dict[str, float] = {}
        for line in text.splitlines():
            name, _, value = line.rpartition(" ")
            if name in wanted:
                found[wanted[name]] = float(value)
        return found

    def stop(self) -> None:
        if self.worker is not None:
            proc_stats.stop(self.worker)
        proc_stats.stop(self.proc)


# -- phases ----------------------------------------------------------------------------------


@dataclass
class Phase:
    """One phase's figures; absent ones stay None."""

    name: str
    load: LoadRun | None = None
    cpu: proc_stats.CpuShare | None = None
    events_per_s: float | None = None
    #: From the last ingest answer to the last event seen processed.
    lag_s: float | None = None
    claim_ms: list[float] = field(default_factory=list)
    commit_ms: list[float] = field(default_factory=list)
    poll_ms: float = 0.0
    #: The `switchboard worker` process's CPU from the first request to the last event
    #: processed, in cores (0 when the worker runs in `serve`).
    worker_cpu: float = 0.0
    metrics: dict[str, float] = field(default_factory=dict)
    rss_kb: int = 0


def fail(phase: str, rows: Rows, expected: int, server: Server | None = None) -> None:
    print(f"\n!! {phase}: the store does not hold what was sent", file=sys.stderr)
    print(
        f"   events: {rows.events} (expected {expected}); statuses: {rows.statuses}",
        file=sys.stderr,
    )
    for problem in rows.problems[:10]:
        print(f"   - {problem}", file=sys.stderr)
    if len(rows.problems) > 10:
        print(f"   ... and {len(rows.problems) - 10} more", file=sys.stderr)
    if server is not None:
        print(f"   server log: {server.log}", file=sys.stderr)
    sys.exit(1)


def check_load(name: str, load: LoadRun) -> None:
    if load.non_200:
        sys.exit(f"{name}: {load.non_200} requests were not answered 200: {load.statuses}")


def phase_ingest_alone(
    folder: Path,
    args: argparse.Namespace,
    requests: list[bytes],
    spare: bytes,
    store: StoreTarget | None = None,
) -> Phase:
    """A: the worker off; ingest N. Leaves the store with N + 1 events `received` for C."""
    print("\n== A. ingest alone ([worker] in_serve = false)", flush=True)
    server = Server(folder, args, worker=False, name="a-ingest", store=store)
    try:
        preflight(server.port, spare)
        before = server.cpu_sample()
        load = asyncio.run(drive(server.port, requests, args.concurrency))
        cpu = proc_stats.cpu_share(before, server.cpu_sample())
        rss = proc_stats.peak_rss_kb(server.proc.pid)
    finally:
        server.stop()
    check_load("A", load)
    rows = read_rows(server.store, routed=False)
    if rows.problems or rows.events != len(requests) + 1:
        fail("A", rows, len(requests) + 1, server)
    phase = Phase("A ingest alone", load=load, cpu=cpu, rss_kb=rss)
    print(f"  {load.rps:,.0f} req/s; {rows.events:,} events stored, all received")
    return phase


def phase_pipeline(
    folder: Path,
    args: argparse.Namespace,
    requests: list[bytes],
    spare: bytes,
    store: StoreTarget | None = None,
    *,
    split: bool = False,
) -> Phase:
    """B: the worker on; ingest N while it routes, then wait until every event is processed.
    `split`: routing in a `switchboard worker` process beside `serve` (B2)."""
    if split:
        print("\n== B2. serve ingests, a `switchboard worker` process routes", flush=True)
    else:
        print("\n== B. ingest with the worker running ([worker] in_serve = true)", flush=True)
    name = "b2-split" if split else "b-pipeline"
    server = Server(folder, args, worker=True, name=name, store=store, split=split)
    expected = len(requests) + 1
    try:
        preflight(server.port, spare)
        wait_idle(server.store)
        base_seq = read_max_seq(server.store)

        # B2 profiles its worker process, into FILE-b2-worker.EXT beside B's FILE.EXT.
        profiled = server.worker or server.proc
        path = (
            str(Path(args.profile).with_stem(Path(args.profile).stem + "-b2-worker"))
            if (split and args.profile)
            else args.profile
        )
        profiler = start_profiler(args, profiled.pid, path)

        async def run() -> tuple[LoadRun, proc_stats.CpuShare, Watch, bool, float]:
            before, worker_before = server.cpu_sample(), server.worker_cpu_s()
            load_task = asyncio.ensure_future(drive(server.port, requests, args.concurrency))
            watcher = asyncio.ensure_future(
                watch_until_done(server.store, args.poll_ms / 1000, load_task, args.deadline)
            )
            load = await load_task
            cpu = proc_stats.cpu_share(before, server.cpu_sample())
            watch, done = await watcher
            worker_s = server.worker_cpu_s() - worker_before
            return load, cpu, watch, done, worker_s / max(watch.times[-1] - load.started, 1e-9)

        load, cpu, watch, done, worker_cpu = asyncio.run(run())
        stop_profiler(profiler, path, "B2's worker" if split else "the server during phase B")
        metrics = {} if split else server.metrics(expected)  # the worker serves no /metrics
        rss = proc_stats.peak_rss_kb(server.proc.pid)
    finally:
        server.stop()
    check_load("B", load)
    rows = read_rows(server.store, routed=True)
    if not done:
        print(
            f"!! B: {watch.unfinished[-1]} events still unfinished {args.deadline:.0f} s after"
            " the load (the figures below are read after the server's graceful stop)",
            file=sys.stderr,
        )
    if not done or rows.problems or rows.events != expected:
        fail("B", rows, expected, server)
    last = watch.times[-1]
    phase = Phase(
        "B2 split" if split else "B pipeline",
        load=load,
        cpu=cpu,
        rss_kb=rss,
        metrics=metrics,
        worker_cpu=worker_cpu,
    )
    phase.events_per_s = len(requests) / (last - load.started)
    phase.lag_s = last - load.finished
    phase.poll_ms = watch.interval_ms
    for received, created, seq in rows.timings:
        if seq <= base_seq:
            continue  # the pre-flight's event, routed before the clock started
        phase.claim_ms.append((created - received) * 1000)
        phase.commit_ms.append((watch.seen_at(seq) - received) * 1000)
    beside = f"; worker process {worker_cpu:.0%} of a core" if split else ""
    print(
        f"  ingest {load.rps:,.0f} req/s; {phase.events_per_s:,.0f} events processed/s; "
        f"all {rows.events:,} processed, one outbox row each{beside}"
    )
    return phase


def start_profiler(
    args: argparse.Namespace, pid: int, path: str | None = None
) -> subprocess.Popen[bytes] | None:
    """py-spy sampling process `pid` (every thread) into `path` (default: --profile) until
    stopped, if --profile asked for it."""
    if not args.profile:
        return None
    path = path or args.profile
    fmt = "raw" if path.endswith(".txt") else "flamegraph"
    cmd = [args.py_spy, "record", "--threads", "-r", "100", "-f", fmt, "-o", path]
    profiler = subprocess.Popen([*cmd, "-p", str(pid)], stdout=subprocess.DEVNULL)
    time.sleep(0.5)  # attached before the load starts
    return profiler


def stop_profiler(
    profiler: subprocess.Popen[bytes] | None, path: str, what: str = "the server during phase B"
) -> None:
    if profiler is None:
        return
    profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    profiler.wait(timeout=60)
    print(f"  profile of {what}: {path}")


def phase_backlog(
    folder: Path, args: argparse.Namespace, store: StoreTarget | None = None
) -> Phase:
    """C: A's store (`store`, or A's SQLite file in `folder`), N + 1 events waiting; the worker
    alone drains them."""
    print("\n== C. backlog drain: A's store served again with the worker on", flush=True)
    store = folder / "bench.db" if store is None else store
    stored = read_rows(store, routed=False).events

    async def run(server: Server) -> tuple[Watch, bool]:
        return await watch_until_done(server.store, args.poll_ms / 1000, None, args.deadline)

    # the worker starts at once
    server = Server(folder, args, worker=True, name="c-backlog", store=store)
    try:
        before = server.cpu_sample()
        watch, done = asyncio.run(run(server))
        cpu = proc_stats.cpu_share(before, server.cpu_sample())
        metrics = server.metrics(stored)
        rss = proc_stats.peak_rss_kb(server.proc.pid)
    finally:
        server.stop()
    rows = read_rows(server.store, routed=True)
    if not done:
        print(
            f"!! C: {watch.unfinished[-1]} events still unfinished after {args.deadline:.0f} s"
            " (the figures below are read after the server's graceful stop)",
            file=sys.stderr,
        )
    if not done or rows.problems or rows.events != stored:
        fail("C", rows, stored, server)
    if watch.unfinished[0] == 0:
        print("  WARNING: the backlog was drained before the first poll: the rate is a lower bound")
    first_claim = min(created for _, created, _ in rows.timings)
    phase = Phase("C backlog drain", cpu=cpu, rss_kb=rss, metrics=metrics)
    phase.events_per_s = rows.events / (watch.times[-1] - first_claim)
    phase.poll_ms = watch.interval_ms
    print(f"  {phase.events_per_s:,.0f} events/s from the first claim to the last commit seen")
    return phase


def read_max_seq(store: StoreTarget) -> int:
    return int(query(store, _PROBE)[0][0])


# -- printing --------------------------------------------------------------------------------


def print_environment(args: argparse.Namespace, folder: Path) -> None:
    from importlib.metadata import version

    libs = ", ".join(f"{p} {version(p)}" for p in ("litestar", "uvicorn", "uvloop", "aiosqlite"))
    print("Pipeline benchmark: signed SMS -> durable ingest -> worker -> outbox, one server")
    print(f"  command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(ROOT)}")
    print(f"  host    : {platform.node()}, {proc_stats.cpu_model()}, {os.cpu_count()} CPUs")
    print(f"  python  : {platform.python_version()}, sqlite {sqlite3.sqlite_version}; {libs}")
    print(
        f"  load    : {args.events:,} signed inbound SMS over {args.conversations:,} "
        f"conversations, {args.concurrency} keep-alive connections; server on CPU "
        f"{args.server_cpu}, client on CPU {args.client_cpu}; logs at {args.log_level}"
    )
    print(f"  store   : {folder}, {proc_stats.fsync_latency(folder)}")
    print(f"  loadavg : {proc_stats.loadavg()} (before)")


def print_round(a: Phase, b: Phase, c: Phase | None) -> None:
    assert a.load is not None and b.load is not None and a.cpu is not None and b.cpu is not None
    print("\n== Results")
    print(
        f"  {'':<24}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'srv CPU':>9}{'other':>7}{'peak RSS':>10}"
    )
    for phase in (a, b):
        load, cpu = phase.load, phase.cpu
        assert load is not None and cpu is not None
        lat = [x * 1000 for x in load.latencies]
        print(
            f"  {'ingest, ' + ('alone' if phase is a else 'worker running'):<24}{load.rps:>8,.0f}"
            f"{pct(lat, 0.5):>8.2f}{pct(lat, 0.99):>8.2f}{max(lat):>8.1f}"
            f"{cpu.server:>9.0%}{cpu.others:>7.0%}{phase.rss_kb / 1024:>8.1f}MB"
        )
    print("  (client-side latency of the webhook answers; srv CPU: the server's share of its")
    print("   core during the load; other: what other processes took of that core meanwhile)")
    print(f"\n  ingest ratio, worker running / alone: {b.load.rps / a.load.rps:.2f}x")
    assert b.events_per_s is not None and b.lag_s is not None
    print(
        f"\n  events processed/s (first request to last event processed): "
        f"{b.events_per_s:,.0f}  (aim >= 2,000)"
    )
    print(f"  last event processed {b.lag_s * 1000:,.0f} ms after the last ingest answer")
    print(f"\n  {'per event latency, ms':<50}{'p50':>8}{'p99':>8}{'max':>8}")
    for label, values in (
        ("arrival -> claimed (outbox.created_at)", b.claim_ms),
        (f"arrival -> outbox row committed (seen, {b.poll_ms:.0f} ms poll)", b.commit_ms),
    ):
        print(f"  {label:<50}{pct(values, 0.5):>8.1f}{pct(values, 0.99):>8.1f}{max(values):>8.1f}")
    print("  (received_at is stamped once the body is read; created_at is the worker's clock at")
    print("   the start of the batch that routed the event; 'committed' is the first poll of the")
    print("   store that saw the row, at most one poll late)")
    for routed in (b, c):
        if routed is None or not routed.metrics:
            continue
        m = routed.metrics
        batches = m.get("batches", 0) or 1
        print(
            f"  {routed.name}: {m.get('batches', 0):,.0f} worker batches, "
            f"{m.get('processed', 0) / batches:,.0f} events and "
            f"{m.get('batch_seconds', 0) / batches * 1000:,.1f} ms each on average"
        )
    if c is not None:
        assert c.events_per_s is not None and c.cpu is not None
        print(
            f"\n  backlog drain (worker alone, no ingest): {c.events_per_s:,.0f} events/s; "
            f"server CPU {c.cpu.server:.0%}, other {c.cpu.others:.0%}"
        )


def print_summary(rounds: list[tuple[Phase, Phase, Phase | None]]) -> None:
    def med(values: list[float]) -> float:
        return median(values) if values else float("nan")

    print(f"\n== Medians over {len(rounds)} rounds")
    alone = [a.load.rps for a, _, _ in rounds if a.load]
    beside = [b.load.rps for _, b, _ in rounds if b.load]
    ratios = sorted(x / y for x, y in zip(beside, alone, strict=True))
    print(f"  ingest alone: {med(alone):,.0f} req/s; worker running: {med(beside):,.0f} req/s")
    each = ", ".join(f"{r:.2f}" for r in ratios)
    print(f"  ratio worker running / alone: {med(ratios):.2f}x ({each})")
    rates = [b.events_per_s for _, b, _ in rounds if b.events_per_s]
    print(f"  events processed/s: {med(rates):,.0f} ({', '.join(f'{r:,.0f}' for r in rates)})")
    print(
        f"  arrival -> committed: p50 {med([pct(b.commit_ms, 0.5) for _, b, _ in rounds]):.1f} ms,"
        f" p99 {med([pct(b.commit_ms, 0.99) for _, b, _ in rounds]):.1f} ms"
    )
    drains = [c.events_per_s for _, _, c in rounds if c is not None and c.events_per_s]
    if drains:
        print(f"  backlog drain: {med(drains):,.0f} events/s")


# -- main ------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000, help="signed SMS sent (10,000)")
    parser.add_argument("--conversations", type=int, default=1_000, help="distinct senders (1,000)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (64)")
    parser.add_argument("--rounds", type=int, default=1, help="A, B, C this many times; medians")
    parser.add_argument("--no-backlog", action="store_true", help="skip phase C")
    parser.add_argument(
        "--deadline",
        type=float,
        default=120,
        help="seconds to wait, after the load, for every event to be processed (120)",
    )
    parser.add_argument("--poll-ms", type=float, default=10, help="store poll interval (10 ms)")
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the server (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for this client (1)")
    parser.add_argument(
        "--no-pin", action="store_true", help="pin neither the server nor the client to a core"
    )
    parser.add_argument("--log-level", default="info", help="server logging.level (info)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record phase B's server with py-spy (every thread): FILE.svg flamegraph, "
        "FILE.txt collapsed stacks (pip install py-spy first; a profiled run's figures are low)",
    )
    parser.add_argument("--db-dir", help="where the stores go (default: the system temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (stores, logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the server commands")
    args = parser.parse_args()
    if args.events < 1 or args.conversations < 1 or args.concurrency < 1 or args.rounds < 1:
        parser.error("--events, --conversations, --concurrency and --rounds must be >= 1")
    if args.conversations > 4_000_000:
        parser.error("--conversations: at most 4,000,000 senders")
    if args.profile:
        find_py_spy(args, parser)
    settle_pinning(args)
    return args


def main() -> None:
    args = parse_args()
    client_loop(args)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-pipeline-", dir=args.db_dir))
    print_environment(args, tmp)
    started = time.perf_counter()
    every = build_requests(args.events + 1, args.conversations)
    requests, spare = every[:-1], every[-1]
    print(f"  requests: signed {len(every):,} in {time.perf_counter() - started:.1f} s")
    rounds: list[tuple[Phase, Phase, Phase | None]] = []
    try:
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"\n######## round {number} of {args.rounds}")
            folder_a, folder_b = tmp / f"r{number}-a", tmp / f"r{number}-b"
            a = phase_ingest_alone(folder_a, args, requests, spare)
            b = phase_pipeline(folder_b, args, requests, spare)
            c = None if args.no_backlog else phase_backlog(folder_a, args)
            print_round(a, b, c)
            print(f"  loadavg after: {proc_stats.loadavg()}")
            rounds.append((a, b, c))
        if len(rounds) > 1:
            print_summary(rounds)
    except SystemExit:
        args.keep = True  # the stores and server logs of a failed run
        raise
    finally:
        if args.keep:
            print(f"\n  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
