"""The storage seam: domain verbs, no SQL; implemented on SQLite and PostgreSQL.

Both implementations share what they decide alike: `router.store.common.CommonStore` (the
reads and single-statement writes, over named queries) and `router.store.shared` (pure
decisions: due heads, rate slots, receipts, lane picking, how a row is finished)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from enum import StrEnum
from typing import Protocol

import msgspec

from router.events import EscalationThread, Event, EventStatus
from router.store.blobs import Blobs
from router.store.records import (
    AttemptRecord,
    AttemptResult,
    BreakerNews,
    ClaimedLane,
    CommitOutcome,
    ContactRecord,
    ConversationRecord,
    DueRow,
    EventResult,
    LaneCommit,
    OutboxFilter,
    OutboxRow,
    Pruned,
    ReconcileRecord,
    RowClaims,
    RunRecord,
    SlotRequest,
    StatusCounts,
    StorageUse,
    TimerRecord,
)


class IngestOutcome(StrEnum):
    """What the store did with one verified delivery."""

    STORED = "stored"
    #: The dedupe key was already there: nothing changed.
    DUPLICATE = "duplicate"
    #: A one-time token (Mailgun) came back with a different payload: refused.
    REPLAY = "replay"


class IngestItem(msgspec.Struct, frozen=True, kw_only=True):
    """One event and the bytes it came from, committed together."""

    event: Event
    #: The verified raw body; kept for inspection and replay.
    raw_body: bytes
    content_type: str
    #: sha256 of `raw_body` when it was moved to the blob store (large bodies).
    raw_blob: str | None = None
    #: A provider's one-time token; a second use with another dedupe key is a replay.
    nonce: str | None = None


class QuarantinedRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A request whose signature was valid but whose payload could not be understood."""

    id: str
    source: str
    received_at: datetime
    reason: str
    content_type: str
    raw_body: bytes | None = None
    raw_blob: str | None = None
    correlation_id: str


class EventFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which events to list; every field narrows, None means any."""

    source: str | None = None
    type: str | None = None
    status: EventStatus | None = None
    since: datetime | None = None
    until: datetime | None = None
    #: Only events whose id sorts before this one (the cursor of the next page).
    before: str | None = None
    limit: int = 100


class StoredRaw(msgspec.Struct, frozen=True, kw_only=True):
    """The raw body of a stored event, inline or in the blob store."""

    content_type: str
    body: bytes | None
    blob: str | None


class Store(Protocol):
    """Durable home of events; every method is safe to call from several tasks at once."""

    @property
    def blobs(self) -> Blobs:
        """Content-addressed storage for large bodies and attachments."""
        ...

    @property
    def migrations_applied(self) -> list[int]:
        """The schema versions the last `open` applied (empty when it was up to date)."""
        ...

    async def open(self) -> None:
        """Connect and migrate the schema to the latest version."""
        ...

    async def close(self) -> None:
        """Flush pending writes and disconnect."""
        ...

    async def ingest(self, item: IngestItem) -> IngestOutcome:
        """Commit one event durably; returns only after the commit (or raises StoreUnavailable)."""
        ...

    async def quarantine(self, request: QuarantinedRequest) -> None:
        """Keep a verified but malformed request for inspection."""
        ...

    async def prune_nonces(self, before: datetime) -> None:
        """Forget one-time tokens first seen before `before`."""
        ...

    async def prune(self, before: datetime, limit: int) -> Pruned:
        """Remove, in one transaction, up to `limit` events received before `before` whose
        work is over, oldest first, with their routing runs and outbox rows (and attempts);
        then up to `limit` quarantined requests and the early receipts received before it.

        An event's work is over when it is processed, ignored or failed and every outbox row
        it made is settled (sent, delivered, undelivered, failed, cancelled). Kept whatever
        their age: events still routing, rows waiting, sending or dead (a person decides),
        and escalation posts (a conversation's Slack thread lives on them). Conversations,
        contacts and their consent ledger are never pruned, nor blobs: they are shared by
        content, and an ingest may be about to point at one again."""
        ...

    async def nonce_first_body(self, source: str, nonce: str) -> StoredRaw | None:
        """The raw body a one-time token was first committed with; None if it is unused."""
        ...

    async def list_events(self, where: EventFilter) -> list[Event]:
        """Events matching `where`, newest first."""
        ...

    async def get_event(self, event_id: str) -> Event | None:
        """One event by id."""
        ...

    async def get_raw(self, event_id: str) -> StoredRaw | None:
        """The raw body an event was parsed from."""
        ...

    async def list_quarantine(self, limit: int = 100) -> list[QuarantinedRequest]:
        """Quarantined requests, newest first."""
        ...

    # -- routing (the worker) ---------------------------------------------------------------

    async def claim(
        self, owner: str, now: datetime, lease_seconds: float, max_lanes: int, max_events: int
    ) -> list[ClaimedLane]:
        """Lease up to `max_lanes` lanes with unfinished events, oldest first, each with up to
        `max_events` of its events in arrival order. A lane is a conversation (Slack thread
        events count in the conversation the thread escalated) or one event without one. A
        lane leased by someone else is skipped until its lease expires; one waiting for a
        retry is skipped until then."""
        ...

    async def commit(self, lanes: list[LaneCommit], now: datetime) -> CommitOutcome:
        """Apply each lane's outcome and release its lease, all in one transaction; a lane whose
        lease is no longer held with its token is refused as a whole (fencing)."""
        ...

    async def contacts(self, keys: list[str]) -> dict[str, ContactRecord]:
        """Consent of the given contact keys (without ledger); unknown keys are left out."""
        ...

    async def timers(self, due_before: datetime | None = None) -> list[TimerRecord]:
        """Armed timers, soonest first; with `due_before`, only those due before it (the
        scheduler holds the next few minutes' timers and reads the rest as they come near)."""
        ...

    async def commit_replay(self, results: list[EventResult], rows: list[OutboxRow]) -> list[str]:
        """Record replayed runs (and each event's new status) and make the rows that do not
        exist yet, in one transaction; returns the ids of the rows made."""
        ...

    async def existing_outbox_ids(self, ids: list[str]) -> set[str]:
        """Which of these outbox ids are already made (a dry-run replay tells new from old)."""
        ...

    # -- dispatch (SPEC §8) ------------------------------------------------------------------

    async def due_rows(self, now: datetime, limit: int) -> list[DueRow]:
        """The due head of each lane (rows of a lane leave in creation order), conversational
        and transactional before marketing: `pending` rows whose retry time passed, `deferred`
        rows whose quiet hours ended, and `sending` rows whose lease expired (in doubt). A
        lane whose head is in flight or waiting for a retry gives nothing."""
        ...

    async def claim_rows(
        self,
        due: list[DueRow],
        owner: str,
        now: datetime,
        lease_seconds: float,
        slots: Sequence[SlotRequest | None] | None = None,
        horizon: datetime | None = None,
    ) -> RowClaims:
        """Lease those rows that are still as `due_rows` saw them (`sending`, with a token)
        and book each one's rate slot (`slots[i]` for `due[i]`; None: no limit), in one
        transaction, so a destination's spacing holds across every dispatcher on the store.
        A row whose slot, after those booked before it, would start later than `horizon` is
        left, and its key reported busy until then. Booked slots only move later."""
        ...

    async def renew_rows(self, held: list[tuple[str, str]], until: datetime) -> set[str]:
        """Extend the leases of rows still `sending` under these `(id, token)` pairs to `until`
        (a dispatcher's heartbeat while it waits or sends); the ids renewed."""
        ...

    async def finish_attempts(self, results: list[AttemptResult]) -> list[bool]:
        """Record how attempts ended, in one transaction (one fsync for a burst of sends); each
        applies only under the lease token its row was claimed with (False: fenced). A sent
        escalation post's `thread` (the dispatcher's decision) is mapped to its conversation
        from then on; the store does not look at the row's kind to decide it."""
        ...

    async def escalation_post(self, conversation_key: str) -> OutboxRow | None:
        """The conversation's latest sent escalation post (what `chat.update` rewrites)."""
        ...

    async def escalation_thread(self, conversation_key: str) -> str | None:
        """The Slack ts of the conversation's latest sent escalation post (its thread)."""
        ...

    async def next_due(self, now: datetime) -> datetime | None:
        """When the next waiting row becomes due (a retry, or the end of quiet hours)."""
        ...

    async def attempts(self, outbox_id: str) -> list[AttemptRecord]:
        """Every attempt of one row, oldest first (kept across `dlq retry`)."""
        ...

    async def requeue_dead(self, outbox_id: str) -> bool:
        """`dlq retry`: a dead row is pending again with its attempts reset; False if it is
        not dead."""
        ...

    async def discard_dead(self, outbox_id: str, reason: str) -> bool:
        """`dlq discard`: a dead row is cancelled for good; False if it is not dead."""
        ...

    async def outbox_counts(self, *, live_only: bool = False) -> dict[tuple[str, str], int]:
        """Rows by (status, channel), for /metrics: every row (a scan of the whole table), or
        with `live_only` those of `records.LIVE` (an index range each: cheap while they are
        few)."""
        ...

    async def oldest_due(self, now: datetime) -> datetime | None:
        """Since when the oldest due row has been waiting (queue age, for /metrics)."""
        ...

    async def status_counts(self, now: datetime) -> StatusCounts:
        """Events waiting and failed, outbox rows due at `now`, open escalations: each count
        through an index holding only what it counts (`switchboard status`, SPEC §12)."""
        ...

    async def storage_use(self) -> StorageUse:
        """Bytes of the database and the blobs, and the free space of the disk they are on
        where this process can see it; read from sizes, never by reading the rows."""
        ...

    async def rate_slots(self) -> dict[str, datetime]:
        """The next free send slot of each rate-limited destination."""
        ...

    async def breakers(self) -> dict[str, BreakerNews]:
        """The last change of each destination's circuit breaker, as dispatchers told it."""
        ...

    async def save_breakers(self, news: dict[str, BreakerNews]) -> None:
        """Tell the other dispatchers of breakers that opened or closed here; a key keeps the
        newest news."""
        ...

    async def delay_slot(self, key: str, until: datetime) -> None:
        """No send to `key` before `until` (a 429's Retry-After), for every dispatcher; a slot
        already later stays."""
        ...

    # -- reads of the routing side ---------------------------------------------------------

    async def runs(self, event_id: str) -> list[RunRecord]:
        """The routing runs of one event, oldest first."""
        ...

    async def list_outbox(self, where: OutboxFilter) -> list[OutboxRow]:
        """Outbox rows matching `where`, newest first."""
        ...

    async def get_conversation(self, key: str) -> ConversationRecord | None:
        """One conversation by key."""
        ...

    async def list_conversations(
        self, state: str | None, limit: int = 100
    ) -> list[ConversationRecord]:
        """Conversations, most recently updated first; `state` narrows (support's queue)."""
        ...

    async def get_contact(self, key: str) -> ContactRecord | None:
        """One contact with its whole consent ledger, oldest entry first."""
        ...

    async def watch(self, on_change: Callable[[], None]) -> None:
        """Call `on_change` soon after another connection commits (ingest in another process,
        `dlq retry` from the CLI): a hint that work may be waiting, never a promise. Runs
        until cancelled."""
        ...

    # -- reconciliation (SPEC §12) -----------------------------------------------------------

    async def known_dedupe_keys(self, keys: list[str]) -> set[str]:
        """Which of these dedupe keys are already stored (a dry-run pass tells new from old)."""
        ...

    async def awaiting_receipt(
        self, channels: Sequence[str], sent_before: datetime, created_after: datetime, limit: int
    ) -> list[str]:
        """Provider ids of rows on `channels` still `sent` (no final receipt), last tried
        before `sent_before`, created after `created_after`: newest first, at most `limit`.
        Reads the rows `sent` in that window only (newest first, through the status index)."""
        ...

    async def open_threads(self) -> list[EscalationThread]:
        """The Slack threads of escalation posts whose conversation is `escalated` or
        `agent`: where a Slack pass looks for agent replies never delivered."""
        ...

    async def reconcile_state(self) -> dict[str, ReconcileRecord]:
        """Each source's reconciliation record (last success, recovered, last error): what
        the next pass starts from, and what `switchboard status` shows."""
        ...

    async def record_reconcile(
        self,
        source: str,
        at: datetime,
        *,
        until: datetime | None,
        recovered: int,
        error: str | None,
    ) -> None:
        """Note a finished pass of `source`: with `error` None it succeeded up to `until`
        (and the error is cleared), else it failed at `at` with `error`; `recovered` is
        added to the source's total either way."""
        ...

    def reconcile_lock(self) -> AbstractAsyncContextManager[bool]:
        """Hold the fleet's reconciliation lock while the block runs: yields True when this
        process got it, False when another holds it (then the block must not pass). Freed
        when the block ends, and when the process dies (never left held by a crash)."""
        ...

    async def ping(self) -> None:
        """Raise StoreUnavailable unless a read and a write lock can be had right now, and,
        after an ingest commit failed, unless a commit lands again."""
        ...
