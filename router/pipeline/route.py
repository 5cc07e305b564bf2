"""Routing one claimed lane: compliance -> relay or rules -> machine -> outbox rows (SPEC §7-8).

Everything here decides; nothing writes. `LaneRouter.route` turns a lane's events into one
`LaneCommit` that the store applies in one transaction with the lease check. The only I/O is
reading the consent of a recipient not seen yet in this batch (`ContactBook`), and, for a button
press, the conversation's latest escalation post (a button acts only on its own escalation).

Per event, in this order:
1. a timer event fires its trigger (`remind`, `inactive`) on the conversation;
2. an agent's reply or button press in an escalation thread fires `agent_reply`, `claim`,
   `resolve` or `back_to_bot`; a button on an earlier escalation's post, or on a message that
   is no escalation post, is refused with the reason on the run;
3. a customer's message: consent and help keywords first (the rules never see them); then, if
   the conversation is with people, the message goes to the Slack thread instead of the rules;
4. the rules decide; `reply`, `send` and `forward` become rows, `escalate` fires the machine,
   `tag` and `set` change the conversation;
5. every row to a customer passes the consent gate (an opted-out contact gets nothing but a
   compliance notice) and quiet hours (a `marketing` row is deferred to the window's end).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta

import msgspec

from router import keys
from router.config import Settings
from router.events import Event, EventType
from router.pipeline import actions, effects, render, rows
from router.pipeline.contacts import ContactBook, ContactLookup
from router.pipeline.lane import LaneWork, decode_conversation, failed, processed
from router.pipeline.work import EventWork, RouteConfig, Step
from router.rules import RuleSet, evaluate
from router.rules.model import ConversationView, Decision, Snapshot
from router.store.records import (
    ClaimedLane,
    ContactRecord,
    LaneCommit,
    LedgerRecord,
    OutboxRow,
    Receipt,
)
from statemachines import consent
from statemachines.consent import ConsentContext, ConsentOutcome, ConsentState, KeywordKind
from statemachines.conversation import (
    Context,
    Conversation,
    ConversationState,
    Direction,
    Escalation,
    Message,
    Policy,
)

__all__ = ["CUSTOMER_CHANNELS", "REPLAYED_ACTIONS", "ContactBook", "ContactLookup", "LaneRouter"]

#: Channels whose recipients are people with consent; rows to Slack and HTTP are not gated.
CUSTOMER_CHANNELS = frozenset({"sms", "whatsapp", "email"})
REPLAYED_ACTIONS = actions.REPLAYED_ACTIONS
_TIMER_TRIGGERS = {"timer.claim_reminder": "remind", "timer.inactivity": "inactive"}
_AGENT_EVENTS = frozenset({EventType.AGENT_REPLY, EventType.AGENT_ACTION})
#: With people: a customer's message goes to the escalation thread, the bot stays silent.
_WITH_PEOPLE = frozenset({ConversationState.ESCALATED, ConversationState.AGENT})

#: The latest sent escalation post of a conversation (`Store.escalation_post`).
PostLookup = Callable[[str], Awaitable[OutboxRow | None]]


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
            if action.kind in REPLAYED_ACTIONS:
                await actions.perform(step, action)
            elif action.kind != "drop":
                skipped.append(f"{action.rule_id}:{action.index} {action.kind}")
        return decision, step.work.rows, skipped

    # -- one event: the steps of the module docstring ---------------------------------------

    async def _route_event(self, step: Step, lane: str) -> None:
        event = step.event
        trigger = _TIMER_TRIGGERS.get(event.type)
        if trigger is not None:
            await _timer_fired(step, lane, trigger)
        elif _in_thread(lane, event):
            await self._agent_event(step)
        else:
            _take_receipt(step)
            _refuse_stray_button(step)
            if not (_from_customer(lane, event) and await self._customer_message(step, lane)):
                await self._rules(step)

    async def _customer_message(self, step: Step, lane: str) -> bool:
        """A customer's message, before the rules: True when the rules must not see it (a
        consent or help keyword, a possible opt-out, a conversation with people)."""
        if await self._compliance(step):
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
            await _ask_people(step, work.consent_review)
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

    # -- consent --------------------------------------------------------------------------

    async def _compliance(self, step: Step) -> bool:
        """Consent and help keywords; True when the message was one the rules must not see.
        A possible opt-out is not consumed: it sets `work.consent_review` (`AskPeople`)."""
        event, work = step.event, step.work
        opt_out_type = event.data.get("opt_out_type")
        keyword = consent.classify(
            event.text, opt_out_type if isinstance(opt_out_type, str) else None
        )
        if keyword is None or event.contact is None:
            return False
        contact = await step.book.get(consent.contact_key(event.contact.address))
        context = ConsentContext(
            event_id=event.id,
            now=step.now,
            address=event.contact.address,
            channel=event.channel.value if event.channel else None,
        )
        outcome = consent.on_keyword(
            ConsentState(contact.consent), keyword, context, self.config.compliance
        )
        work.compliance = keyword.kind.value
        if outcome.refused is not None and keyword.kind is KeywordKind.REVIEW:
            return False  # already opted out: an ordinary message
        if outcome.refused is not None and outcome.consumed:
            work.errors.append(f"consent: {outcome.refused}")
        await _consent_changed(step, contact, outcome)
        return outcome.consumed

    async def _consent_decision(self, step: Step, decision: consent.Decision) -> None:
        """A person's Opt out / Keep subscribed on a possible opt-out, for the contact of the
        conversation the button's thread escalated; recorded in the ledger with this event."""
        event, work = step.event, step.work
        current = work.conversation
        work.compliance = f"decision: {decision.value}"
        if current is None or current.contact is None:
            work.errors.append(f"consent decision {decision.value}: no contact to decide for")
            return
        contact = await step.book.get(consent.contact_key(current.contact))
        context = ConsentContext(
            event_id=event.id, now=step.now, address=current.contact, channel=current.channel
        )
        who = event.contact.address if event.contact else "someone"
        outcome = consent.on_decision(
            ConsentState(contact.consent),
            decision,
            f"{who} in Slack",
            context,
            self.config.compliance,
        )
        if outcome.refused is not None:
            work.errors.append(f"consent: {outcome.refused}")
            return
        await _consent_changed(step, contact, outcome)

    # -- the escalation thread ------------------------------------------------------------

    async def _agent_event(self, step: Step) -> None:
        """A reply or a button press in the escalation thread of this lane's conversation."""
        event = step.event
        if event.type == EventType.AGENT_REPLY:
            await _agent_reply(step)
            return
        action_id = event.data.get("action_id")
        decision = render.CONSENT_ACTIONS.get(action_id) if isinstance(action_id, str) else None
        if decision is not None:  # about the contact, not the escalation: any post will do
            await self._consent_decision(step, decision)
            return
        trigger = _trigger(event)
        if trigger is None:
            step.work.errors.append(f"unknown escalation action {action_id!r}")
            return
        await self._button(step, trigger)

    async def _button(self, step: Step, trigger: str) -> None:
        """Claim, resolve or back to bot, on the open escalation's own post only; the post then
        shows who did it (Slack `chat.update`)."""
        work = step.work
        before = work.conversation.escalation if work.conversation is not None else None
        if before is not None and work.conversation is not None:
            stale = await self._stale_post(work.conversation.key, before, step.event)
            if stale is not None:
                work.transition = {"trigger": trigger, "refused": stale}
                return
        agent = step.event.contact.address if step.event.contact else None
        await effects.fire(
            step, trigger, Context(event_id=step.event.id, now=step.now, agent=agent)
        )
        refused = work.transition is None or "refused" in work.transition
        if before is not None and work.conversation is not None and not refused:
            payload = {"state": work.conversation.state.value, "agent": agent}
            row_id = f"{step.event.id}:escalation_update"
            rows.slack_row(step, row_id, "escalation_update", before.slack_channel, payload)

    async def _stale_post(
        self, conversation_key: str, escalation: Escalation, event: Event
    ) -> str | None:
        """Why a button cannot act on the open escalation (None: it can). Its post is the
        latest escalation post sent, and the one the open escalation's event made; a newer
        escalation whose post is not sent yet leaves an older post the latest."""
        latest = await self._escalation_post(conversation_key)
        clicked = (event.data.get("channel"), event.data.get("message_ts"))
        if latest is None or (latest.to, latest.provider_message_id) != clicked:
            return f"the button's message {_message(event)} is the post of an earlier escalation"
        if escalation.event_id is not None and latest.event_id != escalation.event_id:
            return (
                f"the button's message {_message(event)} is the post of an earlier escalation; "
                "the open one's post is not sent yet"
            )
        return None


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


def _refuse_stray_button(step: Step) -> None:
    """A button press whose message is in no escalation thread acts on nothing."""
    event = step.event
    if event.type == EventType.AGENT_ACTION:
        step.work.transition = {
            "trigger": _trigger(event) or event.data.get("action_id"),
            "refused": f"the button's message {_message(event)} is no escalation post sent",
        }


async def _agent_reply(step: Step) -> None:
    """An agent's reply in the thread: relayed to the customer."""
    event = step.event
    agent = event.contact.address if event.contact else None
    message = Message(
        direction=Direction.OUTBOUND,
        text=event.text or "",
        at=step.now,
        event_id=event.id,
        author=agent,
    )
    context = Context(event_id=event.id, now=step.now, message=message, agent=agent)
    await effects.fire(step, "agent_reply", context)


async def _ask_people(step: Step, reason: str) -> None:
    """A possible opt-out: escalate the conversation with the Opt out / Keep subscribed
    buttons. Already with people, the message went to the thread with those buttons."""
    current = step.work.conversation
    if current is None or current.state is not ConversationState.BOT:
        return
    context = Context(event_id=step.event.id, now=step.now, reason=reason, consent_review=True)
    await effects.fire(step, "escalate", context)


async def _consent_changed(step: Step, contact: ContactRecord, outcome: ConsentOutcome) -> None:
    """The contact's new consent and its ledger entry (on a change), and the effects."""
    if outcome.ledger is not None:
        updated = msgspec.structs.replace(
            contact,
            consent=outcome.state.value,
            opted_out_at=step.now if outcome.state is ConsentState.OPTED_OUT else None,
        )
        step.book.put(updated)
        entry = LedgerRecord(
            at=outcome.ledger.at,
            event_id=step.event.id,
            channel=outcome.ledger.channel,
            change=outcome.ledger.change.value,
            reason=outcome.ledger.reason,
        )
        step.work.contacts.append((updated, entry))
    await effects.apply(step, outcome.effects)


def _opened(current: Conversation | None, key: str, event: Event) -> Conversation:
    """The conversation, created on the customer's first message."""
    if current is not None:
        return current
    return Conversation(
        key=key,
        channel=event.channel.value if event.channel else None,
        contact=event.contact.address if event.contact else None,
    )


def _trigger(event: Event) -> str | None:
    """The machine trigger of a button press (`claim`, `resolve`, `back_to_bot`), if ours."""
    action_id = event.data.get("action_id")
    return render.ACTION_TRIGGERS.get(action_id) if isinstance(action_id, str) else None


def _message(event: Event) -> str:
    """The message a button press came from, as a person reads it in a run's record."""
    return f"(ts {event.data.get('message_ts')} in {event.data.get('channel')})"


def _error(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:1000]
