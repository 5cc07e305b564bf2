"""SQLite implementation of the Store, on aiosqlite.

Writes go through one writer connection in WAL mode with `synchronous=FULL`. Concurrent
`ingest` calls are group-committed: the writer task takes everything queued, runs BEGIN, the
inserts and COMMIT as a single call into the connection's thread (one fsync for the batch, one
thread hop instead of one per statement), and only then lets each caller answer. Reads use a
second connection so they never queue behind a batch. What both stores do alike (the reads,
single-statement writes, shared decisions, the plans of many-row writes) lives in
router.store.common, router.store.shared and router.store.writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import os
import re
import shutil
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite
import msgspec

from router.errors import StoreCorrupt, StoreUnavailable, UnstorableEvent
from router.events import Event, encode_event
from router.logs import get_logger
from router.store import writes
from router.store.base import (
    IngestItem,
    IngestOutcome,
)
from router.store.blobs import BlobStore
from router.store.common import STOP, CommonStore, Pending, Prepared
from router.store.holding import Hold, StoreHeld, flock_now
from router.store.queries import filtered, migrations, queries
from router.store.records import (
    AttemptResult,
    BreakerNews,
    ClaimedLane,
    CommitOutcome,
    DueRow,
    EventResult,
    LaneCommit,
    Lease,
    OutboxRow,
    Pruned,
    RowClaims,
    SlotRequest,
    StorageUse,
)
from router.store.shared import (
    DISPATCH_SCAN,
    MAX_SCAN,
    SCAN_PAGE,
    Head,
    LanePicker,
    book_slots,
    claimed_lanes,
    claimed_rows,
    due_heads,
    event_from_row,
    fail_pending,
    new_token,
    plan_slots,
    unreadable,
)

T = TypeVar("T")
log = get_logger("switchboard.store")


class _Txn(NamedTuple):
    """A write queued for the writer: run with others in one transaction, in a savepoint."""

    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]


#: Writes (other than ingest items) coalesced into one transaction at most.
_TXNS_PER_COMMIT = 64


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


class SQLiteStore(CommonStore):
    """The single-box store: one file, WAL, group-committed durable ingest."""

    def __init__(
        self,
        path: Path,
        *,
        busy_timeout_ms: int = 5000,
        max_batch: int = 512,
        watch_read_every: float = 2.0,
    ) -> None:
        self.path = path
        #: How often `watch` reads the data version even if the WAL file looks the same (its
        #: time has the kernel's coarse granularity: a commit that rewrites a reset WAL in the
        #: same tick as the last look changes neither its size nor its time).
        self._watch_read_every = watch_read_every
        self.blobs = BlobStore(path.parent / "blobs")
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        #: Ingest items and other writes, taken together by the writer loop: whatever queued
        #: while a commit was under way shares the next one (one lock, one fsync).
        self._queue: asyncio.Queue[Pending | _Txn | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._sql = queries("sqlite")
        #: (st_dev, st_ino) of the file opened: a deleted or replaced file must not take acks.
        self._identity: tuple[int, int] | None = None
        #: Ingest transactions committed: with group commit, far fewer than ingests.
        self.batches_committed = 0
        #: Why the last ingest commit failed, until a commit succeeds (a full disk: reads and
        #: the write lock still work, so only a commit tells that the store is ready again).
        self._commit_error: str | None = None
        self.migrations_applied: list[int] = []
        #: The shared lock on `<db>.lock` while open: `switchboard restore` refuses meanwhile.
        self._hold: Hold | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._hold = Hold(self.path, exclusive=False)
        except StoreHeld as exc:
            raise StoreUnavailable(str(exc)) from exc
        except OSError as exc:  # a folder the process may not write to
            raise StoreUnavailable(f"cannot lock {self.path}: {exc.strerror or exc}") from exc
        try:
            with wrap_exceptions():
                self._writer = await self._connect(synchronous="FULL")
                self.migrations_applied = await self._call(self._writer, self._migrate)
                self._reader = await self._connect(synchronous="NORMAL")
        except BaseException:
            await self._close_connections()  # their threads would keep the process alive
            raise
        self._identity = _file_identity(self.path)
        self._writer_task = asyncio.create_task(self._write_loop(), name="sqlite-writer")

    async def close(self) -> None:
        await self._stop_writer()
        await self._close_connections()

    async def _close_connections(self) -> None:
        for conn in (self._reader, self._writer):
            if conn is not None:
                await conn.close()
        self._reader = self._writer = None
        if self._hold is not None:
            self._hold.release()
            self._hold = None

    async def _connect(self, *, synchronous: str) -> aiosqlite.Connection:
        conn = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
            await conn.execute("PRAGMA journal_mode = WAL")
            await conn.execute(f"PRAGMA synchronous = {synchronous}")
            await conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            await conn.close()  # its thread would otherwise keep the process alive
            raise
        return conn

    @staticmethod
    async def _call(conn: aiosqlite.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(raw_connection)` in the connection's own thread: one hop for many statements.

        aiosqlite has no public verb for this; `_execute` is its stable internal one (pinned).
        """
        call: Callable[..., Awaitable[T]] = conn._execute
        return await call(fn, conn._conn)

    def _migrate(self, conn: sqlite3.Connection) -> list[int]:
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        known = migrations("sqlite")
        current = conn.execute(self._sql["schema_version"]).fetchone()[0]
        if known and current > known[-1][0]:
            raise StoreCorrupt(f"schema version {current} is newer than this Switchboard knows")
        applied = []
        for version, script in known:
            if version <= current:
                continue
            try:
                conn.executescript(f"BEGIN IMMEDIATE;\n{script}")  # left open: recorded below
                conn.execute(
                    "INSERT INTO schema_migrations VALUES (?, ?)",
                    (version, timestamp(datetime.now(UTC))),
                )
                conn.execute("COMMIT")
            except sqlite3.OperationalError:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                now = conn.execute(self._sql["schema_version"]).fetchone()[0]
                if now < version:  # not another process migrating at the same moment
                    raise
                continue
            applied.append(version)
        return applied

    # -- ingest (group commit) ------------------------------------------------------------

    @staticmethod
    def _event_row(item: IngestItem) -> tuple[Any, ...]:
        return _event_row(item)

    async def _write_loop(self) -> None:
        assert self._writer is not None
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[Pending] = []
            txns: list[_Txn] = []
            for entry in self._drain(first):
                if entry is STOP:
                    stopping = True
                elif isinstance(entry, _Txn):
                    txns.append(entry)
                else:
                    batch.append(entry)  # type: ignore[arg-type]
            if batch or txns:
                await self._commit(batch, txns)

    def _drain(self, first: Pending | _Txn | object) -> Iterator[Pending | _Txn | object]:
        yield first
        taken, txns = 1, int(isinstance(first, _Txn))
        while taken < self._max_batch and txns < _TXNS_PER_COMMIT and not self._queue.empty():
            entry = self._queue.get_nowait()
            taken += 1
            txns += isinstance(entry, _Txn)
            yield entry

    async def _commit(self, batch: list[Pending], txns: list[_Txn]) -> None:
        """One transaction for an ingest batch and the writes queued beside it; each write in
        a savepoint of its own, so one that raises fails alone."""
        assert self._writer is not None
        items = [item for item, _ in batch]
        fns = [txn.fn for txn in txns]
        try:
            with wrap_exceptions():
                ingested, results = await self._call(
                    self._writer, lambda c: self._write_all(c, items, fns)
                )
        except Exception as exc:  # whatever it is, the writer lives on and every caller hears
            reason = str(exc) if isinstance(exc, StoreUnavailable) else f"write failed: {exc!r}"
            if batch:
                self._commit_error = reason
            for _, future in batch:
                fail_pending(future, StoreUnavailable(reason))
            for txn in txns:
                if not txn.future.done():
                    txn.future.set_exception(StoreUnavailable(reason))
            return
        if batch:
            if isinstance(ingested, BaseException):
                reason = (
                    str(ingested)
                    if isinstance(ingested, StoreUnavailable)
                    else f"write failed: {ingested!r}"
                )
                self._commit_error = reason
                for _, future in batch:
                    fail_pending(future, StoreUnavailable(reason))
            else:
                self._commit_error = None
                self.batches_committed += 1
                for (_, future), outcome in zip(batch, ingested, strict=True):
                    if not future.done():
                        future.set_result(outcome)
        for txn, (ok, value) in zip(txns, results, strict=True):
            if txn.future.done():
                continue
            if ok:
                txn.future.set_result(value)
            else:
                txn.future.set_exception(value)

    def _write_all(
        self,
        conn: sqlite3.Connection,
        items: Sequence[Prepared],
        fns: Sequence[Callable[[sqlite3.Connection], Any]],
    ) -> tuple[list[IngestOutcome] | BaseException, list[tuple[bool, Any]]]:
        conn.execute("BEGIN IMMEDIATE")
        try:
            self._check_file()  # one stat per transaction, under the write lock
            ingested: list[IngestOutcome] | BaseException = []
            if items:  # the outcomes, or what the batch raised
                _, ingested = _in_savepoint(conn, lambda: self._insert_items(conn, items))
            results = [_in_savepoint(conn, functools.partial(fn, conn)) for fn in fns]
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return ingested, results

    def _insert_items(
        self, conn: sqlite3.Connection, items: Sequence[Prepared]
    ) -> list[IngestOutcome]:
        if any(item.nonce is not None for item, _ in items):
            return [self._write_one(conn, item, row) for item, row in items]
        outcomes: list[IngestOutcome] = []
        for start in range(0, len(items), _ROWS_PER_INSERT):
            outcomes += self._insert_events(conn, items[start : start + _ROWS_PER_INSERT])
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
        self, conn: sqlite3.Connection, items: Sequence[Prepared]
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

    async def prune(self, before: datetime, limit: int) -> Pruned:
        return await self._transact(
            lambda conn: self._plan(conn, writes.prune(self, before, limit))
        )

    async def _write(self, sql: str, params: dict[str, Any]) -> None:
        await self._transact(lambda conn: conn.execute(sql, params))

    # -- routing (the worker) ---------------------------------------------------------------

    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, max_lanes: int, max_events: int
    ) -> list[ClaimedLane]:
        until = now + timedelta(seconds=lease_seconds)
        return await self._transact(
            lambda conn: self._claim(conn, owner, now, until, max_lanes, max_events)
        )

    def _claim(
        self,
        conn: sqlite3.Connection,
        owner: str,
        now: datetime,
        until: datetime,
        max_lanes: int,
        max_events: int,
    ) -> list[ClaimedLane]:
        picker = LanePicker(max_lanes, max_events)
        busy: set[str] = set()
        page = SCAN_PAGE
        after: str | None = None
        for _ in range(MAX_SCAN // page):
            scan = conn.execute(self._sql["claim_scan"], {"limit": page, "after": after}).fetchall()
            if not scan:
                break
            picked = picker.lanes
            fresh = [lane for lane in dict.fromkeys(lane for _, lane in scan) if lane not in picked]
            busy.update(
                lane
                for (lane,) in conn.execute(
                    self._sql["busy_lanes"], {"now": timestamp(now), "lanes": _json_list(fresh)}
                )
            )
            picker.take(row for row in scan if row[1] not in busy)
            if picker.full or len(scan) < page:
                break
            after = scan[-1][0]
        lanes = picker.lanes
        if not lanes:
            return []
        all_ids = _json_list([event_id for ids in lanes.values() for event_id in ids])
        found: dict[str, tuple[Event, int]] = {}
        for event_id, body, status, attempts in conn.execute(
            self._sql["claimed_events"], {"ids": all_ids}
        ).fetchall():
            try:
                found[event_id] = (event_from_row((body, status)), attempts)
            except (msgspec.DecodeError, ValueError) as exc:  # never stalls its lane
                self._plan(conn, writes.record_results(self, [unreadable(event_id, now, exc)]))
        lanes = {
            lane: kept
            for lane, ids in lanes.items()
            if (kept := [event_id for event_id in ids if event_id in found])
        }
        if not lanes:
            return []
        leases = {lane: Lease(lane=lane, token=new_token(), until=until) for lane in lanes}
        conn.executemany(
            self._sql["take_lease"],
            [
                {
                    "lane": lease.lane,
                    "token": lease.token,
                    "owner": owner,
                    "until": timestamp(until),
                }
                for lease in leases.values()
            ],
        )
        conversations = {
            row[0]: self._conversation(row)
            for row in conn.execute(
                self._sql["conversations_by_key"], {"keys": _json_list(list(lanes))}
            )
        }
        return claimed_lanes(leases, lanes, found, conversations)

    async def commit(self, lanes: list[LaneCommit], now: datetime) -> CommitOutcome:
        return await self._transact(lambda conn: self._commit_lanes(conn, lanes, now))

    def _commit_lanes(
        self, conn: sqlite3.Connection, lanes: list[LaneCommit], now: datetime
    ) -> CommitOutcome:
        sql = self._sql["lease_token"]
        held = {}
        for lane in dict.fromkeys(lane.lease.lane for lane in lanes):
            found = conn.execute(sql, {"lane": lane}).fetchone()
            held[lane] = None if found is None else found[0]
        applied = writes.fresh_lanes(lanes, held)
        taken = [lane for lane, fresh in zip(lanes, applied, strict=True) if fresh]
        cancelled, new_ids = self._plan(conn, writes.commit_lanes(self, taken, now))
        return CommitOutcome(
            applied=applied, new_outbox_ids=new_ids, cancelled_outbox_ids=cancelled
        )

    def _plan(self, conn: sqlite3.Connection, plan: writes.Plan[T]) -> T:
        """Run a shared plan (router.store.writes) step by step on the writer connection."""
        return writes.run_plan(plan, functools.partial(self._step, conn))

    def _step(self, conn: sqlite3.Connection, step: writes.Step) -> list[Any]:
        sql = self._sql[step.name]
        if step.returns:
            return [found for params in step.rows for found in conn.execute(sql, params)]
        conn.executemany(sql, step.rows)
        return []

    async def commit_replay(self, results: list[EventResult], rows: list[OutboxRow]) -> list[str]:
        return await self._transact(
            lambda conn: self._plan(conn, writes.commit_replay(self, results, rows))
        )

    # -- dispatch ---------------------------------------------------------------------------

    async def _due_heads(self, now: datetime, limit: int) -> list[Head]:
        moment = timestamp(now)
        sql = self._sql["dispatch_scan"]

        def choose(conn: sqlite3.Connection) -> list[Head]:
            # In the reader's thread, row by row: the scan stops as soon as enough heads of
            # the first priority are found, instead of carrying the whole backlog to Python.
            return due_heads(conn.execute(sql, {"limit": DISPATCH_SCAN}), moment, limit)

        reader = self._require(self._reader)
        with wrap_exceptions():
            return await self._call(reader, choose)

    async def claim_rows(
        self,
        due: list[DueRow],
        owner: str,
        now: datetime,
        lease_seconds: float,
        slots: Sequence[SlotRequest | None] | None = None,
        horizon: datetime | None = None,
    ) -> RowClaims:
        del owner  # rows carry the token only; the owner shows in the logs
        until = timestamp(now + timedelta(seconds=lease_seconds))
        moment = timestamp(now)
        wanted = list(slots) if slots is not None else [None] * len(due)
        keys = sorted({slot.key for slot in wanted if slot is not None})

        def run(conn: sqlite3.Connection) -> RowClaims:
            nexts = {
                key: self._time(at)
                for key, at in conn.execute(self._sql["slots_of"], {"keys": _json_list(keys)})
            }
            places, busy = plan_slots(wanted, nexts, now, horizon or now)
            kept: list[int] = []
            tokens: list[str] = []
            for place in places:
                token = new_token()
                params = {"id": due[place].row.id, "token": token, "until": until, "now": moment}
                if conn.execute(self._sql["claim_row"], params).rowcount:
                    kept.append(place)
                    tokens.append(token)
            starts, booked = book_slots([wanted[place] for place in kept], nexts, now)
            conn.executemany(
                self._sql["save_rate_slot"],
                [{"key": key, "next_at": timestamp(at)} for key, at in booked.items()],
            )
            claimed = claimed_rows([due[place] for place in kept], tokens, starts)
            return RowClaims(claimed=claimed, busy_until=busy)

        return await self._transact(run)

    async def renew_rows(self, held: list[tuple[str, str]], until: datetime) -> set[str]:
        if not held:
            return set()
        at = timestamp(until)

        def run(conn: sqlite3.Connection) -> set[str]:
            sql = self._sql["renew_row"]
            return {
                row_id
                for row_id, token in held
                if conn.execute(sql, {"id": row_id, "token": token, "until": at}).rowcount
            }

        return await self._transact(run)

    async def finish_attempts(self, results: list[AttemptResult]) -> list[bool]:
        return await self._transact(
            lambda conn: self._plan(conn, writes.finish_attempts(self, results))
        )

    async def storage_use(self) -> StorageUse:
        return await asyncio.to_thread(self._storage_use)

    def _storage_use(self) -> StorageUse:
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        disk = shutil.disk_usage(self.path.parent)
        return StorageUse(
            database_bytes=sum(f.stat().st_size for f in files if f.exists()),
            blobs_bytes=self.blobs.total_bytes(),
            disk_free_bytes=disk.free,
            disk_total_bytes=disk.total,
        )

    async def save_breakers(self, news: dict[str, BreakerNews]) -> None:
        if not news:
            return
        params = [
            {"key": key, "state": n.state, "changed_at": timestamp(n.changed_at)}
            for key, n in sorted(news.items())
        ]
        await self._transact(lambda conn: conn.executemany(self._sql["save_breaker"], params))

    async def _transact(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn` in a write transaction on the writer connection, atomically (a savepoint):
        writes queued while another commit is under way share the next transaction."""
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("store is not open")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Txn(fn, future))
        with wrap_exceptions():
            return await future

    # -- reads ----------------------------------------------------------------------------

    async def watch(self, on_change: Callable[[], None]) -> None:
        """SQLite has no notifications: the writer connection reads `PRAGMA data_version`,
        which changes when another connection (another process, a CLI command) commits, and
        not for its own commits, which wake this process's worker and dispatcher directly.
        The read is cheap for SQLite but a hop to the writer's thread and back for this
        process: it is made only while the WAL file's size or time changed lately (a commit
        writes its frames there, then becomes visible after their fsync: reads go on for
        `_WATCH_SETTLE` after the last change), and every `watch_read_every` s anyway; an idle
        server does not spend a core's percent or two looking."""
        seen: int | None = None
        wal = self.path.with_name(self.path.name + "-wal")
        stamp: tuple[int, int] | None = None
        changed_at = last_read = -math.inf
        while True:
            try:
                looked, now = _stamp(wal), time.monotonic()
                if looked != stamp:
                    stamp, changed_at = looked, now
                if now - changed_at < _WATCH_SETTLE or now - last_read >= self._watch_read_every:
                    last_read = now
                    writer = self._require(self._writer)
                    with wrap_exceptions():
                        version = await self._call(writer, _data_version)
                    if seen is not None and version != seen:
                        on_change()
                    seen = version
                await asyncio.sleep(_WATCH_SECONDS)
            except StoreUnavailable as exc:
                log.warning("store watch paused", stage="store", error=str(exc))
                seen, stamp = None, None
                await asyncio.sleep(1.0)

    # -- reconciliation (SPEC §12) -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reconcile_lock(self) -> AsyncIterator[bool]:
        """A non-blocking `flock` on a file beside the database: every process on this box
        sees it, and the kernel frees it when the holder dies (kill -9 included)."""
        fd = flock_now(self.path.with_name(self.path.name + ".reconcile-lock"), exclusive=True)
        if fd is None:
            yield False
            return
        try:
            yield True
        finally:
            os.close(fd)

    async def ping(self) -> None:
        self._check_writer()
        with wrap_exceptions():
            self._check_file()
        await self._read("SELECT count(*) FROM schema_migrations", {})
        # A read succeeds under another process's write lock (WAL); ingest would not.
        writer = self._require(self._writer)
        with wrap_exceptions():
            await self._call(writer, _probe_write_lock)
        await self._probe_commit()
        if self.blobs.failing is not None:
            try:
                await asyncio.to_thread(self.blobs.probe)
            except OSError as exc:
                raise StoreUnavailable(f"blob store: {exc.strerror or exc}") from exc

    def _check_file(self) -> None:
        """Raise unless the path still names the file opened: SQLite in WAL mode keeps
        writing to a deleted file, and every event acknowledged there would be lost."""
        if _file_identity(self.path) != self._identity:
            raise sqlite3.OperationalError(f"database file {self.path} was deleted or replaced")

    async def _read(self, sql: str, params: dict[str, Any]) -> list[Any]:
        reader = self._require(self._reader)
        with wrap_exceptions():
            return list(await reader.execute_fetchall(sql, params))

    async def _rows(self, name: str, **params: Any) -> list[Any]:
        sql, names = filtered("sqlite", self._sql[name], params)
        return await self._read(sql, {name: params[name] for name in names})

    async def _run(self, name: str, **params: Any) -> int:
        sql = self._sql[name]
        changed: int = await self._transact(lambda conn: conn.execute(sql, params).rowcount)
        return changed

    @staticmethod
    def _time(value: Any) -> datetime:
        return datetime.fromisoformat(value)

    @staticmethod
    def _at(moment: datetime) -> str:
        return timestamp(moment)

    @staticmethod
    def _texts(values: list[str]) -> str:
        return _json_list(values)

    @staticmethod
    def _require(conn: aiosqlite.Connection | None) -> aiosqlite.Connection:
        if conn is None:
            raise StoreUnavailable("store is not open")
        return conn


#: How often `watch` looks at the WAL file: a wake-up from another process waits about this
#: long (PostgreSQL notifies instead).
_WATCH_SECONDS = 0.01
#: How long `watch` goes on reading the data version after the WAL file last changed.
_WATCH_SETTLE = 0.25


def _stamp(path: Path) -> tuple[int, int] | None:
    """The file's size and modification time, or None if it is not there."""
    try:
        found = os.stat(path)
    except OSError:
        return None
    return found.st_size, found.st_mtime_ns


def _json_list(values: list[str]) -> str:
    return msgspec.json.encode(values).decode()


def _data_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA data_version").fetchone()[0]
    return version


def _in_savepoint(conn: sqlite3.Connection, work: Callable[[], T]) -> tuple[bool, Any]:
    """`(True, result)`, or `(False, exception)` with `work`'s changes undone."""
    conn.execute("SAVEPOINT write")
    try:
        result = work()
    except Exception as exc:
        conn.execute("ROLLBACK TO write")  # if this fails too, the whole transaction fails
        conn.execute("RELEASE write")
        return False, exc
    conn.execute("RELEASE write")
    return True, result


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
    head, values, tail = _VALUES_ROW.split(queries("sqlite")["insert_events"])
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
