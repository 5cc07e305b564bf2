"""Reconciliation benchmark (issue 18): webhook ingest while a pass recovers 10,000 messages.

One store, two lives of a real `python -m router serve` (SQLite as shipped: WAL,
`synchronous=FULL`, logs at `info`), pinned to core 0, with `channels.sms` live against
`tests.fakes.twilio_api.FakeTwilio` (a child process pinned to core 1, beside wrk) that holds
`--messages` inbound Messages the store has never seen: distinct SIDs, distinct senders, dated
evenly over the `reconcile.lookback` window (24 h). `reconcile.interval = "0"`.

- **A. ingest alone**: `reconcile.on_start = false`; wrk with bench/ingest.lua (the load of
  bench/ingest.py: distinct pre-signed Twilio webhooks, 64 connections) for `--duration` s.
- **B. ingest beside a pass**: serve restarted on the same store with `on_start = true`, the
  same load (the other half of the request file: no request of A is sent again). The pass runs
  inside serve, as in production (its start-up catch-up), not as `switchboard reconcile` in a
  process of its own: that is what shares serve's event loop, GIL and group-committing writer
  with ingest. serve has no way to trigger a pass but its start, so the fake holds its first
  list request until the load has run `--pass-delay` s: the whole pass happens under load
  (it takes 60-85 s here: see the README).

The worker is off in serve (`[worker] in_serve = false`, as in bench/ingest.py): the figures are
ingest's and the pass's, not routing's.

Prints wrk's req/s and p50/p99/max of both phases and B/A; the pass's time (held list
request answered -> the `reconcile.pass` log line), split into listing and storing, and
messages recovered per second; webhooks stored per second during the pass, from the store's
`received_at`, against A's over the same seconds of its load (wrk's figures cover the whole
phase, the pass only part of it), and B's slowest second. Then checks, read-only in the store,
that each of the messages is stored exactly once (by dedupe key, and one event per sender).

Exit 1 if B/A < 0.5 (wrk's, or the store's during the pass), or a message is missing or
doubled, or the pass failed. A pass that outlasts the load is a warning: raise --duration.

Run: .venv/bin/python bench/reconcile.py                 (100 s per phase, 10,000 messages)
     .venv/bin/python bench/reconcile.py --duration 5 --messages 2000   (a smoke run)
     .venv/bin/python bench/reconcile.py --profile /tmp/recon.svg       (py-spy of serve in B)
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path
from statistics import median
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.fakes

import proc_stats  # noqa: E402
import signed_requests  # noqa: E402
from harness import connect_ro, find_py_spy, settle_pinning, start_serve  # noqa: E402
from ingest import (  # noqa: E402
    PATH,
    PUBLIC_URL,
    TOKEN,
    config_text,
    ensure_wrk,
    free_port,
    preflight,
    run_wrk,
    start_profiler,
)
from report import Result  # noqa: E402

ACCOUNT_SID = "AC" + "5e" * 16
API_TOKEN = "bench-twilio-api-token"
OURS = "+15559870000"
LOOKBACK_H = 24


# -- the fake Twilio, in a child process -----------------------------------------------------


def _fake_child(conn: Connection, count: int, cpu: int | None) -> None:
    """FakeTwilio with `count` inbound messages; its list requests wait for "open"."""
    import asyncio

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    from tests.fakes import twilio_api

    # The fake parses every Message's date on every list request (10,000 x 50 pages): cached
    # here so that the fake, on the load generator's core, does not slow the pass down.
    days: dict[str, Any] = {}
    plain_day = twilio_api._message_day

    def message_day(message: dict[str, Any]) -> Any:
        stamp = message["date_sent"] or message["date_created"]
        if stamp not in days:
            days[stamp] = plain_day(message)
        return days[stamp]

    twilio_api._message_day = message_day

    opened = threading.Event()
    lists: list[float] = []  # wall time each list request was answered

    class Gated(twilio_api.FakeTwilio):
        async def _answer(self, request: Any) -> Any:
            while not opened.is_set():  # noqa: ASYNC110 (set from another thread)
                await asyncio.sleep(0.002)
            answer = await super()._answer(request)
            lists.append(time.time())
            return answer

    fake = Gated(ACCOUNT_SID, API_TOKEN).start()
    now = datetime.now(UTC)
    first = now - timedelta(hours=LOOKBACK_H) + timedelta(minutes=10)
    step = (now - timedelta(minutes=1) - first) / max(count - 1, 1)
    sids = [
        fake.receive(sender(i), OURS, f"Recovered while we were down (#{i})", at=first + step * i)
        for i in range(count)
    ]
    conn.send((fake.url, sids))
    while True:
        command = conn.recv()
        if command == "open":
            opened.set()
            conn.send(time.time())
        elif command == "stats":
            conn.send({"lists": list(lists), "calls": dict(fake.calls), "errors": fake.errors})
        else:
            fake.stop()
            conn.send(None)
            return


def sender(index: int) -> str:
    return f"+1212{index:07d}"  # webhook senders are +1555...: no overlap


class Fake:
    def __init__(self, count: int, cpu: int | None) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._proc = context.Process(target=_fake_child, args=(child, count, cpu), daemon=True)
        self._proc.start()
        self.url, self.sids = self._conn.recv()
        self.opened_at: float | None = None

    def open(self) -> None:
        self._conn.send("open")
        self.opened_at = self._conn.recv()

    def stats(self) -> dict[str, Any]:
        self._conn.send("stats")
        return dict(self._conn.recv())

    def stop(self) -> None:
        self._conn.send("stop")
        self._conn.recv()
        self._proc.join(10)


# -- phases ----------------------------------------------------------------------------------


def write_config(
    folder: Path, port: int, fake: Fake, args: argparse.Namespace, *, on_start: bool
) -> Path:
    config = folder / "switchboard.toml"
    text = config_text(port, folder / "bench.db", args.log_level)
    text += f"""
[channels.sms]
mode = "live"
account_sid = "{ACCOUNT_SID}"
auth_token = "{API_TOKEN}"
from = "{OURS}"
api_base = "{fake.url}"

[reconcile]
interval = "0"
lookback = "{LOOKBACK_H}h"
on_start = {"true" if on_start else "false"}
"""
    config.write_text(text)
    return config


def phase(
    name: str,
    folder: Path,
    fake: Fake,
    args: argparse.Namespace,
    wrk: str,
    requests_file: Path,
    spare: str,
    part: int,
) -> tuple[Result, float]:
    """One life of serve under the load: wrk's figures, and the wall time serve was started."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    config = write_config(folder, port, fake, args, on_start=name == "B")
    log = folder / f"server-{name}.log"
    print(
        f"\n== {name}: serve ({'a pass at start, held until the load runs' if name == 'B' else 'no pass'})",  # noqa: E501
        flush=True,
    )
    spawned = time.time()
    proc = start_serve(config, log, base=base, cpu=args.server_cpu, verbose=args.verbose)
    try:
        preflight(base, spare)
        before = proc_stats.cpu_sample(proc.pid, args.server_cpu)
        gate = None
        if name == "B":
            gate = threading.Thread(target=open_under_load, args=(folder / "bench.db", fake, args))
        profiler = start_profiler(args, proc.pid) if name == "B" else None
        if gate is not None:
            gate.start()
        figures = run_wrk(args, wrk, base + PATH, requests_file, part=(part, 2))
        cpu = proc_stats.cpu_share(before, proc_stats.cpu_sample(proc.pid, args.server_cpu))
        if gate is not None:
            gate.join()
            deadline = time.monotonic() + 120
            while pass_line(log) is None and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.1)
        if profiler is not None:
            profiler.wait()
            print(f"  profile of serve during B: {args.profile}")
        rss_kb, loadavg = proc_stats.peak_rss_kb(proc.pid), proc_stats.loadavg()
    finally:
        proc_stats.stop(proc)
    return Result(name=name, wrk=figures, rss_kb=rss_kb, cpu=cpu, loadavg=loadavg), spawned


def open_under_load(db: Path, fake: Fake, args: argparse.Namespace) -> None:
    """Let the pass list once B's load has stored its first webhooks, plus `--pass-delay` s
    (wrk reads its share of the request file first: seconds with a long run). The pass has
    been waiting since serve started; Twilio reads time out after 10 s."""
    conn = connect_ro(db)
    try:
        (start,) = conn.execute("SELECT max(rowid) FROM events").fetchone()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            (now,) = conn.execute("SELECT max(rowid) FROM events").fetchone()
            if now >= start + 100:
                break
            time.sleep(0.02)
    finally:
        conn.close()
    time.sleep(args.pass_delay)
    fake.open()


def pass_line(log: Path) -> dict[str, Any] | None:
    for line in log.read_text(errors="replace").splitlines():
        if '"reconcile.' in line:
            try:
                record: dict[str, Any] = json.loads(line)
            except ValueError:
                continue
            if str(record.get("event", record.get("msg", ""))).startswith("reconcile."):
                return record
    return None


def when(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def log_time(record: dict[str, Any]) -> float:
    for key in ("ts", "time", "timestamp", "at"):
        if key in record:
            return when(str(record[key]))
    raise KeyError(f"no time in the log record {record}")


# -- what the store holds ------------------------------------------------------------------


def rate(times: list[float], start: float, end: float) -> float:
    return sum(1 for t in times if start <= t < end) / max(end - start, 1e-9)


def verify(db: Path, sids: list[str]) -> tuple[int, int, int, list[float], list[float]]:
    """(missing, doubled by key, senders with more than one event, received_at of the
    webhooks, received_at of the recovered events)."""
    wanted = {f"twilio:{sid}" for sid in sids}
    senders = {sender(i) for i in range(len(sids))}
    conn = connect_ro(db)
    try:
        rows = conn.execute(
            "SELECT dedupe_key, contact_address, received_at FROM events"
        ).fetchall()
    finally:
        conn.close()
    keys = Counter(key for key, _, _ in rows if key in wanted)
    per_sender = Counter(address for _, address, _ in rows if address in senders)
    missing = len(wanted - set(keys))
    doubled = sum(1 for n in keys.values() if n > 1)
    crowded = sum(1 for n in per_sender.values() if n > 1) + len(senders - set(per_sender))
    webhooks = [when(at) for key, _, at in rows if key not in wanted]
    recovered = [when(at) for key, _, at in rows if key in wanted]
    return missing, doubled, crowded, webhooks, recovered


# -- report ----------------------------------------------------------------------------------


def line(r: Result) -> str:
    w = r.wrk
    errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
    return (
        f"  {r.name:<3}{r.rps:>9.0f}{r.ms('p50_us'):>8.2f}{r.ms('p99_us'):>8.2f}"
        f"{r.ms('max_us'):>8.1f}{r.non_2xx:>9}{errors:>8}{r.rss_kb / 1024:>8.0f}MB"
        f"{r.cpu.server:>8.0%}{r.cpu.others:>7.0%}   {r.loadavg}"
    )


def main() -> None:
    args = parse_args()
    wrk = ensure_wrk()
    requests_file, spare = signed_requests.requests_file(
        ROOT / "var" / "bench", args.requests, token=TOKEN, url=PUBLIC_URL + PATH
    )
    print("Reconciliation benchmark (issue 18): ingest with and without a pass beside it")
    print(f"  command : {' '.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(ROOT)}")
    print(
        f"  load    : wrk {args.duration} s, {args.connections} connections, "
        f"{args.threads} threads;"
        f" serve on CPU {args.server_cpu}, wrk and the fake on CPU {args.client_cpu}"
    )
    print(f"  loadavg : {proc_stats.loadavg()} (before)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-recon-", dir=args.db_dir))
    (tmp / "rules").mkdir()
    started = time.monotonic()
    fake = Fake(args.messages, args.client_cpu)
    print(
        f"  fake    : {fake.url}, {len(fake.sids):,} inbound messages over {LOOKBACK_H} h"
        f" ({time.monotonic() - started:.1f} s to build)"
    )
    print(f"  store   : {tmp}, {proc_stats.fsync_latency(tmp)}", flush=True)
    failures: list[str] = []
    try:
        a, _ = phase("A", tmp, fake, args, wrk, requests_file, spare, 0)
        b, b_spawned = phase("B", tmp, fake, args, wrk, requests_file, spare, 1)
        stats = fake.stats()
        record = pass_line(tmp / "server-B.log")
        missing, doubled, crowded, webhooks, recovered = verify(tmp / "bench.db", fake.sids)
        # Each phase's load as the store saw it: its first and last webhook stored.
        in_a = [t for t in webhooks if t < b_spawned]
        in_b = [t for t in webhooks if t >= b_spawned]
        a_began, b_began, b_ended = min(in_a), min(in_b), max(in_b)

        print("\n== Load (wrk, whole phase)")
        print(
            f"  {'':<3}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}{'non-2xx':>9}"
            f"{'errors':>8}{'RSS':>10}{'srv CPU':>8}{'other':>7}   loadavg after"
        )
        print(line(a))
        print(line(b))
        ratio = b.rps / a.rps
        print(
            f"  B/A req/s {ratio:.2f}, p50 {b.ms('p50_us') / a.ms('p50_us'):.2f}x, "
            f"p99 {b.ms('p99_us') / a.ms('p99_us'):.2f}x"
        )
        if max(a.wrk["repeated"], b.wrk["repeated"]):
            print("  WARNING: requests repeated (dedupe flatters): raise --requests")
        if ratio < 0.5:
            failures.append(f"B/A req/s {ratio:.2f} < 0.5")

        print("\n== The pass (inside serve)")
        if record is None or fake.opened_at is None:
            failures.append("no reconcile.pass line in serve's log")
            print("  no reconcile.pass line in serve's log")
        else:
            opened, done = fake.opened_at, log_time(record)
            lists = stats["lists"]
            took = done - opened
            print(
                f"  outcome {record.get('outcome')}, seen {record.get('seen')}, recovered "
                f"{record.get('recovered')}, error {record.get('error')}"
            )
            print(
                f"  {took:.2f} s: listing {len(lists)} pages {lists[-1] - opened:.2f} s, "
                f"storing {done - lists[-1]:.2f} s; "
                f"{len(recovered) / took:,.0f} messages/s recovered;"
                f" began {opened - b_began:.1f} s into the load, ended "
                f"{abs(b_ended - done):.1f} s {'before' if done <= b_ended else 'after'} its end"
            )
            if record.get("outcome") != "ok" or record.get("error"):
                failures.append(f"the pass failed: {record.get('error')}")
            if done > b_ended:
                print(
                    "  WARNING: the pass outlasted the load (its end ran unloaded; the rates"
                    " below cover the overlap): raise --duration"
                )
                done_loaded = b_ended
            else:
                done_loaded = done
            # Webhooks stored per second during the pass, against A over the same seconds of
            # its load.
            offset = (opened - b_began, done_loaded - b_began)
            during = rate(in_b, opened, done_loaded)
            alone = rate(in_a, a_began + offset[0], a_began + offset[1])
            print(
                f"  webhooks stored during the pass: {during:,.0f}/s; A over the same seconds "
                f"of its load: {alone:,.0f}/s; ratio {during / max(alone, 1e-9):.2f}"
            )
            seconds = [rate(in_b, t, t + 1) for t in _range(opened, done_loaded)]
            if seconds:
                low = seconds.index(min(seconds))
                print(
                    f"  B per second during the pass: min {min(seconds):,.0f} (at +{low} s;"
                    f" listing ended at +{lists[-1] - opened:.1f} s), median "
                    f"{median(seconds):,.0f}, max {max(seconds):,.0f}"
                )
            if during / max(alone, 1e-9) < 0.5:
                failures.append(f"webhooks during the pass / A {during / alone:.2f} < 0.5")
        print(f"  fake: {stats['calls']}, errors {len(stats['errors'])}")

        print("\n== Store (read-only)")
        print(
            f"  {len(fake.sids):,} messages: {len(recovered):,} stored, {missing} missing, "
            f"{doubled} doubled by key, {crowded} senders without exactly one event; "
            f"{len(webhooks):,} webhook events (A + B: {a.ok + b.ok + 2:,} answered 2xx incl."
            f" pre-flights)"
        )
        if missing or doubled or crowded:
            failures.append(f"{missing} missing, {doubled} doubled, {crowded} senders off")
    finally:
        fake.stop()
        if args.keep:
            print(f"\n  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"  loadavg : {proc_stats.loadavg()} (after)")
    if failures:
        print("\nFAILED: " + "; ".join(failures))
        sys.exit(1)
    print("\nOK")


def _range(start: float, end: float) -> list[float]:
    return [start + i for i in range(int(end - start))]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=100, help="seconds of load per phase (100)")
    parser.add_argument("--messages", type=int, default=10_000, help="inbound messages (10,000)")
    parser.add_argument(
        "--pass-delay",
        type=float,
        default=1.0,
        help="seconds of B's load before the pass may list (1)",
    )
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--requests",
        type=int,
        help="signed requests, half per phase (default 9,000 per second of load and phase)",
    )
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--no-pin", action="store_true")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--db-dir", help="where the store goes (default: the system temp dir)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="py-spy of serve during B: FILE.svg flamegraph, FILE.txt collapsed",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (db, logs)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    if args.requests is None:
        args.requests = max(40_000, 18_000 * args.duration)
    settle_pinning(args)
    if args.profile:
        find_py_spy(args, parser)
    return args


if __name__ == "__main__":
    main()
