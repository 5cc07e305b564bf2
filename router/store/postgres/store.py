"""The PostgreSQL store: one database for every router process, on any number of boxes.

Ingest is group-committed as on SQLite: one writer task takes everything queued, inserts it with
one `unnest` statement (`ON CONFLICT DO NOTHING`) in one transaction, and only then answers each
caller. Claims are safe across processes: a lane's lease is a row with a random token, taken
only where it is free (lease rows another claim holds locked are skipped, `SKIP LOCKED`), and
every commit locks the lease rows it writes under and is refused unless its token is still
there (fencing). Outbox rows are claimed the same way, per row. Times come from the caller's
clock, never the database's, so both stores give the same answers for the same inputs.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
from asyncpg import Connection as Conn

from router.aio import wait_event
from router.errors import StoreCorrupt, StoreUnavailable
from router.events import Event
from router.logs import get_logger
from router.store import writes
from router.store.base import (
    IngestItem,
    IngestOutcome,
)
from router.store.common import STOP, CommonStore, Pending, Prepared
from router.store.postgres.blobs import PostgresBlobs
from router.store.postgres.connection import (
    DRIVER_ERRORS,
    redact_url,
    refused_unsent,
    wrap_exceptions,
)
from router.store.postgres.rows import (
    db_text,
    event_params,
)
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
    DISPATCH_PAGE,
    DISPATCH_SCAN,
    MAX_SCAN,
    SCAN_PAGE,
    DueHeads,
    Head,
    LanePicker,
    book_slots,
    claimed_lanes,
    claimed_rows,
    event_from_row,
    fail_pending,
    new_token,
    plan_slots,
    unreadable,
)

T = TypeVar("T")
log = get_logger("switchboard.store")


#: The named writes whose SQL takes one array per column (`unnest`): a step is one statement.
_UNNEST = frozenset(
    {
        "finish_event",
        "insert_run",
        "upsert_conversation",
        "insert_outbox",
        "set_timer",
        "release_lease",
        "finish_sent",
        "insert_attempts",
    }
)


def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """A named query's `:name` parameters numbered, and their names in that order."""
    return filtered("postgres", sql, {})


def _affected(status: str) -> int:
    """The row count of a command's status, e.g. `DELETE 3`."""
    return int(status.rsplit(" ", 1)[1])


#: The advisory lock key migrations run under: "switchb" in ASCII.
_MIGRATION_LOCK = 0x73776974636862
#: The advisory lock of reconciliation passes (one at a time for the fleet): "recon" in ASCII.
_RECONCILE_LOCK = 0x7265636F6E
#: A statement that runs longer than this fails (StoreUnavailable) rather than hanging on a
#: connection the network silently dropped; migrations of a large table get longer.
_COMMAND_TIMEOUT = 30.0
#: The LISTEN/NOTIFY channel of work committed (events, outbox rows).
_CHANNEL = "switchboard_work"
#: How often a listening connection is asked whether it still answers (a closed socket is
#: told at once; a connection cut without a close only when asked).
_LISTEN_CHECK_SECONDS = 5.0
_MIGRATION_TIMEOUT = 3600.0
_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations "
    "(version integer PRIMARY KEY, applied_at text NOT NULL)"
)


class PostgresStore(CommonStore):
    """The fleet's store: one PostgreSQL for every router process, on any number of boxes."""

    def __init__(
        self,
        url: str,
        *,
        pool_min_size: int = 2,
        pool_max_size: int = 10,
        connect_timeout: float = 10.0,
        max_batch: int = 512,
    ) -> None:
        self.url = url
        self.blobs = PostgresBlobs(self)
        self.migrations_applied: list[int] = []
        #: Ingest transactions committed: with group commit, far fewer than ingests.
        self.batches_committed = 0
        self._pool_min_size = pool_min_size
        self._pool_max_size = pool_max_size
        self._timeout = connect_timeout
        self._max_batch = max_batch
        self._pool: asyncpg.Pool | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: asyncio.Queue[Pending | object] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self._sql = queries("postgres")
        #: Names this store's notifications, so its own watch skips them.
        self._instance = new_token()
        #: Why the last ingest commit failed, until one succeeds (/readyz tries a commit).
        self._commit_error: str | None = None

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the store was opened on (its pool belongs to it)."""
        return self._loop

    def __repr__(self) -> str:
        return f"PostgresStore({redact_url(self.url)!r})"

    # -- lifecycle -------------------------------------------------------------------------

    async def open(self) -> None:
        try:
            with wrap_exceptions():
                self._pool = await asyncpg.create_pool(
                    self.url,
                    min_size=self._pool_min_size,
                    max_size=self._pool_max_size,
                    timeout=self._timeout,
                    command_timeout=_COMMAND_TIMEOUT,
                    server_settings={"application_name": "switchboard"},
                    reset=_reset_connection,
                )
                self.migrations_applied = await self._migrate()
        except (ValueError, asyncpg.ClientConfigurationError) as exc:  # a malformed URL
            await self._close_pool()
            raise StoreUnavailable(f"postgresql: bad storage.url: {type(exc).__name__}") from exc
        except BaseException:
            await self._close_pool()
            raise
        self._loop = asyncio.get_running_loop()
        self._writer_task = asyncio.create_task(self._write_loop(), name="postgres-writer")

    async def close(self) -> None:
        await self._stop_writer()
        await self._close_pool()

    async def _close_pool(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=self._timeout)
            except DRIVER_ERRORS:  # a connection that will not close cleanly is cut
                pool.terminate()
            except asyncio.CancelledError:
                pool.terminate()
                raise

    async def _migrate(self) -> list[int]:
        """Apply pending migrations in one transaction under an advisory lock, so processes
        starting together apply each once; returns the versions applied."""
        known = migrations("postgres")
        applied = []
        async with self._connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
            await conn.execute(_SCHEMA_TABLE)
            current = await conn.fetchval(self._sql["schema_version"])
            if known and current > known[-1][0]:
                raise StoreCorrupt(f"schema version {current} is newer than this Switchboard knows")
            for version, script in known:
                if version > current:
                    await conn.execute(script, timeout=_MIGRATION_TIMEOUT)
                    await conn.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)",
                        version,
                        datetime.now(UTC).isoformat(timespec="microseconds"),
                    )
                    applied.append(version)
        return applied

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[Conn]:
        pool = self._pool
        if pool is None:
            raise StoreUnavailable("store is not open")
        async with pool.acquire(timeout=self._timeout) as conn:
            yield conn

    # -- ingest (group commit) ------------------------------------------------------------

    @staticmethod
    def _event_row(item: IngestItem) -> tuple[Any, ...]:
        return event_params(item)

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            first = await self._queue.get()
            batch: list[Pending] = []
            for entry in self._drain(first):
                if entry is STOP:
                    stopping = True
                else:
                    batch.append(entry)  # type: ignore[arg-type]
            if batch:
                await self._commit(batch)

    def _drain(self, first: Pending | object) -> Iterator[Pending | object]:
        yield first
        taken = 1
        while taken < self._max_batch and not self._queue.empty():
            yield self._queue.get_nowait()
            taken += 1

    async def _commit(self, batch: list[Pending]) -> None:
        items = [item for item, _ in batch]
        # Without one-time tokens a batch is one statement (the insert, its NOTIFY folded in):
        # it needs no transaction of its own, one round trip instead of four.
        alone = all(item.nonce is None for item, _ in items)
        try:
            outcomes = await self._transact(
                lambda conn: self._write_batch(conn, items), single_statement=alone
            )
        except Exception as exc:  # whatever it is, the writer lives on and every caller hears
            reason = str(exc) if isinstance(exc, StoreUnavailable) else f"write failed: {exc!r}"
            self._commit_error = reason
            for _, future in batch:
                fail_pending(future, StoreUnavailable(reason))
            return
        self._commit_error = None
        self.batches_committed += 1
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _write_batch(self, conn: Conn, items: Sequence[Prepared]) -> list[IngestOutcome]:
        replays = await self._check_nonces(conn, items)
        rows = [row for place, (_, row) in enumerate(items) if place not in replays]
        stored: set[str] = set()
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            places = list(range(len(rows)))
            found = await conn.fetch(
                self._sql["insert_events"], *columns, places, _CHANNEL, self._instance
            )
            stored = {record[0] for record in found}
        return [
            IngestOutcome.REPLAY
            if place in replays
            else IngestOutcome.STORED
            if row[0] in stored
            else IngestOutcome.DUPLICATE
            for place, (_, row) in enumerate(items)
        ]

    async def _check_nonces(self, conn: Conn, items: Sequence[Prepared]) -> set[int]:
        """The places of items whose one-time token was first used with another dedupe key.
        Tokens go in (source, nonce) order, the first submitted first, against deadlocks."""
        with_nonce = sorted(
            (item.event.source, item.nonce, place)
            for place, (item, _) in enumerate(items)
            if item.nonce is not None
        )
        replays: set[int] = set()
        for source, nonce, place in with_nonce:
            event = items[place][0].event
            fresh = await conn.fetchval(
                self._sql["insert_nonce"],
                db_text(source),
                db_text(nonce),
                db_text(event.dedupe_key),
                event.received_at,
            )
            if fresh is None:
                owner = await conn.fetchval(
                    self._sql["nonce_owner"], db_text(source), db_text(nonce)
                )
                if owner != db_text(event.dedupe_key):
                    replays.add(place)
        return replays

    # -- other writes ---------------------------------------------------------------------

    async def prune(self, before: datetime, limit: int) -> Pruned:
        async def run(conn: Conn) -> Pruned:
            # A batch's ids differ every call: a generic plan (a pooled connection's sixth)
            # cannot know how few they are, and on tables without statistics it scanned
            # them whole (0.7 s a statement at 20,000 events, against 5 ms planned afresh).
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            return await self._plan(conn, writes.prune(self, before, limit))

        return await self._transact(run)

    async def _execute(self, sql: str, *args: Any) -> None:
        await self._transact(lambda conn: conn.execute(sql, *args), single_statement=True)

    async def put_blob(self, digest: str, content: bytes) -> None:
        """Keep `content` under `digest` (PostgresBlobs.put runs it on the store's loop)."""
        await self._execute(self._sql["put_blob"], digest, content)

    async def get_blob(self, digest: str) -> bytes | None:
        """The content kept under `digest`, or None."""
        content: bytes | None = await self._fetch_value(self._sql["get_blob"], digest)
        return content

    # -- routing (the worker) ---------------------------------------------------------------

    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, max_lanes: int, max_events: int
    ) -> list[ClaimedLane]:
        until = now + timedelta(seconds=lease_seconds)
        return await self._transact(
            lambda conn: self._claim(conn, owner, now, until, max_lanes, max_events)
        )

    async def _claim(
        self,
        conn: Conn,
        owner: str,
        now: datetime,
        until: datetime,
        max_lanes: int,
        max_events: int,
    ) -> list[ClaimedLane]:
        picked = await self._pick_lanes(conn, now, max_lanes, max_events)
        if not picked:
            return []
        leases = {lane: Lease(lane=lane, token=new_token(), until=until) for lane in picked}
        order = sorted(leases)
        taken = {
            record[0]
            for record in await conn.fetch(
                self._sql["take_leases"],
                order,
                [leases[lane].token for lane in order],
                owner,
                until,
                now,
            )
        }
        lanes = {lane: ids for lane, ids in picked.items() if lane in taken}
        if not lanes:
            return []
        found = await self._claimed_events(conn, lanes, now)
        kept = {lane: [i for i in ids if i in found] for lane, ids in lanes.items()}
        empty = [lane for lane, ids in kept.items() if not ids]  # finished meanwhile
        if empty:
            sql, _ = _positional(self._sql["release_lease"])
            await conn.execute(sql, empty, [leases[lane].token for lane in empty])
            for lane in empty:
                del kept[lane]
        if not kept:
            return []
        conversations = {
            record[0]: self._conversation(record)
            for record in await conn.fetch(self._sql["conversations_by_key"], list(kept))
        }
        return claimed_lanes(leases, kept, found, conversations)

    async def _pick_lanes(
        self, conn: Conn, now: datetime, max_lanes: int, max_events: int
    ) -> dict[str, list[str]]:
        """Lanes not leased at `now`, oldest first, with their first unfinished events: pages
        in arrival order until enough are found (a flood in one conversation, or a held lane's
        backlog, must not hide the conversations after it)."""
        picker = LanePicker(max_lanes, max_events)
        after: str | None = None
        for _ in range(MAX_SCAN // SCAN_PAGE):
            scan = await conn.fetch(self._sql["claim_scan"], after, SCAN_PAGE, now)
            picker.take((event_id, lane) for event_id, lane, busy in scan if not busy)
            if picker.full or len(scan) < SCAN_PAGE:
                break
            after = scan[-1][0]
        return picker.lanes

    async def _claimed_events(
        self, conn: Conn, lanes: dict[str, list[str]], now: datetime
    ) -> dict[str, tuple[Event, int]]:
        """The picked events still unfinished, decoded; one that cannot be read is failed at
        once (retrying cannot help, and the events after it must go on)."""
        ids = [event_id for ids in lanes.values() for event_id in ids]
        found: dict[str, tuple[Event, int]] = {}
        for event_id, body, status, attempts in await conn.fetch(self._sql["claim_events"], ids):
            try:
                found[event_id] = (event_from_row((body, status)), attempts)
            except (msgspec.DecodeError, ValueError) as exc:
                await self._plan(
                    conn, writes.record_results(self, [unreadable(event_id, now, exc)])
                )
        return found

    async def commit(self, lanes: list[LaneCommit], now: datetime) -> CommitOutcome:
        return await self._transact(lambda conn: self._commit_lanes(conn, lanes, now), notify=True)

    async def _commit_lanes(
        self, conn: Conn, lanes: list[LaneCommit], now: datetime
    ) -> CommitOutcome:
        names = sorted({lane.lease.lane for lane in lanes})
        held = {r[0]: r[1] for r in await conn.fetch(self._sql["lock_leases"], names)}
        applied = writes.fresh_lanes(lanes, held)
        taken = [lane for lane, fresh in zip(lanes, applied, strict=True) if fresh]
        cancelled, new_ids = await self._plan(conn, writes.commit_lanes(self, taken, now))
        return CommitOutcome(
            applied=applied, new_outbox_ids=new_ids, cancelled_outbox_ids=cancelled
        )

    async def _plan(self, conn: Conn, plan: writes.Plan[T]) -> T:
        """Run a shared plan (router.store.writes): one round trip per step."""
        return await writes.run_plan_async(plan, functools.partial(self._step, conn))

    async def _step(self, conn: Conn, step: writes.Step) -> list[Any]:
        """A step's rows in one `unnest` statement (one array per column) where its SQL takes
        arrays, else with executemany (or one fetch a row, if what it returns is wanted)."""
        sql, names = _positional(self._sql[step.name])
        if step.name in _UNNEST:
            columns = [[row[name] for row in step.rows] for name in names]
            if step.returns:
                return list(await conn.fetch(sql, *columns))
            await conn.execute(sql, *columns)
            return []
        args = [[row[name] for name in names] for row in step.rows]
        if not step.returns:
            await conn.executemany(sql, args)
            return []
        found: list[Any] = []
        for values in args:
            found += await conn.fetch(sql, *values)
        return found

    async def commit_replay(self, results: list[EventResult], rows: list[OutboxRow]) -> list[str]:
        return await self._transact(
            lambda conn: self._plan(conn, writes.commit_replay(self, results, rows))
        )

    # -- dispatch ---------------------------------------------------------------------------

    async def _due_heads(self, now: datetime, limit: int) -> list[Head]:
        # Page by page, growing, until enough heads of the first priority are found: a round
        # reads a few hundred rows of a backlog, not all it may look at (DISPATCH_SCAN).
        picker = DueHeads(now, limit)
        after, page, read = None, max(4 * limit, DISPATCH_PAGE), 0
        while True:
            scan = await self._fetch(self._sql["dispatch_scan"], after, page)
            read += len(scan)
            if picker.feed(scan) or len(scan) < page or read >= DISPATCH_SCAN:
                break
            after, page = scan[-1][-1], min(2 * page, DISPATCH_SCAN - read)
        return picker.due()

    async def claim_rows(
        self,
        due: list[DueRow],
        owner: str,
        now: datetime,
        lease_seconds: float,
        slots: Sequence[SlotRequest | None] | None = None,
        horizon: datetime | None = None,
    ) -> RowClaims:
        """Lease the rows still claimable and book their rate slots in one transaction. The
        slot rows of the keys are locked in key order (two dispatchers booking overlapping
        keys never wait on each other in a cycle); rows another dispatcher holds locked right
        now are skipped, never waited for."""
        del owner  # rows carry the token only; the owner shows in the logs
        if not due:
            return RowClaims(claimed=[])
        wanted = list(slots) if slots is not None else [None] * len(due)
        keys = sorted({slot.key for slot in wanted if slot is not None})
        until = now + timedelta(seconds=lease_seconds)

        async def run(conn: Conn) -> RowClaims:
            nexts: dict[str, datetime] = {}
            if keys:
                await conn.execute(self._sql["add_slots"], keys)
                nexts = {r[0]: r[1] for r in await conn.fetch(self._sql["lock_slots"], keys)}
            places, busy = plan_slots(wanted, nexts, now, horizon or now)
            tokens = {due[place].row.id: new_token() for place in places}
            found = await conn.fetch(
                self._sql["claim_rows"], list(tokens), list(tokens.values()), until, now
            )
            taken = {record[0] for record in found}
            kept = [place for place in places if due[place].row.id in taken]
            starts, booked = book_slots([wanted[place] for place in kept], nexts, now)
            if booked:
                names = sorted(booked)
                await conn.execute(self._sql["save_slots"], names, [booked[name] for name in names])
            heads = [due[place] for place in kept]
            claimed = claimed_rows(heads, [tokens[head.row.id] for head in heads], starts)
            return RowClaims(claimed=claimed, busy_until=busy)

        return await self._transact(run)

    async def renew_rows(self, held: list[tuple[str, str]], until: datetime) -> set[str]:
        if not held:
            return set()
        rows = await self._fetch(
            self._sql["renew_rows"],
            [db_text(row_id) for row_id, _ in held],
            [token for _, token in held],
            until,
        )
        return {r[0] for r in rows}

    async def finish_attempts(self, results: list[AttemptResult]) -> list[bool]:
        return await self._transact(  # a lane's next row may go now
            lambda conn: self._plan(conn, writes.finish_attempts(self, results)), notify=True
        )

    async def storage_use(self) -> StorageUse:
        [sizes] = await self._fetch(self._sql["storage_use"])
        return StorageUse(
            database_bytes=sizes[0],
            blobs_bytes=sizes[1],
            disk_free_bytes=None,
            disk_total_bytes=None,
        )

    async def save_breakers(self, news: dict[str, BreakerNews]) -> None:
        if not news:
            return
        keys = sorted(news)
        await self._execute(
            self._sql["save_breakers"],
            [db_text(key) for key in keys],
            [news[key].state for key in keys],
            [news[key].changed_at for key in keys],
        )

    # -- reads ----------------------------------------------------------------------------

    async def _notify(self, conn: Conn) -> None:
        await conn.execute("SELECT pg_notify($1, $2)", _CHANNEL, self._instance)

    async def watch(self, on_change: Callable[[], None]) -> None:
        """LISTEN on a connection of its own, outside the pool (a pooled connection is handed
        to others between uses). Notifications from this store's own commits are skipped:
        they wake this process directly. After a (re)connection it wakes once, for whatever
        was committed while nobody listened; the workers' polls remain the safety net."""

        def heard(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            if payload != self._instance:
                on_change()

        while True:
            conn: Conn | None = None
            lost = asyncio.Event()
            try:
                with wrap_exceptions():
                    conn = await asyncpg.connect(
                        self.url,
                        timeout=self._timeout,
                        server_settings={"application_name": "switchboard-listen"},
                    )
                    conn.add_termination_listener(lambda _conn, gone=lost: gone.set())
                    await self._listen(conn, heard)
                on_change()
                while not lost.is_set():
                    # A connection cut without a close answers nothing: ask it now and then.
                    if not await wait_event(lost, _LISTEN_CHECK_SECONDS):
                        await self._check_listening(conn, lost)
                raise StoreUnavailable("postgresql: the listening connection was lost")
            except StoreUnavailable as exc:
                log.warning("store watch paused", stage="store", error=str(exc))
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(*DRIVER_ERRORS):
                        await asyncio.wait_for(conn.close(), self._timeout)
            await asyncio.sleep(1.0)

    @staticmethod
    async def _listen(conn: Conn, heard: Callable[[object, int, str, str], None]) -> None:
        """LISTEN on a fresh connection. The server may end it between the connect and the
        LISTEN (a restart, `pg_terminate_backend`): the driver then refuses the statement
        unsent (`refused_unsent`), which says only that this connection is gone."""
        try:
            await conn.add_listener(_CHANNEL, heard)
        except asyncpg.InternalClientError as exc:
            if not refused_unsent(exc):
                raise
            ended = "postgresql: the listening connection ended as it opened"
            raise StoreUnavailable(ended) from exc

    async def _check_listening(self, conn: Conn, lost: asyncio.Event) -> None:
        """Ask the listening connection whether it still answers; `lost` is set if the server
        ended it (its close is on the way), StoreUnavailable if it fails otherwise."""
        with wrap_exceptions():
            try:
                await conn.fetchval("SELECT 1", timeout=self._timeout)
            except asyncpg.InternalClientError as exc:
                if not refused_unsent(exc):
                    raise
                lost.set()

    # -- reconciliation (SPEC §12) -----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def reconcile_lock(self) -> AsyncIterator[bool]:
        """A session advisory lock on a connection held for the pass: one holder in the
        fleet, and PostgreSQL frees it when that connection ends (the process died)."""
        with wrap_exceptions():
            async with self._connection() as conn:
                if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _RECONCILE_LOCK):
                    yield False
                    return
                try:
                    yield True
                finally:
                    try:
                        await conn.execute("SELECT pg_advisory_unlock($1)", _RECONCILE_LOCK)
                    except DRIVER_ERRORS:  # a connection that cannot unlock is cut, lock and all
                        conn.terminate()

    async def ping(self) -> None:
        """Unavailable unless the writer runs, the database answers and takes writes (not a
        standby after a failover), and, after an ingest commit failed, a commit lands again."""
        self._check_writer()
        if await self._fetch_value("SELECT pg_is_in_recovery()"):
            raise StoreUnavailable("postgresql: the database is a read-only standby")
        await self._probe_commit()

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        """One statement on a pooled connection, committed on its own (no BEGIN round trip)."""
        rows: list[asyncpg.Record] = await self._transact(
            lambda conn: conn.fetch(sql, *args), single_statement=True
        )
        return rows

    def _bind(self, name: str, params: dict[str, Any]) -> tuple[str, list[Any]]:
        """The named query with its `:name` parameters numbered, and their values in order."""
        sql, names = filtered("postgres", self._sql[name], params)
        return sql, [params[name] for name in names]

    async def _rows(self, name: str, **params: Any) -> list[asyncpg.Record]:
        sql, args = self._bind(name, params)
        return await self._fetch(sql, *args)

    async def _run(self, name: str, **params: Any) -> int:
        sql, args = self._bind(name, params)
        status = await self._transact(lambda conn: conn.execute(sql, *args), single_statement=True)
        return _affected(status)

    async def _wake(self) -> None:
        await self._transact(self._notify, single_statement=True)

    @staticmethod
    def _time(value: Any) -> datetime:
        moment: datetime = value  # asyncpg reads timestamptz as aware datetimes already
        return moment

    @staticmethod
    def _at(moment: datetime) -> datetime:
        return moment

    @staticmethod
    def _text(value: str) -> str:
        return db_text(value)

    @staticmethod
    def _texts(values: list[str]) -> list[str]:
        return [db_text(value) for value in values]

    async def _fetch_value(self, sql: str, *args: Any) -> Any:
        return await self._transact(lambda conn: conn.fetchval(sql, *args), single_statement=True)

    async def _transact(
        self,
        fn: Callable[[Conn], Awaitable[T]],
        *,
        notify: bool = False,
        single_statement: bool = False,
    ) -> T:
        """Run `fn` in one transaction on a pooled connection. It runs again, on another
        connection, if PostgreSQL chose it as a deadlock victim (it was rolled back whole),
        and if the server had ended its connection while pooled (`refused_unsent`: nothing
        of it ran), until a live one is found: the driver closes each such connection as it
        refuses, so there are at most as many as the pool holds.
        `notify`: the transaction makes work for others (events, rows): one NOTIFY, sent by
        PostgreSQL at the commit, wakes every other process's worker and dispatcher.
        `single_statement`: `fn` runs one statement, atomic by itself: no BEGIN and COMMIT."""
        deadlocks_left = 1
        ended_left = self._pool_max_size
        with wrap_exceptions():
            while True:
                try:
                    return await self._attempt(fn, notify, single_statement)
                except asyncpg.DeadlockDetectedError:
                    if not deadlocks_left:
                        raise
                    deadlocks_left -= 1
                except asyncpg.InternalClientError as exc:
                    if not (refused_unsent(exc) and ended_left):
                        raise
                    ended_left -= 1

    async def _attempt(
        self, fn: Callable[[Conn], Awaitable[T]], notify: bool, single_statement: bool
    ) -> T:
        async with self._connection() as conn:
            if single_statement:
                return await fn(conn)
            async with conn.transaction():
                result = await fn(conn)
                if notify:
                    await self._notify(conn)
                return result


async def _reset_connection(conn: Conn) -> None:
    """What a connection going back to the pool needs: a transaction left open is rolled
    back. asyncpg's default also unlocks advisory locks, closes cursors, unlistens and resets
    settings, one more round trip per transaction; this store takes only transaction-scoped
    advisory locks, opens no cursor, listens on a connection of its own and sets nothing."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")
