"""Loads the named SQL blocks and numbered migrations of each backend.

One scheme for both: `sql/<backend>/queries.sql` holds `-- name: NAME` blocks, and
`sql/<backend>/NNNN_name.sql` the migrations, numbered alike on every backend so a version
means the same schema everywhere (each store records applied versions in `schema_migrations`).
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources
from typing import Literal

Backend = Literal["sqlite", "postgres"]

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries(backend: Backend) -> dict[str, str]:
    """`{name: sql}` from `sql/<backend>/queries.sql`."""
    folder = resources.files(__package__).joinpath("sql", backend)
    text = folder.joinpath("queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]
    return {name: sql.strip() for name, sql in zip(parts[::2], parts[1::2], strict=True)}


@cache
def migrations(backend: Backend) -> list[tuple[int, str]]:
    """`[(version, script)]` from `sql/<backend>/NNNN_name.sql`, in version order."""
    folder = resources.files(__package__).joinpath("sql", backend)
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql") and entry.name[:1].isdigit():
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)
