"""Named time windows (`[windows]` in config, `during:` in rules) and the contact's time zone.

A window spec is one or more `;`-separated parts, each `[DAYS] HH:MM-HH:MM[,HH:MM-HH:MM...]`:
`Mon-Fri 09:00-17:00`, `Sat,Sun 10:00-14:00; Mon-Fri 08:00-20:00`, `22:00-06:00` (every day,
overnight). Starts are inclusive, ends exclusive, at minute resolution; an end before the start
runs past midnight into the next day. Day ranges may wrap (`Fri-Mon`).

It lives at the top of `router/`, beside `timeutil.py`, and imports nothing of the project: the
rules engine (`during:`), config checks and `statemachines/quiet_hours.py` all read windows in
this one format, and the machines must not depend on the rules engine to do so.
"""

from __future__ import annotations

import re
from datetime import datetime
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
import phonenumbers
from phonenumbers import timezone as phone_timezone

_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")


class Span(msgspec.Struct, frozen=True):
    days: frozenset[int]
    start: int  # minutes since midnight
    end: int


class Window(msgspec.Struct, frozen=True):
    """A parsed window: is a local time inside it?"""

    spec: str
    spans: tuple[Span, ...]

    def contains(self, local: datetime) -> bool:
        weekday, minute = local.weekday(), local.hour * 60 + local.minute
        for span in self.spans:
            if span.start < span.end:
                if weekday in span.days and span.start <= minute < span.end:
                    return True
            elif (weekday in span.days and minute >= span.start) or (
                (weekday - 1) % 7 in span.days and minute < span.end
            ):
                return True
        return False


def parse_window(spec: str) -> Window:
    """`Mon-Fri 09:00-17:00` -> Window; ValueError with what was expected otherwise."""
    spans: list[Span] = []
    for part in spec.split(";"):
        if part.strip():
            spans.extend(_parse_part(part.strip()))
    if not spans:
        raise ValueError("empty window, expected e.g. 'Mon-Fri 09:00-17:00'")
    return Window(spec=spec, spans=tuple(spans))


def _parse_part(part: str) -> list[Span]:
    first_digit = next((i for i, ch in enumerate(part) if ch.isdigit()), len(part))
    day_text, time_text = part[:first_digit].strip(), part[first_digit:].replace(" ", "")
    days = _parse_days(day_text) if day_text else frozenset(range(7))
    if not time_text:
        raise ValueError(f"no time range in {part!r}, expected e.g. 'Mon-Fri 09:00-17:00'")
    return [_parse_range(days, piece) for piece in time_text.split(",")]


def _parse_days(text: str) -> frozenset[int]:
    days: set[int] = set()
    for item in re.split(r"[,\s]+", text.strip(" ,")):
        if "-" in item:
            first, _, last = item.partition("-")
            start, end = _day(first), _day(last)
            days.update((start + i) % 7 for i in range((end - start) % 7 + 1))
        else:
            days.add(_day(item))
    return frozenset(days)


def _day(name: str) -> int:
    lowered = name.strip().lower()
    if lowered in _DAYS:
        return _DAYS.index(lowered)
    if lowered in _FULL:
        return _FULL.index(lowered)
    raise ValueError(f"unknown day {name!r}, expected one of Mon, Tue, Wed, Thu, Fri, Sat, Sun")


def _parse_range(days: frozenset[int], text: str) -> Span:
    start_text, sep, end_text = text.partition("-")
    if not sep:
        raise ValueError(f"bad time range {text!r}, expected HH:MM-HH:MM")
    start, end = _minutes(start_text), _minutes(end_text)
    if start == end or start == 24 * 60:
        raise ValueError(f"empty time range {text!r}, expected a start before the end")
    return Span(days, start, 0 if end == 24 * 60 else end)


def _minutes(text: str) -> int:
    match = _TIME.match(text)
    if not match or int(match[2]) > 59 or int(match[1]) * 60 + int(match[2]) > 24 * 60:
        raise ValueError(f"bad time {text!r}, expected HH:MM between 00:00 and 24:00")
    return int(match[1]) * 60 + int(match[2])


def contact_zone(explicit: str | None, address: str | None, default: ZoneInfo) -> ZoneInfo:
    """The snapshot's zone if valid, else the phone number's single zone, else `default`."""
    for name in (explicit, zone_for_number(address) if address else None):
        if name:
            zone = _zone(name)
            if zone is not None:
                return zone
    return default


@lru_cache(maxsize=4096)
def _zone(name: str) -> ZoneInfo | None:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None


@lru_cache(maxsize=8192)
def zone_for_number(address: str) -> str | None:
    """The IANA zone of an E.164 number when the numbering plan gives exactly one."""
    number_text = address.removeprefix("whatsapp:")
    if not number_text.startswith("+"):
        return None
    try:
        number = phonenumbers.parse(number_text, None)
    except phonenumbers.NumberParseException:
        return None
    zones = phone_timezone.time_zones_for_number(number)
    if len(zones) == 1 and zones[0] != "Etc/Unknown":
        return str(zones[0])
    return None


def load_zone(name: str) -> ZoneInfo:
    """A zone by IANA name; ValueError if unknown."""
    zone = _zone(name)
    if zone is None:
        raise ValueError(f"unknown time zone {name!r}, expected an IANA name like Europe/Paris")
    return zone
