"""Sortable unique ids (ULID: 48-bit milliseconds + 80 random bits, Crockford base32).

Hand-written because it is ten lines on the ingest hot path and a dependency would cost more
than it saves; ids sort by creation time, which `events list` and conversation order rely on.
"""

from __future__ import annotations

import os
import random
from datetime import UTC, datetime, timedelta

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: Every two-character string, indexed by 10 bits: half the lookups of one char at a time.
_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]
#: Uniqueness needs randomness, not secrecy: a per-process generator seeded from the OS costs
#: a fraction of an `os.urandom` call per id.
_RANDOM = random.Random(os.urandom(32))
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


_last = 0


def new_ulid(at: datetime) -> str:
    """A 26-character ULID whose time part is `at` (milliseconds since the epoch).

    Monotonic within a process for one millisecond: an id made in the same millisecond as the
    previous one is at least the previous one plus one, so ids sort in the order they were
    made. Conversations are routed in id order, so two messages of one conversation that
    arrive within a millisecond keep their arrival order.
    """
    global _last
    # Integer arithmetic: `int(at.timestamp() * 1000)` is a float and can land a millisecond early.
    aware = at if at.tzinfo is not None else at.astimezone()
    millis = (aware - _EPOCH) // _MILLISECOND
    value = (millis << 80) | _RANDOM.getrandbits(80)
    if value <= _last and millis == _last >> 80:
        value = _last + 1
    _last = value
    return _encode(value)


def ulid_floor(at: datetime) -> str:
    """The smallest ULID of `at`'s millisecond. Every event's id is made from its
    `received_at` (`new_ulid(received_at)`), so `received_at >= at` implies
    `id >= ulid_floor(at)`: a time bound becomes a range of the primary key."""
    aware = at if at.tzinfo is not None else at.astimezone()
    return _encode(((aware - _EPOCH) // _MILLISECOND) << 80)


def ulid_time(ulid: str) -> datetime:
    """The moment a ULID was made for, to the millisecond (its first ten characters): an
    event's `received_at` read from its id, without reading the row."""
    millis = 0
    for char in ulid[:10].upper():
        millis = millis * 32 + _ALPHABET.index(char)
    return _EPOCH + millis * _MILLISECOND


def _encode(value: int) -> str:
    pairs = _PAIRS
    return "".join(
        (
            _ALPHABET[value >> 125],
            pairs[(value >> 115) & 1023],
            pairs[(value >> 105) & 1023],
            pairs[(value >> 95) & 1023],
            pairs[(value >> 85) & 1023],
            pairs[(value >> 75) & 1023],
            pairs[(value >> 65) & 1023],
            pairs[(value >> 55) & 1023],
            pairs[(value >> 45) & 1023],
            pairs[(value >> 35) & 1023],
            pairs[(value >> 25) & 1023],
            pairs[(value >> 15) & 1023],
            pairs[(value >> 5) & 1023],
            _ALPHABET[value & 31],
        )
    )
