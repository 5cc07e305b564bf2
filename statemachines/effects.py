"""Commands the machines emit: plain frozen data the worker turns into outbox rows and timers.

Each command is a tagged msgspec Struct, so a row's payload encodes and decodes without a
registry, and `key` names it uniquely within one event's outcome: the outbox id is the event id
plus that key (SPEC §8), so processing an event again makes no second row.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import msgspec

_CMD = {"frozen": True, "kw_only": True, "tag_field": "kind"}


class Timer(StrEnum):
    """The conversation timers; one of each per conversation, rescheduling replaces it."""

    CLAIM_REMINDER = "claim_reminder"
    INACTIVITY = "inactivity"


class Notice(StrEnum):
    """Compliance messages the consent gate lets through (see `consent.gate`)."""

    OPT_OUT_CONFIRMATION = "opt_out_confirmation"
    OPT_IN_CONFIRMATION = "opt_in_confirmation"
    HELP = "help"


class HistoryLine(msgspec.Struct, frozen=True, kw_only=True):
    """A past message as shown in an escalation post."""

    direction: str
    text: str
    at: datetime


class PostEscalation(msgspec.Struct, tag="post_escalation", **_CMD):
    """Post the escalation, with its context and buttons, to a Slack channel."""

    #: The team channel the action named, else `channels.slack.escalation_channel`.
    slack_channel: str
    #: The customer's address, unmasked: masking is the renderer's job (it knows `debug`).
    contact: str | None
    reason: str | None
    rule_id: str | None
    history: tuple[HistoryLine, ...]
    #: A possible opt-out (SPEC §7 `review`): the post carries Opt out / Keep subscribed too.
    consent_review: bool = False

    @property
    def key(self) -> str:
        return "escalation"


class RelayToThread(msgspec.Struct, tag="relay_to_thread", **_CMD):
    """Copy a customer message into the escalation thread (the bot stays silent)."""

    slack_channel: str
    #: None until the escalation post has been sent; the sender resolves it then.
    thread_ts: str | None
    text: str

    @property
    def key(self) -> str:
        return "relay_to_thread"


class PostReminder(msgspec.Struct, tag="post_reminder", **_CMD):
    """Nudge the escalation thread: nobody has claimed it within `claim_timeout`."""

    slack_channel: str
    thread_ts: str | None

    @property
    def key(self) -> str:
        return "reminder"


class RelayToCustomer(msgspec.Struct, tag="relay_to_customer", **_CMD):
    """An agent's thread reply, sent to the customer on the channel they wrote from."""

    channel: str | None
    to: str | None
    text: str
    #: Always `conversational`: an answer the customer asked for.
    category: str = "conversational"

    @property
    def key(self) -> str:
        return "relay_to_customer"


class ScheduleTimer(msgspec.Struct, tag="schedule_timer", **_CMD):
    """(Re)arm a conversation timer; it fires as the trigger of the same name as its effect."""

    timer: Timer
    due_at: datetime

    @property
    def key(self) -> str:
        return f"schedule:{self.timer}"


class CancelTimer(msgspec.Struct, tag="cancel_timer", **_CMD):
    """Disarm a conversation timer (no-op if none is armed)."""

    timer: Timer

    @property
    def key(self) -> str:
        return f"cancel:{self.timer}"


class SendNotice(msgspec.Struct, tag="send_notice", **_CMD):
    """A consent confirmation or HELP answer: sent at once, never held by quiet hours."""

    notice: Notice
    channel: str | None
    #: The address the keyword came from (`whatsapp:+1...` answers on WhatsApp).
    to: str
    text: str
    category: str = "transactional"

    @property
    def key(self) -> str:
        return str(self.notice)


class CancelPending(msgspec.Struct, tag="cancel_pending", **_CMD):
    """Cancel every pending or deferred outbox row to this contact, in the same transaction."""

    #: `consent.contact_key` of the contact: SMS and WhatsApp rows alike.
    contact_key: str

    @property
    def key(self) -> str:
        return "cancel_pending"


class HoldMarketing(msgspec.Struct, tag="hold_marketing", **_CMD):
    """Hold every waiting `marketing` row to this contact until a person decides (SPEC §7
    `review`): not sent, not lost; an opt-out cancels them, keeping the contact releases them."""

    contact_key: str

    @property
    def key(self) -> str:
        return "hold_marketing"


class ReleaseHeld(msgspec.Struct, tag="release_held", **_CMD):
    """The review ended with the contact subscribed: the held marketing rows wait only for
    quiet hours again."""

    contact_key: str

    @property
    def key(self) -> str:
        return "release_held"


class AskPeople(msgspec.Struct, tag="ask_people", **_CMD):
    """Escalate the conversation as a possible opt-out, with the Opt out / Keep subscribed
    buttons (or, already with people, ask in its thread)."""

    #: The escalation's reason: `possible opt-out: CANCEL`.
    reason: str

    @property
    def key(self) -> str:
        return "ask_people"


Effect = (
    PostEscalation
    | RelayToThread
    | PostReminder
    | RelayToCustomer
    | ScheduleTimer
    | CancelTimer
    | SendNotice
    | CancelPending
    | HoldMarketing
    | ReleaseHeld
    | AskPeople
)
