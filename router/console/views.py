"""What the console's pages show, read from the store into plain values for the templates.

Contacts are masked as in the logs; nothing here writes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from router.logs import mask_address
from router.store.base import Store
from router.store.records import ContactRecord, ConversationRecord, OutboxRow
from router.views import decode_conversation, event_outbox
from statemachines.consent import contact_key
from statemachines.conversation import Conversation, Direction, Message
from statemachines.definitions.conversation import ESCALATED, WITH_PEOPLE

_ULID = re.compile("[0-9A-HJKMNP-TV-Z]{26}")
#: Conversations read per state for the escalations page.
QUEUE_LIMIT = 500
#: Outbox kinds that carry a message to the customer (what the history's outbound lines are).
_TO_CUSTOMER = frozenset({"reply", "relay_to_customer", "send"})


@dataclass(frozen=True)
class Moment:
    """A time as a page shows it: `3 min ago`, with the exact UTC time beside."""

    iso: str
    exact: str
    ago: str


def moment(at: datetime | None, now: datetime) -> Moment | None:
    if at is None:
        return None
    return Moment(
        iso=at.isoformat().replace("+00:00", "Z"),
        exact=at.strftime("%Y-%m-%d %H:%M:%S UTC"),
        ago=ago(now - at),
    )


def ago(delta: Any) -> str:
    """`just now`, `3 min ago`, `2 h ago`, `5 days ago`; a time ahead reads `in 3 min`."""
    seconds = int(delta.total_seconds())
    ahead, seconds = seconds < 0, abs(seconds)
    if seconds < 60:
        return "just now"
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = seconds // size
            text = f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''}"
            return f"in {text}" if ahead else f"{text} ago"
    return "just now"


@dataclass(frozen=True)
class QueueItem:
    """One line of the escalations page."""

    key: str
    #: What its link names: the event that opened the escalation (the key holds the
    #: customer's number, which the page must not show), else the key.
    ref: str
    contact: str | None
    channel: str | None
    state: str
    reason: str | None
    rule_id: str | None
    agent: str | None
    since: Moment | None
    sort_at: datetime


async def escalations(store: Store, now: datetime) -> list[QueueItem]:
    """Open escalations (escalated or with an agent): unclaimed first, then oldest first."""
    items: list[QueueItem] = []
    for state in WITH_PEOPLE:
        for record in await store.list_conversations(state, QUEUE_LIMIT):
            items.append(_queue_item(record, decode_conversation(record), now))
    items.sort(key=lambda item: (item.state != ESCALATED, item.sort_at, item.key))
    return items


def _queue_item(record: ConversationRecord, value: Conversation | None, now: datetime) -> QueueItem:
    escalation = value.escalation if value is not None else None
    at = escalation.at if escalation is not None else record.updated_at
    return QueueItem(
        key=record.key,
        ref=escalation.event_id if escalation and escalation.event_id else record.key,
        contact=mask_address(record.contact),
        channel=record.channel,
        state=record.state,
        reason=escalation.reason if escalation else None,
        rule_id=escalation.rule_id if escalation else None,
        agent=escalation.agent if escalation else None,
        since=moment(at, now),
        sort_at=at,
    )


@dataclass(frozen=True)
class Line:
    """One message of a conversation's history; `status` for an outbound one when its outbox
    row is found."""

    outbound: bool
    text: str
    author: str | None
    at: Moment | None
    status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class ConversationPage:
    key: str
    state: str
    channel: str | None
    contact: str | None
    readable: bool
    lines: list[Line] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    attributes: list[tuple[str, Any]] = field(default_factory=list)
    escalation: dict[str, Any] | None = None
    consent: str = "subscribed"
    ledger: list[dict[str, Any]] = field(default_factory=list)


async def conversation_page(
    store: Store, record: ConversationRecord, now: datetime
) -> ConversationPage:
    """A conversation as its page shows it: history with delivery statuses, consent, ledger."""
    value = decode_conversation(record)
    contact = await _contact(store, record.contact)
    page = ConversationPage(
        key=masked_key(record),
        state=record.state,
        channel=record.channel,
        contact=mask_address(record.contact),
        readable=value is not None,
        consent=contact.consent if contact else "subscribed",
        ledger=[
            {
                "at": moment(entry.at, now),
                "change": entry.change,
                "reason": entry.reason,
                "channel": entry.channel,
            }
            for entry in (contact.ledger if contact else [])
        ],
    )
    if value is None:
        return page
    escalation = value.escalation
    return replace(
        page,
        lines=_lines(value.history, await _customer_rows(store, value), now),
        tags=list(value.tags),
        attributes=sorted(value.attributes.items()),
        escalation=None
        if escalation is None
        else {
            "reason": escalation.reason,
            "rule_id": escalation.rule_id,
            "agent": escalation.agent,
            "at": moment(escalation.at, now),
        },
    )


def masked_key(record: ConversationRecord) -> str:
    """The key with the customer's address masked (`sms:+1555*****01:+15559870000`)."""
    if not record.contact:
        return record.key
    return record.key.replace(record.contact, mask_address(record.contact) or "", 1)


async def find_conversation(store: Store, ref: str) -> ConversationRecord | None:
    """A conversation by its key, or by the id of one of its events (what links carry)."""
    if _ULID.fullmatch(ref):
        event = await store.get_event(ref)
        if event is None or event.conversation_key is None:
            return None
        ref = event.conversation_key
    return await store.get_conversation(ref)


async def _contact(store: Store, address: str | None) -> ContactRecord | None:
    if not address:
        return None
    return await store.get_contact(contact_key(address))


async def _customer_rows(store: Store, value: Conversation) -> dict[str, list[OutboxRow]]:
    """The rows to the customer made by the events the history names, by event id."""
    rows: dict[str, list[OutboxRow]] = {}
    for event_id in dict.fromkeys(m.event_id for m in value.history if m.event_id):
        rows[event_id] = [
            row
            for row in await event_outbox(store, event_id)
            if row.kind in _TO_CUSTOMER and row.conversation_key == value.key
        ]
    return rows


def _lines(
    history: tuple[Message, ...], rows: dict[str, list[OutboxRow]], now: datetime
) -> list[Line]:
    """The history, each outbound message beside the row that carried it: a row of its own
    event (an agent's reply), or of the inbound message it answered (the bot's reply)."""
    lines: list[Line] = []
    answered: str | None = None
    used: set[str] = set()
    for message in history:
        outbound = message.direction == Direction.OUTBOUND
        row = None
        if not outbound:
            answered = message.event_id
        else:
            source = message.event_id or answered
            row = next(
                (
                    r
                    for r in rows.get(source or "", [])
                    if r.id not in used and r.payload.get("text") == message.text
                ),
                None,
            )
            if row is not None:
                used.add(row.id)
        lines.append(
            Line(
                outbound=outbound,
                text=message.text,
                author=message.author,
                at=moment(message.at, now),
                status=row.status.value if row else None,
                error=row.last_error if row else None,
            )
        )
    return lines
