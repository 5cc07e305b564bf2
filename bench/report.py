"""What bench/ingest.py prints: the run's environment, each server's figures, the checks."""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sqlite3
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any

import proc_stats

#: Issue 3's aims for the durable server.
TARGETS = {"ratio": 0.7, "p99_ms": 25.0, "rss_mb": 150.0}


@dataclass
class Result:
    """One server's run: wrk's figures plus what the bench saw of the server process."""

    name: str
    wrk: dict[str, Any]
    rss_kb: int
    cpu: proc_stats.CpuShare
    loadavg: str
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return float(self.wrk["requests"]) / (self.wrk["duration_us"] / 1e6)

    @property
    def non_2xx(self) -> int:
        return int(self.wrk["non_2xx_3xx"])

    @property
    def ok(self) -> int:
        return int(self.wrk["requests"]) - self.non_2xx

    def ms(self, key: str) -> float:
        return float(self.wrk[key]) / 1000


def print_environment(args: argparse.Namespace, wrk: str, root: Path) -> None:
    """What a rerun needs to be compared with this one."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("litestar", "uvicorn", "uvloop", "httptools", "aiosqlite", "twilio"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    wrk_version = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    print("Ingest benchmark (issue 3): durable verified Twilio ingest vs framework floor")
    print(f"  command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(root)}")
    print(f"  host    : {platform.node()}, {proc_stats.cpu_model()}, {os.cpu_count()} CPUs")
    print(f"  python  : {platform.python_version()}, sqlite {sqlite3.sqlite_version}")
    print(f"  libs    : {', '.join(f'{k} {v}' for k, v in versions.items())}")
    print(f"  wrk     : {wrk_version}")
    print(
        f"  load    : {args.duration} s, {args.connections} connections, {args.threads} wrk "
        f"threads; server on CPU {args.server_cpu}, wrk on CPU {args.client_cpu}"
    )
    print(f"  loadavg : {proc_stats.loadavg()} (before)")


def print_results(durable: Result, floor: Result | None, stored: int, preflights: int) -> None:
    print("\n== Results")
    rows = [durable] + ([floor] if floor else [])
    print(
        f"  {'server':<9}{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        f"{'non-2xx':>9}{'errors':>8}{'peak RSS':>10}{'srv CPU':>9}{'other':>7}"
    )
    for r in rows:
        w = r.wrk
        errors = w["connect_errors"] + w["read_errors"] + w["write_errors"] + w["timeouts"]
        print(
            f"  {r.name:<9}{r.rps:>9.0f}{r.ms('p50_us'):>8.2f}{r.ms('p99_us'):>8.2f}"
            f"{r.ms('max_us'):>8.1f}{r.non_2xx:>9}{errors:>8}{r.rss_kb / 1024:>8.1f}MB"
            f"{r.cpu.server:>8.0%}{r.cpu.others:>7.0%}"
        )
    print("  (srv CPU: the server process's share of its core; other: what other processes")
    print("   took of that core meanwhile; above ~5% the figures are noisy)")
    for r in rows:
        per_req = 1e6 / max(int(r.wrk["requests"]), 1)
        print(
            f"  {r.name}: server CPU per request {(r.cpu.user_s + r.cpu.system_s) * per_req:.0f} us"
            f" (user {r.cpu.user_s * per_req:.0f}, system {r.cpu.system_s * per_req:.0f});"
            f" loadavg after: {r.loadavg}"
        )
    print_checks(durable, floor, stored, preflights)


def print_checks(durable: Result, floor: Result | None, stored: int, preflights: int) -> None:
    w = durable.wrk
    in_flight = w["sent"] - w["requests"]
    low, high = durable.ok + preflights, durable.ok + preflights + in_flight
    verdict = "OK" if low <= stored <= high else "MISMATCH"
    print(f"\n  stored events: {stored}; 2xx seen by wrk: {durable.ok} (+{preflights} pre-flight);")
    print(
        f"  sent but unanswered when wrk stopped: {in_flight}  -> {verdict} "
        f"(expected {low}..{high})"
    )
    for r in (durable, floor):
        if r and r.wrk["repeated"]:
            print(
                f"  WARNING: {r.name} was sent {r.wrk['repeated']} repeated requests: "
                f"raise --requests above {r.wrk['sent']}"
            )
    rss_mb = durable.rss_kb / 1024
    checks = [
        ("p99 <= 25 ms", durable.ms("p99_us") <= TARGETS["p99_ms"]),
        ("peak RSS <= 150 MB", rss_mb <= TARGETS["rss_mb"]),
    ]
    if floor:
        ratio = durable.rps / floor.rps
        print(f"\n  ratio durable/floor: {ratio:.2f}x  (target >= {TARGETS['ratio']}x)")
        checks.insert(0, (f"ratio >= {TARGETS['ratio']}x", ratio >= TARGETS["ratio"]))
    checks.append(("stored == 2xx", verdict == "OK"))
    print("  targets: " + ", ".join(f"{n}: {'met' if ok else 'MISSED'}" for n, ok in checks))


def print_summary(rounds: list[tuple[Result, Result | None]]) -> None:
    """Medians over rounds: each round's ratio pairs a durable run with the floor run after it."""
    durables = [d for d, _ in rounds]
    print(f"\n== Medians over {len(rounds)} rounds")
    print(
        f"  durable: {median(d.rps for d in durables):.0f} req/s, "
        f"p99 {median(d.ms('p99_us') for d in durables):.2f} ms, "
        f"peak RSS {max(d.rss_kb for d in durables) / 1024:.1f} MB (max)"
    )
    floors = [(d, f) for d, f in rounds if f is not None]
    if floors:
        print(
            f"  floor:   {median(f.rps for _, f in floors):.0f} req/s, "
            f"p99 {median(f.ms('p99_us') for _, f in floors):.2f} ms"
        )
        ratios = sorted(d.rps / f.rps for d, f in floors)
        print(
            f"  ratio durable/floor: median {median(ratios):.2f}x "
            f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= {TARGETS['ratio']}x)"
        )
