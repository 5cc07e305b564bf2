"""Sortable unique ids (ULID: 48-bit milliseconds + 80 random bits, Crockford base32).

Hand-written because it is ten lines on the ingest hot path and a dependency would cost more
than it saves; ids sort by creation time, which `events list` and conversation order rely on.
"""

from __future__ import annotations

import os
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid(at: datetime) -> str:
    """A 26-character ULID whose time part is `at` (milliseconds since the epoch)."""
    value = (int(at.timestamp() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))
