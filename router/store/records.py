"""What the store keeps besides events: conversations, contacts and their consent ledger, the
outbox, routing runs, timers, and the leases that order the work (SPEC §7-9).

The store knows these as plain records. A conversation's machine value travels as opaque JSON
(`ConversationRecord.body`): only the core decodes it, so the store stays free of the machines.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import msgspec

from router.events import EscalationThread, Event, EventStatus


class OutboxStatus(StrEnum):
    """SPEC §9. `pending` and `deferred` rows wait; the dispatcher moves the rest."""

    PENDING = "pending"
    #: Held by quiet hours until `not_before`, or, `not_before` = `HELD_UNTIL`, until a
    #: person decides whether its recipient opted out (SPEC §7 `review`).
    DEFERRED = "deferred"
    SENDING = "sending"
    SENT = "sent"
    DELIVERED = "delivered"
    UNDELIVERED = "undelivered"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"


#: Rows an opt-out cancels: everything not yet handed to a provider.
WAITING = (OutboxStatus.PENDING, OutboxStatus.DEFERRED)
#: The `not_before` of a `marketing` row held while its recipient's consent is in review:
#: no date, a person decides (a release sets the real one). Far off rather than NULL, so every
#: query that waits for `not_before` (the dispatcher's scan, its wake-up, the overdue count)
#: already leaves the row alone and never holds up the rest of its lane.
HELD_UNTIL = datetime(9999, 1, 1, tzinfo=UTC)
#: Why a `marketing` row waits for a person (its `last_error`), wherever it was held.
HELD_FOR_REVIEW = "held: possible opt-out under review"
#: Rows still moving, and the dead letters: few, and what /metrics counts at every scrape
#: (`outbox_counts_live` in both stores' SQL names them the same).
LIVE = (OutboxStatus.PENDING, OutboxStatus.DEFERRED, OutboxStatus.SENDING, OutboxStatus.DEAD)


class OutboxRow(msgspec.Struct, frozen=True, kw_only=True):
    """One side effect to perform, made in the transaction of the event that caused it."""

    #: Deterministic: event id + rule id + action index, or event id + effect key.
    id: str
    event_id: str
    conversation_key: str | None
    #: `sms`, `whatsapp`, `email`, `slack` or `http` (a forward).
    channel: str
    #: Phone number, email address, Slack channel, or forward destination name.
    to: str
    category: str
    status: OutboxStatus
    #: What made it: `reply`, `send`, `forward`, `escalation`, `relay_to_thread`, `reminder`,
    #: `relay_to_customer`, `opt_out_confirmation`, `opt_in_confirmation`, `help`.
    kind: str
    #: The rendered message: `{text}`, `{text, subject}`, `{blocks, text}`, `{event}`; plus
    #: `from` (the sender number the customer wrote to) and `thread_ts` where they apply.
    payload: dict[str, Any]
    created_at: datetime
    not_before: datetime | None = None
    attempts: int = 0
    last_error: str | None = None
    provider_message_id: str | None = None
    #: `consent.contact_key` of the recipient (rows to customers only): what an opt-out cancels.
    contact_key: str | None = None
    #: When a row waiting for a retry may be tried again (a `pending` row with attempts).
    next_attempt_at: datetime | None = None
    #: The provider's code of the last failure or delivery receipt.
    error_code: str | None = None

    @property
    def lane(self) -> str:
        """Rows of one lane leave in creation order: a conversation's rows on one channel (the
        customer's texts, the escalation thread's posts), or the row alone."""
        if self.conversation_key is None:
            return f"row:{self.id}"
        return f"{self.conversation_key}|{self.channel}"

    @property
    def priority(self) -> int:
        """Claimed first: 0 (conversational, transactional), then 1 (marketing)."""
        return 1 if self.category == "marketing" else 0


class OutboxFilter(msgspec.Struct, frozen=True, kw_only=True):
    """Which outbox rows to list; None means any."""

    status: OutboxStatus | None = None
    channel: str | None = None
    to: str | None = None
    event_id: str | None = None
    #: Only rows whose id sorts before this one (the next page).
    before: str | None = None
    limit: int = 100


class RunRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One routing of one event (SPEC §9): what the rules and the machine decided."""

    event_id: str
    at: datetime
    rules_version: str | None
    matched: list[str] = []
    actions: list[dict[str, Any]] = []
    #: `{trigger, source, dest}` when the conversation machine fired; `{trigger, refused}` when
    #: it refused an illegal transition.
    transition: dict[str, Any] | None = None
    outbox_ids: list[str] = []
    error: str | None = None
    #: What compliance did first: `opt_out`, `opt_in`, `help`, or None.
    compliance: str | None = None
    #: The conversation as the rules saw it (`{state, attributes}`), so `rules diff` decides
    #: a draft with the same state; None when the event had no conversation or no rules ran.
    conversation: dict[str, Any] | None = None
    #: True for a run made by `switchboard replay`.
    replay: bool = False


class LedgerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One consent change: proof of when a revocation was honoured."""

    at: datetime
    event_id: str
    channel: str | None
    #: The consent after the change: `subscribed` or `opted_out`.
    change: str
    reason: str


class ContactRecord(msgspec.Struct, frozen=True, kw_only=True):
    """Consent and time zone of one person across channels (SPEC §9 contact JSON)."""

    #: `consent.contact_key`: E.164 for phones on any channel, lower-cased email.
    address: str
    consent: str = "subscribed"
    opted_out_at: datetime | None = None
    timezone: str | None = None
    ledger: list[LedgerRecord] = []


class ConversationRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation as stored: the searchable columns plus the machine's value as JSON."""

    key: str
    state: str
    channel: str | None
    contact: str | None
    #: `statemachines.conversation.Conversation`, JSON-encoded by the core.
    body: bytes
    updated_at: datetime


class TimerRecord(msgspec.Struct, frozen=True, kw_only=True):
    """An armed conversation timer; at `due_at` it becomes a `timer.<name>` event."""

    conversation_key: str
    timer: str
    due_at: datetime


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    """A worker's hold on one lane (a conversation, or one event without one). The token is
    the fencing token: a commit carrying any other token is refused."""

    lane: str
    token: str
    until: datetime


class ClaimedLane(msgspec.Struct, frozen=True, kw_only=True):
    """Work handed to one worker: a lane's unfinished events in arrival order."""

    lease: Lease
    events: list[Event]
    #: Tries so far of each event (by id): a poison event is marked failed after the last.
    attempts: dict[str, int] = {}
    conversation: ConversationRecord | None = None


class EventResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one event of a lane ended."""

    event_id: str
    status: EventStatus
    run: RunRecord


class HoldChange(msgspec.Struct, frozen=True, kw_only=True):
    """Hold a contact's waiting `marketing` rows (consent in review), or release the held ones
    (kept subscribed): `not_before` then, None for at once."""

    contact_key: str
    hold: bool
    #: Hold: why, shown as the rows' `last_error`.
    reason: str | None = None
    #: Release: when quiet hours let them go, None for at once.
    not_before: datetime | None = None

    @classmethod
    def for_review(cls, contact_key: str, event_id: str) -> HoldChange:
        """Hold, because the message of event `event_id` may have been a revocation."""
        reason = f"{HELD_FOR_REVIEW} (event {event_id})"
        return cls(contact_key=contact_key, hold=True, reason=reason)


class LaneCommit(msgspec.Struct, frozen=True, kw_only=True):
    """Everything one lane's processing writes, applied only if its lease is still held."""

    lease: Lease
    results: list[EventResult] = []
    conversation: ConversationRecord | None = None
    outbox: list[OutboxRow] = []
    #: `(contact_key, reason)`: cancel that contact's waiting rows, in this transaction.
    cancel_contacts: list[tuple[str, str]] = []
    #: Marketing held or released by a consent review, in the order the events made them.
    holds: list[HoldChange] = []
    #: Consent changes: the contact's new state, and the ledger entry to append.
    contacts: list[tuple[ContactRecord, LedgerRecord | None]] = []
    timers_set: list[TimerRecord] = []
    #: `(conversation_key, timer, due_at)` to disarm; with a due time, only if the armed timer
    #: is still that one (a timer that fired must not disarm its own re-arming).
    timers_cleared: list[tuple[str, str, datetime | None]] = []
    #: Delivery receipts (message.status events) to apply to the rows they name.
    receipts: list[Receipt] = []
    #: An event whose processing raised: its tries go up by one, and the lane waits until
    #: `retry_at` before it is claimed again.
    failed_attempt: str | None = None
    retry_at: datetime | None = None


class CommitOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """Per lane, in order: applied, or refused because its lease was lost (fenced)."""

    applied: list[bool]
    #: Rows inserted (rows already there are left as they are: replays make none twice).
    new_outbox_ids: list[str] = []
    #: Rows an opt-out cancelled.
    cancelled_outbox_ids: list[str] = []


class DueRow(msgspec.Struct, frozen=True, kw_only=True):
    """The head of a lane, due now: what the dispatcher may claim."""

    row: OutboxRow
    #: An earlier attempt may have sent it, its outcome unrecorded: left `sending` by an
    #: attempt whose lease expired, or retried after a look or a send that did not settle it.
    in_doubt: bool = False
    #: When the first of those attempts started: where the look for it begins (None: unknown,
    #: look from the row's creation).
    doubt_since: datetime | None = None


class ClaimedRow(msgspec.Struct, frozen=True, kw_only=True):
    """An outbox row leased to one dispatcher for one attempt."""

    row: OutboxRow
    token: str
    #: An earlier attempt may have sent it (see `DueRow`): look before any resend.
    in_doubt: bool = False
    #: When the first attempt that may have sent it started (what `Sender.find` searches
    #: from); it stays the same across claims until an outcome settles the row.
    doubt_since: datetime | None = None
    #: The rate slot booked with the claim: the send starts then, not before. None: the row
    #: asked for no slot (an unlimited destination).
    start: datetime | None = None


class SlotRequest(msgspec.Struct, frozen=True, kw_only=True):
    """A rate slot to book with a row's claim, so the spacing holds for every dispatcher on
    the store: the destination's key, and how long its send holds it (spacing x units)."""

    key: str
    hold_seconds: float


class BreakerNews(msgspec.Struct, frozen=True, kw_only=True):
    """A destination's circuit breaker opened or closed at a moment: what one dispatcher tells
    the others through the store."""

    state: Literal["open", "closed"]
    changed_at: datetime


class StatusCounts(msgspec.Struct, frozen=True, kw_only=True):
    """What `switchboard status` reads of the events and conversations, each through an index
    that holds only the few rows counted, never a scan of a table that grows."""

    #: Events not yet routed (`received`, `processing`).
    events_waiting: int
    #: The id of the oldest of them (a ULID of its `received_at`); None when none waits.
    oldest_waiting_id: str | None
    events_failed: int
    #: Conversations handed to people: `escalated` (not yet claimed) and `agent` (claimed).
    escalated: int
    agent: int
    #: Outbox rows waiting whose time has come, and since when the oldest has waited.
    outbox_due: int
    oldest_due: datetime | None


class StorageUse(msgspec.Struct, frozen=True, kw_only=True):
    """Bytes the store takes, and what is left on its disk where this process can see it."""

    #: The database: SQLite's file and its WAL; PostgreSQL's database.
    database_bytes: int
    blobs_bytes: int
    #: The disk of the SQLite file; None on PostgreSQL (its server's disk is not visible here).
    disk_free_bytes: int | None
    disk_total_bytes: int | None


class RowClaims(msgspec.Struct, frozen=True, kw_only=True):
    """What `claim_rows` leased, and what it left for want of a rate slot."""

    claimed: list[ClaimedRow]
    #: Keys whose next free slot lay beyond the horizon, and when it frees: their rows stay.
    busy_until: dict[str, datetime] = msgspec.field(default_factory=dict)


class AttemptOutcome(StrEnum):
    SENT = "sent"
    #: Failed transiently: `pending` again until `next_attempt_at`.
    RETRY = "retry"
    DEAD = "dead"
    #: Not sent and never will be: the contact opted out (before the send, or 21610).
    CANCELLED = "cancelled"
    #: It may have been accepted (a timeout after the request went out): the row stays
    #: `sending` until `next_attempt_at`, then the next attempt asks the provider first.
    IN_DOUBT = "in_doubt"


class AttemptResult(msgspec.Struct, frozen=True, kw_only=True):
    """How one attempt ended; applied only under the lease token it was claimed with."""

    id: str
    token: str
    outcome: AttemptOutcome
    at: datetime
    duration_ms: float
    error: str | None = None
    error_code: str | None = None
    provider_message_id: str | None = None
    #: The provider's status on acceptance (`queued`; `delivered` in sandbox mode).
    provider_status: str | None = None
    next_attempt_at: datetime | None = None
    #: A throttled retry (429): the provider asked to slow down; it uses no attempt.
    throttled: bool = False
    #: 21610: the contact is opted out from now on (its record and ledger entry), and every
    #: waiting row to it is cancelled in the same transaction.
    opted_out: ContactRecord | None = None
    ledger: LedgerRecord | None = None
    #: A message of the row may be out with its outcome unknown (an earlier attempt left it in
    #: doubt, or this one got no answer): a `retry` or `dead` row keeps its doubt window, and
    #: its next attempt (a dead row retried by hand too) looks for it first. `sent` closes the
    #: window whatever this says; `in_doubt` always keeps it.
    may_have_sent: bool = False
    #: A sent escalation post's Slack thread, as the dispatcher tells it: the store records
    #: that the thread belongs to the post's conversation from now on (agent replies and
    #: button presses there are routed with it). None for every other row.
    thread: EscalationThread | None = None


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """A delivery receipt (Twilio status callback) for a sent message."""

    provider_message_id: str
    #: `sent`, `delivered`, `undelivered`, `failed`, ...
    status: str
    error_code: str | None = None
    at: datetime


class AttemptRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One try of one row, as `outbox show` and `dlq list` tell it."""

    at: datetime
    outcome: str
    error: str | None = None
    error_code: str | None = None
    duration_ms: float | None = None


class Pruned(msgspec.Struct, frozen=True, kw_only=True):
    """What one `Store.prune` removed: events (each with its runs and outbox rows and their
    attempts), those outbox rows, quarantined requests, and early receipts no row claimed."""

    events: int = 0
    outbox_rows: int = 0
    quarantined: int = 0
    receipts: int = 0

    def __add__(self, other: Pruned) -> Pruned:
        return Pruned(
            events=self.events + other.events,
            outbox_rows=self.outbox_rows + other.outbox_rows,
            quarantined=self.quarantined + other.quarantined,
            receipts=self.receipts + other.receipts,
        )


class ReconcileRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the store keeps of one source's reconciliation passes (SPEC §12)."""

    source: str
    #: The `until` of the last pass that succeeded: the next pass asks from there (less an
    #: overlap). None before the first success.
    last_success: datetime | None = None
    #: Events all passes recovered (stored because no webhook had brought them).
    recovered: int = 0
    #: Why the last pass failed; None once a pass succeeds again.
    last_error: str | None = None
    last_error_at: datetime | None = None
