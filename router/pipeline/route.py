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
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import msgspec

from router import keys
from router.config import Settings
from router.events import Channel, Event, EventStatus, EventType
from router.pipeline import render
from router.rules import RuleSet, evaluate
from router.rules.model import Action, ConversationView, Decision, Snapshot
from router.store.records import (
    HELD_UNTIL,
    ClaimedLane,
    ContactRecord,
    ConversationRecord,
    EventResult,
    HoldChange,
    LaneCommit,
    LedgerRecord,
    OutboxRow,
    OutboxStatus,
    Receipt,
    RunRecord,
    TimerRecord,
)
from statemachines import consent, conversation, quiet_hours
from statemachines.consent import (
    ConsentContext,
    ConsentOutcome,
    ConsentState,
    Gate,
    Keyword,
    KeywordKind,
)
from statemachines.conversation import (
    Context,
    Conversation,
    ConversationState,
    Direction,
    Escalation,
    Message,
    Outcome,
    Policy,
)
from statemachines.effects import (
    AskPeople,
    CancelPending,
    CancelTimer,
    Effect,
    HoldMarketing,
    PostEscalation,
    PostReminder,
    RelayToCustomer,
    RelayToThread,
    ReleaseHeld,
    ScheduleTimer,
    SendNotice,
)

#: Channels whose recipients are people with consent; rows to Slack and HTTP are not gated.
CUSTOMER_CHANNELS = frozenset({"sms", "whatsapp", "email"})
#: Event types of a customer writing in.
_CUSTOMER_MESSAGES = frozenset({EventType.MESSAGE_RECEIVED, EventType.EMAIL_RECEIVED})
#: What a replay performs again: the actions that only make rows. `escalate`, `tag` and `set`
#: would move a conversation that has moved on since; a replay leaves them alone.
REPLAYED_ACTIONS = frozenset({"reply", "send", "forward"})
_TIMER_TRIGGERS = {"timer.claim_reminder": "remind", "timer.inactivity": "inactive"}
_conversation_encoder = msgspec.json.Encoder()
_conversation_decoder = msgspec.json.Decoder(Conversation)

ContactLookup = Callable[[list[str]], Awaitable[dict[str, ContactRecord]]]
#: The latest sent escalation post of a conversation (`Store.escalation_post`).
PostLookup = Callable[[str], Awaitable[OutboxRow | None]]


class ContactBook:
    """Consent of the contacts one batch touches, read once and kept up to date in memory as
    the batch's own keywords change it (a STOP early in the batch binds rows made later)."""

    def __init__(self, lookup: ContactLookup) -> None:
        self._lookup = lookup
        self._known: dict[str, ContactRecord] = {}

    async def prefetch(self, keys: list[str]) -> None:
        missing = [key for key in dict.fromkeys(keys) if key not in self._known]
        if missing:
            found = await self._lookup(missing)
            for key in missing:
                self._known[key] = found.get(key) or ContactRecord(address=key)

    async def get(self, key: str) -> ContactRecord:
        await self.prefetch([key])
        return self._known[key]

    def put(self, record: ContactRecord) -> None:
        self._known[record.address] = record


@dataclass
class _EventWork:
    """What one event adds to its lane's commit; merged only if the event routes cleanly."""

    conversation: Conversation | None
    rows: list[OutboxRow] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    holds: list[HoldChange] = field(default_factory=list)
    contacts: list[tuple[ContactRecord, LedgerRecord | None]] = field(default_factory=list)
    timers_set: list[TimerRecord] = field(default_factory=list)
    timers_cleared: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    decision: Decision | None = None
    transition: dict[str, Any] | None = None
    compliance: str | None = None
    errors: list[str] = field(default_factory=list)
    #: The conversation as the rules saw it.
    view: ConversationView | None = None
    receipts: list[Receipt] = field(default_factory=list)
    #: A possible opt-out: the escalation's reason (people decide; the rules do not answer).
    consent_review: str | None = None


@dataclass
class _LaneWork:
    """What the events of one lane have added up to, in order."""

    conversation: Conversation | None
    results: list[EventResult] = field(default_factory=list)
    rows: list[OutboxRow] = field(default_factory=list)
    cancels: list[tuple[str, str]] = field(default_factory=list)
    holds: list[HoldChange] = field(default_factory=list)
    contacts: list[tuple[ContactRecord, LedgerRecord | None]] = field(default_factory=list)
    timers_set: list[TimerRecord] = field(default_factory=list)
    timers_cleared: list[tuple[str, str, datetime | None]] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)

    def add(self, work: _EventWork, result: EventResult) -> None:
        """Merge one cleanly routed event."""
        for contact_key, reason in work.cancels:  # rows made earlier in the lane, not stored yet
            self.rows = [
                _cancelled(row, reason) if _waiting_for(row, contact_key) else row
                for row in self.rows
            ]
        for change in work.holds:
            self.rows = [_held_or_released(row, change) for row in self.rows]
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
        self.policy = Policy.from_config(
            settings.escalation, settings.channels.slack.escalation_channel
        )
        self.policy = msgspec.structs.replace(
            self.policy, history_limit=settings.worker.history_limit
        )
        self.compliance = settings.compliance
        self.debug = settings.logging.debug
        self.max_attempts = settings.worker.max_attempts

    async def route(self, lane: ClaimedLane, book: ContactBook, now: datetime) -> LaneCommit:
        """The lane's commit: each event routed in order; a raising event stops the lane (it is
        retried later) unless it has used its tries, then it is `failed` and the lane goes on."""
        key = lane.lease.lane
        try:
            current = _decode_conversation(lane.conversation)
        except msgspec.DecodeError as exc:  # every event of the lane fails until it is mended
            current = None
            broken: Exception | None = exc
        else:
            broken = None
        done = _LaneWork(conversation=current)
        for event in lane.events:
            try:
                if broken is not None:
                    raise ValueError(f"stored conversation cannot be read: {broken}")
                work = await self._route_event(key, event, done.conversation, book, now)
            except Exception as exc:  # a poison event: never stalls the worker
                tries = lane.attempts.get(event.id, 0) + 1
                error = f"{type(exc).__name__}: {exc}"[:1000]
                if tries < self.max_attempts:
                    retry_at = now + timedelta(seconds=min(2**tries, 60))
                    return msgspec.structs.replace(
                        done.commit(lane, now), failed_attempt=event.id, retry_at=retry_at
                    )
                run = RunRecord(
                    event_id=event.id,
                    at=now,
                    rules_version=None,
                    error=f"failed after {tries} tries: {error}",
                )
                done.results.append(
                    EventResult(event_id=event.id, status=EventStatus.FAILED, run=run)
                )
                continue
            done.add(work, self._result(event, work, now))
        return done.commit(lane, now)

    @staticmethod
    def _result(event: Event, work: _EventWork, now: datetime) -> EventResult:
        decision = work.decision
        errors = [*work.errors, *(decision.errors if decision else [])]
        run = RunRecord(
            event_id=event.id,
            at=now,
            rules_version=decision.rules_version if decision else None,
            matched=list(decision.matched) if decision else [],
            actions=[msgspec.to_builtins(action) for action in decision.actions]
            if decision
            else [],
            transition=work.transition,
            outbox_ids=[row.id for row in work.rows],
            error="; ".join(errors) if errors else None,
            compliance=work.compliance,
            conversation=msgspec.to_builtins(work.view) if work.view is not None else None,
        )
        return EventResult(event_id=event.id, status=EventStatus.PROCESSED, run=run)

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
        work = _EventWork(conversation=None)
        decision = evaluate(ruleset, event, snapshot, now)
        skipped: list[str] = []
        for action in decision.actions:
            if action.kind in REPLAYED_ACTIONS:
                await self._action(work, event, action, book, now)
            elif action.kind != "drop":
                skipped.append(f"{action.rule_id}:{action.index} {action.kind}")
        return decision, work.rows, skipped

    # -- one event ------------------------------------------------------------------------

    async def _route_event(
        self,
        lane_key: str,
        event: Event,
        current: Conversation | None,
        book: ContactBook,
        now: datetime,
    ) -> _EventWork:
        work = _EventWork(conversation=current)
        conversational = not lane_key.startswith("event:")
        timer_trigger = _TIMER_TRIGGERS.get(event.type)
        if timer_trigger is not None:
            due = event.data.get("due_at")
            work.timers_cleared.append(
                (
                    lane_key,
                    event.type.removeprefix("timer."),
                    datetime.fromisoformat(due) if isinstance(due, str) else None,
                )
            )
            if current is not None:
                await self._fire(
                    work, event, timer_trigger, Context(event_id=event.id, now=now), book, now
                )
            return work
        receipt = _receipt(event, now)
        if receipt is not None:
            work.receipts.append(receipt)
        mapped = conversational and event.conversation_key != lane_key
        if mapped and event.type in (EventType.AGENT_REPLY, EventType.AGENT_ACTION):
            await self._agent_event(work, event, book, now)
            return work
        if event.type == EventType.AGENT_ACTION:  # its message is in no escalation thread
            work.transition = {
                "trigger": _trigger(event) or event.data.get("action_id"),
                "refused": f"the button's message {_message(event)} is no escalation post sent",
            }
        customer = (
            conversational
            and event.type in _CUSTOMER_MESSAGES
            and event.channel is not None
            and event.channel.value in CUSTOMER_CHANNELS
            and event.contact is not None
        )
        if customer:
            if await self._compliance(work, event, book, now):
                return work
            work.conversation = self._opened(work.conversation, lane_key, event)
            message = Message(
                direction=Direction.INBOUND, text=event.text or "", at=now, event_id=event.id
            )
            state_before = work.conversation.state
            await self._fire(
                work,
                event,
                "inbound",
                Context(event_id=event.id, now=now, message=message),
                book,
                now,
            )
            if work.consent_review is not None:  # people decide; the bot does not answer
                await self._ask_people(work, event, work.consent_review, book, now)
                return work
            if state_before in (ConversationState.ESCALATED, ConversationState.AGENT):
                return work  # with people: relayed to the thread, the bot stays silent
        ruleset = self._ruleset()
        if ruleset is None:
            work.errors.append("no rules loaded")
            return work
        snapshot = Snapshot(
            conversation=ConversationView(
                state=work.conversation.state.value,
                attributes=dict(work.conversation.attributes),
            )
            if work.conversation is not None
            else None,
            contact_timezone=None,
        )
        work.decision = evaluate(ruleset, event, snapshot, now)
        work.view = snapshot.conversation
        for action in work.decision.actions:
            await self._action(work, event, action, book, now)
        return work

    async def _compliance(
        self, work: _EventWork, event: Event, book: ContactBook, now: datetime
    ) -> bool:
        """Consent and help keywords; True when the message was one the rules must not see.
        A possible opt-out is not consumed: it sets `work.consent_review` (`AskPeople`)."""
        opt_out_type = event.data.get("opt_out_type")
        keyword: Keyword | None = consent.classify(
            event.text, opt_out_type if isinstance(opt_out_type, str) else None
        )
        if keyword is None or event.contact is None:
            return False
        key = consent.contact_key(event.contact.address)
        contact = await book.get(key)
        context = ConsentContext(
            event_id=event.id,
            now=now,
            address=event.contact.address,
            channel=event.channel.value if event.channel else None,
        )
        outcome = consent.on_keyword(
            ConsentState(contact.consent), keyword, context, self.compliance
        )
        work.compliance = keyword.kind.value
        if outcome.refused is not None and keyword.kind is KeywordKind.REVIEW:
            return False  # already opted out: an ordinary message
        if outcome.refused is not None and outcome.consumed:
            work.errors.append(f"consent: {outcome.refused}")
        await self._consent_changed(work, event, contact, outcome, book, now)
        return outcome.consumed

    async def _consent_changed(
        self,
        work: _EventWork,
        event: Event,
        contact: ContactRecord,
        outcome: ConsentOutcome,
        book: ContactBook,
        now: datetime,
    ) -> None:
        """The contact's new consent and its ledger entry (on a change), and the effects."""
        if outcome.ledger is not None:
            updated = msgspec.structs.replace(
                contact,
                consent=outcome.state.value,
                opted_out_at=now if outcome.state is ConsentState.OPTED_OUT else None,
            )
            book.put(updated)
            entry = LedgerRecord(
                at=outcome.ledger.at,
                event_id=event.id,
                channel=outcome.ledger.channel,
                change=outcome.ledger.change.value,
                reason=outcome.ledger.reason,
            )
            work.contacts.append((updated, entry))
        await self._effects(work, event, outcome.effects, book, now)

    async def _ask_people(
        self, work: _EventWork, event: Event, reason: str, book: ContactBook, now: datetime
    ) -> None:
        """A possible opt-out: escalate the conversation with the Opt out / Keep subscribed
        buttons. Already with people, the message went to the thread with those buttons."""
        if work.conversation is None or work.conversation.state is not ConversationState.BOT:
            return
        context = Context(event_id=event.id, now=now, reason=reason, consent_review=True)
        await self._fire(work, event, "escalate", context, book, now)

    async def _consent_decision(
        self,
        work: _EventWork,
        event: Event,
        decision: consent.Decision,
        book: ContactBook,
        now: datetime,
    ) -> None:
        """A person's Opt out / Keep subscribed on a possible opt-out, for the contact of the
        conversation the button's thread escalated; recorded in the ledger with this event."""
        current = work.conversation
        work.compliance = f"decision: {decision.value}"
        if current is None or current.contact is None:
            work.errors.append(f"consent decision {decision.value}: no contact to decide for")
            return
        contact = await book.get(consent.contact_key(current.contact))
        context = ConsentContext(
            event_id=event.id, now=now, address=current.contact, channel=current.channel
        )
        who = event.contact.address if event.contact else "someone"
        outcome = consent.on_decision(
            ConsentState(contact.consent), decision, f"{who} in Slack", context, self.compliance
        )
        if outcome.refused is not None:
            work.errors.append(f"consent: {outcome.refused}")
            return
        await self._consent_changed(work, event, contact, outcome, book, now)

    async def _agent_event(
        self, work: _EventWork, event: Event, book: ContactBook, now: datetime
    ) -> None:
        """A reply or a button press in the escalation thread of this lane's conversation."""
        agent = event.contact.address if event.contact else None
        if event.type == EventType.AGENT_REPLY:
            message = Message(
                direction=Direction.OUTBOUND,
                text=event.text or "",
                at=now,
                event_id=event.id,
                author=agent,
            )
            context = Context(event_id=event.id, now=now, message=message, agent=agent)
            await self._fire(work, event, "agent_reply", context, book, now)
            return
        action_id = event.data.get("action_id")
        decision = render.CONSENT_ACTIONS.get(action_id) if isinstance(action_id, str) else None
        if decision is not None:  # about the contact, not the escalation: any post will do
            await self._consent_decision(work, event, decision, book, now)
            return
        trigger = _trigger(event)
        if trigger is None:
            work.errors.append(f"unknown escalation action {event.data.get('action_id')!r}")
            return
        before = work.conversation.escalation if work.conversation is not None else None
        if before is not None and work.conversation is not None:
            stale = await self._stale_post(work.conversation.key, before, event)
            if stale is not None:
                work.transition = {"trigger": trigger, "refused": stale}
                return
        await self._fire(
            work, event, trigger, Context(event_id=event.id, now=now, agent=agent), book, now
        )
        refused = work.transition is None or "refused" in work.transition
        if before is not None and work.conversation is not None and not refused:
            # Show on the escalation post who claimed or closed it (Slack chat.update).
            payload = {"state": work.conversation.state.value, "agent": agent}
            work.rows.append(
                self._slack_row(
                    event,
                    f"{event.id}:escalation_update",
                    "escalation_update",
                    before.slack_channel,
                    payload,
                    now,
                    work.conversation.key,
                )
            )

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

    async def _fire(
        self,
        work: _EventWork,
        event: Event,
        trigger: str,
        context: Context,
        book: ContactBook,
        now: datetime,
    ) -> None:
        if work.conversation is None:
            work.transition = {"trigger": trigger, "refused": "no conversation"}
            return
        outcome: Outcome = conversation.apply(work.conversation, trigger, context, self.policy)
        if outcome.refused is not None:
            work.transition = {"trigger": trigger, "refused": outcome.refused}
            return
        assert outcome.transition is not None
        if work.transition is None or outcome.transition.source != outcome.transition.dest:
            work.transition = msgspec.to_builtins(outcome.transition)
        work.conversation = outcome.conversation
        await self._effects(work, event, outcome.effects, book, now)

    def _opened(self, current: Conversation | None, key: str, event: Event) -> Conversation:
        """The conversation, created on the customer's first message."""
        if current is not None:
            return current
        return Conversation(
            key=key,
            channel=event.channel.value if event.channel else None,
            contact=event.contact.address if event.contact else None,
        )

    # -- actions and effects -> rows ------------------------------------------------------

    async def _action(
        self, work: _EventWork, event: Event, action: Action, book: ContactBook, now: datetime
    ) -> None:
        params = action.params
        row_id = f"{event.id}:{action.rule_id}:{action.index}"
        if action.kind == "reply":
            if event.contact is None or event.channel is None:
                work.errors.append(f"rule {action.rule_id}: reply to an event without a sender")
                return
            if event.type not in _CUSTOMER_MESSAGES:
                # A reply answers someone who wrote; to a delivery receipt it would answer our
                # own message, and the receipt of that answer would be answered again.
                work.errors.append(f"rule {action.rule_id}: reply to a {event.type} event")
                return
            text = str(params["text"])
            payload = {"text": text, **_sender(event)}
            await self._customer_row(
                work,
                event,
                row_id,
                "reply",
                event.channel.value,
                event.contact.address,
                "conversational",
                payload,
                book,
                now,
            )
            self._record_bot(work, text, now)
        elif action.kind == "send":
            payload = {"text": str(params["text"])}
            if params.get("subject"):
                payload["subject"] = str(params["subject"])
            await self._customer_row(
                work,
                event,
                row_id,
                "send",
                str(params["channel"]),
                str(params["to"]),
                str(params["category"]),
                payload,
                book,
                now,
            )
        elif action.kind == "forward":
            work.rows.append(
                self._row(
                    event,
                    row_id,
                    "forward",
                    "http",
                    str(params["to"]),
                    "transactional",
                    {"event": msgspec.to_builtins(event)},
                    now,
                )
            )
        elif action.kind == "escalate":
            if work.conversation is None:
                work.errors.append(f"rule {action.rule_id}: escalate without a conversation")
                return
            context = Context(
                event_id=event.id,
                now=now,
                reason=_text(params.get("reason")),
                rule_id=action.rule_id,
                slack_channel=_text(params.get("channel")),
            )
            await self._fire(work, event, "escalate", context, book, now)
        elif action.kind == "tag" and work.conversation is not None:
            work.conversation = conversation.add_tags(
                work.conversation, [str(tag) for tag in params.get("tags", ())]
            )
        elif action.kind == "set" and work.conversation is not None:
            work.conversation = conversation.set_attributes(work.conversation, params)
        # `drop`: deliberately nothing.

    async def _effects(
        self,
        work: _EventWork,
        event: Event,
        effects: tuple[Effect, ...],
        book: ContactBook,
        now: datetime,
    ) -> None:
        key = work.conversation.key if work.conversation is not None else None
        for effect in effects:
            row_id = f"{event.id}:{effect.key}"
            if isinstance(effect, PostEscalation):
                payload = render.escalation_payload(effect, key or "", debug=self.debug)
                work.rows.append(
                    self._slack_row(
                        event, row_id, "escalation", effect.slack_channel, payload, now, key
                    )
                )
            elif isinstance(effect, PostReminder):
                work.rows.append(
                    self._slack_row(
                        event,
                        row_id,
                        "reminder",
                        effect.slack_channel,
                        render.reminder_payload(effect),
                        now,
                        key,
                    )
                )
            elif isinstance(effect, RelayToThread):
                payload = render.relay_payload(
                    effect, debug=self.debug, consent_review=work.consent_review, key=key
                )
                work.rows.append(
                    self._slack_row(
                        event, row_id, "relay_to_thread", effect.slack_channel, payload, now, key
                    )
                )
            elif isinstance(effect, RelayToCustomer):
                if effect.channel is None or effect.to is None:
                    work.errors.append("agent reply: the conversation has no customer address")
                    continue
                payload = {"text": effect.text, **_sender_of(work.conversation)}
                await self._customer_row(
                    work,
                    event,
                    row_id,
                    "relay_to_customer",
                    effect.channel,
                    effect.to,
                    effect.category,
                    payload,
                    book,
                    now,
                )
            elif isinstance(effect, SendNotice):
                channel = effect.channel or "sms"
                # A person's decision comes from Slack: answer from the conversation's number.
                payload = {"text": effect.text, **(_sender(event) or _sender_of(work.conversation))}
                await self._customer_row(
                    work,
                    event,
                    row_id,
                    str(effect.notice),
                    channel,
                    effect.to,
                    effect.category,
                    payload,
                    book,
                    now,
                    notice=True,
                )
            elif isinstance(effect, CancelPending):
                reason = f"contact opted out (event {event.id})"
                work.cancels.append((effect.contact_key, reason))
                work.rows = [
                    _cancelled(row, reason) if _waiting_for(row, effect.contact_key) else row
                    for row in work.rows
                ]
            elif isinstance(effect, HoldMarketing | ReleaseHeld):
                await self._hold_or_release(work, event, effect, book, now)
            elif isinstance(effect, AskPeople):
                work.consent_review = effect.reason
            elif isinstance(effect, ScheduleTimer) and key is not None:
                work.timers_set.append(
                    TimerRecord(conversation_key=key, timer=str(effect.timer), due_at=effect.due_at)
                )
            elif isinstance(effect, CancelTimer) and key is not None:
                work.timers_cleared.append((key, str(effect.timer), None))

    async def _hold_or_release(
        self,
        work: _EventWork,
        event: Event,
        effect: HoldMarketing | ReleaseHeld,
        book: ContactBook,
        now: datetime,
    ) -> None:
        """Hold the contact's waiting marketing (stored, and made earlier in this event), or
        release it to wait for quiet hours only."""
        if isinstance(effect, HoldMarketing):
            change = HoldChange.for_review(effect.contact_key, event.id)
        else:
            contact = await book.get(effect.contact_key)
            opens = quiet_hours.not_before(
                now, "marketing", contact.timezone, effect.contact_key, self.compliance
            )
            change = HoldChange(contact_key=effect.contact_key, hold=False, not_before=opens)
        work.holds.append(change)
        work.rows = [_held_or_released(row, change) for row in work.rows]

    async def _customer_row(
        self,
        work: _EventWork,
        event: Event,
        row_id: str,
        kind: str,
        channel: str,
        to: str,
        category: str,
        payload: dict[str, Any],
        book: ContactBook,
        now: datetime,
        *,
        notice: bool = False,
    ) -> None:
        """A row to a person: the consent gate, then quiet hours."""
        contact_key = consent.contact_key(to)
        row = self._row(
            event, row_id, kind, channel, to, category, payload, now, contact_key=contact_key
        )
        contact = await book.get(contact_key)
        gate = Gate.SEND if notice else consent.gate(ConsentState(contact.consent), category)
        if gate is Gate.CANCEL:
            row = _cancelled(row, "contact opted out")
        elif gate is Gate.HOLD:
            row = _held_or_released(row, HoldChange.for_review(contact_key, event.id))
        elif not notice and channel in ("sms", "whatsapp"):
            hold_until = quiet_hours.not_before(
                now, category, contact.timezone, contact_key, self.compliance
            )
            if hold_until is not None:
                row = msgspec.structs.replace(
                    row, status=OutboxStatus.DEFERRED, not_before=hold_until
                )
        work.rows.append(row)

    def _slack_row(
        self,
        event: Event,
        row_id: str,
        kind: str,
        slack_channel: str,
        payload: dict[str, Any],
        now: datetime,
        key: str | None,
    ) -> OutboxRow:
        return self._row(
            event,
            row_id,
            kind,
            "slack",
            slack_channel,
            "conversational",
            payload,
            now,
            conversation_key=key,
        )

    @staticmethod
    def _row(
        event: Event,
        row_id: str,
        kind: str,
        channel: str,
        to: str,
        category: str,
        payload: dict[str, Any],
        now: datetime,
        *,
        contact_key: str | None = None,
        conversation_key: str | None = None,
    ) -> OutboxRow:
        return OutboxRow(
            id=row_id,
            event_id=event.id,
            conversation_key=conversation_key or event.conversation_key,
            channel=channel,
            to=to,
            category=category,
            status=OutboxStatus.PENDING,
            kind=kind,
            payload=payload,
            created_at=now,
            contact_key=contact_key,
        )

    def _record_bot(self, work: _EventWork, text: str, now: datetime) -> None:
        if work.conversation is None:
            return
        message = Message(direction=Direction.OUTBOUND, text=text, at=now, author="bot")
        work.conversation = conversation.record_message(
            work.conversation, message, self.policy.history_limit
        )


def _receipt(event: Event, now: datetime) -> Receipt | None:
    """A Twilio status callback is the delivery receipt of the row sent with its sid."""
    if event.type != EventType.MESSAGE_STATUS:
        return None
    sid, status = event.data.get("message_sid"), event.data.get("status")
    if not isinstance(sid, str) or not isinstance(status, str):
        return None
    code = event.data.get("error_code")
    return Receipt(
        provider_message_id=sid,
        status=status,
        error_code=str(code) if code not in (None, "") else None,
        at=now,
    )


def _decode_conversation(record: ConversationRecord | None) -> Conversation | None:
    return _conversation_decoder.decode(record.body) if record is not None else None


def _sender(event: Event) -> dict[str, str]:
    """`from`: the number or address the customer wrote to, so the answer comes from it."""
    ours = event.data.get("to")
    return {"from": ours} if isinstance(ours, str) and ours else {}


def _sender_of(current: Conversation | None) -> dict[str, str]:
    """`from` for an agent's reply: the number of the conversation key (`sms:+1...:+1...`)."""
    if current is None or current.channel not in (Channel.SMS, Channel.WHATSAPP):
        return {}
    ours = keys.our_number(current.key)
    return {"from": ours} if ours else {}


def _trigger(event: Event) -> str | None:
    """The machine trigger of a button press (`claim`, `resolve`, `back_to_bot`), if ours."""
    action_id = event.data.get("action_id")
    return render.ACTION_TRIGGERS.get(action_id) if isinstance(action_id, str) else None


def _message(event: Event) -> str:
    """The message a button press came from, as a person reads it in a run's record."""
    return f"(ts {event.data.get('message_ts')} in {event.data.get('channel')})"


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def _waiting_for(row: OutboxRow, contact_key: str) -> bool:
    return row.contact_key == contact_key and row.status in (
        OutboxStatus.PENDING,
        OutboxStatus.DEFERRED,
    )


def _held_or_released(row: OutboxRow, change: HoldChange) -> OutboxRow:
    """A row not stored yet, as the store's hold or release would leave it."""
    if row.contact_key != change.contact_key:
        return row
    if change.hold:
        if row.category != "marketing" or row.status not in (
            OutboxStatus.PENDING,
            OutboxStatus.DEFERRED,
        ):
            return row
        return msgspec.structs.replace(
            row, status=OutboxStatus.DEFERRED, not_before=HELD_UNTIL, last_error=change.reason
        )
    if row.status is not OutboxStatus.DEFERRED or row.not_before != HELD_UNTIL:
        return row
    status = OutboxStatus.PENDING if change.not_before is None else OutboxStatus.DEFERRED
    return msgspec.structs.replace(
        row, status=status, not_before=change.not_before, last_error=None
    )


def _cancelled(row: OutboxRow, reason: str) -> OutboxRow:
    return msgspec.structs.replace(row, status=OutboxStatus.CANCELLED, last_error=reason)
