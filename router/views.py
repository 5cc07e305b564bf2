"""What the CLI and the admin API show of the routing side (SPEC §9-10), in one place.

`events show` and `GET /api/events/{id}` print the same object, as do `outbox list` and
`GET /api/outbox`, `dlq list` and `GET /api/dlq`, and `conversations show` and
`GET /api/conversations/{key}`: the JSON shapes are built here, from store records, and nowhere
else.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec

from router.events import Event, event_to_builtins
from router.store.base import Store
from router.store.records import (
    ContactRecord,
    ConversationRecord,
    OutboxFilter,
    OutboxRow,
    OutboxStatus,
    RunRecord,
)
from statemachines.consent import contact_key
from statemachines.conversation import Conversation, Message

#: Where outbox rows go (SPEC §8); `http` is a forward.
OUTBOX_CHANNELS = ("sms", "whatsapp", "email", "slack", "http")
_STATUSES = frozenset(status.value for status in OutboxStatus)
#: Rows read per store call when all rows of one event are wanted.
_PAGE = 500
_conversation_decoder = msgspec.json.Decoder(Conversation)


def outbox_to_builtins(row: OutboxRow) -> dict[str, Any]:
    """Outbox JSON (SPEC §9), plus `kind`, `payload`, `created_at`, `contact_key`, and
    `next_attempt_at` and `error_code` of the last failure."""
    return {
        "id": row.id,
        "event_id": row.event_id,
        "conversation_key": row.conversation_key,
        "channel": row.channel,
        "to": row.to,
        "category": row.category,
        "status": row.status.value,
        "attempts": row.attempts,
        "not_before": _iso(row.not_before),
        "last_error": row.last_error,
        "provider_message_id": row.provider_message_id,
        "kind": row.kind,
        #: A row waiting for a retry has this; one held by quiet hours has `not_before`.
        "next_attempt_at": _iso(row.next_attempt_at),
        "error_code": row.error_code,
        "created_at": _iso(row.created_at),
        "contact_key": row.contact_key,
        "payload": row.payload,
    }


def run_to_builtins(run: RunRecord) -> dict[str, Any]:
    """One routing run (SPEC §9): `at, rules_version, matched, actions, transition,
    outbox_ids, error`, plus `compliance` (`opt_out`, `opt_in`, `help` or null)."""
    return {
        "at": _iso(run.at),
        "rules_version": run.rules_version,
        "matched": list(run.matched),
        "actions": list(run.actions),
        "transition": run.transition,
        "outbox_ids": list(run.outbox_ids),
        "error": run.error,
        "compliance": run.compliance,
    }


async def event_outbox(store: Store, event_id: str) -> list[OutboxRow]:
    """Every outbox row one event made, oldest first."""
    rows: list[OutboxRow] = []
    before: str | None = None
    while True:
        page = await store.list_outbox(OutboxFilter(event_id=event_id, before=before, limit=_PAGE))
        rows += page
        if len(page) < _PAGE:
            return rows[::-1]
        before = page[-1].id


async def outbox_row(store: Store, outbox_id: str) -> OutboxRow | None:
    """One outbox row by id (its id starts with its event's), None if there is none."""
    rows = await event_outbox(store, outbox_id.partition(":")[0])
    return next((row for row in rows if row.id == outbox_id), None)


async def dead_letters(store: Store, where: OutboxFilter) -> list[dict[str, Any]]:
    """Dead rows matching `where` (its status is taken as `dead`), newest first, as
    `dlq list --json` and `GET /api/dlq` show them: outbox JSON plus `attempts_made`, every
    attempt (`at, outcome, error, error_code, duration_ms`), oldest first."""
    rows = await store.list_outbox(msgspec.structs.replace(where, status=OutboxStatus.DEAD))
    shown = []
    for row in rows:
        attempts = [msgspec.to_builtins(a) for a in await store.attempts(row.id)]
        shown.append({**outbox_to_builtins(row), "attempts_made": attempts})
    return shown


async def event_detail(store: Store, event: Event) -> dict[str, Any]:
    """One event as `events show` and `GET /api/events/{id}` give it: the event (SPEC §3 plus
    `status`), its routing `runs` (oldest first) and its `outbox` rows (oldest first)."""
    runs = await store.runs(event.id)
    rows = await event_outbox(store, event.id)
    return {
        **event_to_builtins(event),
        "runs": [run_to_builtins(run) for run in runs],
        "outbox": [outbox_to_builtins(row) for row in rows],
    }


def outbox_filter(
    params: Mapping[str, str], *, limit: int, before: str | None = None
) -> OutboxFilter:
    """An outbox query (`status`, `channel`, `to`) as a filter; ValueError names what is wrong.
    `limit` and `before` (the last id of the previous page) are checked by the caller."""
    status = params.get("status") or None
    if status is not None and status not in _STATUSES:
        raise ValueError(f"status must be one of {', '.join(s.value for s in OutboxStatus)}")
    channel = params.get("channel") or None
    if channel is not None and channel not in OUTBOX_CHANNELS:
        raise ValueError(f"channel must be one of {', '.join(OUTBOX_CHANNELS)}")
    to = outbox_recipient(params["to"]) if params.get("to") else None
    if to is not None and (len(to) > 512 or not to.isprintable()):
        raise ValueError("to must be printable text of at most 512 characters")
    return OutboxFilter(
        status=OutboxStatus(status) if status else None,
        channel=channel,
        to=to,
        before=before,
        limit=limit,
    )


def outbox_recipient(value: str) -> str:
    """A recipient to look rows up by: phone numbers in any form with the country code
    (`+1 555 123 0001`, `whatsapp:+15551230001`) as stored, in E.164; a `+` that a query string
    decoded as a space (`?to=+1555...`) counts as `+`. Anything else is taken as given."""
    bare = value.removeprefix("whatsapp:").removeprefix("sms:")
    if bare.startswith(" ") and bare.strip()[:1].isdigit():
        bare = "+" + bare.strip()
    bare = bare.strip()
    if PHONE_PATTERN.fullmatch(bare):
        return contact_key(bare)
    return value.strip()


#: A phone number as people write it: + and country code, digits, spaces and `()-./`.
PHONE_PATTERN = re.compile(r"\+[0-9 ()./-]+")


def decode_conversation(record: ConversationRecord) -> Conversation | None:
    """The machine's value of a stored conversation; None if its body cannot be read."""
    try:
        return _conversation_decoder.decode(record.body)
    except msgspec.DecodeError:  # ValidationError is one: a body of another shape
        return None


def conversation_to_builtins(record: ConversationRecord) -> dict[str, Any]:
    """Conversation JSON (SPEC §9): `key, channel, contact, state, history` (oldest first; each
    `{direction: in|out, text, at}`, with `author` and `event_id` when known), plus
    `attributes`, `tags`, `escalation`, `last_activity_at` and `updated_at`."""
    value = decode_conversation(record)
    shown: dict[str, Any] = {
        "key": record.key,
        "channel": record.channel,
        "contact": record.contact,
        "state": record.state,
        "history": [],
        "attributes": {},
        "tags": [],
        "escalation": None,
        "last_activity_at": None,
        "updated_at": _iso(record.updated_at),
    }
    if value is None:
        return {**shown, "error": "the stored conversation body cannot be read"}
    return {
        **shown,
        "history": [message_to_builtins(message) for message in value.history],
        "attributes": dict(value.attributes),
        "tags": list(value.tags),
        "escalation": msgspec.to_builtins(value.escalation) if value.escalation else None,
        "last_activity_at": _iso(value.last_activity_at),
    }


def message_to_builtins(message: Message) -> dict[str, Any]:
    shown: dict[str, Any] = {
        "direction": message.direction.value,
        "text": message.text,
        "at": _iso(message.at),
    }
    if message.author is not None:
        shown["author"] = message.author
    if message.event_id is not None:
        shown["event_id"] = message.event_id
    return shown


def contact_to_builtins(record: ContactRecord, *, recorded: bool) -> dict[str, Any]:
    """Contact JSON (SPEC §9): `address, consent, opted_out_at, timezone, ledger` (oldest
    first; each `at, event_id, channel, change, reason`), plus `recorded`: false for a contact
    the store has never seen change consent (subscribed by default)."""
    return {
        "address": record.address,
        "consent": record.consent,
        "opted_out_at": _iso(record.opted_out_at),
        "timezone": record.timezone,
        "ledger": [
            {
                "at": _iso(entry.at),
                "event_id": entry.event_id,
                "channel": entry.channel,
                "change": entry.change,
                "reason": entry.reason,
            }
            for entry in record.ledger
        ],
        "recorded": recorded,
    }


def _iso(value: Any) -> Any:
    """RFC 3339 text of a datetime, as msgspec writes it everywhere else; None stays None."""
    return msgspec.to_builtins(value) if value is not None else None
