"""One event being routed: what it reads (`Step`) and what it adds to its lane's commit
(`EventWork`). The effect and action handlers each take a `Step` and fill its work."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from router.config import ComplianceConfig
from router.events import Event
from router.pipeline.routing.contacts import ContactBook
from router.rules.model import ConversationView, Decision
from router.store.records import (
    ContactRecord,
    HoldChange,
    LedgerRecord,
    OutboxRow,
    Receipt,
    TimerRecord,
)
from statemachines.conversation import Conversation, Policy


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """What routing reads from the settings, read once per router."""

    policy: Policy
    compliance: ComplianceConfig
    #: `logging.debug`: escalation posts show the contact unmasked.
    debug: bool


@dataclass
class Changes:
    """What routing hands the store in a lane's commit: the conversation as it ends, the
    outbox rows, the contacts' cancels and holds, consent changes, timers and receipts."""

    conversation: Conversation | None
    rows: list[OutboxRow] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    holds: list[HoldChange] = field(default_factory=list)
    contacts: list[tuple[ContactRecord, LedgerRecord | None]] = field(default_factory=list)
    timers_set: list[TimerRecord] = field(default_factory=list)
    timers_cleared: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)


@dataclass
class EventWork(Changes):
    """What one event adds to its lane's commit, merged only if the event routes cleanly, and
    what its run record says."""

    decision: Decision | None = None
    transition: dict[str, Any] | None = None
    compliance: str | None = None
    errors: list[str] = field(default_factory=list)
    #: The conversation as the rules saw it.
    view: ConversationView | None = None
    #: A possible opt-out: the escalation's reason (people decide; the rules do not answer).
    consent_review: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    """One event being routed: the event, the batch's clock and contacts, the router's
    configuration, and the work it adds up (the only part that changes)."""

    config: RouteConfig
    event: Event
    now: datetime
    book: ContactBook
    work: EventWork

    @property
    def conversation_key(self) -> str | None:
        """The key of the event's conversation as it is now (None before its first message)."""
        current = self.work.conversation
        return current.key if current is not None else None
