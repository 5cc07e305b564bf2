"""What the events of one lane add up to, in order, and the `LaneCommit` it becomes (SPEC §8)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

import msgspec

from router.events import Event, EventStatus
from router.pipeline.routing.rows import cancel_waiting, hold_or_release
from router.pipeline.routing.work import Changes, EventWork
from router.store.records import ClaimedLane, ConversationRecord, EventResult, LaneCommit, RunRecord
from statemachines.conversation import Conversation

_conversation_encoder = msgspec.json.Encoder()
_conversation_decoder = msgspec.json.Decoder(Conversation)


def decode_conversation(record: ConversationRecord | None) -> Conversation | None:
    """The stored conversation of a lane; raises `msgspec.DecodeError` on a broken one."""
    return _conversation_decoder.decode(record.body) if record is not None else None


@dataclass
class LaneWork(Changes):
    """What the events of one lane have added up to, in order."""

    results: list[EventResult] = field(default_factory=list)

    def add(self, work: EventWork, result: EventResult) -> None:
        """Merge one cleanly routed event."""
        for contact_key, reason in work.cancels:  # rows made earlier in the lane, not stored yet
            self.rows = cancel_waiting(self.rows, contact_key, reason)
        for change in work.holds:
            self.rows = hold_or_release(self.rows, change)
        self.conversation = work.conversation
        self.rows += work.rows
        self.cancels += work.cancels
        self.holds += work.holds
        self.contacts += work.contacts
        self.receipts += work.receipts
        for cleared in work.timers_cleared:  # the later order wins
            named = cleared[:2]
            self.timers_set = [t for t in self.timers_set if (t.conversation_key, t.timer) != named]
            self.timers_cleared.append(cleared)
        for armed in work.timers_set:  # the store applies sets before clears
            named = (armed.conversation_key, armed.timer)
            self.timers_set = [t for t in self.timers_set if (t.conversation_key, t.timer) != named]
            self.timers_cleared = [
                c for c in self.timers_cleared if c[:2] != named or c[2] is not None
            ]
            self.timers_set.append(armed)
        self.results.append(result)

    def commit(self, lane: ClaimedLane, now: datetime) -> LaneCommit:
        record = None
        if self.conversation is not None:
            record = ConversationRecord(
                key=lane.lease.lane,
                state=self.conversation.state.value,
                channel=self.conversation.channel,
                contact=self.conversation.contact,
                body=_conversation_encoder.encode(self.conversation),
                updated_at=now,
            )
        return LaneCommit(
            lease=lane.lease,
            results=self.results,
            conversation=record,
            outbox=self.rows,
            cancel_contacts=self.cancels,
            holds=self.holds,
            contacts=self.contacts,
            timers_set=self.timers_set,
            timers_cleared=self.timers_cleared,
            receipts=self.receipts,
        )


def processed(event: Event, work: EventWork, now: datetime) -> EventResult:
    """A cleanly routed event's result: its run record says what was decided and made."""
    decision = work.decision
    errors = [*work.errors, *(decision.errors if decision else [])]
    run = RunRecord(
        event_id=event.id,
        at=now,
        rules_version=decision.rules_version if decision else None,
        matched=list(decision.matched) if decision else [],
        actions=[msgspec.to_builtins(action) for action in decision.actions] if decision else [],
        transition=work.transition,
        outbox_ids=[row.id for row in work.rows],
        error="; ".join(errors) if errors else None,
        compliance=work.compliance,
        conversation=msgspec.to_builtins(work.view) if work.view is not None else None,
    )
    return EventResult(event_id=event.id, status=EventStatus.PROCESSED, run=run)


def failed(event: Event, tries: int, error: str, now: datetime) -> EventResult:
    """A poison event's result once it has used its tries: the lane goes on without it."""
    run = RunRecord(
        event_id=event.id, at=now, rules_version=None, error=f"failed after {tries} tries: {error}"
    )
    return EventResult(event_id=event.id, status=EventStatus.FAILED, run=run)
