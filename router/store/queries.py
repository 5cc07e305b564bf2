"""Loads the named SQL blocks and numbered migrations of each backend.

One scheme for both: `sql/<backend>/queries.sql` holds `-- name: NAME` blocks, and
`sql/<backend>/NNNN_name.sql` the migrations, numbered alike on every backend so a version
means the same schema everywhere (each store records applied versions in `schema_migrations`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache, lru_cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Literal

Backend = Literal["sqlite", "postgres"]

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


@cache
def queries(backend: Backend) -> dict[str, str]:
    """`{name: sql}` from `sql/<backend>/queries.sql` and the queries both backends share,
    `sql/shared/*.sql` (run through `filtered`, which numbers their `:name` parameters for
    PostgreSQL): the listings, and what `switchboard status` counts."""
    own = _named(resources.files(__package__).joinpath("sql", backend, "queries.sql"))
    shared: dict[str, str] = {}
    for file in sorted(resources.files(__package__).joinpath("sql", "shared").iterdir(), key=str):
        if file.name.endswith(".sql"):
            named = _named(file)
            if twice := shared.keys() & named.keys():
                raise ValueError(f"queries named twice in sql/shared: {sorted(twice)}")
            shared.update(named)
    if both := own.keys() & shared.keys():
        raise ValueError(f"queries named twice, in {backend} and shared: {sorted(both)}")
    return {**own, **shared}


def _named(file: Traversable) -> dict[str, str]:
    parts = _NAME.split(file.read_text(encoding="utf-8"))[1:]
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


#: Ends a line of a filtered query that is kept only when its one parameter is given.
OPTIONAL = "-- optional"
_PARAMETER = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


def filtered(
    backend: Backend, sql: str, params: Mapping[str, object]
) -> tuple[str, tuple[str, ...]]:
    """A filtered query with only the filters given, and the names of its parameters in the
    order of the placeholders.

    `sql` names its parameters `:name` on both backends. A line ending in `-- optional` holds
    one condition and its one parameter; it is dropped when that parameter is None. Writing
    `(:x IS NULL OR col = :x)` instead would hide from the planner the index each filter can
    use: SQLite then scans the table, and PostgreSQL's generic plan does too after a pooled
    connection's fifth call. For PostgreSQL the placeholders become `$1`, `$2`, ... in the
    order of the names returned."""
    given = frozenset(name for name, value in params.items() if value is not None)
    return _filtered(backend, sql, given)


@lru_cache(maxsize=512)
def _filtered(backend: Backend, sql: str, given: frozenset[str]) -> tuple[str, tuple[str, ...]]:
    lines = []
    for line in sql.splitlines():
        if line.lstrip().startswith("--"):
            continue
        if line.rstrip().endswith(OPTIONAL):
            found = _PARAMETER.findall(line)
            if len(found) != 1:
                raise ValueError(f"an optional line holds one parameter, not {found}: {line!r}")
            name = found[0]
            if name not in given:
                continue
            line = line.rstrip().removesuffix(OPTIONAL).rstrip()
        lines.append(line)
    text = "\n".join(lines)
    names = tuple(dict.fromkeys(_PARAMETER.findall(text)))
    if backend == "postgres":
        text = _PARAMETER.sub(lambda m: f"${names.index(m[1]) + 1}", text)
    return text, names
