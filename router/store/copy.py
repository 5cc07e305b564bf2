"""`switchboard copy`: moves a single-box SQLite install into PostgreSQL, safe to run twice.

The source is opened read-only and read in one transaction (a consistent snapshot), table by
table in primary-key order, a page at a time, so memory stays flat whatever its size. Each page
is one `INSERT ... SELECT FROM unnest(...) ON CONFLICT DO NOTHING` on the destination (its own
transaction): rows already there are skipped and counted, so a second run, or a run resumed
after an interruption, writes only what is missing. Rows keep their `seq` (creation order), and
each identity sequence is moved past the copied maximum, so new rows sort after copied ones.

Columns are converted as the PostgreSQL store writes them: ISO text times become timestamptz,
NUL in text columns becomes U+FFFD (`db_text`; the exact value stays in the JSON bodies), and
BLOB columns stay bytes. Blob files (`<db dir>/blobs/`) go into the `blobs` table.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg
import msgspec

from router.store.postgres import PostgresStore, is_postgres_url, redact_url, wrap_exceptions
from router.store.postgres.rows import db_text
from router.store.queries import queries
from router.store.sqlite import sqlite_path

#: Copied, in this order, each paged by its primary key (`seq` keeps creation order).
COPIED: dict[str, tuple[str, ...]] = {
    "events": ("id",),
    "nonces": ("source", "nonce"),
    "quarantine": ("id",),
    "threads": ("thread_key",),
    "conversations": ("key",),
    "contacts": ("key",),
    "consent_ledger": ("seq",),
    "runs": ("seq",),
    "outbox": ("seq",),
    "outbox_attempts": ("seq",),
    "receipts": ("provider_message_id", "status"),
    "timers": ("conversation_key", "timer"),
    "rate_slots": ("key",),
    "breakers": ("key",),
    "reconcile_state": ("source",),
}
#: Not copied, and why (README and `copy --help` say the same).
LEFT_OUT: dict[str, str] = {
    "leases": "transient worker holds; lanes are claimed afresh (a retry wait restarts now)",
    "store_probe": "a readiness scratch row",
    "schema_migrations": "the destination records its own migrations",
}
#: Columns that tell a row of an identity table from another one with the same `seq`.
SAME_ROW: dict[str, tuple[str, ...]] = {
    "consent_ledger": ("contact_key", "event_id", "at"),
    "runs": ("event_id", "at"),
    "outbox": ("id",),
    "outbox_attempts": ("outbox_id", "at"),
}
#: Rows per page (one destination transaction each).
PAGE_ROWS = 1000
#: Blob bytes per destination transaction.
BLOB_PAGE_BYTES = 16 * 1024 * 1024
_BLOB_NAME = re.compile(r"^[0-9a-f]{64}$")

_COLUMNS = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attidentity <> ''
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_ADVANCE = (
    "SELECT setval(pg_get_serial_sequence($1, $2), coalesce(max({column}), 0) + 1, false) "
    "FROM {table}"
)
_TABLES = "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
_PUT_BLOBS = """
INSERT INTO blobs (digest, content) SELECT * FROM unnest($1::text[], $2::bytea[])
ON CONFLICT (digest) DO NOTHING RETURNING 1
"""


class CopyRefused(Exception):
    """The copy cannot start (or go on): the message says why, in one sentence."""


class Counts(msgspec.Struct, kw_only=True):
    """Rows of one table: read from the source, written to the destination, already there."""

    read: int = 0
    written: int = 0
    skipped: int = 0


class CopyReport(msgspec.Struct, kw_only=True):
    """What a copy did; `blobs` is the number of blobs written."""

    tables: dict[str, Counts]
    blobs: int = 0


class Listener(Protocol):
    """Told of progress (the CLI's bars): a table starts, then pages of it are done."""

    def begin(self, table: str, total: int) -> None: ...

    def advance(self, table: str, rows: int) -> None: ...


class _Silent:
    def begin(self, table: str, total: int) -> None:
        pass

    def advance(self, table: str, rows: int) -> None:
        pass


def check_urls(source: str, destination: str) -> Path:
    """The source's path; CopyRefused unless SQLite to PostgreSQL, with the source there."""
    if not source.startswith("sqlite:///"):
        raise CopyRefused(f"--from must be a sqlite:///PATH URL, not {redact_url(source)!r}")
    if not is_postgres_url(destination):
        raise CopyRefused(f"--to must be a postgresql://… URL, not {redact_url(destination)!r}")
    path = sqlite_path(source)
    if not path.is_file():
        raise CopyRefused(f"the source database {str(path)!r} does not exist")
    return path


async def copy_store(
    source: str,
    destination: str,
    *,
    listener: Listener | None = None,
    page_rows: int = PAGE_ROWS,
) -> CopyReport:
    """Copy every user-data table and blob of the SQLite store at `source` into the PostgreSQL
    store at `destination` (migrated first). Raises CopyRefused or StoreUnavailable."""
    path = check_urls(source, destination)
    heard = listener or _Silent()
    with _read_only(path) as reader:
        target = PostgresStore(destination, pool_min_size=1, pool_max_size=1)
        await target.open()  # applies the destination's migrations
        await target.close()
        with wrap_exceptions():
            conn = await asyncpg.connect(destination, timeout=10)
        try:
            with wrap_exceptions():
                report = await _copy_all(reader, conn, heard, page_rows)
                blobs = await _copy_blobs(path.parent / "blobs", conn, heard)
                # The planner's statistics now, not when autovacuum gets round to it: without
                # them PostgreSQL plans the first hours' claims and prunes blind.
                await conn.execute("ANALYZE")
        finally:
            await conn.close()
    report.tables["blobs"] = blobs
    report.blobs = blobs.written
    return report


async def _copy_all(
    reader: _Source, conn: asyncpg.Connection, heard: Listener, page_rows: int
) -> CopyReport:
    await _check_versions(reader, conn)
    report = CopyReport(tables={})
    for table, key in COPIED.items():
        report.tables[table] = await _copy_table(reader, conn, table, key, heard, page_rows)
    return report


class _Source:
    """The SQLite side: read-only, one read transaction for the whole copy."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CopyRefused(f"the source cannot be read: {exc}") from exc


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[_Source]:
    """The source opened read-only (`mode=ro`: the copy can never change it), in one read
    transaction: every table comes from the same snapshot, even if a process still writes."""
    try:
        uri = path.absolute().as_uri() + "?mode=ro"
        conn = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.DatabaseError as exc:
        raise CopyRefused(f"the source cannot be opened: {exc}") from exc
    try:
        try:
            conn.execute("BEGIN")
            conn.execute(_TABLES).fetchall()
        except sqlite3.DatabaseError as exc:
            raise CopyRefused(f"the source is not a SQLite database: {exc}") from exc
        yield _Source(conn)
    finally:
        conn.close()


async def _check_versions(reader: _Source, conn: asyncpg.Connection) -> None:
    """The source must be a Switchboard store at exactly the destination's schema version."""
    try:
        [(found,)] = reader.conn.execute(queries("sqlite")["schema_version"]).fetchall()
    except sqlite3.DatabaseError as exc:
        raise CopyRefused("the source is not a Switchboard database (no migrations)") from exc
    unknown = {row[0] for row in reader.rows(_TABLES)} - set(COPIED) - set(LEFT_OUT)
    if unknown:  # a table added by a migration this copy was not taught
        raise CopyRefused(f"the source has tables this copy does not know: {sorted(unknown)}")
    wanted = await conn.fetchval(queries("postgres")["schema_version"])
    if found != wanted:
        fix = (
            "run `switchboard migrate` on the source with this version first"
            if found < wanted
            else "copy with the Switchboard version that wrote the source"
        )
        raise CopyRefused(
            f"the source's schema is version {found} and the destination's {wanted}: {fix}"
        )


async def _copy_table(
    reader: _Source,
    conn: asyncpg.Connection,
    table: str,
    key: tuple[str, ...],
    heard: Listener,
    page_rows: int,
) -> Counts:
    columns, types, identity = await _columns(reader, conn, table)
    [(total,)] = reader.rows(f"SELECT count(*) FROM {_name(table)}")  # noqa: S608 (constant)
    heard.begin(table, total)
    insert = _insert_sql(table, columns, types, identity)
    convert = [_converter(types[c]) for c in columns]
    counts = Counts()
    for page in _pages(reader, table, columns, key, page_rows):
        values = [[fn(row[i]) for row in page] for i, fn in enumerate(convert)]
        made = [row[0] for row in await conn.fetch(insert, *values)]
        if identity and len(made) < len(page):
            await _check_same_rows(conn, table, identity, columns, values, set(made))
        written = len(made)
        counts.read += len(page)
        counts.written += written
        counts.skipped += len(page) - written
        heard.advance(table, len(page))
    if identity:
        await conn.fetchval(_ADVANCE.format(column=identity, table=_name(table)), table, identity)
    return counts


async def _columns(
    reader: _Source, conn: asyncpg.Connection, table: str
) -> tuple[list[str], dict[str, str], str | None]:
    """The source's columns, their destination types, and the destination's identity column;
    CopyRefused unless both sides have the same columns."""
    source = [row[0] for row in reader.rows("SELECT name FROM pragma_table_info(?)", (table,))]
    found = await conn.fetch(_COLUMNS, table)
    types = {row[0]: row[1] for row in found}
    if sorted(source) != sorted(types):
        raise CopyRefused(
            f"table {table} differs between source ({', '.join(sorted(source)) or 'missing'}) "
            f"and destination ({', '.join(sorted(types)) or 'missing'})"
        )
    identity = next((row[0] for row in found if row[2]), None)
    return source, types, identity


async def _check_same_rows(
    conn: asyncpg.Connection,
    table: str,
    identity: str,
    columns: list[str],
    values: list[list[Any]],
    made: set[Any],
) -> None:
    """Rows skipped for their `seq` must be the source's own (an earlier copy), not rows the
    destination made itself: a database already in use would otherwise lose source rows."""
    natural = SAME_ROW.get(table, ())
    places = [columns.index(c) for c in natural]
    skipped = {
        seq: tuple(values[p][i] for p in places)
        for i, seq in enumerate(values[columns.index(identity)])
        if seq not in made
    }
    listed = ", ".join(_name(c) for c in (identity, *natural))
    there = await conn.fetch(
        f"SELECT {listed} FROM {_name(table)} WHERE {_name(identity)} = ANY($1::bigint[])",  # noqa: S608
        list(skipped),
    )
    for row in there:
        if tuple(row[1:]) != skipped[row[0]]:
            raise CopyRefused(
                f"the destination's {table} row {identity} {row[0]} is not the source's: "
                "copy into a fresh database (or one only this source was copied into)"
            )


def _pages(
    reader: _Source, table: str, columns: list[str], key: tuple[str, ...], page_rows: int
) -> Iterator[list[Any]]:
    """Pages of rows in key order; each page starts after the last key of the one before."""
    listed = ", ".join(_name(c) for c in columns)
    order = ", ".join(_name(c) for c in key)
    head = f"SELECT {listed} FROM {_name(table)}"  # noqa: S608 (identifiers are constants)
    first = f"{head} ORDER BY {order} LIMIT ?"
    after = f"{head} WHERE ({order}) > ({', '.join('?' * len(key))}) ORDER BY {order} LIMIT ?"
    places = [columns.index(c) for c in key]
    page = reader.rows(first, (page_rows,))
    while page:
        yield page
        last = [page[-1][i] for i in places]
        page = reader.rows(after, (*last, page_rows)) if len(page) == page_rows else []


def _insert_sql(table: str, columns: list[str], types: dict[str, str], identity: str | None) -> str:
    listed = ", ".join(_name(c) for c in columns)
    arrays = ", ".join(f"${n}::{types[c]}[]" for n, c in enumerate(columns, start=1))
    overriding = " OVERRIDING SYSTEM VALUE" if identity else ""
    made = _name(identity or columns[0])
    return (
        f"INSERT INTO {_name(table)} ({listed}){overriding} "  # noqa: S608 (identifiers)
        f"SELECT * FROM unnest({arrays}) ON CONFLICT DO NOTHING RETURNING {made}"
    )


def _converter(pg_type: str) -> Callable[[Any], Any]:
    """How a SQLite value becomes what the PostgreSQL store keeps in a column of `pg_type`."""
    if pg_type.startswith("timestamp"):
        return _time
    if pg_type == "text":
        return _text
    if pg_type == "bytea":
        return _bytes
    return _same


def _same(value: Any) -> Any:
    return value


def _time(value: Any) -> datetime | None:
    if value is None:
        return None
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):  # a BLOB in a text column: kept readable
        value = value.decode("utf-8", "replace")
    return db_text(str(value))


def _bytes(value: Any) -> bytes | None:
    if value is None:
        return None
    return value.encode() if isinstance(value, str) else bytes(value)


def _name(identifier: str) -> str:
    """A quoted SQL identifier (names come from COPIED and the catalogs, never from input)."""
    return '"' + identifier.replace('"', '""') + '"'


async def _copy_blobs(root: Path, conn: asyncpg.Connection, heard: Listener) -> Counts:
    """Blob files, content-addressed, into the `blobs` table; a few MiB per transaction."""
    files = await asyncio.to_thread(_blob_files, root)
    heard.begin("blobs", len(files))
    counts = Counts()
    for batch in _blob_batches(files):
        contents = await asyncio.to_thread(_read_all, batch)
        written = len(await conn.fetch(_PUT_BLOBS, [p.name for p in batch], contents))
        counts.read += len(batch)
        counts.written += written
        counts.skipped += len(batch) - written
        heard.advance("blobs", len(batch))
    return counts


def _blob_files(root: Path) -> list[Path]:
    """The blob files under `root/ab/abcdef…` in digest order (temp files left out)."""
    return sorted(p for p in root.glob("??/*") if _BLOB_NAME.match(p.name))


def _read_all(paths: list[Path]) -> list[bytes]:
    return [path.read_bytes() for path in paths]


def _blob_batches(files: list[Path]) -> Iterator[list[Path]]:
    batch: list[Path] = []
    size = 0
    for path in files:
        batch.append(path)
        size += path.stat().st_size
        if size >= BLOB_PAGE_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


__all__ = [
    "COPIED",
    "LEFT_OUT",
    "CopyRefused",
    "CopyReport",
    "Counts",
    "Listener",
    "check_urls",
    "copy_store",
]
