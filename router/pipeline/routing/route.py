"""Routing one claimed lane: compliance -> relay or rules -> machine -> outbox rows (SPEC §7-8).

Everything here decides; nothing writes. `LaneRouter.route` turns a lane's events into one
`LaneCommit` that the store applies in one transaction with the lease check. The only I/O is
reading the consent of a recipient not seen yet in this batch (`ContactBook`), and, for a button
press, the conversation's latest escalation post (a button acts only on its own escalation).

Per event, in this order:
1. a timer event fires its trigger (`remind`, `inactive`) on the conversation;
2. an agent's reply or button press in an escalation thread fires `agent_reply`, `claim`,
   `resolve` or `back_to_bot`; a button on an earlier escalation's post, or on a message that
   is no escalation post, is refused with the reason on the run (`thread`);
3. a customer's message: consent and help keywords first (the rules never see them,
   `compliance`); then, if the conversation is with people, the message goes to the Slack
   thread instead of the rules;
4. the rules decide; `reply`, `send` and `forward` become rows, `escalate` fires the machine,
   `tag` and `set` change the conversation (`actions`); what the machines emit becomes rows,
   timers, cancels and holds (`effects`);
5. every row to a customer passes the consent gate (an opted-out contact gets nothing but a
   compliance notice) and quiet hours (a `marketing` row is deferred to the window's end)
   (`rows`).

One event's inputs and what it adds up are a `work.Step`; a lane's, a `lane.LaneWork`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from router import keys
from router.config import Settings
from router.events import Event, EventType
from router.pipeline.routing import actions, compliance, effects, thread
from router.pipeline.routing.contacts import ContactBook, ContactLookup
from router.pipeline.routing.lane import LaneWork, decode_conversation, failed, processed
from router.pipeline.routing.thread import PostLookup
from router.pipeline.routing.work import EventWork, RouteConfig, Step
from router.rules import RuleSet, evaluate
from router.rules.model import ConversationView, Decision, Snapshot
from router.store.records import ClaimedLane, LaneCommit, OutboxRow, Receipt
from statemachines.conversation import (
    Context,
    Conversation,
    ConversationState,
    Direction,
    Message,
    Policy,
)

__all__ = ["CUSTOMER_CHANNELS", "ContactBook", "ContactLookup", "LaneRouter"]

#: Channels whose recipients are people with consent; rows to Slack and HTTP are not gated.
CUSTOMER_CHANNELS = frozenset({"sms", "whatsapp", "email"})
_TIMER_TRIGGERS = {"timer.claim_reminder": "remind", "timer.inactivity": "inactive"}
_AGENT_EVENTS = frozenset({EventType.AGENT_REPLY, EventType.AGENT_ACTION})
#: With people: a customer's message goes to the escalation thread, the bot stays silent.
_WITH_PEOPLE = frozenset({ConversationState.ESCALATED, ConversationState.AGENT})


class LaneRouter:
    """Routes lanes with one configuration; `ruleset` is read per lane (live reload)."""

    def __init__(
        self,
        settings: Settings,
        ruleset: Callable[[], RuleSet | None],
        escalation_post: PostLookup,
    ) -> None:
        self.settings = settings
        self._ruleset = ruleset
        self._escalation_post = escalation_post
        policy = Policy.from_config(settings.escalation, settings.channels.slack.escalation_channel)
        policy = msgspec.structs.replace(policy, history_limit=settings.worker.history_limit)
        self.config = RouteConfig(
            policy=policy, compliance=settings.compliance, debug=settings.logging.debug
        )
        self.max_attempts = settings.worker.max_attempts

    async def route(self, lane: ClaimedLane, book: ContactBook, now: datetime) -> LaneCommit:
        """The lane's commit: each event routed in order; a raising event stops the lane (it is
        retried later) unless it has used its tries, then it is `failed` and the lane goes on."""
        try:
            current = decode_conversation(lane.conversation)
        except msgspec.DecodeError as exc:  # every event of the lane fails until it is mended
            current = None
            broken: Exception | None = exc
        else:
            broken = None
        done = LaneWork(conversation=current)
        for event in lane.events:
            step = Step(self.config, event, now, book, EventWork(conversation=done.conversation))
            try:
                if broken is not None:
                    raise ValueError(f"stored conversation cannot be read: {broken}")
                await self._route_event(step, lane.lease.lane)
            except Exception as exc:  # a poison event: never stalls the worker
                tries = lane.attempts.get(event.id, 0) + 1
                if tries < self.max_attempts:
                    retry_at = now + timedelta(seconds=min(2**tries, 60))
                    return msgspec.structs.replace(
                        done.commit(lane, now), failed_attempt=event.id, retry_at=retry_at
                    )
                done.results.append(failed(event, tries, _error(exc), now))
                continue
            done.add(step.work, processed(event, step.work, now))
        return done.commit(lane, now)

    async def replay(
        self,
        event: Event,
        ruleset: RuleSet,
        snapshot: Snapshot,
        book: ContactBook,
        now: datetime,
    ) -> tuple[Decision, list[OutboxRow], list[str]]:
        """The rules again for a routed event, with the conversation it had then: the rows of
        its `reply`, `send` and `forward` actions (consent and quiet hours as of `now`), and
        the actions left alone because they would move the conversation again."""
        step = Step(self.config, event, now, book, EventWork(conversation=None))
        decision = evaluate(ruleset, event, snapshot, now)
        skipped: list[str] = []
        for action in decision.actions:
            if action.kind in actions.REPLAYED_ACTIONS:
                await actions.perform(step, action)
            elif action.kind != "drop":
                skipped.append(f"{action.rule_id}:{action.index} {action.kind}")
        return decision, step.work.rows, skipped

    # -- one event: the steps of the module docstring ---------------------------------------

    async def _route_event(self, step: Step, lane: str) -> None:
        """A timer, an event in the escalation thread, or an event of the lane's own: a
        receipt, a stray button, a customer's message; then the rules, unless it was one they
        must not see."""
        event = step.event
        trigger = _TIMER_TRIGGERS.get(event.type)
        if trigger is not None:
            await _timer_fired(step, lane, trigger)
        elif _in_thread(lane, event):
            await thread.agent_event(step, self._escalation_post)
        else:
            _take_receipt(step)
            thread.refuse_stray_button(step)
            if not (_from_customer(lane, event) and await self._customer_message(step, lane)):
                await self._rules(step)

    async def _customer_message(self, step: Step, lane: str) -> bool:
        """A customer's message, before the rules: True when the rules must not see it (a
        consent or help keyword, a possible opt-out, a conversation with people)."""
        if await compliance.keyword(step):
            return True
        event, work = step.event, step.work
        work.conversation = _opened(work.conversation, lane, event)
        state_before = work.conversation.state
        message = Message(
            direction=Direction.INBOUND, text=event.text or "", at=step.now, event_id=event.id
        )
        await effects.fire(
            step, "inbound", Context(event_id=event.id, now=step.now, message=message)
        )
        if work.consent_review is not None:  # people decide; the bot does not answer
            await compliance.ask_people(step, work.consent_review)
            return True
        return state_before in _WITH_PEOPLE  # relayed to the thread, the bot stays silent

    async def _rules(self, step: Step) -> None:
        """The rules decide, seeing the conversation as it is now; each action is done."""
        ruleset = self._ruleset()
        if ruleset is None:
            step.work.errors.append("no rules loaded")
            return
        current = step.work.conversation
        view = (
            ConversationView(state=current.state.value, attributes=dict(current.attributes))
            if current is not None
            else None
        )
        snapshot = Snapshot(conversation=view, contact_timezone=None)
        step.work.decision = evaluate(ruleset, step.event, snapshot, step.now)
        step.work.view = view
        for action in step.work.decision.actions:
            await actions.perform(step, action)


# -- steps that need nothing of the router ---------------------------------------------------


async def _timer_fired(step: Step, lane: str, trigger: str) -> None:
    """A due timer: cleared (unless re-armed since), and its trigger fired on the conversation."""
    due = step.event.data.get("due_at")
    timer = step.event.type.removeprefix("timer.")
    at = datetime.fromisoformat(due) if isinstance(due, str) else None
    step.work.timers_cleared.append((lane, timer, at))
    if step.work.conversation is not None:
        await effects.fire(step, trigger, Context(event_id=step.event.id, now=step.now))


def _in_thread(lane: str, event: Event) -> bool:
    """An agent's reply or button press in the escalation thread of the lane's conversation:
    the event's own key (the thread's) is mapped to the conversation's lane."""
    return (
        event.type in _AGENT_EVENTS
        and not keys.is_event_lane(lane)
        and event.conversation_key != lane
    )


def _from_customer(lane: str, event: Event) -> bool:
    """A customer writing in, on a channel with consent, in a conversation."""
    return (
        event.type in actions.CUSTOMER_MESSAGES
        and event.channel is not None
        and event.channel.value in CUSTOMER_CHANNELS
        and event.contact is not None
        and not keys.is_event_lane(lane)
    )


def _take_receipt(step: Step) -> None:
    """A Twilio status callback is the delivery receipt of the row sent with its sid."""
    event = step.event
    if event.type != EventType.MESSAGE_STATUS:
        return
    sid, status = event.data.get("message_sid"), event.data.get("status")
    if not isinstance(sid, str) or not isinstance(status, str):
        return
    code = event.data.get("error_code")
    step.work.receipts.append(
        Receipt(
            provider_message_id=sid,
            status=status,
            error_code=str(code) if code not in (None, "") else None,
            at=step.now,
        )
    )


def _opened(current: Conversation | None, key: str, event: Event) -> Conversation:
    """The conversation, created on the customer's first message."""
    if current is not None:
        return current
    return Conversation(
        key=key,
        channel=event.channel.value if event.channel else None,
        contact=event.contact.address if event.contact else None,
    )


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
