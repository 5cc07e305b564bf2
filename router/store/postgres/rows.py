"""Rows to PostgreSQL: the parameters of each write, its texts without NUL."""

from __future__ import annotations

from typing import Any

import msgspec

from router.errors import UnstorableEvent
from router.events import encode_event
from router.store.base import IngestItem


def db_text(value: str) -> str:
    """A text column's value: PostgreSQL text cannot hold NUL, SQLite's can. The exact value
    stays in the JSON body; the column (searched, deduplicated) gets U+FFFD instead."""
    return value.replace("\x00", "\ufffd") if "\x00" in value else value


def db_opt_text(value: str | None) -> str | None:
    return None if value is None else db_text(value)


def event_params(item: IngestItem) -> tuple[Any, ...]:
    """The events row; UnstorableEvent if a text is not valid Unicode (a lone surrogate)."""
    event = item.event
    try:
        body = encode_event(event)  # every text column below is a field of this event
        if item.nonce is not None:
            item.nonce.encode()
    except (UnicodeEncodeError, TypeError, msgspec.EncodeError) as exc:
        raise UnstorableEvent(f"write failed: event cannot be stored: {exc}") from exc
    return (
        db_text(event.id),
        db_text(event.source),
        db_text(event.type),
        db_text(event.provider_type),
        db_text(event.dedupe_key),
        db_opt_text(event.channel),
        db_opt_text(event.contact.address if event.contact else None),
        db_opt_text(event.conversation_key),
        event.status.value,
        event.received_at,
        event.occurred_at,
        db_text(event.correlation_id),
        body,
        db_text(item.content_type),
        None if item.raw_blob else item.raw_body,
        item.raw_blob,
    )
