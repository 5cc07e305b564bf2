"""What needs a person (SPEC §12), as one sentence each, most urgent first.

Pure: the status object and the config in, sentences out; no clock, no I/O.
"""

from __future__ import annotations

from router.config import Settings
from router.status.model import Status
from router.timeutil import parse_duration

#: An event stored this long ago and not yet routed means the worker is stopped or behind.
WAITING_TOO_LONG_SECONDS = 60.0
#: Below this share of the disk free, SQLite and the blobs are about to refuse writes (and
#: ingest answers 503).
DISK_FREE_MIN_SHARE = 0.10


def alerts(
    status: Status, settings: Settings, server_problem: str | None, disk_total: int | None
) -> list[str]:
    """The alerts the store's and the server's figures call for (`sections` add their own)."""
    found = [
        *_server(status, server_problem),
        *_disk(status, disk_total),
        *_events(status),
        *_dead(status),
        *_breakers(status),
        *_escalations(status, settings),
    ]
    return found


def _server(status: Status, problem: str | None) -> list[str]:
    server = status.server
    found = []
    if not server.ready:
        found.append(f"server down: {problem or f'not ready at {server.url}'}")
    if server.rules_error:
        found.append(f"rules files invalid, the previous version stays live: {server.rules_error}")
    return found


def _disk(status: Status, total: int | None) -> list[str]:
    free = status.storage.disk_free_bytes
    if free is None or not total or free >= DISK_FREE_MIN_SHARE * total:
        return []
    return [f"disk almost full where the store is: {free / total:.0%} free ({size(free)})"]


def _events(status: Status) -> list[str]:
    oldest = status.events.oldest_waiting_seconds
    if oldest is None or oldest <= WAITING_TOO_LONG_SECONDS:
        return []
    count = status.events.waiting
    return [
        f"{_n(count, 'event')} waiting to be routed, the oldest for {duration(oldest)}"
        " (is a worker running?)"
    ]


def _dead(status: Status) -> list[str]:
    dead = status.outbox.dead
    if not dead:
        return []
    return [f"{_n(dead, 'dead letter')} in the outbox: see `switchboard dlq list`"]


def _breakers(status: Status) -> list[str]:
    return [
        f"circuit breaker {state.replace('_', '-')} for {destination}: sends to it are held"
        for destination, state in status.breakers.items()
        if state != "closed"
    ]


def _escalations(status: Status, settings: Settings) -> list[str]:
    oldest = status.escalations.oldest_unclaimed_seconds
    timeout = parse_duration(settings.escalation.claim_timeout).total_seconds()
    if oldest is None or oldest < timeout:
        return []
    return [
        f"escalation unclaimed for {duration(oldest)}, past its reminder "
        f"(escalation.claim_timeout {settings.escalation.claim_timeout}); "
        f"{_n(status.escalations.unclaimed, 'unclaimed escalation')} in all"
    ]


def duration(seconds: float) -> str:
    """`75` -> `1m 15s`, `7500` -> `2h 5m`, `180000` -> `2d 2h`: two units at most."""
    whole = int(seconds)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts: list[str] = []
    for name, size in units:
        if whole >= size or (name == "s" and not parts):
            parts.append(f"{whole // size}{name}")
            whole %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def size(count: int) -> str:
    """`1536` -> `1.5 KB`."""
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"
