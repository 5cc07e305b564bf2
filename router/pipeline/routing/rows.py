"""Outbox rows as one event makes them: built, then gated by consent and quiet hours (SPEC §7),
and rows not stored yet changed as the store would change the stored ones."""

from __future__ import annotations

from typing import Any, NamedTuple

import msgspec

from router import keys
from router.events import Channel, Event
from router.pipeline.routing.work import Step
from router.store.records import HELD_UNTIL, ContactRecord, HoldChange, OutboxRow, OutboxStatus
from statemachines import consent, quiet_hours
from statemachines.consent import ConsentState, Gate
from statemachines.conversation import Conversation

#: The outbox statuses of a row not sent yet, that a cancel or a hold still reaches.
_WAITING = (OutboxStatus.PENDING, OutboxStatus.DEFERRED)


class Destination(NamedTuple):
    """Where a row goes, and the category it is sent under (what consent and quiet hours read)."""

    channel: str
    to: str
    category: str


def new_row(
    step: Step,
    row_id: str,
    kind: str,
    to: Destination,
    payload: dict[str, Any],
    *,
    contact_key: str | None = None,
    conversation_key: str | None = None,
) -> OutboxRow:
    """A pending row of the event; in the event's conversation unless another is named."""
    return OutboxRow(
        id=row_id,
        event_id=step.event.id,
        conversation_key=conversation_key or step.event.conversation_key,
        channel=to.channel,
        to=to.to,
        category=to.category,
        status=OutboxStatus.PENDING,
        kind=kind,
        payload=payload,
        created_at=step.now,
        contact_key=contact_key,
    )


def slack_row(
    step: Step, row_id: str, kind: str, slack_channel: str, payload: dict[str, Any]
) -> None:
    """A post to people in Slack, in the conversation it is about; never gated."""
    to = Destination("slack", slack_channel, "conversational")
    row = new_row(step, row_id, kind, to, payload, conversation_key=step.conversation_key)
    step.work.rows.append(row)


async def customer_row(
    step: Step,
    row_id: str,
    kind: str,
    to: Destination,
    payload: dict[str, Any],
    *,
    notice: bool = False,
) -> None:
    """A row to a person: the consent gate, then quiet hours. A `notice` (a consent
    confirmation, a HELP answer) passes both."""
    contact_key = consent.contact_key(to.to)
    row = new_row(step, row_id, kind, to, payload, contact_key=contact_key)
    contact = await step.book.get(contact_key)
    if not notice:
        row = _gated(step, row, contact_key, contact)
    step.work.rows.append(row)


def _gated(step: Step, row: OutboxRow, contact_key: str, contact: ContactRecord) -> OutboxRow:
    """The row as the contact's consent and quiet hours leave it."""
    gate = consent.gate(ConsentState(contact.consent), row.category)
    if gate is Gate.CANCEL:
        return cancelled(row, "contact opted out")
    if gate is Gate.HOLD:
        return held_or_released(row, HoldChange.for_review(contact_key, step.event.id))
    if row.channel not in ("sms", "whatsapp"):
        return row
    hold_until = quiet_hours.not_before(
        step.now, row.category, contact.timezone, contact_key, step.config.compliance
    )
    if hold_until is None:
        return row
    return msgspec.structs.replace(row, status=OutboxStatus.DEFERRED, not_before=hold_until)


def cancel_waiting(rows: list[OutboxRow], contact_key: str, reason: str) -> list[OutboxRow]:
    """Rows not stored yet, as the store's cancel of a contact's waiting rows leaves them."""
    return [
        cancelled(row, reason) if row.contact_key == contact_key and row.status in _WAITING else row
        for row in rows
    ]


def hold_or_release(rows: list[OutboxRow], change: HoldChange) -> list[OutboxRow]:
    """Rows not stored yet, as the store's hold or release would leave them."""
    return [held_or_released(row, change) for row in rows]


def held_or_released(row: OutboxRow, change: HoldChange) -> OutboxRow:
    """A row not stored yet, as the store's hold or release would leave it."""
    if row.contact_key != change.contact_key:
        return row
    if change.hold:
        if row.category != "marketing" or row.status not in _WAITING:
            return row
        return msgspec.structs.replace(
            row, status=OutboxStatus.DEFERRED, not_before=HELD_UNTIL, last_error=change.reason
        )
    if row.status is not OutboxStatus.DEFERRED or row.not_before != HELD_UNTIL:
        return row
    status = OutboxStatus.PENDING if change.not_before is None else OutboxStatus.DEFERRED
    return msgspec.structs.replace(
        row, status=status, not_before=change.not_before, last_error=None
    )


def cancelled(row: OutboxRow, reason: str) -> OutboxRow:
    return msgspec.structs.replace(row, status=OutboxStatus.CANCELLED, last_error=reason)


def sender(event: Event) -> dict[str, str]:
    """`from`: the number or address the customer wrote to, so the answer comes from it."""
    ours = event.data.get("to")
    return {"from": ours} if isinstance(ours, str) and ours else {}


def sender_of(current: Conversation | None) -> dict[str, str]:
    """`from` for an agent's reply: the number of the conversation key (`sms:+1...:+1...`)."""
    if current is None or current.channel not in (Channel.SMS, Channel.WHATSAPP):
        return {}
    ours = keys.our_number(current.key)
    return {"from": ours} if ours else {}
