"""What bench/ingest.py reads about processes and cores from /proc (Linux)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    """CPU seconds of one process (user, system) and of one core (busy, total), at one moment."""

    user_s: float
    system_s: float
    core_busy_s: float
    core_total_s: float


@dataclass(frozen=True)
class CpuShare:
    """Between two samples: the server's CPU seconds, its share of its core, everyone else's."""

    user_s: float
    system_s: float
    server: float
    others: float


def cpu_sample(pid: int, core: int | None) -> CpuSample:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system = int(fields[11]) / TICKS, int(fields[12]) / TICKS  # utime, stime
    busy = total = 0.0
    name = f"cpu{core}" if core is not None else "cpu"
    for line in Path("/proc/stat").read_text().splitlines():
        parts = line.split()
        if parts and parts[0] == name:
            values = [int(v) for v in parts[1:]]
            total = sum(values[:8]) / TICKS
            busy = total - (values[3] + values[4]) / TICKS  # minus idle and iowait
            break
    return CpuSample(user_s=user, system_s=system, core_busy_s=busy, core_total_s=total)


def cpu_share(before: CpuSample, after: CpuSample) -> CpuShare:
    wall = max(after.core_total_s - before.core_total_s, 1e-9)
    user, system = after.user_s - before.user_s, after.system_s - before.system_s
    busy = (after.core_busy_s - before.core_busy_s) / wall
    server = (user + system) / wall
    return CpuShare(user_s=user, system_s=system, server=server, others=max(busy - server, 0.0))


def peak_rss_kb(pid: int) -> int:
    """VmHWM: the peak resident set size of the process so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def fsync_latency(folder: Path, rounds: int = 50) -> str:
    """p50/p99 of appending 4 KiB to a file in `folder` and fsyncing it (a WAL commit's I/O)."""
    path = folder / "fsync-probe"
    times = []
    with path.open("wb") as probe:
        for _ in range(rounds):
            probe.write(b"\0" * 4096)
            probe.flush()
            started = time.perf_counter()
            os.fsync(probe.fileno())
            times.append(time.perf_counter() - started)
    path.unlink()
    times.sort()
    p50, p99 = times[len(times) // 2], times[min(len(times) - 1, len(times) * 99 // 100)]
    return f"fsync of 4 KiB: p50 {p50 * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms"


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def git_revision(root: Path) -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev + (" (uncommitted changes)" if dirty else "")


def stop(proc: subprocess.Popen[bytes], grace_s: float = 15) -> None:
    """SIGINT (uvicorn's graceful shutdown), then SIGKILL after `grace_s`."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
