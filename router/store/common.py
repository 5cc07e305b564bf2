"""The Store's verbs both backends answer alike, written once over named queries.

`CommonStore` holds every read (and the single-statement writes) whose only difference
between SQLite and PostgreSQL is how a query runs and how a value is bound or read back. A
backend subclasses it and supplies that small layer: `_rows` and `_run` (one named query,
its parameters named `:name` in the SQL of both, `router.store.queries.filtered`), and how a
time, a text or a list of texts is bound and a stored time read. The writes of many rows in
one transaction (a lane commit, a replay, finishing attempts) are planned once in
`router.store.writes`; each backend keeps its transactions, fencing, ingest and claims.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from router.errors import StoreCorrupt, StoreUnavailable
from router.events import EscalationThread, Event
from router.logs import get_logger
from router.store.base import EventFilter, IngestItem, IngestOutcome, QuarantinedRequest, StoredRaw
from router.store.records import (
    AttemptRecord,
    BreakerNews,
    ContactRecord,
    ConversationRecord,
    DueRow,
    LedgerRecord,
    OutboxFilter,
    OutboxRow,
    ReconcileRecord,
    RunRecord,
    StatusCounts,
    TimerRecord,
)
from router.store.shared import (
    Head,
    awaiting_receipt_rows,
    event_from_row,
    fail_pending,
    id_bounds,
    outbox_from_row,
    reconcile_records,
    run_decoder,
    stored_raw,
)

log = get_logger("switchboard.store")
#: An ingest item and its row, encoded before it joins a batch (one that cannot be stored
#: fails alone).
Prepared = tuple[IngestItem, tuple[Any, ...]]
Pending = tuple[Prepared, "asyncio.Future[IngestOutcome]"]
#: Queued by `close`: the writer loop ends after the batch it is taking.
STOP = object()


class CommonStore:
    """The shared half of a Store; a backend adds connections, transactions and the writes
    that batch many rows."""

    #: Ingest items (on SQLite other writes too) waiting for the writer task, which commits
    #: whatever queued meanwhile together: one lock, one fsync (group commit).
    _queue: asyncio.Queue[Any]
    _writer_task: asyncio.Task[None] | None
    #: Why the last ingest commit failed, until a commit succeeds (a full disk: only a
    #: commit tells that the store is ready again).
    _commit_error: str | None

    # -- what each backend supplies ------------------------------------------------------

    @staticmethod
    def _event_row(item: IngestItem) -> tuple[Any, ...]:
        """The `events` row of an item; UnstorableEvent if it cannot be stored."""
        raise NotImplementedError

    async def _rows(self, name: str, **params: Any) -> list[Sequence[Any]]:
        """The rows of the named query, read on its own (a filtered one drops the optional
        lines whose parameter is None)."""
        raise NotImplementedError

    async def _run(self, name: str, **params: Any) -> int:
        """Run one named write statement, committed on its own; how many rows it changed."""
        raise NotImplementedError

    async def _due_heads(self, now: datetime, limit: int) -> list[Head]:
        """The due head of each lane (`shared.DueHeads` over the `dispatch_scan` rows, read
        as the backend reads a long scan best)."""
        raise NotImplementedError

    async def _wake(self) -> None:
        """Tell the other processes that work is waiting (PostgreSQL notifies; SQLite's
        watch sees every commit by itself)."""

    @staticmethod
    def _time(value: Any) -> datetime:
        """A stored time, read back (SQLite keeps text, PostgreSQL timestamptz)."""
        raise NotImplementedError

    @staticmethod
    def _at(moment: datetime) -> Any:
        """A time as a parameter."""
        raise NotImplementedError

    @staticmethod
    def _text(value: str) -> str:
        """A text as a parameter (PostgreSQL's text holds no NUL)."""
        return value

    @staticmethod
    def _texts(values: list[str]) -> Any:
        """A list of texts as one parameter (SQLite: JSON for `json_each`; PostgreSQL: an
        array)."""
        raise NotImplementedError

    # -- value helpers -------------------------------------------------------------------

    def _when(self, value: Any) -> datetime | None:
        """A nullable stored time, read back."""
        return self._time(value) if value else None

    def _opt_at(self, moment: datetime | None) -> Any:
        return None if moment is None else self._at(moment)

    def _opt_text(self, value: str | None) -> str | None:
        return None if value is None else self._text(value)

    def _outbox(self, row: Sequence[Any]) -> OutboxRow:
        return outbox_from_row(row, self._when)

    def _conversation(self, row: Sequence[Any]) -> ConversationRecord:
        """A `conversations` row (`key, state, channel, contact, body, updated_at`)."""
        body = row[4]
        return ConversationRecord(
            key=row[0],
            state=row[1],
            channel=row[2],
            contact=row[3],
            body=body.encode() if isinstance(body, str) else bytes(body),
            updated_at=self._time(row[5]),
        )

    # -- the writer ----------------------------------------------------------------------

    async def ingest(self, item: IngestItem) -> IngestOutcome:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("store is not open")
        prepared = (item, self._event_row(item))  # raises UnstorableEvent before joining a batch
        future: asyncio.Future[IngestOutcome] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((prepared, future))
        return await future

    async def _stop_writer(self) -> None:
        """End the writer task after what it holds; what queued after its last batch is
        answered (StoreUnavailable) rather than stranded."""
        if self._writer_task is not None:
            self._queue.put_nowait(STOP)
            await self._writer_task
            self._writer_task = None
        while not self._queue.empty():
            entry = self._queue.get_nowait()
            if entry is not STOP:
                fail_pending(entry[1], StoreUnavailable("store is closed"))

    def _check_writer(self) -> None:
        if self._writer_task is None or self._writer_task.done():
            raise StoreUnavailable("store writer is not running")

    async def _probe_commit(self) -> None:
        """After a failed ingest commit: commit one small row; ready again only if it lands."""
        failed = self._commit_error
        if failed is None:
            return
        try:
            await self._run("probe_commit", at=self._at(datetime.now(UTC)))
        except StoreUnavailable as exc:
            raise StoreUnavailable(f"cannot commit: {exc}") from exc
        if self._commit_error == failed:
            self._commit_error = None

    # -- events ----------------------------------------------------------------------------

    async def list_events(self, where: EventFilter) -> list[Event]:
        since_id, until_id = id_bounds(where)
        rows = await self._rows(
            "list_events",
            since_id=since_id,
            until_id=until_id,
            source=self._opt_text(where.source),
            type=self._opt_text(where.type),
            status=where.status.value if where.status else None,
            since=self._opt_at(where.since),
            until=self._opt_at(where.until),
            before=self._opt_text(where.before),
            limit=where.limit,
        )
        found = []
        for row in rows:
            try:
                found.append(event_from_row(row))
            except (msgspec.DecodeError, ValueError) as exc:  # listed without it, and said
                log.warning(
                    "stored event cannot be read",
                    stage="store",
                    event_id=row[2],
                    error=str(exc)[:200],
                )
        return found

    async def get_event(self, event_id: str) -> Event | None:
        rows = await self._rows("get_event", id=self._text(event_id))
        if not rows:
            return None
        try:
            return event_from_row(rows[0])
        except (msgspec.DecodeError, ValueError) as exc:
            raise StoreCorrupt(f"event {event_id} cannot be read: {exc}") from exc

    async def get_raw(self, event_id: str) -> StoredRaw | None:
        return stored_raw(await self._rows("get_raw", id=self._text(event_id)))

    async def nonce_first_body(self, source: str, nonce: str) -> StoredRaw | None:
        rows = await self._rows(
            "nonce_first_body", source=self._text(source), nonce=self._text(nonce)
        )
        return stored_raw(rows)

    async def list_quarantine(self, limit: int = 100) -> list[QuarantinedRequest]:
        return [
            QuarantinedRequest(
                id=r[0],
                source=r[1],
                received_at=self._time(r[2]),
                reason=r[3],
                content_type=r[4],
                raw_body=r[5],
                raw_blob=r[6],
                correlation_id=r[7],
            )
            for r in await self._rows("list_quarantine", limit=limit)
        ]

    async def quarantine(self, request: QuarantinedRequest) -> None:
        await self._run(
            "insert_quarantine",
            id=self._text(request.id),
            source=self._text(request.source),
            received_at=self._at(request.received_at),
            reason=self._text(request.reason),
            content_type=self._text(request.content_type),
            raw_body=request.raw_body,
            raw_blob=request.raw_blob,
            correlation_id=self._text(request.correlation_id),
        )

    async def prune_nonces(self, before: datetime) -> None:
        """Forget one-time tokens older than any timestamp a verifier would still accept."""
        await self._run("prune_nonces", before=self._at(before))

    async def known_dedupe_keys(self, keys: list[str]) -> set[str]:
        if not keys:
            return set()
        rows = await self._rows("known_dedupe_keys", keys=self._texts(keys))
        return {row[0] for row in rows}

    # -- the routing side ----------------------------------------------------------------

    async def runs(self, event_id: str) -> list[RunRecord]:
        rows = await self._rows("runs_of_event", event_id=self._text(event_id))
        return [run_decoder.decode(row[0]) for row in rows]

    async def contacts(self, keys: list[str]) -> dict[str, ContactRecord]:
        if not keys:
            return {}
        rows = await self._rows("contacts_by_key", keys=self._texts(keys))
        return {
            row[0]: ContactRecord(
                address=row[0], consent=row[1], opted_out_at=self._when(row[2]), timezone=row[3]
            )
            for row in rows
        }

    async def get_contact(self, key: str) -> ContactRecord | None:
        contact = (await self.contacts([key])).get(self._text(key))
        if contact is None:
            return None
        ledger = [
            LedgerRecord(at=self._time(r[0]), event_id=r[1], channel=r[2], change=r[3], reason=r[4])
            for r in await self._rows("contact_ledger", key=self._text(key))
        ]
        return msgspec.structs.replace(contact, ledger=ledger)

    async def get_conversation(self, key: str) -> ConversationRecord | None:
        rows = await self._rows("get_conversation", key=self._text(key))
        return self._conversation(rows[0]) if rows else None

    async def list_conversations(
        self, state: str | None, limit: int = 100
    ) -> list[ConversationRecord]:
        rows = await self._rows("list_conversations", state=self._opt_text(state), limit=limit)
        return [self._conversation(row) for row in rows]

    async def timers(self, due_before: datetime | None = None) -> list[TimerRecord]:
        rows = await self._rows("list_timers", due_before=self._opt_at(due_before))
        return [
            TimerRecord(conversation_key=r[0], timer=r[1], due_at=self._time(r[2])) for r in rows
        ]

    async def existing_outbox_ids(self, ids: list[str]) -> set[str]:
        if not ids:
            return set()
        rows = await self._rows("existing_outbox_ids", ids=self._texts(ids))
        return {row[0] for row in rows}

    # -- the outbox ------------------------------------------------------------------------

    async def due_rows(self, now: datetime, limit: int) -> list[DueRow]:
        due = await self._due_heads(now, limit)
        if not due:
            return []
        found = await self._rows("rows_by_id", ids=self._texts([head[1] for head in due]))
        rows = {row[0]: row for row in found}
        return [
            DueRow(row=self._outbox(rows[row_id]), in_doubt=in_doubt, doubt_since=self._when(at))
            for _, row_id, in_doubt, at in due
            if row_id in rows
        ]

    async def list_outbox(self, where: OutboxFilter) -> list[OutboxRow]:
        rows = await self._rows(
            "list_outbox",
            status=where.status.value if where.status else None,
            channel=self._opt_text(where.channel),
            recipient=self._opt_text(where.to),
            event_id=self._opt_text(where.event_id),
            before=self._opt_text(where.before),
            limit=where.limit,
        )
        return [self._outbox(row) for row in rows]

    async def escalation_post(self, conversation_key: str) -> OutboxRow | None:
        rows = await self._rows("escalation_post", key=self._text(conversation_key))
        return self._outbox(rows[0]) if rows else None

    async def escalation_thread(self, conversation_key: str) -> str | None:
        rows = await self._rows("escalation_thread", key=self._text(conversation_key))
        return rows[0][0] if rows else None

    async def next_due(self, now: datetime) -> datetime | None:
        rows = await self._rows("next_due", now=self._at(now))
        return self._when(rows[0][0]) if rows else None

    async def oldest_due(self, now: datetime) -> datetime | None:
        rows = await self._rows("oldest_due", now=self._at(now))
        return self._when(rows[0][0]) if rows else None

    async def attempts(self, outbox_id: str) -> list[AttemptRecord]:
        rows = await self._rows("attempts_of_row", id=self._text(outbox_id))
        return [
            AttemptRecord(
                at=self._time(r[0]), outcome=r[1], error=r[2], error_code=r[3], duration_ms=r[4]
            )
            for r in rows
        ]

    async def requeue_dead(self, outbox_id: str) -> bool:
        requeued = bool(await self._run("requeue_dead", id=self._text(outbox_id)))
        if requeued:
            await self._wake()
        return requeued

    async def discard_dead(self, outbox_id: str, reason: str) -> bool:
        params = {"id": self._text(outbox_id), "reason": self._text(reason)}
        return bool(await self._run("discard_dead", **params))

    async def outbox_counts(self, *, live_only: bool = False) -> dict[tuple[str, str], int]:
        rows = await self._rows("outbox_counts_live" if live_only else "outbox_counts")
        return {(row[0], row[1]): row[2] for row in rows}

    async def status_counts(self, now: datetime) -> StatusCounts:
        [events] = await self._rows("status_events")
        [escalations] = await self._rows("status_escalations")
        [due] = await self._rows("status_outbox_due", now=self._at(now))
        return StatusCounts(
            events_waiting=events[0],
            oldest_waiting_id=events[1],
            events_failed=events[2],
            escalated=escalations[0],
            agent=escalations[1],
            outbox_due=due[0],
            oldest_due=self._when(due[1]),
        )

    async def rate_slots(self) -> dict[str, datetime]:
        return {row[0]: self._time(row[1]) for row in await self._rows("rate_slots")}

    async def breakers(self) -> dict[str, BreakerNews]:
        rows = await self._rows("breakers")
        return {r[0]: BreakerNews(state=r[1], changed_at=self._time(r[2])) for r in rows}

    async def delay_slot(self, key: str, until: datetime) -> None:
        await self._run("delay_slot", key=self._text(key), until=self._at(until))

    # -- reconciliation (SPEC §12) -----------------------------------------------------------

    async def awaiting_receipt(
        self, channels: Sequence[str], sent_before: datetime, created_after: datetime, limit: int
    ) -> list[str]:
        async def page(before: int, size: int) -> Sequence[Sequence[Any]]:
            return await self._rows("sent_rows_page", before=before, limit=size)

        return await awaiting_receipt_rows(
            page, self._when, channels, sent_before, created_after, limit
        )

    async def open_threads(self) -> list[EscalationThread]:
        rows = await self._rows("open_threads")
        return [EscalationThread(channel=r[0], ts=r[1], conversation_key=r[2]) for r in rows]

    async def reconcile_state(self) -> dict[str, ReconcileRecord]:
        return reconcile_records(await self._rows("reconcile_state"), self._when)

    async def record_reconcile(
        self,
        source: str,
        at: datetime,
        *,
        until: datetime | None,
        recovered: int,
        error: str | None,
    ) -> None:
        if error is None and until is not None:
            await self._run(
                "record_reconcile_success",
                source=source,
                until=self._at(until),
                recovered=recovered,
            )
            return
        await self._run(
            "record_reconcile_failure",
            source=source,
            recovered=recovered,
            error=self._text(error or "failed"),
            at=self._at(at),
        )
