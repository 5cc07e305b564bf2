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
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import msgspec
from asyncpg import Connection as Conn

from router.aio import wait_event
from router.errors import StoreCorrupt, StoreUnavailable
from router.events import Event
from router.ids import ulid_floor
from router.logs import get_logger
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
    conversation_row,
    db_text,
    event_params,
    outbox_params,
)
from router.store.queries import filtered, migrations, queries
from router.store.records import (
    HELD_UNTIL,
    AttemptOutcome,
    AttemptResult,
    BreakerNews,
    ClaimedLane,
    CommitOutcome,
    ContactRecord,
    DueRow,
    EventResult,
    HoldChange,
    LaneCommit,
    Lease,
    LedgerRecord,
    OutboxRow,
    Pruned,
    Receipt,
    RowClaims,
    SlotRequest,
    StorageUse,
)
from router.store.shared import (
    DISPATCH_PAGE,
    DISPATCH_SCAN,
    MAX_SCAN,
    OPTED_OUT_AT_CARRIER,
    SCAN_PAGE,
    DueHeads,
    Head,
    LanePicker,
    after_receipt,
    book_slots,
    claimed_lanes,
    claimed_rows,
    event_from_row,
    fail_pending,
    new_token,
    plan_slots,
    receipt_target,
    run_encoder,
    thread_row,
    unreadable,
    unsent_finish,
)

T = TypeVar("T")
log = get_logger("switchboard.store")


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
        sql = self._sql

        async def run(conn: Conn) -> Pruned:
            # A batch's ids differ every call: a generic plan (a pooled connection's sixth)
            # cannot know how few they are, and on tables without statistics it scanned
            # them whole (0.7 s a statement at 20,000 events, against 5 ms planned afresh).
            await conn.execute("SET LOCAL plan_cache_mode = force_custom_plan")
            bound = (ulid_floor(before), before, limit)
            found = [row[0] for row in await conn.fetch(sql["prunable_events"], *bound)]
            await conn.execute(sql["prune_attempts"], found)
            outbox_rows = _affected(await conn.execute(sql["prune_outbox"], found))
            gone = [row[0] for row in await conn.fetch(sql["prune_events"], found)]
            await conn.execute(sql["prune_runs"], gone)
            return Pruned(
                events=len(gone),
                outbox_rows=outbox_rows,
                quarantined=_affected(await conn.execute(sql["prune_quarantine"], *bound)),
                receipts=_affected(await conn.execute(sql["prune_receipts"], before)),
            )

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
            await conn.execute(
                self._sql["release_lease"], empty, [leases[lane].token for lane in empty]
            )
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
                await self._record_results(conn, [unreadable(event_id, now, exc)])
        return found

    async def commit(self, lanes: list[LaneCommit], now: datetime) -> CommitOutcome:
        return await self._transact(lambda conn: self._commit_lanes(conn, lanes, now), notify=True)

    async def _commit_lanes(
        self, conn: Conn, lanes: list[LaneCommit], now: datetime
    ) -> CommitOutcome:
        names = sorted({lane.lease.lane for lane in lanes})
        held = {r[0]: r[1] for r in await conn.fetch(self._sql["lock_leases"], names)}
        applied: list[bool] = []
        taken: list[LaneCommit] = []
        for lane in lanes:
            fresh = held.get(lane.lease.lane) == lane.lease.token  # else fenced: taken over
            applied.append(fresh)
            if fresh:
                held[lane.lease.lane] = None  # released below: one token commits once
                taken.append(lane)
        cancelled, new_ids = await self._apply_lanes(conn, taken, now)
        return CommitOutcome(
            applied=applied, new_outbox_ids=new_ids, cancelled_outbox_ids=cancelled
        )

    async def _apply_lanes(
        self, conn: Conn, lanes: list[LaneCommit], now: datetime
    ) -> tuple[list[str], list[str]]:
        """Everything the lanes' processing writes, and their leases released (or held until
        a retry): the rows an opt-out cancelled, and the outbox rows made.

        As SQLite applies them lane after lane, but each kind of write in one statement for all
        lanes where lanes cannot see each other's writes (one round trip, not one per lane):
        only an opt-out's cancel and the rows made must keep the lanes' order.
        """
        await self._record_results(conn, [r for lane in lanes for r in lane.results])
        await self._many(
            conn, "failed_attempt", [(ln.failed_attempt,) for ln in lanes if ln.failed_attempt]
        )
        conversations = {  # each lane is a conversation of its own; the last write wins
            ln.conversation.key: conversation_row(ln.conversation)
            for ln in lanes
            if ln.conversation is not None
        }
        await self._columns(conn, "upsert_conversation", list(conversations.values()))
        cancelled: list[str] = []
        new_ids: list[str] = []
        if any(lane.cancel_contacts or lane.holds for lane in lanes):  # rows made before only
            for lane in lanes:
                for contact_key, reason in lane.cancel_contacts:
                    cancelled += await self._cancel_waiting(conn, contact_key, reason)
                for change in lane.holds:
                    await self._hold_or_release(conn, change)
                new_ids += await self._insert_rows(conn, lane.outbox)
        else:
            new_ids = await self._insert_rows(conn, [row for ln in lanes for row in ln.outbox])
        for lane in lanes:
            for contact, entry in lane.contacts:
                await self._save_contact(conn, contact, entry, now)
            for receipt in lane.receipts:
                await self._apply_receipt(conn, receipt)
        await self._set_timers(conn, lanes)
        await self._many(
            conn,
            "hold_lease_until",
            [(ln.lease.lane, ln.retry_at) for ln in lanes if ln.retry_at is not None],
        )
        await self._columns(
            conn,
            "release_lease",
            [(ln.lease.lane, ln.lease.token) for ln in lanes if ln.retry_at is None],
        )
        return cancelled, new_ids

    async def _set_timers(self, conn: Conn, lanes: list[LaneCommit]) -> None:
        """Arm, then disarm, the lanes' timers (each lane names its own conversation's)."""
        armed = {  # as if one after the other: the last setting of a timer wins
            (db_text(t.conversation_key), t.timer): t.due_at
            for lane in lanes
            for t in lane.timers_set
        }
        await self._columns(conn, "set_timer", [(*key, due) for key, due in armed.items()])
        await self._many(
            conn,
            "clear_timer",
            [
                (db_text(key), name, due_at)
                for lane in lanes
                for key, name, due_at in lane.timers_cleared
            ],
        )

    async def _many(self, conn: Conn, name: str, args: list[tuple[Any, ...]]) -> None:
        """One named statement for every argument tuple, sent together; nothing if none."""
        if args:
            await conn.executemany(self._sql[name], args)

    async def _columns(self, conn: Conn, name: str, rows: list[tuple[Any, ...]]) -> None:
        """One named `unnest` statement for all `rows`, sent as one array per column (one
        statement, not one per row as `_many`); nothing if none."""
        if rows:
            columns = [list(column) for column in zip(*rows, strict=True)]
            await conn.execute(self._sql[name], *columns)

    async def _record_results(self, conn: Conn, results: Sequence[EventResult]) -> None:
        """Each event's new status and its run."""
        await self._columns(conn, "finish_event", [(r.event_id, r.status.value) for r in results])
        await self._columns(
            conn,
            "insert_run",
            [(r.event_id, r.run.at, run_encoder.encode(r.run)) for r in results],
        )

    async def _insert_rows(self, conn: Conn, rows: Sequence[OutboxRow]) -> list[str]:
        """Insert outbox rows in one statement, in order; the ids of those not there yet."""
        if not rows:
            return []
        params = [outbox_params(row) for row in rows]
        columns = [list(column) for column in zip(*params, strict=True)]
        made = {record[0] for record in await conn.fetch(self._sql["insert_outbox"], *columns)}
        new_ids = []
        for row, values in zip(rows, params, strict=True):
            if values[0] in made:
                made.discard(values[0])  # the same id twice: only the first was made
                new_ids.append(row.id)
        return new_ids

    async def _cancel_waiting(self, conn: Conn, contact_key: str, reason: str) -> list[str]:
        """Cancel a contact's pending and deferred rows; their ids."""
        found = await conn.fetch(self._sql["cancel_waiting"], db_text(contact_key), db_text(reason))
        return [record[0] for record in found]

    async def _hold_or_release(self, conn: Conn, change: HoldChange) -> None:
        """A consent review's hold on the contact's waiting marketing, or its release."""
        key = db_text(change.contact_key)
        if change.hold:
            await conn.fetch(
                self._sql["hold_marketing"], key, HELD_UNTIL, db_text(change.reason or "")
            )
        else:
            await conn.fetch(self._sql["release_held"], key, HELD_UNTIL, change.not_before)

    async def _save_contact(
        self, conn: Conn, contact: ContactRecord, entry: LedgerRecord | None, now: datetime
    ) -> None:
        """A contact's consent, and the ledger entry of its change."""
        key = db_text(contact.address)
        await conn.execute(
            self._sql["upsert_contact"],
            key,
            contact.consent,
            contact.opted_out_at,
            contact.timezone,
            now,
        )
        if entry is not None:
            await conn.execute(
                self._sql["insert_ledger"],
                key,
                entry.at,
                entry.event_id,
                entry.channel,
                entry.change,
                db_text(entry.reason),
            )

    async def commit_replay(self, results: list[EventResult], rows: list[OutboxRow]) -> list[str]:
        async def run(conn: Conn) -> list[str]:
            await self._record_results(conn, results)
            return await self._insert_rows(conn, rows)

        return await self._transact(run)

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
        async def run(conn: Conn) -> list[bool]:
            # Each finishing UPDATE carries its row's lease token: a row another attempt took
            # over meanwhile is not changed (fenced), and no lock is read first.
            firsts: dict[str, AttemptResult] = {}  # one token commits once
            for result in results:
                firsts.setdefault(result.id, result)
            unique = list(firsts.values())
            sent: list[AttemptResult] = []  # finished together; the others one by one
            others: list[AttemptResult] = []
            for result in unique:
                plain = result.outcome is AttemptOutcome.SENT and result.opted_out is None
                (sent if plain else others).append(result)
            finished: set[str] = set()
            for result in others:
                if await self._finish_one(conn, result):
                    finished.add(result.id)
            finished |= await self._finish_sent(conn, sent)
            await self._insert_attempts(conn, [r for r in unique if r.id in finished])
            return [result.id in finished and firsts[result.id] is result for result in results]

        return await self._transact(run, notify=True)  # a lane's next row may go now

    async def _finish_sent(self, conn: Conn, results: Sequence[AttemptResult]) -> set[str]:
        """Sent rows, each kind of write in one statement for all of them (a round's sends
        finish together): the receipts that beat the commit move each row on, never back.
        The ids finished (the others were fenced)."""
        if not results:
            return set()
        provider_ids = [
            db_text(r.provider_message_id) if r.provider_message_id else None for r in results
        ]
        waiting: dict[str | None, list[tuple[str, str | None]]] = {}
        known = [pid for pid in provider_ids if pid]
        if known:
            for pid, status, error_code in await conn.fetch(self._sql["receipts_of"], known):
                waiting.setdefault(pid, []).append((status, error_code))
        statuses: list[str] = []
        error_codes: list[str | None] = []
        for result, pid in zip(results, provider_ids, strict=True):
            status, error_code = "sent", None
            for reported, code in waiting.get(pid, ()):
                status, error_code = after_receipt(status, error_code, reported, code)
            if result.provider_status:
                status, error_code = after_receipt(status, error_code, result.provider_status, None)
            statuses.append(status)
            error_codes.append(error_code)
        done = await conn.fetch(
            self._sql["finish_sent"],
            [r.id for r in results],
            provider_ids,
            statuses,
            error_codes,
            [r.token for r in results],
        )
        finished = {record[0] for record in done}
        used = [
            pid
            for result, pid in zip(results, provider_ids, strict=True)
            if pid in waiting and result.id in finished
        ]
        if used:
            await conn.execute(self._sql["drop_receipts"], used)
        await self._many(  # an escalation post's Slack thread belongs to its conversation
            conn,
            "map_thread",
            [
                tuple(db_text(value) for value in thread_row(result.thread))
                for result in results
                if result.thread is not None and result.id in finished
            ],
        )
        return finished

    async def _finish_one(self, conn: Conn, result: AttemptResult) -> bool:
        """A row not sent, or sent to a contact the carrier says opted out (21610); whether
        it was finished (not fenced)."""
        outcome = result.outcome
        if outcome is AttemptOutcome.SENT:
            finished = bool(await self._finish_sent(conn, [result]))
        else:  # each returns the id only if the token still held it
            sql, args = self._bind(*unsent_finish(result, self._at))
            finished = await conn.fetchval(sql, *args) is not None
        if finished and result.opted_out is not None:  # a carrier-held STOP (Twilio 21610)
            await self._save_contact(conn, result.opted_out, result.ledger, result.at)
            await self._cancel_waiting(conn, result.opted_out.address, OPTED_OUT_AT_CARRIER)
        return finished

    async def _insert_attempts(self, conn: Conn, results: Sequence[AttemptResult]) -> None:
        if not results:
            return
        await conn.execute(
            self._sql["insert_attempts"],
            [r.id for r in results],
            [r.at for r in results],
            [r.outcome.value for r in results],
            [r.error for r in results],
            [r.error_code for r in results],
            [r.duration_ms for r in results],
        )

    async def _apply_receipt(self, conn: Conn, receipt: Receipt) -> None:
        provider_id = db_text(receipt.provider_message_id)
        found = await conn.fetchrow(self._sql["row_by_provider_id"], provider_id)
        if found is None:  # the callback beat the dispatcher's commit: keep it for then
            await conn.execute(
                self._sql["insert_receipt"],
                provider_id,
                db_text(receipt.status),
                receipt.error_code,
                receipt.at,
            )
            return
        await self._deliver(conn, found[0], found[1], receipt.status, receipt.error_code)

    async def _deliver(
        self, conn: Conn, row_id: str, current: str, reported: str, error_code: str | None
    ) -> str:
        """Move a sent row on by a receipt, never back."""
        target = receipt_target(current, reported)
        if target is None:
            return current
        await conn.execute(self._sql["set_delivery"], row_id, target, error_code)
        return target

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
                    await conn.add_listener(_CHANNEL, heard)
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
