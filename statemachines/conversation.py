"""The conversation machine, run purely: `apply(conversation, trigger, context) -> Outcome`.

The worker loads a `Conversation`, calls `apply`, saves `outcome.conversation` with its version
check and turns `outcome.effects` into outbox rows and timers, all in one transaction. Nothing
here reads a clock or does I/O: time comes in `Context.now`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from enum import StrEnum

import msgspec

from router.config import EscalationConfig
from router.timeutil import parse_duration
from statemachines import _engine
from statemachines.definitions import conversation as definition
from statemachines.effects import (
    CancelTimer,
    Effect,
    HistoryLine,
    PostEscalation,
    PostReminder,
    RelayToCustomer,
    RelayToThread,
    ScheduleTimer,
    Timer,
)

AttributeValue = str | int | float | bool | None


class ConversationState(StrEnum):
    BOT = definition.BOT
    ESCALATED = definition.ESCALATED
    AGENT = definition.AGENT
    CLOSED = definition.CLOSED


class Direction(StrEnum):
    INBOUND = "in"
    OUTBOUND = "out"


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """One message of the conversation, either way, as kept in its history."""

    direction: Direction
    text: str
    at: datetime
    event_id: str | None = None
    #: Who wrote it when not the customer: a Slack user id, or `bot`.
    author: str | None = None


class Escalation(msgspec.Struct, frozen=True, kw_only=True):
    """The open hand-over to people; None on the conversation when there is none."""

    at: datetime
    slack_channel: str
    reason: str | None = None
    rule_id: str | None = None
    #: The escalation post's ts, once sent: the thread everything is relayed to.
    thread_ts: str | None = None
    #: The Slack user who claimed it.
    agent: str | None = None
    reminded: bool = False
    #: The event that opened it: its post is the `escalation` outbox row that event made, and
    #: only that post's buttons act on it. None on escalations stored before it was kept.
    event_id: str | None = None


class Conversation(msgspec.Struct, frozen=True, kw_only=True):
    """A conversation's whole state as one value; copy with the functions below."""

    key: str
    state: ConversationState = ConversationState.BOT
    #: Where the customer writes from, so agent replies go back the same way.
    channel: str | None = None
    contact: str | None = None
    attributes: dict[str, AttributeValue] = {}
    #: Sorted and unique, so the stored form is stable.
    tags: tuple[str, ...] = ()
    #: The last messages both ways, oldest first, at most `Policy.history_limit`.
    history: tuple[Message, ...] = ()
    escalation: Escalation | None = None
    last_activity_at: datetime | None = None


class Policy(msgspec.Struct, frozen=True, kw_only=True):
    """The settings the machine needs, parsed once rather than per event."""

    claim_timeout: timedelta = timedelta(minutes=10)
    inactivity_close: timedelta = timedelta(hours=24)
    #: `channels.slack.escalation_channel`: where an escalation goes unless the rule names one.
    escalation_channel: str = ""
    history_limit: int = 20

    @classmethod
    def from_config(cls, escalation: EscalationConfig, escalation_channel: str) -> Policy:
        """Durations from `[escalation]` (validated at config load, so they parse)."""
        return cls(
            claim_timeout=parse_duration(escalation.claim_timeout),
            inactivity_close=parse_duration(escalation.inactivity_close),
            escalation_channel=escalation_channel,
        )


class Context(msgspec.Struct, frozen=True, kw_only=True):
    """What the event brings to a trigger; fields a trigger does not use stay None."""

    event_id: str
    now: datetime
    #: `inbound` (customer) and `agent_reply` (agent) carry the message.
    message: Message | None = None
    #: `claim` and `agent_reply`: the Slack user id of the agent.
    agent: str | None = None
    #: `escalate`: the action's reason, the rule that fired, and a team channel if it names one.
    reason: str | None = None
    rule_id: str | None = None
    slack_channel: str | None = None
    #: `escalate` for a possible opt-out: the post asks people to decide (SPEC §7 `review`).
    consent_review: bool = False


class Transition(msgspec.Struct, frozen=True, kw_only=True):
    """The run record's `transition`: what fired, from where to where."""

    trigger: str
    source: ConversationState
    dest: ConversationState


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """The result of one trigger: the conversation to save and the commands to commit."""

    conversation: Conversation
    effects: tuple[Effect, ...] = ()
    #: Set when the trigger fired (also for a transition that keeps the state).
    transition: Transition | None = None
    #: Set when it was refused: the conversation is unchanged and there are no effects.
    refused: str | None = None

    @property
    def state(self) -> ConversationState:
        return self.conversation.state


DEFAULT_POLICY = Policy()
_MACHINE = _engine.build(definition.STATES, definition.TRANSITIONS)


def apply(
    conversation: Conversation, trigger: str, context: Context, policy: Policy = DEFAULT_POLICY
) -> Outcome:
    """Fire `trigger` (`escalate`, `claim`, `agent_reply`, `resolve`, `back_to_bot`, `inbound`,
    `remind`, `inactive`); an illegal one is refused and recorded, never raised."""
    run = _Run(conversation, context, policy)
    refused = _engine.fire(_MACHINE, run, conversation.state, trigger)
    if refused is not None:
        return Outcome(conversation=conversation, refused=refused)
    after = msgspec.structs.replace(run.conversation, state=ConversationState(run.state))
    transition = Transition(trigger=trigger, source=conversation.state, dest=after.state)
    return Outcome(conversation=after, effects=tuple(run.effects), transition=transition)


def set_attributes(
    conversation: Conversation, values: Mapping[str, AttributeValue]
) -> Conversation:
    """The `set` action: merge attributes (None is a value, not a deletion)."""
    return msgspec.structs.replace(conversation, attributes={**conversation.attributes, **values})


def add_tags(conversation: Conversation, tags: Iterable[str]) -> Conversation:
    """The `tag` action: tags are a set, kept sorted so the stored value is stable."""
    return msgspec.structs.replace(conversation, tags=tuple(sorted({*conversation.tags, *tags})))


def record_message(conversation: Conversation, message: Message, limit: int) -> Conversation:
    """Append to the bounded history (the worker calls this for the bot's own replies; `apply`
    does it for `inbound` and `agent_reply`)."""
    history = (*conversation.history, message)[-limit:] if limit > 0 else ()
    return msgspec.structs.replace(conversation, history=history)


def with_thread(conversation: Conversation, thread_ts: str) -> Conversation:
    """Remember the escalation post's ts once it is sent, so relays go to its thread."""
    if conversation.escalation is None:
        return conversation
    escalation = msgspec.structs.replace(conversation.escalation, thread_ts=thread_ts)
    return msgspec.structs.replace(conversation, escalation=escalation)


class _Run:
    """The per-event model: guards read the context, callbacks build the next value and effects."""

    state: str

    def __init__(self, conversation: Conversation, context: Context, policy: Policy) -> None:
        self.conversation, self.context, self.policy = conversation, context, policy
        self.effects: list[Effect] = []

    # Guards

    def has_agent(self) -> bool:
        return self.context.agent is not None

    def has_message(self) -> bool:
        return self.context.message is not None

    def claim_overdue(self) -> bool:
        escalation = self.conversation.escalation
        return (
            escalation is not None and self.context.now >= escalation.at + self.policy.claim_timeout
        )

    def already_reminded(self) -> bool:
        return self.conversation.escalation is not None and self.conversation.escalation.reminded

    def idle_long_enough(self) -> bool:
        last = self.conversation.last_activity_at
        return last is None or self.context.now >= last + self.policy.inactivity_close

    # Callbacks

    def post_escalation(self) -> None:
        ctx, conv = self.context, self.conversation
        escalation = Escalation(
            at=ctx.now,
            slack_channel=ctx.slack_channel or self.policy.escalation_channel,
            reason=ctx.reason,
            rule_id=ctx.rule_id,
            event_id=ctx.event_id,
        )
        self.conversation = msgspec.structs.replace(conv, escalation=escalation)
        history = tuple(
            HistoryLine(direction=m.direction, text=m.text, at=m.at) for m in conv.history
        )
        self.effects += [
            PostEscalation(
                slack_channel=escalation.slack_channel,
                contact=conv.contact,
                reason=ctx.reason,
                rule_id=ctx.rule_id,
                history=history,
                consent_review=ctx.consent_review,
            ),
            ScheduleTimer(timer=Timer.CLAIM_REMINDER, due_at=ctx.now + self.policy.claim_timeout),
        ]

    def note_claim(self) -> None:
        escalation = self.conversation.escalation
        if escalation is not None and escalation.agent is None:
            claimed = msgspec.structs.replace(escalation, agent=self.context.agent)
            self.conversation = msgspec.structs.replace(self.conversation, escalation=claimed)
        self.effects.append(CancelTimer(timer=Timer.CLAIM_REMINDER))

    def relay_to_customer(self) -> None:
        message = self._record()
        self.effects.append(
            RelayToCustomer(
                channel=self.conversation.channel, to=self.conversation.contact, text=message.text
            )
        )
        self._rearm_inactivity()

    def note_inbound(self) -> None:
        self._record()
        self._rearm_inactivity()

    def relay_to_thread(self) -> None:
        escalation, message = self.conversation.escalation, self.context.message
        if escalation is not None and message is not None:
            self.effects.append(
                RelayToThread(
                    slack_channel=escalation.slack_channel,
                    thread_ts=escalation.thread_ts,
                    text=message.text,
                )
            )

    def post_reminder(self) -> None:
        escalation = self.conversation.escalation
        if escalation is None:  # the guard claim_overdue already ensures one
            return
        reminded = msgspec.structs.replace(escalation, reminded=True)
        self.conversation = msgspec.structs.replace(self.conversation, escalation=reminded)
        self.effects.append(
            PostReminder(slack_channel=escalation.slack_channel, thread_ts=escalation.thread_ts)
        )

    def end_escalation(self) -> None:
        had_escalation = self.conversation.escalation is not None
        self.conversation = msgspec.structs.replace(self.conversation, escalation=None)
        if had_escalation:
            self.effects.append(CancelTimer(timer=Timer.CLAIM_REMINDER))
        if self.state == ConversationState.CLOSED:
            self.effects.append(CancelTimer(timer=Timer.INACTIVITY))

    def _record(self) -> Message:
        message = self.context.message
        assert message is not None  # guarded by has_message
        self.conversation = msgspec.structs.replace(
            record_message(self.conversation, message, self.policy.history_limit),
            last_activity_at=self.context.now,
        )
        return message

    def _rearm_inactivity(self) -> None:
        due = self.context.now + self.policy.inactivity_close
        self.effects.append(ScheduleTimer(timer=Timer.INACTIVITY, due_at=due))
