"""The shared event model (SPEC §3): every adapter produces these, everything else consumes them."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

import msgspec


class EventStatus(StrEnum):
    """Where an event is in its life; only `received` and `ignored` are set at ingest."""

    RECEIVED = "received"
    PROCESSING = "processing"
    PROCESSED = "processed"
    IGNORED = "ignored"
    FAILED = "failed"


class Via(StrEnum):
    """How an event reached Switchboard."""

    WEBHOOK = "webhook"
    #: Fetched from the provider's API by a reconciliation pass (a webhook that never came).
    RECONCILE = "reconcile"


class Channel(StrEnum):
    """Conversational channels; non-conversational events (Stripe, custom) have none."""

    SMS = "sms"
    WHATSAPP = "whatsapp"
    SLACK = "slack"
    EMAIL = "email"


class EventType(StrEnum):
    """Normalised types; Stripe and custom sources keep the provider's own type instead."""

    MESSAGE_RECEIVED = "message.received"
    MESSAGE_STATUS = "message.status"
    AGENT_REPLY = "agent.reply"
    AGENT_ACTION = "agent.action"
    EMAIL_RECEIVED = "email.received"


class Contact(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The person on the other end."""

    #: E.164 phone number, email address or Slack user id.
    address: str
    #: Display name when the provider gives one.
    name: str | None = None


class Attachment(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A reference to a payload part; the bytes live once in the blob store, or at the provider."""

    #: sha256 hex of the content when Switchboard stored it (email attachments).
    blob: str | None = None
    #: Where the provider keeps it (Twilio MediaUrl), when Switchboard did not fetch it.
    url: str | None = None
    filename: str | None = None
    content_type: str | None = None
    size: int | None = None


class Event(msgspec.Struct, frozen=True, kw_only=True):
    """One inbound happening, normalised. Immutable: copy with `msgspec.structs.replace`."""

    #: Sortable unique id given at ingest (ULID).
    id: str
    #: `twilio`, `slack`, `stripe`, `mailgun`, `sendgrid` or a configured custom source name.
    source: str
    #: Normalised type (`message.received`, ...) or, for Stripe and custom sources, the provider's.
    type: str
    #: The provider's own type string, always kept.
    provider_type: str
    #: `source:` + provider id; unique in the store, so a redelivery changes nothing.
    dedupe_key: str
    channel: Channel | None = None
    contact: Contact | None = None
    #: Ordering key of the conversation, e.g. `sms:+15551230001:+15559870000`.
    conversation_key: str | None = None
    text: str | None = None
    attachments: tuple[Attachment, ...] = ()
    #: Normalised provider fields (status, error_code, thread_ts, ...), or the provider object.
    data: dict[str, Any] = {}
    received_at: datetime
    occurred_at: datetime | None = None
    correlation_id: str
    status: EventStatus = EventStatus.RECEIVED
    #: How it came: `webhook`, or `reconcile` when fetched from the provider afterwards (§12).
    via: Via = Via.WEBHOOK


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Event)


def encode_event(event: Event) -> bytes:
    """JSON bytes of an event, as stored and as printed by `--json`."""
    return _encoder.encode(event)


def decode_event(raw: bytes | str) -> Event:
    """Inverse of `encode_event`; raises `msgspec.ValidationError` on a foreign shape."""
    return _decoder.decode(raw)


def event_to_builtins(event: Event) -> dict[str, Any]:
    """Plain JSON-ready dict (datetimes as RFC 3339 strings)."""
    result: dict[str, Any] = msgspec.to_builtins(event)
    return result


class EscalationThread(msgspec.Struct, frozen=True, kw_only=True):
    """A Slack thread an escalation post opened, whose conversation is still with people: what
    the store lists and a Slack reconciliation pass reads back (SPEC §12)."""

    #: The Slack channel id the post went to.
    channel: str
    #: The post's ts: the thread's root.
    ts: str
    #: The conversation the thread belongs to.
    conversation_key: str
