"""Ingest benchmark (issue 3): durable verified Twilio ingest against the framework floor.

In one run, with the same load and the same distinct requests:
1. `switchboard serve` (python -m router serve) on a fresh SQLite store: verify, parse, dedupe,
   group commit with WAL and synchronous=FULL, then 200 TwiML;
2. bench/floor_app.py: litestar on the same path that only reads the body and answers 200.

Each server runs alone, pinned to one core (`taskset -c 0`); `wrk` drives it from the other
core with bench/ingest.lua, which cycles through requests pre-signed here with twilio's own
RequestValidator, each with its own MessageSid (identical bodies would flatter both servers:
litestar caches form parses and the store dedupes). Prints requests/s, p50/p99, non-2xx,
the ratio durable/floor, peak RSS, and checks that the store holds one row per 2xx.

Both are served by router.http.server with the default `[server]` connection limits;
`--limits-cost` also serves the floor on uvicorn's plain httptools protocol and prints what
the limits cost.

Run: .venv/bin/python bench/ingest.py            (15 s per server, 64 connections)
     .venv/bin/python bench/ingest.py --quick    (3 s smoke run)
     .venv/bin/python bench/ingest.py --rounds 3 --limits-cost
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from statistics import median
from typing import Any

import proc_stats
import signed_requests
from report import Result, print_environment, print_results, print_summary

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PATH = "/webhooks/twilio/messages"
TOKEN = "bench-twilio-auth-token"
PUBLIC_URL = "https://switchboard.example.com"


def ensure_wrk() -> str:
    """The wrk binary; installs the Debian package when running as root, else explains."""
    found = shutil.which("wrk")
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("wrk not found: installing it (apt-get install -y wrk) ...", flush=True)
        for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "wrk"]):
            subprocess.run(cmd, check=False, stdout=subprocess.DEVNULL)
        found = shutil.which("wrk")
        if found:
            return found
    sys.exit(
        "bench/ingest.py needs wrk (HTTP load generator with LuaJIT scripting).\n"
        "Install it: sudo apt-get install wrk  (Debian/Ubuntu), brew install wrk (macOS),\n"
        "or build it from https://github.com/wg/wrk, then rerun."
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_healthy(base: str, proc: subprocess.Popen[bytes], deadline_s: float = 30) -> None:
    """Poll /healthz until 200; RuntimeError if the server dies or never answers."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering /healthz")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not answer {base}/healthz within {deadline_s} s")


def pinned(cpu: int | None, cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(cpu), *cmd] if cpu is not None else cmd


def config_text(port: int, db: Path, log_level: str, *, storage_url: str | None = None) -> str:
    """Only the Twilio source, an empty rules folder and no worker in the server, so the figures
    are the ingest path's (bench/pipeline.py measures ingest with the worker beside it). The
    store is the SQLite file `db`, or `storage_url` (bench/postgres.py: a PostgreSQL database);
    the rules folder is `db`'s sibling either way."""
    url = storage_url or f"sqlite:///{db}"
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{PUBLIC_URL}"
max_body_bytes = 1048576

[storage]
url = "{url}"

[rules]
path = "{db.parent / "rules"}"

[sources.twilio]
auth_tokens = ["{TOKEN}"]

[worker]
in_serve = false

[logging]
level = "{log_level}"
"""


def preflight(base: str, line: str) -> None:
    """One signed request outside the load set must be accepted, or the run is pointless."""
    signature, body = line.split("\t", 1)
    request = urllib.request.Request(
        base + PATH,
        data=body.encode(),
        method="POST",
        headers={
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    if status != 200:
        raise RuntimeError(f"pre-flight signed request answered {status}, expected 200")


def start_profiler(args: argparse.Namespace, pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy sampling the server for the run (on wrk's core), if --profile asked for it."""
    if not args.profile:
        return None
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        sys.exit("--profile needs py-spy: .venv/bin/pip install py-spy (not a dependency)")
    fmt = "raw" if args.profile.endswith(".txt") else "flamegraph"
    cmd = [spy, "record", "--nonblocking", "--threads", "-r", "250", "-f", fmt]
    cmd += ["-o", args.profile, "-p", str(pid), "-d", str(max(args.duration - 1, 1))]
    return subprocess.Popen(pinned(args.client_cpu, cmd), stdout=subprocess.DEVNULL)


def run_wrk(
    args: argparse.Namespace,
    wrk: str,
    url: str,
    requests_file: Path,
    part: tuple[int, int] = (0, 1),
) -> dict[str, Any]:
    """wrk on `url` with `args`' load; `part` = (k, n): this wrk sends only the k-th of n
    disjoint slices of the file (bench/postgres.py runs n at once, each on its own server)."""
    cmd = pinned(
        args.client_cpu,
        [
            wrk,
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(BENCH / "ingest.lua"),
            url,
            "--",
            str(requests_file),
            PATH,
            str(args.threads),
            *([str(part[1]), str(part[0])] if part != (0, 1) else []),
        ],
    )
    if args.verbose:
        print("  $", shlex.join(cmd), flush=True)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    if args.verbose:
        print("\n".join("  | " + line for line in out.splitlines()))
    for line in out.splitlines():
        if line.startswith("BENCH_JSON "):
            parsed: dict[str, Any] = json.loads(line[len("BENCH_JSON ") :])
            return parsed
    sys.exit(f"wrk printed no BENCH_JSON line:\n{out}")


def measure(
    name: str,
    server_cmd: list[str],
    port: int,
    args: argparse.Namespace,
    wrk: str,
    requests_file: Path,
    spare_line: str | None,
    log: Path,
) -> Result:
    """Start one server, load it, record its figures, stop it."""
    base = f"http://127.0.0.1:{port}"
    cmd = pinned(args.server_cpu, server_cmd)
    print(f"\n== {name}: {shlex.join(cmd)}", flush=True)
    with log.open("wb") as out:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}  # the code of this checkout
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
    try:
        try:
            wait_healthy(base, proc)
            if spare_line is not None:
                preflight(base, spare_line)
        except RuntimeError as exc:
            proc_stats.stop(proc)
            tail = log.read_text(errors="replace").splitlines()[-20:]
            sys.exit(f"{name}: {exc}\n  server log ({log}):\n    " + "\n    ".join(tail))
        before = proc_stats.cpu_sample(proc.pid, args.server_cpu)
        profiler = start_profiler(args, proc.pid) if name == "durable" else None
        figures = run_wrk(args, wrk, base + PATH, requests_file)
        cpu = proc_stats.cpu_share(before, proc_stats.cpu_sample(proc.pid, args.server_cpu))
        if profiler is not None:
            profiler.wait()
            print(f"  profile of the durable server under load: {args.profile}")
        rss_kb = proc_stats.peak_rss_kb(proc.pid)
        loadavg = proc_stats.loadavg()
    finally:
        proc_stats.stop(proc)
    return Result(name=name, wrk=figures, rss_kb=rss_kb, cpu=cpu, loadavg=loadavg)


def count_events(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        count: int = conn.execute("SELECT count(*) FROM events").fetchone()[0]
        return count


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=int, default=15, help="seconds per server (15)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (64)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (2)")
    parser.add_argument(
        "--requests", type=int, help="distinct signed requests (default 20,000 per second)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s per server")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="durable then floor, this many times, with medians (steadier on a busy machine)",
    )
    parser.add_argument("--no-floor", action="store_true", help="skip the framework floor")
    parser.add_argument(
        "--limits-cost",
        action="store_true",
        help="also serve the floor on uvicorn's plain httptools protocol, without the [server]"
        " connection limits, and print what the limits cost",
    )
    parser.add_argument("--server-cpu", type=int, default=0, help="core for the server (0)")
    parser.add_argument("--client-cpu", type=int, default=1, help="core for wrk (1)")
    parser.add_argument(
        "--log-level", default="info", help="server logging.level (info, as in production)"
    )
    parser.add_argument(
        "--db-dir",
        help="where the fresh store goes (default: the system temp dir); its disk's"
        " fsync latency bounds the latency of every durable answer",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the durable server with py-spy during the load: FILE.svg flamegraph, "
        "FILE.txt collapsed stacks (pip install py-spy first)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (db, logs)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print wrk's own output")
    args = parser.parse_args()
    if args.quick:
        args.duration = 3
    if args.limits_cost and args.no_floor:
        parser.error("--limits-cost measures the floor: drop --no-floor")
    if args.requests is None:
        args.requests = max(20_000, 20_000 * args.duration)
    if (os.cpu_count() or 1) < 2 or not shutil.which("taskset"):
        print("WARNING: fewer than 2 CPUs or no taskset: server and wrk are not pinned")
        args.server_cpu = args.client_cpu = None
    return args


def run_durable(
    args: argparse.Namespace, wrk: str, requests_file: Path, spare: str, folder: Path
) -> tuple[Result, int]:
    """`switchboard serve` on a fresh store in `folder`: its figures and the rows it stored."""
    folder.mkdir()
    (folder / "rules").mkdir()
    db, port = folder / "bench.db", free_port()
    config = folder / "switchboard.toml"
    config.write_text(config_text(port, db, args.log_level))
    serve = [sys.executable, "-m", "router", "--config", str(config), "serve"]
    log = folder / "server.log"
    durable = measure("durable", serve, port, args, wrk, requests_file, spare, log)
    print(f"  server log: {log.stat().st_size / 1e6:.1f} MB at level {args.log_level}")
    return durable, count_events(db)


def run_floor(
    args: argparse.Namespace, wrk: str, requests_file: Path, folder: Path, *, plain: bool = False
) -> Result:
    """The floor as `serve` serves it, or with `plain` on uvicorn's own httptools protocol."""
    port = free_port()
    cmd = [sys.executable, str(BENCH / "floor_app.py"), "--port", str(port)]
    name = "floor-plain" if plain else "floor"
    cmd += ["--no-limits"] if plain else []
    return measure(name, cmd, port, args, wrk, requests_file, None, folder / f"{name}.log")


def cpu_us_per_request(result: Result) -> float:
    return (result.cpu.user_s + result.cpu.system_s) * 1e6 / max(int(result.wrk["requests"]), 1)


def print_limits_cost(pairs: list[tuple[Result, Result]], first: int = 1) -> None:
    """The floor with the [server] connection limits against uvicorn's plain httptools
    (rounds numbered from `first`)."""
    print("\n== Cost of the connection limits (floor with limits vs floor-plain)")
    for number, (limited, plain) in enumerate(pairs, start=first):
        print(
            f"  round {number}: {limited.rps:.0f} vs {plain.rps:.0f} req/s "
            f"({limited.rps / plain.rps:.3f}x); server CPU per request "
            f"{cpu_us_per_request(limited):.1f} vs {cpu_us_per_request(plain):.1f} us; "
            f"other {limited.cpu.others:.0%}/{plain.cpu.others:.0%}"
        )
    ratios = [limited.rps / plain.rps for limited, plain in pairs]
    extra = [cpu_us_per_request(limited) - cpu_us_per_request(plain) for limited, plain in pairs]
    print(
        f"  median: req/s ratio {median(ratios):.3f}x, "
        f"server CPU per request {median(extra):+.1f} us with the limits"
    )


def floors(
    args: argparse.Namespace, wrk: str, requests_file: Path, folder: Path, number: int
) -> tuple[Result | None, Result | None]:
    """This round's floor, and with --limits-cost the plain floor too (in alternating order,
    so that drift of a busy machine does not always favour the same one)."""
    if args.no_floor:
        return None, None
    if not args.limits_cost:
        return run_floor(args, wrk, requests_file, folder), None
    if number % 2:
        return run_floor(args, wrk, requests_file, folder), run_floor(
            args, wrk, requests_file, folder, plain=True
        )
    plain = run_floor(args, wrk, requests_file, folder, plain=True)
    return run_floor(args, wrk, requests_file, folder), plain


def main() -> None:
    args = parse_args()
    wrk = ensure_wrk()
    print_environment(args, wrk, ROOT)
    requests_file, spare = signed_requests.requests_file(
        ROOT / "var" / "bench", args.requests, token=TOKEN, url=PUBLIC_URL + PATH
    )
    tmp = Path(tempfile.mkdtemp(prefix="switchboard-bench-", dir=args.db_dir))
    print(f"  store   : {tmp}, {proc_stats.fsync_latency(tmp)}")
    rounds = []
    limits_cost: list[tuple[Result, Result]] = []
    try:
        for number in range(1, args.rounds + 1):
            if args.rounds > 1:
                print(f"\n######## round {number} of {args.rounds}")
            durable, stored = run_durable(args, wrk, requests_file, spare, tmp / f"r{number}")
            floor, plain = floors(args, wrk, requests_file, tmp, number)
            print_results(durable, floor, stored, preflights=1)
            rounds.append((durable, floor))
            if floor is not None and plain is not None:
                limits_cost.append((floor, plain))
                print_limits_cost(limits_cost[-1:], first=number)
        if len(rounds) > 1:
            print_summary(rounds)
        if len(limits_cost) > 1:
            print_limits_cost(limits_cost)
    finally:
        if args.keep:
            print(f"\n  kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
