"""Parsing of the durations and moments people type (`10m`, `24h`, `2026-11-23T10:00`)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

#: ASCII digits only (`\d` matches any Unicode digit, and float() reads full-width ones).
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*(s|m|h|d|w)\s*$", re.ASCII)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """`90s`, `10m`, `24h`, `7d`, `2w` -> timedelta; ValueError otherwise."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"not a duration: {text!r} (expected e.g. 30s, 10m, 24h, 7d)")
    try:
        return timedelta(**{_UNITS[match[2]]: float(match[1])})
    except OverflowError as exc:
        raise ValueError(f"duration too long: {text!r}") from exc


def parse_interval(text: str) -> timedelta | None:
    """A repeat interval (`10m`, `6h`); None for "0" (never), or a duration of nothing."""
    if text.strip() == "0":
        return None
    every = parse_duration(text)
    return every if every > timedelta(0) else None


def parse_since(text: str, now: datetime) -> datetime:
    """A duration ago (`24h`) or an ISO 8601 moment (naive means UTC), in UTC."""
    try:
        ago = parse_duration(text)
    except ValueError:
        ago = None
    try:
        if ago is not None:
            return (now - ago).astimezone(UTC)
        moment = datetime.fromisoformat(text)
        return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    except ValueError as exc:
        raise ValueError(f"not a duration or ISO time: {text!r}") from exc
    except OverflowError as exc:
        raise ValueError(f"out of range: {text!r}") from exc
