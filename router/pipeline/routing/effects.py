"""What the machines emit, applied to one event's work: each effect kind has one handler in
`HANDLERS`, which makes its outbox row, timer, cancel or hold (SPEC §7-8).

`fire` runs the conversation machine and applies its outcome; the consent machine's effects
come through `apply` as well. The row of an effect is `<event id>:<effect key>`, so routing an
event again makes no second row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from router.pipeline import render
from router.pipeline.routing.rows import (
    Destination,
    cancel_waiting,
    customer_row,
    hold_or_release,
    sender,
    sender_of,
    slack_row,
)
from router.pipeline.routing.work import Step
from router.store.records import HoldChange, TimerRecord
from statemachines import conversation, quiet_hours
from statemachines.conversation import Context
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

#: A handler of one effect kind (the second argument is an effect of that kind).
EffectHandler = Callable[[Step, Any], Awaitable[None]]


async def fire(step: Step, trigger: str, context: Context) -> None:
    """Fire a conversation machine trigger: the transition goes on the run record (a refusal
    too), the conversation moves, and its effects are applied."""
    work = step.work
    if work.conversation is None:
        work.transition = {"trigger": trigger, "refused": "no conversation"}
        return
    outcome = conversation.apply(work.conversation, trigger, context, step.config.policy)
    if outcome.refused is not None:
        work.transition = {"trigger": trigger, "refused": outcome.refused}
        return
    assert outcome.transition is not None
    if work.transition is None or outcome.transition.source != outcome.transition.dest:
        work.transition = msgspec.to_builtins(outcome.transition)
    work.conversation = outcome.conversation
    await apply(step, outcome.effects)


async def apply(step: Step, effects: tuple[Effect, ...]) -> None:
    """Each effect, in order, through its kind's handler."""
    for effect in effects:
        await HANDLERS[type(effect)](step, effect)


def _row_id(step: Step, effect: Effect) -> str:
    return f"{step.event.id}:{effect.key}"


async def _post_escalation(step: Step, effect: PostEscalation) -> None:
    payload = render.escalation_payload(
        effect, step.conversation_key or "", debug=step.config.debug
    )
    slack_row(step, _row_id(step, effect), "escalation", effect.slack_channel, payload)


async def _post_reminder(step: Step, effect: PostReminder) -> None:
    payload = render.reminder_payload(effect)
    slack_row(step, _row_id(step, effect), "reminder", effect.slack_channel, payload)


async def _relay_to_thread(step: Step, effect: RelayToThread) -> None:
    payload = render.relay_payload(
        effect,
        debug=step.config.debug,
        consent_review=step.work.consent_review,
        key=step.conversation_key,
    )
    slack_row(step, _row_id(step, effect), "relay_to_thread", effect.slack_channel, payload)


async def _relay_to_customer(step: Step, effect: RelayToCustomer) -> None:
    if effect.channel is None or effect.to is None:
        step.work.errors.append("agent reply: the conversation has no customer address")
        return
    to = Destination(effect.channel, effect.to, effect.category)
    payload = {"text": effect.text, **sender_of(step.work.conversation)}
    await customer_row(step, _row_id(step, effect), "relay_to_customer", to, payload)


async def _send_notice(step: Step, effect: SendNotice) -> None:
    to = Destination(effect.channel or "sms", effect.to, effect.category)
    # A person's decision comes from Slack: answer from the conversation's number.
    payload = {"text": effect.text, **(sender(step.event) or sender_of(step.work.conversation))}
    await customer_row(step, _row_id(step, effect), str(effect.notice), to, payload, notice=True)


async def _cancel_pending(step: Step, effect: CancelPending) -> None:
    """Cancel the contact's waiting rows: stored ones (by the store), and this event's."""
    reason = f"contact opted out (event {step.event.id})"
    step.work.cancels.append((effect.contact_key, reason))
    step.work.rows = cancel_waiting(step.work.rows, effect.contact_key, reason)


async def _hold_marketing(step: Step, effect: HoldMarketing) -> None:
    """Hold the contact's waiting marketing: stored, and made earlier in this event."""
    _change_holds(step, HoldChange.for_review(effect.contact_key, step.event.id))


async def _release_held(step: Step, effect: ReleaseHeld) -> None:
    """Release the contact's held marketing to wait for quiet hours only."""
    contact = await step.book.get(effect.contact_key)
    opens = quiet_hours.not_before(
        step.now, "marketing", contact.timezone, effect.contact_key, step.config.compliance
    )
    _change_holds(step, HoldChange(contact_key=effect.contact_key, hold=False, not_before=opens))


def _change_holds(step: Step, change: HoldChange) -> None:
    step.work.holds.append(change)
    step.work.rows = hold_or_release(step.work.rows, change)


async def _ask_people(step: Step, effect: AskPeople) -> None:
    step.work.consent_review = effect.reason


async def _schedule_timer(step: Step, effect: ScheduleTimer) -> None:
    key = step.conversation_key
    if key is not None:
        timer = TimerRecord(conversation_key=key, timer=str(effect.timer), due_at=effect.due_at)
        step.work.timers_set.append(timer)


async def _cancel_timer(step: Step, effect: CancelTimer) -> None:
    key = step.conversation_key
    if key is not None:
        step.work.timers_cleared.append((key, str(effect.timer), None))


#: Effect kind -> its handler; every kind of `statemachines.effects.Effect` has one.
HANDLERS: dict[type[Effect], EffectHandler] = {
    PostEscalation: _post_escalation,
    PostReminder: _post_reminder,
    RelayToThread: _relay_to_thread,
    RelayToCustomer: _relay_to_customer,
    SendNotice: _send_notice,
    CancelPending: _cancel_pending,
    HoldMarketing: _hold_marketing,
    ReleaseHeld: _release_held,
    AskPeople: _ask_people,
    ScheduleTimer: _schedule_timer,
    CancelTimer: _cancel_timer,
}
