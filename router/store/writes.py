"""The store's many-row writes planned once: a lane commit, a replay, the parts they share, a
retention batch.

A plan is a generator of `Step`s, each a named query and the parameters of its runs (`:name`
parameters, values bound by the backend's `Binder`), in the order they must run. The backend
executes each step and sends back what it returned: every row its runs returned, in order, if
the step `returns` (a read, or a write `RETURNING` ids), else nothing. The decisions between
steps (which rows were made, which receipts wait for their row, what an opt-out cancels) are
made here, once; how a step runs is the backend's: SQLite one statement after another on its
writer connection, PostgreSQL one round trip per step (an `unnest` statement, or executemany).
The backend keeps its transaction and its fencing (which lanes may commit: `fresh_lanes`).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from datetime import datetime
from typing import Any, NamedTuple, Protocol, TypeVar

import msgspec

from router.ids import ulid_floor
from router.store.records import (
    HELD_UNTIL,
    AttemptOutcome,
    AttemptResult,
    ContactRecord,
    ConversationRecord,
    EventResult,
    HoldChange,
    LaneCommit,
    LedgerRecord,
    OutboxRow,
    Pruned,
    Receipt,
)
from router.store.shared import (
    OPTED_OUT_AT_CARRIER,
    after_receipt,
    receipt_target,
    run_encoder,
    thread_row,
    unsent_finish,
)

T = TypeVar("T")


class Step(NamedTuple):
    """One named query, run once per parameter row (PostgreSQL may send them as one)."""

    name: str
    rows: list[dict[str, Any]]
    #: Whether the rows its runs return are wanted (sent back into the plan).
    returns: bool = False


#: A plan: yields steps, is sent what each returned (`[]` unless it `returns`), returns `T`.
Plan = Generator[Step, list[Any], T]


class Binder(Protocol):
    """How a backend binds a value (CommonStore's `_at`, `_text`...)."""

    @staticmethod
    def _at(moment: datetime) -> Any: ...

    def _opt_at(self, moment: datetime | None) -> Any: ...

    @staticmethod
    def _text(value: str) -> str: ...

    def _opt_text(self, value: str | None) -> str | None: ...

    @staticmethod
    def _texts(values: list[str]) -> Any: ...


def run_plan(plan: Plan[T], execute: Any) -> T:
    """Drive `plan` with `execute(step) -> rows` (a synchronous backend)."""
    try:
        step = next(plan)
        while True:
            step = plan.send(execute(step) if step.rows else [])
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_plan_async(plan: Plan[T], execute: Any) -> T:
    """Drive `plan` with `await execute(step) -> rows` (an asynchronous backend)."""
    try:
        step = next(plan)
        while True:
            step = plan.send(await execute(step) if step.rows else [])
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def fresh_lanes(lanes: Sequence[LaneCommit], held: dict[str, Any]) -> list[bool]:
    """Which lanes may commit: their lease still carries their token (`held`: each lane's
    token now). A lane whose lease was lost is refused whole, and one token commits once."""
    applied: list[bool] = []
    for lane in lanes:
        fresh = held.get(lane.lease.lane) == lane.lease.token  # else fenced: taken over
        applied.append(fresh)
        if fresh:
            held[lane.lease.lane] = None  # released by this commit
    return applied


def commit_lanes(
    b: Binder, lanes: Sequence[LaneCommit], now: datetime
) -> Plan[tuple[list[str], list[str]]]:
    """Everything the lanes' processing writes, and their leases released (or held until a
    retry); returns the rows an opt-out cancelled and the outbox rows made.

    Each kind of write is one step for all lanes where lanes cannot see each other's writes
    (each lane is a conversation of its own): only an opt-out's cancel, a consent review's
    hold and the rows made keep the lanes' order, lane after lane.
    """
    yield from record_results(b, [r for lane in lanes for r in lane.results])
    yield Step("failed_attempt", [{"id": ln.failed_attempt} for ln in lanes if ln.failed_attempt])
    conversations = {  # the last write of a key wins
        ln.conversation.key: conversation_params(b, ln.conversation)
        for ln in lanes
        if ln.conversation is not None
    }
    yield Step("upsert_conversation", list(conversations.values()))
    cancelled: list[str] = []
    new_ids: list[str] = []
    if any(lane.cancel_contacts or lane.holds for lane in lanes):  # rows made before only
        for lane in lanes:
            for contact_key, reason in lane.cancel_contacts:
                cancelled += yield from cancel_waiting(b, contact_key, reason)
            for change in lane.holds:
                yield hold_or_release(b, change)
            new_ids += yield from insert_rows(b, lane.outbox)
    else:
        new_ids = yield from insert_rows(b, [row for ln in lanes for row in ln.outbox])
    yield from save_contacts(b, [pair for ln in lanes for pair in ln.contacts], now)
    yield from apply_receipts(b, [receipt for ln in lanes for receipt in ln.receipts])
    armed = {  # as if one after the other: the last setting of a timer wins
        (b._text(t.conversation_key), t.timer): b._at(t.due_at)
        for lane in lanes
        for t in lane.timers_set
    }
    yield Step(
        "set_timer",
        [{"key": key, "timer": timer, "due_at": at} for (key, timer), at in armed.items()],
    )
    yield Step(
        "clear_timer",
        [
            {"key": b._text(key), "timer": name, "due_at": b._opt_at(due_at)}
            for lane in lanes
            for key, name, due_at in lane.timers_cleared
        ],
    )
    yield Step(
        "hold_lease_until",
        [
            {"lane": ln.lease.lane, "until": b._at(ln.retry_at)}
            for ln in lanes
            if ln.retry_at is not None
        ],
    )
    yield Step(
        "release_lease",
        [{"lane": ln.lease.lane, "token": ln.lease.token} for ln in lanes if ln.retry_at is None],
    )
    return cancelled, new_ids


def commit_replay(b: Binder, results: list[EventResult], rows: list[OutboxRow]) -> Plan[list[str]]:
    """A replay's results and rows; returns the ids of the rows made."""
    yield from record_results(b, results)
    return (yield from insert_rows(b, rows))


def record_results(b: Binder, results: Sequence[EventResult]) -> Plan[None]:
    """Each event's new status and its run."""
    yield Step("finish_event", [{"id": r.event_id, "status": r.status.value} for r in results])
    yield Step(
        "insert_run",
        [
            {"event_id": r.event_id, "at": b._at(r.run.at), "body": run_encoder.encode(r.run)}
            for r in results
        ],
    )


def insert_rows(b: Binder, rows: Sequence[OutboxRow]) -> Plan[list[str]]:
    """Outbox rows inserted in order; returns the ids of those that were not there yet."""
    params = [outbox_params(b, row) for row in rows]
    made = {found[0] for found in (yield Step("insert_outbox", params, returns=True))}
    new_ids = []
    for row, values in zip(rows, params, strict=True):
        if values["id"] in made:
            made.discard(values["id"])  # the same id twice: only the first was made
            new_ids.append(row.id)
    return new_ids


def cancel_waiting(b: Binder, contact_key: str, reason: str) -> Plan[list[str]]:
    """Cancel a contact's pending and deferred rows; returns their ids."""
    params = {"contact_key": b._text(contact_key), "reason": b._text(reason)}
    return [found[0] for found in (yield Step("cancel_waiting", [params], returns=True))]


def hold_or_release(b: Binder, change: HoldChange) -> Step:
    """A consent review's hold on the contact's waiting marketing, or its release."""
    params = {"contact_key": b._text(change.contact_key), "held": b._at(HELD_UNTIL)}
    if change.hold:
        return Step("hold_marketing", [{**params, "reason": b._text(change.reason or "")}], True)
    return Step("release_held", [{**params, "not_before": b._opt_at(change.not_before)}], True)


def save_contacts(
    b: Binder, contacts: Sequence[tuple[ContactRecord, LedgerRecord | None]], now: datetime
) -> Plan[None]:
    """Contacts' consent, and the ledger entries of their changes."""
    updated_at = b._at(now)
    yield Step(
        "upsert_contact",
        [
            {
                "key": b._text(contact.address),
                "consent": contact.consent,
                "opted_out_at": b._opt_at(contact.opted_out_at),
                "timezone": contact.timezone,
                "updated_at": updated_at,
            }
            for contact, _ in contacts
        ],
    )
    yield Step(
        "insert_ledger",
        [
            {
                "contact_key": b._text(contact.address),
                "at": b._at(entry.at),
                "event_id": entry.event_id,
                "channel": entry.channel,
                "change": entry.change,
                "reason": b._text(entry.reason),
            }
            for contact, entry in contacts
            if entry is not None
        ],
    )


def apply_receipts(b: Binder, receipts: Sequence[Receipt]) -> Plan[None]:
    """Delivery receipts: each moves its sent row on, never back; one whose row is not
    known yet (the callback beat the dispatcher's commit) is kept until the row is sent."""
    if not receipts:
        return
    ids = [b._text(receipt.provider_message_id) for receipt in receipts]
    found: dict[str, list[Any]] = {}
    for pid, row_id, status in (
        yield Step("row_by_provider_id", [{"provider_message_id": pid} for pid in ids], True)
    ):
        found.setdefault(pid, [row_id, status])
    kept: list[dict[str, Any]] = []
    moved: list[dict[str, Any]] = []
    for receipt, pid in zip(receipts, ids, strict=True):
        row = found.get(pid)
        if row is None:
            kept.append(
                {
                    "provider_message_id": pid,
                    "status": b._text(receipt.status),
                    "error_code": receipt.error_code,
                    "at": b._at(receipt.at),
                }
            )
            continue
        target = receipt_target(row[1], receipt.status)
        if target is not None:
            row[1] = target  # the next receipt of the row sees it moved
            moved.append({"id": row[0], "status": target, "error_code": receipt.error_code})
    yield Step("insert_receipt", kept)
    yield Step("set_delivery", moved)


def conversation_params(b: Binder, record: ConversationRecord) -> dict[str, Any]:
    return {
        "key": b._text(record.key),
        "state": record.state,
        "channel": b._opt_text(record.channel),
        "contact": b._opt_text(record.contact),
        "body": record.body,
        "updated_at": b._at(record.updated_at),
    }


def outbox_params(b: Binder, row: OutboxRow) -> dict[str, Any]:
    return {
        "id": b._text(row.id),
        "event_id": row.event_id,
        "conversation_key": b._opt_text(row.conversation_key),
        "contact_key": b._opt_text(row.contact_key),
        "channel": row.channel,
        "recipient": b._text(row.to),
        "category": row.category,
        "kind": row.kind,
        "status": row.status.value,
        "not_before": b._opt_at(row.not_before),
        "created_at": b._at(row.created_at),
        "attempts": row.attempts,
        "last_error": b._opt_text(row.last_error),
        "provider_message_id": b._opt_text(row.provider_message_id),
        "payload": msgspec.json.encode(row.payload),
        "lane": b._text(row.lane),
        "priority": row.priority,
    }


def prune(b: Binder, before: datetime, limit: int) -> Plan[Pruned]:
    """Retention: a batch of at most `limit` events received before `before` whose work is
    over, with their runs and finished outbox rows (and those rows' attempts); as many old
    quarantined requests; every receipt kept since before `before` (no row claimed it).
    Returns what each removed: the deletes counted return their keys."""
    bound = {"before_id": ulid_floor(before), "before": b._at(before), "limit": limit}
    found = [row[0] for row in (yield Step("prunable_events", [bound], returns=True))]
    ids = [{"ids": b._texts(found)}] if found else []  # no batch: nothing of it to delete
    yield Step("prune_attempts", ids)
    outbox_rows = yield Step("prune_outbox", ids, returns=True)
    gone = [row[0] for row in (yield Step("prune_events", ids, returns=True))]
    yield Step("prune_runs", [{"ids": b._texts(gone)}] if gone else [])
    quarantined = yield Step("prune_quarantine", [bound], returns=True)
    receipts = yield Step("prune_receipts", [{"before": bound["before"]}], returns=True)
    return Pruned(
        events=len(gone),
        outbox_rows=len(outbox_rows),
        quarantined=len(quarantined),
        receipts=len(receipts),
    )


def finish_attempts(b: Binder, results: Sequence[AttemptResult]) -> Plan[list[bool]]:
    """Attempts' outcomes on their rows; returns whether each was applied. Each finishing
    statement carries its row's lease token: a row another attempt took over meanwhile is
    not changed (fenced), and one token commits once. Plain sends finish together; a row not
    sent, or sent to a contact the carrier says opted out (21610), one by one."""
    firsts: dict[str, AttemptResult] = {}
    for result in results:
        firsts.setdefault(result.id, result)
    unique = list(firsts.values())
    sent: list[AttemptResult] = []
    others: list[AttemptResult] = []
    for result in unique:
        plain = result.outcome is AttemptOutcome.SENT and result.opted_out is None
        (sent if plain else others).append(result)
    finished: set[str] = set()
    for result in others:
        if result.outcome is AttemptOutcome.SENT:
            done = bool((yield from finish_sent(b, [result])))
        else:  # each returns the id only if the token still held it
            name, params = unsent_finish(result, b._at)
            done = bool((yield Step(name, [params], returns=True)))
        if not done:
            continue
        finished.add(result.id)
        if result.opted_out is not None:  # a carrier-held STOP (Twilio 21610)
            yield from save_contacts(b, [(result.opted_out, result.ledger)], result.at)
            yield from cancel_waiting(b, result.opted_out.address, OPTED_OUT_AT_CARRIER)
    finished |= yield from finish_sent(b, sent)
    yield Step(
        "insert_attempts",
        [
            {
                "outbox_id": r.id,
                "at": b._at(r.at),
                "outcome": r.outcome.value,
                "error": r.error,
                "error_code": r.error_code,
                "duration_ms": r.duration_ms,
            }
            for r in unique
            if r.id in finished
        ],
    )
    return [result.id in finished and firsts[result.id] is result for result in results]


def finish_sent(b: Binder, results: Sequence[AttemptResult]) -> Plan[set[str]]:
    """Sent rows, moved on (never back) by the receipts that beat the commit and by the
    status the send reported; an escalation post's Slack thread joins its conversation.
    Returns the ids finished (the others were fenced)."""
    if not results:
        return set()
    provider_ids = [
        b._text(r.provider_message_id) if r.provider_message_id else None for r in results
    ]
    known = [pid for pid in provider_ids if pid]
    waiting: dict[str | None, list[tuple[str, str | None]]] = {}
    if known:
        found = yield Step("receipts_of", [{"ids": b._texts(known)}], returns=True)
        for pid, status, error_code in found:
            waiting.setdefault(pid, []).append((status, error_code))
    rows = []
    for result, pid in zip(results, provider_ids, strict=True):
        status, error_code = "sent", None
        for reported, code in waiting.get(pid, ()):
            status, error_code = after_receipt(status, error_code, reported, code)
        if result.provider_status:
            status, error_code = after_receipt(status, error_code, result.provider_status, None)
        rows.append(
            {
                "id": result.id,
                "provider_message_id": pid,
                "status": status,
                "error_code": error_code,
                "token": result.token,
            }
        )
    finished = {found[0] for found in (yield Step("finish_sent", rows, returns=True))}
    used = [
        pid
        for result, pid in zip(results, provider_ids, strict=True)
        if pid is not None and pid in waiting and result.id in finished
    ]
    if used:
        yield Step("drop_receipts", [{"ids": b._texts(used)}])
    yield Step(
        "map_thread",
        [
            {"thread_key": b._text(key), "conversation_key": b._text(conversation)}
            for r in results
            if r.thread is not None and r.id in finished
            for key, conversation in [thread_row(r.thread)]
        ],
    )
    return finished
