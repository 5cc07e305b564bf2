"""PostgreSQL beside SQLite (issue 10): ingest req/s with one and two servers, and events
processed per second, in one run, with the database on this same box.

1. Ingest, bench/ingest.py's method: `switchboard serve` with `[worker] in_serve = false`,
   `wrk` with bench/ingest.lua cycling through pre-signed distinct Twilio webhooks, for
   `--duration` s each: SQLite with one server (the baseline), PostgreSQL with one server, and
   PostgreSQL with two servers on two ports, loaded at once by two wrk processes that split the
   connections and the requests (disjoint slices of the file), their req/s summed. Prints
   req/s, the ratio to SQLite, latency, the CPU each party spent per request (servers,
   PostgreSQL's processes, wrk) and how busy each core was; counts the rows in the store
   against the 2xx answers.
2. Events processed per second, bench/pipeline.py's method (its phases, imported): one echo
   rule, N signed SMS over M conversations from a Python client on the other core; on SQLite
   and on PostgreSQL: A ingest alone, B one `serve` with its worker routing while ingest runs,
   C backlog drain (A's store, served again with the worker on), and B2 as B with the routing
   in a `switchboard worker` process beside `serve` (not pinned), the scale-out shape.

Every PostgreSQL store is a fresh database `switchboard_bench_<random>_<name>`, created through
`--admin-url` and dropped at the end (`--keep` keeps them). The PostgreSQL server is not pinned:
its processes run on whichever core is free, beside wrk or the client and the servers.

3. With --statements: what each statement of the pipeline cost PostgreSQL per event, per
   phase's database, from pg_stat_statements (when the server has it loaded).

Run: .venv/bin/python bench/postgres.py                   (15 s per ingest run, 10,000 SMS)
     .venv/bin/python bench/postgres.py --quick           (a smoke run: 3 s, 1,000 SMS)
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import harness
import ingest
import pg_admin
import pipeline
import proc_stats
import signed_requests

ROOT = Path(__file__).resolve().parents[1]
#: Issue 10's aims on this box, for PostgreSQL.
AIM_INGEST_RPS = 5_000
AIM_EVENTS_PER_S = 2_000
LIBS = ("litestar", "uvicorn", "uvloop", "httptools", "aiosqlite", "asyncpg", "twilio")


# -- ingest ----------------------------------------------------------------------------------


@dataclass
class IngestRun:
    """One configuration's ingest: wrk's figures per server, and what each party spent."""

    name: str
    wrk: list[dict[str, Any]]
    #: CPU seconds during the load: each server, PostgreSQL's processes (None on SQLite), wrk.
    server_cpu_s: list[float]
    pg_cpu_s: float | None
    #: WAL the PostgreSQL server wrote during the load (None on SQLite).
    wal_bytes: int | None
    wrk_cpu_s: float
    #: Busy share of each core during the load (everything on the box).
    cores: dict[int, float]
    rss_kb: list[int]
    #: Wall seconds of the sampled window (wrk's start-up, reading its file, included).
    window_s: float = 0.0
    stored: int = 0
    loadavg: str = ""

    @property
    def rps(self) -> float:
        return sum(w["requests"] / (w["duration_us"] / 1e6) for w in self.wrk)

    @property
    def requests(self) -> int:
        return sum(int(w["requests"]) for w in self.wrk)

    def total(self, key: str) -> int:
        return sum(int(w[key]) for w in self.wrk)

    def us_per_request(self, seconds: float) -> float:
        return seconds * 1e6 / max(self.requests, 1)


def core_times() -> dict[int, tuple[float, float]]:
    """(busy, total) CPU seconds of every core so far."""
    return {
        core: (sample.core_busy_s, sample.core_total_s)
        for core in range(os.cpu_count() or 1)
        for sample in [proc_stats.cpu_sample(os.getpid(), core)]
    }


def core_busy(before: dict[int, tuple[float, float]]) -> dict[int, float]:
    after = core_times()
    return {
        core: (after[core][0] - b[0]) / max(after[core][1] - b[1], 1e-9)
        for core, b in before.items()
    }


def child_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def start_servers(
    folder: Path,
    args: argparse.Namespace,
    store_url: str | None,
    cpus: list[int | None],
    spare: str,
) -> list[tuple[subprocess.Popen[bytes], str]]:
    """One `serve` per entry of `cpus` (pinned there), each answering a pre-flight request: the
    same spare request to each, stored once (the others are duplicates across processes)."""
    (folder / "rules").mkdir(parents=True)
    servers = []
    for number, cpu in enumerate(cpus, start=1):
        port = ingest.free_port()
        config = folder / f"serve{number}.toml"
        db = folder / "bench.db"
        config.write_text(ingest.config_text(port, db, args.log_level, storage_url=store_url))
        base, log = f"http://127.0.0.1:{port}", folder / f"serve{number}.log"
        proc = harness.start_serve(
            config, log, base=base, cpu=cpu, verbose=args.verbose, name=f"serve {number}"
        )
        servers.append((proc, base))
        try:
            ingest.preflight(base, spare)
        except RuntimeError as exc:
            for started, _ in servers:
                proc_stats.stop(started)
            sys.exit(f"serve {number}: {exc}; its log: {log}")
    return servers


def run_wrks(
    servers: list[tuple[subprocess.Popen[bytes], str]],
    args: argparse.Namespace,
    wrk_cpu: int | None,
) -> list[dict[str, Any]]:
    """One wrk per server at once, each with its share of the connections and threads and its
    own slice of the request file; each one's figures."""
    parts = len(servers)
    sub = argparse.Namespace(**vars(args))
    sub.connections, sub.threads = args.connections // parts, max(args.threads // parts, 1)
    sub.client_cpu = wrk_cpu

    def one(k: int) -> dict[str, Any]:
        url = servers[k][1] + ingest.PATH
        return ingest.run_wrk(sub, args.wrk, url, args.requests_file, (k, parts))

    with ThreadPoolExecutor(parts) as pool:
        return list(pool.map(one, range(parts)))


def load(
    name: str,
    servers: list[tuple[subprocess.Popen[bytes], str]],
    args: argparse.Namespace,
    wrk_cpu: int | None,
    pg_cpu: pg_admin.ServerMeter | None,
) -> IngestRun:
    """The servers under wrk, with the CPU of every party sampled around the load."""
    procs = [proc for proc, _ in servers]
    before = [proc_stats.cpu_sample(proc.pid, None) for proc in procs]
    cores, children, started = core_times(), child_cpu_s(), time.monotonic()
    if pg_cpu is not None:
        pg_cpu.start()
    profiler = ingest.start_profiler(args, procs[0].pid) if name == args.profile_run else None
    wrks = run_wrks(servers, args, wrk_cpu)
    busy, wrk_s, window = core_busy(cores), child_cpu_s() - children, time.monotonic() - started
    after = [proc_stats.cpu_sample(proc.pid, None) for proc in procs]
    pg_s = pg_cpu.stop() if pg_cpu is not None else None
    if profiler is not None:
        profiler.wait()
        print(f"  profile of serve 1 under load: {args.profile}")
    return IngestRun(
        name=name,
        wrk=wrks,
        server_cpu_s=[
            a.user_s + a.system_s - b.user_s - b.system_s
            for b, a in zip(before, after, strict=True)
        ],
        pg_cpu_s=pg_s,
        wal_bytes=pg_cpu.wal_bytes if pg_cpu is not None else None,
        wrk_cpu_s=wrk_s,
        cores=busy,
        rss_kb=[proc_stats.peak_rss_kb(p.pid) for p in procs],
        window_s=window,
        loadavg=proc_stats.loadavg(),
    )


def measure_ingest(
    name: str,
    folder: Path,
    args: argparse.Namespace,
    store: tuple[str, pg_admin.ServerMeter] | None,
    cpus: list[int | None],
    wrk_cpu: int | None,
) -> IngestRun:
    """Start the servers on a fresh store (`store`: a PostgreSQL URL and its CPU meter, or
    None for SQLite), load them, stop them, count the rows."""
    where = ", ".join(f"serve {n} on CPU {cpu}" for n, cpu in enumerate(cpus, start=1))
    wrk_where = "unpinned" if wrk_cpu is None else f"on CPU {wrk_cpu}"
    pg = "; PostgreSQL unpinned" if store else ""
    print(f"\n== ingest: {name} ({where}; wrk {wrk_where}{pg})", flush=True)
    url = store[0] if store else None
    servers = start_servers(folder, args, url, cpus, args.spare)
    try:
        run = load(name, servers, args, wrk_cpu, store[1] if store else None)
    finally:
        for proc, _ in servers:
            proc_stats.stop(proc)
    sql = "SELECT count(*) FROM events"
    run.stored = harness.query(url if url else folder / "bench.db", sql)[0][0]
    print(f"  {run.rps:,.0f} req/s; {run.stored:,} events stored")
    return run


def print_ingest(runs: list[IngestRun]) -> None:
    base = runs[0]
    print("\n== 1. Ingest req/s (wrk, pre-signed distinct requests, [worker] in_serve = false)")
    print(
        f"  {'':<20}{'req/s':>8}{'x SQLite':>9}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>8}"
        f"{'errors':>7}   {'CPU us per request: serve':>26}{'PG':>6}{'wrk':>6}   "
        f"{'busy: core 0':>12}{'core 1':>7}"
    )
    for run in runs:
        errors = sum(
            run.total(k) for k in ("connect_errors", "read_errors", "write_errors", "timeouts")
        )
        pg = f"{run.us_per_request(run.pg_cpu_s):.0f}" if run.pg_cpu_s is not None else "-"
        print(
            f"  {run.name:<20}{run.rps:>8,.0f}{run.rps / base.rps:>8.2f}x"
            f"{max(w['p50_us'] for w in run.wrk) / 1000:>8.2f}"
            f"{max(w['p99_us'] for w in run.wrk) / 1000:>8.2f}{run.total('non_2xx_3xx'):>8}"
            f"{errors:>7}   {run.us_per_request(sum(run.server_cpu_s)):>26.0f}{pg:>6}"
            f"{run.us_per_request(run.wrk_cpu_s):>6.0f}   "
            + "".join(f"{run.cores.get(c, 0):>{w}.0%}" for c, w in ((0, 12), (1, 7)))
        )
    print("  (p50/p99: the worse wrk's with two servers; CPU per request: CPU seconds of the serve")
    print("   processes, of PostgreSQL (unpinned: the bench's backends and the server's background")
    print("   processes) and of wrk (reading its request file at start-up included) from wrk's")
    print("   start to its end, per request answered; busy: each core's share used by everything")
    print("   on the box over that window)")
    for run in runs:
        each = " + ".join(f"{w['requests'] / (w['duration_us'] / 1e6):,.0f}" for w in run.wrk)
        cpu = ", ".join(f"{s / run.window_s:.0%}" for s in run.server_cpu_s)
        rss = ", ".join(f"{kb / 1024:.0f}" for kb in run.rss_kb)
        wal = (
            "" if run.wal_bytes is None else f"; WAL {run.wal_bytes / run.requests:,.0f} B/request"
        )
        print(
            f"  {run.name}: req/s per server {each}; serve CPU {cpu} of a core; "
            f"peak RSS {rss} MB{wal}; loadavg after {run.loadavg}"
        )
    for run in runs:
        print_stored(run)


def print_stored(run: IngestRun) -> None:
    """One row per 2xx (and the pre-flight, stored once); wrk stops with up to one request per
    connection sent but unanswered, hence a range."""
    ok = run.requests - run.total("non_2xx_3xx")
    low, high = ok + 1, ok + 1 + run.total("sent") - run.requests
    verdict = "OK" if low <= run.stored <= high else "MISMATCH"
    print(
        f"  {run.name}: stored {run.stored:,} rows for {ok:,} 2xx + 1 pre-flight -> {verdict}",
        end="",
    )
    print(f" (expected {low:,}..{high:,})")
    repeated = run.total("repeated")
    if repeated:
        print(f"  WARNING: {run.name}: {repeated} repeated requests, raise --requests")


# -- the pipeline ----------------------------------------------------------------------------


@dataclass
class Pipeline:
    """bench/pipeline.py's three phases on one store."""

    name: str
    a: pipeline.Phase
    b: pipeline.Phase
    c: pipeline.Phase
    #: B with routing in a `switchboard worker` process beside `serve`.
    b2: pipeline.Phase
    #: PostgreSQL CPU seconds over each whole phase (start, migrations, stop included), and of
    #: that, the bench's own backends (the store polls and reads).
    pg_cpu_s: dict[str, float] = field(default_factory=dict)
    bench_cpu_s: dict[str, float] = field(default_factory=dict)
    wal_bytes: dict[str, int] = field(default_factory=dict)


#: The pipeline phases, in the order they run.
PHASES = ("A", "B", "C", "B2")


def run_pipeline(
    name: str,
    folder: Path,
    args: argparse.Namespace,
    stores: tuple[str, str, str] | None,
    meter: pg_admin.ServerMeter,
) -> Pipeline:
    """A, B, C and B2 on SQLite files in `folder`, or on the PostgreSQL databases `stores`
    (A's and C's, B's, B2's), with PostgreSQL's CPU over each phase."""
    print(f"\n######## pipeline on {name}", flush=True)
    a_store, b_store, b2_store = stores if stores else (None, None, None)
    phases = {
        "A": lambda: pipeline.phase_ingest_alone(
            folder / "a", args, args.sms, args.sms_spare, a_store
        ),
        "B": lambda: pipeline.phase_pipeline(folder / "b", args, args.sms, args.sms_spare, b_store),
        "C": lambda: pipeline.phase_backlog(folder / "a", args, a_store),
        "B2": lambda: pipeline.phase_pipeline(
            folder / "b2", args, args.sms, args.sms_spare, b2_store, split=True
        ),
    }
    done, pg_cpu, bench_cpu, wal = {}, {}, {}, {}
    for key, phase in phases.items():
        meter.start()
        polled = harness.StoreReader.backend_cpu_s
        done[key] = phase()
        pg_cpu[key] = meter.stop()
        wal[key] = meter.wal_bytes
        bench_cpu[key] = harness.StoreReader.backend_cpu_s - polled
    pipeline.print_round(done["A"], done["B"], done["C"])
    if not stores:
        pg_cpu, bench_cpu, wal = {}, {}, {}
    return Pipeline(name, done["A"], done["B"], done["C"], done["B2"], pg_cpu, bench_cpu, wal)


def pipeline_rows(run: Pipeline) -> dict[str, tuple[float, str]]:
    """The figures compared between stores: value (for the ratio; NaN: no ratio) and text."""
    a, b, c, b2 = run.a, run.b, run.c, run.b2
    assert a.load and b.load and a.cpu and b.cpu and c.cpu and b2.load and b2.cpu
    nan = float("nan")
    rows = {
        "A. ingest alone, req/s": (a.load.rps, f"{a.load.rps:,.0f}"),
        "B. ingest with the worker, req/s": (b.load.rps, f"{b.load.rps:,.0f}"),
        "B. events processed/s": (b.events_per_s or nan, f"{b.events_per_s or nan:,.0f}"),
        "B. arrival -> committed p50 / p99, ms": (
            nan,
            f"{harness.pct(b.commit_ms, 0.5):,.0f} / {harness.pct(b.commit_ms, 0.99):,.0f}",
        ),
        "C. backlog drain, events/s": (c.events_per_s or nan, f"{c.events_per_s or nan:,.0f}"),
        "B2. serve + worker process: ingest req/s": (b2.load.rps, f"{b2.load.rps:,.0f}"),
        "B2. events processed/s": (b2.events_per_s or nan, f"{b2.events_per_s or nan:,.0f}"),
        "B2. worker process, cores": (nan, f"{b2.worker_cpu:.2f}"),
    }
    for name, phase in (("A", a), ("B", b), ("C", c), ("B2", b2)):
        assert phase.cpu
        rows[f"{name}. server's core: serve / others"] = (
            nan,
            f"{phase.cpu.server:.0%} / {phase.cpu.others:.0%}",
        )
    if run.pg_cpu_s:
        for label, seconds in (
            ("PostgreSQL CPU per event, A / B / C / B2, us", run.pg_cpu_s),
            ("  of which the bench's polls and reads", run.bench_cpu_s),
        ):
            per_event = [seconds[phase] * 1e6 / len(b.load.latencies) for phase in PHASES]
            rows[label] = (nan, " / ".join(f"{us:,.0f}" for us in per_event))
        per_event = [run.wal_bytes[phase] / len(b.load.latencies) for phase in PHASES]
        rows["PostgreSQL WAL per event, A / B / C / B2, bytes"] = (
            nan,
            " / ".join(f"{size:,.0f}" for size in per_event),
        )
    return rows


def print_pipelines(runs: list[Pipeline]) -> None:
    print("\n== 2. Events processed per second (one echo rule, bench/pipeline.py's phases)")
    base, other = pipeline_rows(runs[0]), pipeline_rows(runs[1])
    print(f"  {'':<50}{runs[0].name:>12}{runs[1].name:>32}{'ratio':>8}")
    for label in {**base, **other}:
        x, y = base.get(label, (float("nan"), "-")), other.get(label, (float("nan"), "-"))
        ratio = f"{y[0] / x[0]:.2f}x" if x[0] == x[0] and y[0] == y[0] else ""
        print(f"  {label:<50}{x[1]:>12}{y[1]:>32}{ratio:>8}")
    print("  (server's core: the serve process's share of its core and what other processes took")
    print("   of it, during A's, B's and B2's load and C's drain; B2's worker is not pinned;")
    print("   worker process: its CPU from the first request to the last event processed;")
    print("   PostgreSQL CPU: the bench's backends")
    print("   and the server's background processes over the whole phase, server start and")
    print("   migrations included, per event sent; WAL: all the server wrote meanwhile)")


def print_statements(args: argparse.Namespace, dbs: pg_admin.Databases) -> None:
    """Per phase's database, what each statement cost PostgreSQL per event (--statements)."""
    print("\n== 3. PostgreSQL's statements per event sent (pg_stat_statements)")
    print("  (execution time: wall time in the backend, so on a saturated box it includes waiting")
    print("   for a core; the ranking holds better than the figures. Rows: of the dispatcher's")
    print("   statements, those sent before the phase ended)")
    why_not = pg_admin.statements_available(args.admin_url)
    if why_not is not None:
        print(f"  not available: {why_not}")
        return
    for label, name in (
        ("A + C (ingest alone, then the drain)", "pipeline_a"),
        ("B (serve routing while ingesting)", "pipeline_b"),
        ("B2 (serve + worker process)", "pipeline_b2"),
    ):
        found = pg_admin.statements(args.admin_url, f"{dbs.prefix}_{name}")
        total_ms = sum(ms for _, _, ms, _, _ in found)
        print(f"  {label}: {total_ms * 1000 / args.events:,.0f} us per event in all")
        print(f"    {'statement':<28}{'us/event':>9}{'calls':>8}{'rows':>8}{'WAL B/event':>12}")
        for statement, calls, ms, rows, wal in found[: args.statements]:
            print(
                f"    {statement[:27]:<28}{ms * 1000 / args.events:>9,.0f}{calls:>8,}"
                f"{rows:>8,}{wal / args.events:>12,.0f}"
            )


def print_aims(ingests: list[IngestRun], pipelines: list[Pipeline]) -> None:
    print("\n== Aims (issue 10, PostgreSQL on this box)")
    for run in ingests[1:]:
        met = "met" if run.rps >= AIM_INGEST_RPS else "MISSED"
        print(f"  ingest >= {AIM_INGEST_RPS:,} req/s, {run.name}: {run.rps:,.0f} -> {met}")
    for run in pipelines[1:]:
        for label, phase in (("B, one serve", run.b), ("B2, serve + worker", run.b2)):
            rate = phase.events_per_s or 0.0
            met = "met" if rate >= AIM_EVENTS_PER_S else "MISSED"
            print(
                f"  >= {AIM_EVENTS_PER_S:,} processed events/s, {run.name} {label}: "
                f"{rate:,.0f} -> {met}"
            )


# -- main ------------------------------------------------------------------------------------


def print_environment(args: argparse.Namespace, folder: Path) -> None:
    libs = ", ".join(f"{p} {version(p)}" for p in LIBS)
    wrk_version = subprocess.run([args.wrk, "-v"], capture_output=True, text=True).stdout
    data = pg_admin.data_directory(args.admin_url)
    disk = "the same disk" if pg_admin.same_disk(data, folder) else "another disk"
    print("PostgreSQL beside SQLite (issue 10): ingest req/s, events processed/s")
    print(f"  command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(ROOT)}")
    print(f"  host    : {platform.node()}, {proc_stats.cpu_model()}, {os.cpu_count()} CPUs")
    print(f"  python  : {platform.python_version()}, sqlite {sqlite3.sqlite_version}; {libs}")
    print(f"  postgres: {pg_admin.describe(args.admin_url)} ({disk} as the SQLite stores)")
    print(f"  wrk     : {wrk_version.splitlines()[0]}")
    print(
        f"  ingest  : {args.duration} s per configuration, {args.connections} connections, "
        f"{args.threads} wrk threads (split between the wrk processes), logs at {args.log_level}"
    )
    print(
        f"  pipeline: {args.events:,} signed SMS over {args.conversations:,} conversations, "
        f"{args.concurrency} connections, client on CPU {args.client_cpu}"
    )
    print("  pool    : storage.pool_min_size / pool_max_size at their defaults (2 / 10)")
    print(f"  store   : {folder}, {proc_stats.fsync_latency(folder)}")
    before = core_times()
    time.sleep(1)
    busy = ", ".join(f"core {c} {b:.0%}" for c, b in core_busy(before).items())
    print(f"  loadavg : {proc_stats.loadavg()} (before); busy over 1 s before the run: {busy}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add(
        "--admin-url",
        default="postgresql://postgres@127.0.0.1:5432/postgres",
        help="a database of the PostgreSQL server to create the bench's databases from",
    )
    add("--duration", type=int, default=15, help="seconds of wrk per ingest configuration (15)")
    add("--connections", type=int, default=64, help="wrk connections in all (64)")
    add("--threads", type=int, default=2, help="wrk threads in all (2)")
    add("--requests", type=int, help="distinct signed requests (default 20,000 per second)")
    add("--events", type=int, default=10_000, help="signed SMS of the pipeline (10,000)")
    add("--conversations", type=int, default=1_000, help="distinct senders (1,000)")
    add("--concurrency", type=int, default=64, help="pipeline client connections (64)")
    add("--deadline", type=float, default=120, help="pipeline: seconds to wait after the load")
    add("--poll-ms", type=float, default=10, help="pipeline: store poll interval (10 ms)")
    add("--quick", action="store_true", help="smoke run: 3 s per ingest run, 1,000 SMS")
    add("--no-pipeline", action="store_true", help="ingest only")
    add("--no-ingest", action="store_true", help="pipeline only")
    add("--server-cpu", type=int, default=0, help="core of the one server (0)")
    add("--client-cpu", type=int, default=1, help="core of wrk / the pipeline client (1)")
    add("--log-level", default="info", help="server logging.level (info, as shipped)")
    add(
        "--profile",
        metavar="FILE",
        help="py-spy on the one PostgreSQL server during its ingest load (.svg or .txt)",
    )
    add(
        "--profile-pipeline",
        metavar="FILE",
        help="py-spy on the PostgreSQL server of pipeline phase B (blocking sampling: low figures)",
    )
    add(
        "--statements",
        type=int,
        nargs="?",
        const=12,
        default=0,
        metavar="N",
        help="the pipeline's N costliest statements per phase (12), from pg_stat_statements "
        "(needs it in shared_preload_libraries and created in the admin database)",
    )
    add("--keep", action="store_true", help="keep the temp dir and the databases")
    add("-v", "--verbose", action="store_true", help="print commands and wrk's output")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.events = 3, 1_000
    args.requests = args.requests or max(20_000, 20_000 * args.duration)
    args.no_pin, args.profile_run = False, "postgres, 1 serve" if args.profile else None
    if args.profile or args.profile_pipeline:
        harness.find_py_spy(args, parser)
    harness.settle_pinning(args)
    return args


def run_ingests(args: argparse.Namespace, folder: Path, dbs: pg_admin.Databases) -> list[IngestRun]:
    args.requests_file, args.spare = signed_requests.requests_file(
        ROOT / "var" / "bench",
        args.requests,
        token=ingest.TOKEN,
        url=ingest.PUBLIC_URL + ingest.PATH,
    )
    runs = [
        measure_ingest(
            "sqlite, 1 serve", folder / "i-sqlite", args, None, [args.server_cpu], args.client_cpu
        )
    ]
    for name, cpus, wrk_cpu in (
        ("postgres, 1 serve", [args.server_cpu], args.client_cpu),
        ("postgres, 2 serves", [args.server_cpu, args.client_cpu], None),
    ):
        url = dbs.create(f"ingest{len(cpus)}")
        meter = pg_admin.ServerMeter(args.admin_url, dbs.prefix)
        runs.append(
            measure_ingest(name, folder / f"i-pg{len(cpus)}", args, (url, meter), cpus, wrk_cpu)
        )
    print_ingest(runs)
    return runs


def run_pipelines(
    args: argparse.Namespace, folder: Path, dbs: pg_admin.Databases
) -> list[Pipeline]:
    harness.client_loop(args)  # pins this process (after wrk, which must not inherit it)
    started = time.perf_counter()
    every = pipeline.build_requests(args.events + 1, args.conversations)
    args.sms, args.sms_spare = every[:-1], every[-1]
    print(f"\n  pipeline requests: signed {len(every):,} in {time.perf_counter() - started:.1f} s")
    args.rounds, args.profile, args.no_backlog = 1, None, False
    meter = pg_admin.ServerMeter(args.admin_url, dbs.prefix)
    runs = [run_pipeline("sqlite", folder / "p-sqlite", args, None, meter)]
    args.profile = args.profile_pipeline  # pipeline.phase_pipeline's profiler, PostgreSQL only
    stores = (dbs.create("pipeline_a"), dbs.create("pipeline_b"), dbs.create("pipeline_b2"))
    runs.append(run_pipeline("postgres", folder / "p-pg", args, stores, meter))
    print_pipelines(runs)
    return runs


def main() -> None:
    args = parse_args()
    args.wrk = ingest.ensure_wrk()
    folder = Path(tempfile.mkdtemp(prefix="switchboard-pgbench-"))
    print_environment(args, folder)
    dbs = pg_admin.Databases(args.admin_url)
    ingests, pipelines = [], []
    try:
        if not args.no_ingest:
            ingests = run_ingests(args, folder, dbs)
        if not args.no_pipeline:
            pipelines = run_pipelines(args, folder, dbs)
            if args.statements:
                print_statements(args, dbs)
        print_aims(ingests, pipelines)
        print(f"  loadavg after: {proc_stats.loadavg()}")
    finally:
        if args.keep:
            print(f"\n  kept {folder} and the databases {', '.join(dbs.names)}")
        else:
            dbs.drop_all()
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
