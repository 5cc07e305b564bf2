"""Loads the named SQL blocks and numbered migrations that sit beside this module."""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries() -> dict[str, str]:
    """`{name: sql}` from `sql/queries.sql`."""
    text = resources.files(__package__).joinpath("sql/queries.sql").read_text(encoding="utf-8")
    parts = _NAME.split(text)[1:]
    return {name: sql.strip() for name, sql in zip(parts[::2], parts[1::2], strict=True)}


@cache
def migrations() -> list[tuple[int, str]]:
    """`[(version, script)]` from `sql/migrations/NNNN_name.sql`, in version order."""
    folder = resources.files(__package__).joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)
