"""What both stores decide the same way, whatever the SQL: which outbox rows are due, how a
delivery receipt moves a row, how stored events, outbox rows and raw bodies are read back, the
fencing tokens."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from router import keys
from router.events import EscalationThread, Event, EventStatus, decode_event
from router.ids import ulid_floor
from router.store.base import EventFilter, StoredRaw
from router.store.records import (
    AttemptOutcome,
    AttemptResult,
    ClaimedLane,
    ClaimedRow,
    DueRow,
    EventResult,
    Lease,
    OutboxRow,
    OutboxStatus,
    ReconcileRecord,
    RunRecord,
)

#: Delivery receipts: the row status each Twilio status means, and how far along it is.
RECEIPT_STATUS = {
    "queued": "sent",
    "accepted": "sent",
    "sending": "sent",
    "sent": "sent",
    "delivered": "delivered",
    "read": "delivered",
    "undelivered": "undelivered",
    "failed": "failed",
}
RANK = {"sending": 0, "sent": 1, "delivered": 2, "undelivered": 2, "failed": 2}
#: Why a contact's waiting rows were cancelled when a send found it opted out (Twilio 21610).
OPTED_OUT_AT_CARRIER = "contact opted out at the carrier"
#: Unfinished outbox rows one dispatch scan reads at most.
DISPATCH_SCAN = 4096
#: The first page of a dispatch scan read in pages (PostgreSQL), at least.
DISPATCH_PAGE = 256
#: Unfinished events one claim reads at a time, and at most in all.
SCAN_PAGE = 2048
MAX_SCAN = 32768
run_encoder = msgspec.json.Encoder()
run_decoder = msgspec.json.Decoder(RunRecord)
payload_decoder = msgspec.json.Decoder(dict[str, Any])

#: A lane's due head: (priority, row id, in doubt, when its doubt window opened or None).
Head = tuple[int, str, bool, Any]


_MILLISECOND = timedelta(milliseconds=1)


def id_bounds(where: EventFilter) -> tuple[str | None, str | None]:
    """`where`'s time bounds as bounds of the event id, for the primary key to serve them:
    the smallest id of `since`'s millisecond, and the smallest of the millisecond after
    `until`'s (an id holds its event's `received_at` to the millisecond, `router.ids`). The
    exact `received_at` conditions stay beside them in the query."""
    since = ulid_floor(where.since) if where.since is not None else None
    until = ulid_floor(where.until + _MILLISECOND) if where.until is not None else None
    return since, until


def new_token() -> str:
    """A lease's fencing token: unique, so a lane released and claimed again never matches an
    old holder's token."""
    return secrets.token_hex(12)


class DueHeads:
    """The due head of each lane, picked from unfinished rows fed in creation order (in one go,
    or page after page), urgent first.

    Each row is `(id, category, status, not_before, next_attempt_at, lane, lease_until,
    doubt_since, ...)`; times only compare with `moment`, so they may be the store's text form
    (SQLite) or datetimes (PostgreSQL). A head is in doubt when an attempt may have sent it
    unrecorded: left `sending` by an attempt whose lease expired, or waiting with its doubt
    window open (a retry after a look or a send that could not settle it).
    """

    def __init__(self, moment: Any, limit: int) -> None:
        self._moment = moment
        self._limit = limit
        self._heads: dict[str, Head | None] = {}
        self._urgent = 0

    @property
    def enough(self) -> bool:
        """Enough heads of the first priority: later rows could not come first."""
        return self._urgent >= self._limit

    def feed(self, rows: Iterable[Sequence[Any]]) -> bool:
        """Take rows (the next in creation order) until there are enough; `enough` after."""
        heads, moment = self._heads, self._moment
        for (
            row_id,
            category,
            status,
            not_before,
            next_attempt,
            lane,
            lease_until,
            doubt_since,
            *_,
        ) in rows:
            if lane in heads:
                continue
            if status == "sending":  # in flight, or left in doubt by a dead dispatcher
                expired = lease_until is None or lease_until <= moment
                heads[lane] = (0, row_id, True, doubt_since) if expired else None
            elif status == "deferred" and not_before is not None and not_before > moment:
                continue  # quiet hours hold this row, not the rest of its lane
            elif status == "pending" and next_attempt is not None and next_attempt > moment:
                heads[lane] = None  # waiting for a retry: later rows of its lane wait too
            else:
                priority = 1 if category == "marketing" else 0
                heads[lane] = (priority, row_id, doubt_since is not None, doubt_since)
                self._urgent += priority == 0
            if self.enough:
                break
        return self.enough

    def due(self) -> list[Head]:
        """At most `limit` heads, urgent first, each priority in creation order."""
        due = [head for head in self._heads.values() if head is not None]
        return sorted(due, key=lambda head: head[0])[: self._limit]  # stable sort


def due_heads(scan: Iterable[Sequence[Any]], moment: Any, limit: int) -> list[Head]:
    """The due heads of one scan of unfinished rows in creation order (see `DueHeads`)."""
    picker = DueHeads(moment, limit)
    picker.feed(scan)
    return picker.due()


def plan_slots(
    slots: Sequence[Any],
    nexts: dict[str, Any],
    now: Any,
    horizon: Any,
) -> tuple[list[int], dict[str, Any]]:
    """Which rows may be claimed for their rate slots: the places of `slots` (a SlotRequest,
    or None for no limit) whose slot, booked in order after the ones before, starts by
    `horizon`; and the keys refused with when they free. `nexts`: each key's next free
    moment in the store (absent: free). Nothing is booked here (see `book_slots`)."""
    planned = dict(nexts)
    places: list[int] = []
    busy: dict[str, Any] = {}
    for place, slot in enumerate(slots):
        if slot is None:
            places.append(place)
            continue
        start = max(planned.get(slot.key, now), now)
        if start > horizon:
            busy[slot.key] = start
            continue
        planned[slot.key] = start + timedelta(seconds=slot.hold_seconds)
        places.append(place)
    return places, busy


def book_slots(
    slots: Sequence[Any], nexts: dict[str, Any], now: Any
) -> tuple[list[Any], dict[str, Any]]:
    """Book the slots of the rows claimed, in order: each one's start (None for no limit),
    and the keys' new next free moments to write back."""
    booked: dict[str, Any] = {}
    starts: list[Any] = []
    for slot in slots:
        if slot is None:
            starts.append(None)
            continue
        start = max(booked.get(slot.key, nexts.get(slot.key, now)), now)
        booked[slot.key] = start + timedelta(seconds=slot.hold_seconds)
        starts.append(start)
    return starts, booked


#: Rows `sent` one page of `awaiting_receipt` reads.
SENT_PAGE = 500
#: Above any outbox seq: the first page of `awaiting_receipt` starts below it.
SEQ_CEILING = 2**62


async def awaiting_receipt_rows(
    page: Callable[[int, int], Awaitable[Sequence[Sequence[Any]]]],
    when: Callable[[Any], Any],
    channels: Sequence[str],
    sent_before: datetime,
    created_after: datetime,
    limit: int,
) -> list[str]:
    """`Store.awaiting_receipt` over `page(before_seq, size)` (the `sent_rows_page` rows:
    seq, channel, provider id, created_at, last attempt's time), newest first, until a row
    created before the window or `limit` found."""
    found: list[str] = []
    before = SEQ_CEILING
    while len(found) < limit:
        rows = await page(before, SENT_PAGE)
        for seq, channel, provider_id, created, sent in rows:
            if when(created) <= created_after:
                return found
            sent_at = when(sent) if sent is not None else None
            if channel in channels and provider_id and sent_at and sent_at < sent_before:
                found.append(provider_id)
            before = seq
        if len(rows) < SENT_PAGE:
            break
    return found[:limit]


def receipt_target(current: str, reported: str) -> str | None:
    """The status a receipt moves a row to, or None: never back (a late `sent` after
    `delivered`, a duplicate, a second terminal status)."""
    target = RECEIPT_STATUS.get(reported)
    if target is None or current not in RANK or RANK[target] <= RANK[current]:
        return None
    return target


def after_receipt(
    current: str, error_code: str | None, reported: str, reported_code: str | None
) -> tuple[str, str | None]:
    """A row's status and error code once a receipt is applied: unchanged if it would move
    the row back, and a receipt without an error code keeps the one there."""
    target = receipt_target(current, reported)
    if target is None:
        return current, error_code
    return target, reported_code if reported_code is not None else error_code


def outbox_from_row(row: Sequence[Any], when: Callable[[Any], Any]) -> OutboxRow:
    """The `rows_by_id` columns -> the row; `when` reads a stored time (SQLite keeps text,
    PostgreSQL timestamptz) and keeps None."""
    return OutboxRow(
        id=row[0],
        event_id=row[1],
        conversation_key=row[2],
        contact_key=row[3],
        channel=row[4],
        to=row[5],
        category=row[6],
        kind=row[7],
        status=OutboxStatus(row[8]),
        not_before=when(row[9]),
        created_at=when(row[10]),
        attempts=row[11],
        last_error=row[12],
        provider_message_id=row[13],
        payload=payload_decoder.decode(row[14]),
        next_attempt_at=when(row[15]),
        error_code=row[16],
    )


def stored_raw(rows: list[Any]) -> StoredRaw | None:
    """The `(content_type, body, blob)` row of a raw body, if there is one."""
    if not rows:
        return None
    content_type, body, blob = rows[0]
    return StoredRaw(content_type=content_type, body=body, blob=blob)


def fail_pending(future: asyncio.Future[Any], error: Exception) -> None:
    """Answer a queued ingest that will not be committed (the store closed, a batch failed)."""
    if not future.done():
        future.set_exception(error)


def event_from_row(row: Sequence[Any]) -> Event:
    """`(body, status)` -> the event, with the status the row holds."""
    event = decode_event(row[0])
    status = EventStatus(row[1])
    return event if event.status is status else msgspec.structs.replace(event, status=status)


def reconcile_records(
    rows: Iterable[Sequence[Any]], when: Callable[[Any], datetime | None]
) -> dict[str, ReconcileRecord]:
    """`reconcile_state` rows (`source, last_success, recovered, last_error, last_error_at`)
    by source; `when` reads a stored time (SQLite's text, PostgreSQL's timestamptz)."""
    return {
        row[0]: ReconcileRecord(
            source=row[0],
            last_success=when(row[1]),
            recovered=row[2],
            last_error=row[3],
            last_error_at=when(row[4]),
        )
        for row in rows
    }


def thread_row(thread: EscalationThread) -> tuple[str, str]:
    """The `threads` row `(thread_key, conversation_key)` of a sent escalation post's Slack
    thread, as the dispatcher told it (`AttemptResult.thread`): agent replies and button
    presses there are routed with the conversation from now on."""
    return keys.slack_thread(thread.channel, thread.ts), thread.conversation_key


class LanePicker:
    """The lanes a claim takes, oldest first, each with its first unfinished events: fed
    pages of `(event_id, lane)` in arrival order (the lanes leased by others left out) until
    `full`, so a flood in one conversation, or a held lane's backlog, does not hide the
    conversations after it."""

    def __init__(self, max_lanes: int, max_events: int) -> None:
        self.lanes: dict[str, list[str]] = {}
        self._max_lanes = max_lanes
        self._max_events = max_events

    @property
    def full(self) -> bool:
        return len(self.lanes) >= self._max_lanes

    def take(self, free: Iterable[Sequence[str]]) -> None:
        lanes, max_lanes, max_events = self.lanes, self._max_lanes, self._max_events
        for event_id, lane in free:
            ids = lanes.get(lane)
            if ids is None:
                if len(lanes) >= max_lanes:
                    continue
                ids = lanes[lane] = []
            if len(ids) < max_events:
                ids.append(event_id)


def unreadable(event_id: str, now: datetime, exc: Exception) -> EventResult:
    """An event whose stored form cannot be decoded is `failed` at once, with its error on a
    run: retrying cannot help, and the events after it must go on."""
    run = RunRecord(
        event_id=event_id,
        at=now,
        rules_version=None,
        error=f"stored event cannot be read: {exc}"[:1000],
    )
    return EventResult(event_id=event_id, status=EventStatus.FAILED, run=run)


def claimed_lanes(
    leases: dict[str, Lease],
    lanes: dict[str, list[str]],
    found: dict[str, tuple[Event, int]],
    conversations: dict[str, Any],
) -> list[ClaimedLane]:
    """The lanes leased, each with its events (and their attempts so far) and conversation."""
    return [
        ClaimedLane(
            lease=leases[lane],
            events=[found[event_id][0] for event_id in ids],
            attempts={event_id: found[event_id][1] for event_id in ids},
            conversation=conversations.get(lane),
        )
        for lane, ids in lanes.items()
    ]


def claimed_rows(
    heads: Sequence[DueRow], tokens: Sequence[str], starts: Sequence[Any]
) -> list[ClaimedRow]:
    """The rows leased, each with its token and the start of its rate slot (None: no limit)."""
    return [
        ClaimedRow(
            row=head.row,
            token=token,
            in_doubt=head.in_doubt,
            doubt_since=head.doubt_since,
            start=start,
        )
        for head, token, start in zip(heads, tokens, starts, strict=True)
    ]


def unsent_finish(
    result: AttemptResult, at: Callable[[datetime], Any]
) -> tuple[str, dict[str, Any]]:
    """The named statement that finishes a row not sent (`finish_in_doubt`, `finish_retry`,
    `finish_dead`) and its parameters, times bound by `at`: an in-doubt row waits for its
    check until its next attempt (or now), a throttled retry uses no attempt, and every
    other outcome is dead or cancelled."""
    outcome = result.outcome
    params: dict[str, Any] = {
        "id": result.id,
        "token": result.token,
        "error": result.error,
        "error_code": result.error_code,
    }
    if outcome is AttemptOutcome.IN_DOUBT:
        return "finish_in_doubt", {**params, "until": at(result.next_attempt_at or result.at)}
    in_doubt = result.may_have_sent
    if outcome is AttemptOutcome.RETRY:
        step = 0 if result.throttled else 1
        next_at = at(result.next_attempt_at) if result.next_attempt_at is not None else None
        retry = {"next_attempt_at": next_at, "step": step, "in_doubt": in_doubt}
        return "finish_retry", {**params, **retry}
    status = "dead" if outcome is AttemptOutcome.DEAD else "cancelled"
    return "finish_dead", {**params, "status": status, "in_doubt": in_doubt}
