"""SQLite implementation of the Store, on aiosqlite.

Writes go through one writer connection in WAL mode with `synchronous=FULL`. Concurrent
`ingest` calls are group-committed: the writer task takes everything queued, runs BEGIN, the
inserts and COMMIT as a single call into the connection's thread (one fsync for the batch, one
thread hop instead of one per statement), and only then lets each caller answer. Reads use a
second connection so they never queue behind a batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
import sqlite3
from collections.abc import Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import aiosqlite
import msgspec

from router.errors import StoreCorrupt, StoreUnavailable, UnstorableEvent
from router.events import Event, EventStatus, decode_event, encode_event
from router.store.base import (
    EventFilter,
    IngestItem,
    IngestOutcome,
    QuarantinedRequest,
    StoredRaw,
)
from router.store.blobs import BlobStore
from router.store.queries import migrations, queries

T = TypeVar("T")
#: An item and its row, encoded by the caller: an event that cannot be stored fails alone.
_Prepared = tuple[IngestItem, tuple[Any, ...]]
_Pending = tuple[_Prepared, "asyncio.Future[IngestOutcome]"]
_STOP = object()


def sqlite_path(url: str) -> Path:
    """`sqlite:///var/x.db` -> `var/x.db` (relative), `sqlite:////abs/x.db` -> `/abs/x.db`."""
    prefix = "sqlite:///"
    if not url.startswith(prefix):
        raise ValueError(f"not a sqlite URL: {url!r} (expected sqlite:///path/to/file.db)")
    return Path(url[len(prefix) :])


def timestamp(moment: datetime) -> str:
    """The one text form of a time in the store: UTC, microseconds, sortable."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Map driver errors to the core's: everything the disk or a lock can do is 'unavailable'."""
    try:
        yield
    except (sqlite3.OperationalError, sqlite3.DatabaseError, ValueError) as exc:
        raise StoreUnavailable(f"sqlite: {exc}") from exc


class SQLiteStore:
    """The single-box store: one file, WAL, group-committed durable ingest."""

    def __init__(self, path: Path, *, busy_timeout_ms: int = 5000, max_batch: int = 512) -> None:
        self.path = path
        self.blobs = BlobStore(path.parent / "blobs")
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._queue: asyncio.Queue[_Pending | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._sql = queries()
        #: (st_dev, st_ino) of the file opened: a deleted or replaced file must not take acks.
        self._identity: tuple[int, int] | None = None
        #: Ingest transactions committed: with group commit, far fewer than ingests.
        self.batches_committed = 0
        #: Why the last ingest commit failed, until a commit succeeds (a full disk: reads and
        #: the write lock still work, so only a commit tells that the store is ready again).
        self._commit_error: str | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with wrap_exceptions():
                self._writer = await self._connect(synchronous="FULL")
                await self._call(self._writer, self._migrate)
                self._reader = await self._connect(synchronous="NORMAL")
        except BaseException:
            await self._close_connections()  # their threads would keep the process alive
            raise
        self._identity = _file_identity(self.path)
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        if self._writer_task is not None:
            self._queue.put_nowait(_STOP)
            await self._writer_task
            self._writer_task = None
        # Queued after the writer took its last batch: answer them rather than strand them.
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is not _STOP:
                _fail(entry[1], StoreUnavailable("store is closed"))  # type: ignore[index]
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None

    async def _connect(self, *, synchronous: str) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute(f"PRAGMA synchronous = {synchronous}")
        await conn.execute("PRAGMA foreign_keys = ON")
        return conn

    @staticmethod
    async def _call(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(raw_connection)` in the connection's own thread: one hop for many statements.

        aiosqlite has no public verb for this; `_execute` is its stable internal one (pinned).
        """
        call: Callable[..., Awaitable[T]] = conn._execute
        return await call(fn, conn._conn)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        known = migrations()
        current = conn.execute(self._sql["schema_version"]).fetchone()[0]
        if known and current > known[-1][0]:
            raise StoreCorrupt(f"schema version {current} is newer than this Switchboard knows")
        for version, script in known:
            if version <= current:
                continue
            try:
                conn.executescript(
                    f"BEGIN IMMEDIATE;\n{script}\nINSERT INTO schema_migrations VALUES "
                    f"({version}, '{timestamp(datetime.now(UTC))}');\nCOMMIT;"
                )
            except sqlite3.OperationalError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                now = conn.execute(self._sql["schema_version"]).fetchone()[0]
                if now < version:  # not another process migrating at the same moment
                    raise

    # -- ingest (group commit) ------------------------------------------------------------

    async def ingest(self, item: IngestItem) -> IngestOutcome:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("store is not open")
        prepared = (item, _event_row(item))  # raises UnstorableEvent before joining a batch
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((prepared, future))
        return await future

    async def _write_loop(self) -> None:
        assert self._writer is not None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[_Pending] = []
            for entry in self._drain(first):
                if entry is _STOP:
                    stopping = True
                else:
                    batch.append(entry)  # type: ignore[arg-type]
            if batch:
                await self._commit(batch)

    def _drain(self, first: _Pending | object) -> Iterator[_Pending | object]:
        yield first
        taken = 1
        while taken < self._max_batch and not self._queue.empty():
            yield self._queue.get_nowait()
            taken += 1

    async def _commit(self, batch: list[_Pending]) -> None:
        assert self._writer is not None
        items = [item for item, _ in batch]
        try:
            with wrap_exceptions():
                outcomes = await self._call(self._writer, lambda c: self._write_batch(c, items))
        except Exception as exc:  # whatever it is, the writer lives on and every caller hears
            reason = str(exc) if isinstance(exc, StoreUnavailable) else f"write failed: {exc!r}"
            self._commit_error = reason
            for _, future in batch:
                _fail(future, StoreUnavailable(reason))
            return
        self._commit_error = None
        self.batches_committed += 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    def _write_batch(
        self, conn: sqlite3.Connection, items: Sequence[_Prepared]
    ) -> list[IngestOutcome]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_file()  # one stat per batch, under the write lock
            if any(item.nonce is not None for item, _ in items):
                outcomes = [self._write_one(conn, item, row) for item, row in items]
            else:
                outcomes = []
                for start in range(0, len(items), _ROWS_PER_INSERT):
                    outcomes += self._insert_events(conn, items[start : start + _ROWS_PER_INSERT])
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return outcomes

    def _write_one(
        self, conn: sqlite3.Connection, item: IngestItem, row: tuple[Any, ...]
    ) -> IngestOutcome:
        event = item.event
        if item.nonce is not None:
            key = {"source": event.source, "nonce": item.nonce}
            fresh = conn.execute(
                self._sql["insert_nonce"],
                {**key, "dedupe_key": event.dedupe_key, "seen_at": timestamp(event.received_at)},
            ).rowcount
            if not fresh:
                owner = conn.execute(self._sql["nonce_owner"], key).fetchone()
                if owner is None or owner[0] != event.dedupe_key:
                    return IngestOutcome.REPLAY
        return self._insert_events(conn, [(item, row)])[0]

    def _insert_events(
        self, conn: sqlite3.Connection, items: Sequence[_Prepared]
    ) -> list[IngestOutcome]:
        """Insert many events with one statement, then tell which were new.

        One statement rather than one per row: sqlite3 releases the GIL around every statement
        step, and each time the writer thread takes it back it can wait a whole switch
        interval (5 ms) behind the busy event loop. A row whose dedupe key is already stored,
        or comes earlier in the batch, is left out; only then are the ids looked up one by one.
        """
        values = [value for _, row in items for value in row]
        inserted = conn.execute(_insert_events_sql(len(items)), values).rowcount
        if inserted == len(items):
            return [IngestOutcome.STORED] * len(items)
        get_event = self._sql["get_event"]
        return [
            IngestOutcome.STORED
            if conn.execute(get_event, {"id": row[0]}).fetchone()
            else IngestOutcome.DUPLICATE
            for _, row in items
        ]

    # -- other writes ---------------------------------------------------------------------

    async def quarantine(self, request: QuarantinedRequest) -> None:
        row = msgspec.structs.asdict(request)
        row["received_at"] = timestamp(request.received_at)
        await self._write(self._sql["insert_quarantine"], row)

    async def prune_nonces(self, before: datetime) -> None:
        """Forget one-time tokens older than any timestamp a verifier would still accept."""
        await self._write(self._sql["prune_nonces"], {"before": timestamp(before)})

    async def _write(self, sql: str, params: dict[str, Any]) -> None:
        writer = self._require(self._writer)

        def run(conn: sqlite3.Connection) -> None:
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.execute(sql, params)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

        with wrap_exceptions():
            await self._call(writer, run)

    # -- reads ----------------------------------------------------------------------------

    async def list_events(self, where: EventFilter) -> list[Event]:
        params = {
            "source": where.source,
            "type": where.type,
            "status": where.status.value if where.status else None,
            "since": timestamp(where.since) if where.since else None,
            "until": timestamp(where.until) if where.until else None,
            "before": where.before,
            "limit": where.limit,
        }
        rows = await self._read(self._sql["list_events"], params)
        return [_event_from_row(row) for row in rows]

    async def get_event(self, event_id: str) -> Event | None:
        rows = await self._read(self._sql["get_event"], {"id": event_id})
        return _event_from_row(rows[0]) if rows else None

    async def get_raw(self, event_id: str) -> StoredRaw | None:
        return _raw(await self._read(self._sql["get_raw"], {"id": event_id}))

    async def nonce_first_body(self, source: str, nonce: str) -> StoredRaw | None:
        params = {"source": source, "nonce": nonce}
        return _raw(await self._read(self._sql["nonce_first_body"], params))

    async def list_quarantine(self, limit: int = 100) -> list[QuarantinedRequest]:
        rows = await self._read(self._sql["list_quarantine"], {"limit": limit})
        names = (
            "id",
            "source",
            "received_at",
            "reason",
            "content_type",
            "raw_body",
            "raw_blob",
            "correlation_id",
        )
        return [
            msgspec.convert(dict(zip(names, row, strict=True)), QuarantinedRequest) for row in rows
        ]

    async def ping(self) -> None:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("store writer is not running")
        with wrap_exceptions():
            self._check_file()
        await self._read("SELECT count(*) FROM schema_migrations", {})
        # A read succeeds under another process's write lock (WAL); ingest would not.
        writer = self._require(self._writer)
        with wrap_exceptions():
            await self._call(writer, _probe_write_lock)
        if self._commit_error is not None:
            await self._probe_commit()
        if self.blobs.failing is not None:
            try:
                await asyncio.to_thread(self.blobs.probe)
            except OSError as exc:
                raise StoreUnavailable(f"blob store: {exc.strerror or exc}") from exc

    async def _probe_commit(self) -> None:
        """After a failed ingest commit: commit one small row; ready again only if it lands."""
        failed = self._commit_error
        try:
            await self._write(self._sql["probe_commit"], {"at": timestamp(datetime.now(UTC))})
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"cannot commit: {exc}") from exc
        if self._commit_error == failed:
            self._commit_error = None

    def _check_file(self) -> None:
        """Raise unless the path still names the file opened: SQLite in WAL mode keeps
        writing to a deleted file, and every event acknowledged there would be lost."""
        if _file_identity(self.path) != self._identity:
            raise sqlite3.OperationalError(f"database file {self.path} was deleted or replaced")

    async def _read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        reader = self._require(self._reader)
        with wrap_exceptions():
            return list(await reader.execute_fetchall(sql, params))

    @staticmethod
    def _require(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable("store is not open")
        return conn


def _raw(rows: list[Any]) -> StoredRaw | None:
    if not rows:
        return None
    content_type, body, blob = rows[0]
    return StoredRaw(content_type=content_type, body=body, blob=blob)


def _fail(future: asyncio.Future[IngestOutcome], error: StoreUnavailable) -> None:
    if not future.done():
        future.set_exception(error)


def _file_identity(path: Path) -> tuple[int, int] | None:
    try:
        found = path.stat()
    except OSError:
        return None
    return found.st_dev, found.st_ino


def _probe_write_lock(conn: sqlite3.Connection) -> None:
    """Take and drop the write lock, waiting at most busy_timeout, as a batch commit would."""
    conn.execute("BEGIN IMMEDIATE")
    conn.execute("ROLLBACK")


#: Events per INSERT: 16 values each, within SQLite's oldest default limit of 999 a statement.
_ROWS_PER_INSERT = 62


@functools.cache
def _insert_events_sql(rows: int) -> str:
    """`insert_events` with its VALUES row repeated `rows` times (placeholders only: every
    value is bound). Each row count is a statement sqlite3 prepares once and caches."""
    head, values, tail = _VALUES_ROW.split(queries()["insert_events"])
    return head + ", ".join([values] * rows) + tail


_VALUES_ROW = re.compile(r"^(\([?, ]+\))$", re.MULTILINE)


def _event_row(item: IngestItem) -> tuple[Any, ...]:
    """The events row; UnstorableEvent if a text is not valid Unicode (a lone surrogate)."""
    event = item.event
    try:
        body = encode_event(event)  # every text column below is a field of this event
        if item.nonce is not None:
            item.nonce.encode()
    except (UnicodeEncodeError, TypeError, msgspec.EncodeError) as exc:
        raise UnstorableEvent(f"write failed: event cannot be stored: {exc}") from exc
    return (
        event.id,
        event.source,
        event.type,
        event.provider_type,
        event.dedupe_key,
        event.channel,
        event.contact.address if event.contact else None,
        event.conversation_key,
        event.status.value,
        timestamp(event.received_at),
        timestamp(event.occurred_at) if event.occurred_at else None,
        event.correlation_id,
        body,
        item.content_type,
        None if item.raw_blob else item.raw_body,
        item.raw_blob,
    )


def _event_from_row(row: Sequence[Any]) -> Event:
    event = decode_event(row[0])
    status = EventStatus(row[1])
    return event if event.status is status else msgspec.structs.replace(event, status=status)
