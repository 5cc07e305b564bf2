"""Sortable unique ids (ULID: 48-bit milliseconds + 80 random bits, Crockford base32).

Hand-written because it is ten lines on the ingest hot path and a dependency would cost more
than it saves; ids sort by creation time, which `events list` and conversation order rely on.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


def new_ulid(at: datetime) -> str:
    """A 26-character ULID whose time part is `at` (milliseconds since the epoch)."""
    # Integer arithmetic: `int(at.timestamp() * 1000)` is a float and can land a millisecond early.
    aware = at if at.tzinfo is not None else at.astimezone()
    millis = (aware - _EPOCH) // _MILLISECOND
    value = (millis << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
