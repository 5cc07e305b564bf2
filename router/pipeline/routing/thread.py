"""Events in an escalation thread (SPEC §7): an agent's reply goes to the customer; a button
press fires `claim`, `resolve` or `back_to_bot`, or answers a possible opt-out. A button acts
only on its own escalation's post: one on an earlier escalation's post, or on a message that
is no escalation post, is refused with the reason on the run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from router.events import Event, EventType
from router.pipeline import render
from router.pipeline.routing import compliance, effects
from router.pipeline.routing.rows import slack_row
from router.pipeline.routing.work import Step
from router.store.records import OutboxRow
from statemachines.conversation import Context, Direction, Escalation, Message

#: The latest sent escalation post of a conversation (`Store.escalation_post`).
PostLookup = Callable[[str], Awaitable[OutboxRow | None]]


async def agent_event(step: Step, posts: PostLookup) -> None:
    """A reply or a button press in the escalation thread of this lane's conversation."""
    event = step.event
    if event.type == EventType.AGENT_REPLY:
        await _agent_reply(step)
        return
    action_id = event.data.get("action_id")
    decision = render.CONSENT_ACTIONS.get(action_id) if isinstance(action_id, str) else None
    if decision is not None:  # about the contact, not the escalation: any post will do
        await compliance.decision(step, decision)
        return
    trigger = _trigger(event)
    if trigger is None:
        step.work.errors.append(f"unknown escalation action {action_id!r}")
        return
    await _button(step, trigger, posts)


def refuse_stray_button(step: Step) -> None:
    """A button press whose message is in no escalation thread acts on nothing."""
    event = step.event
    if event.type == EventType.AGENT_ACTION:
        step.work.transition = {
            "trigger": _trigger(event) or event.data.get("action_id"),
            "refused": f"the button's message {_message(event)} is no escalation post sent",
        }


async def _agent_reply(step: Step) -> None:
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


async def _button(step: Step, trigger: str, posts: PostLookup) -> None:
    """Claim, resolve or back to bot, on the open escalation's own post only; the post then
    shows who did it (Slack `chat.update`)."""
    work, event = step.work, step.event
    before = work.conversation.escalation if work.conversation is not None else None
    if before is not None and work.conversation is not None:
        stale = await _stale_post(step, work.conversation.key, before, posts)
        if stale is not None:
            work.transition = {"trigger": trigger, "refused": stale}
            return
    agent = event.contact.address if event.contact else None
    await effects.fire(step, trigger, Context(event_id=event.id, now=step.now, agent=agent))
    refused = work.transition is None or "refused" in work.transition
    if before is not None and work.conversation is not None and not refused:
        payload = {"state": work.conversation.state.value, "agent": agent}
        row_id = f"{event.id}:escalation_update"
        slack_row(step, row_id, "escalation_update", before.slack_channel, payload)


async def _stale_post(
    step: Step, conversation_key: str, escalation: Escalation, posts: PostLookup
) -> str | None:
    """Why a button cannot act on the open escalation (None: it can). Its post is the
    latest escalation post sent, and the one the open escalation's event made; a newer
    escalation whose post is not sent yet leaves an older post the latest."""
    event = step.event
    latest = await posts(conversation_key)
    clicked = (event.data.get("channel"), event.data.get("message_ts"))
    if latest is None or (latest.to, latest.provider_message_id) != clicked:
        return f"the button's message {_message(event)} is the post of an earlier escalation"
    if escalation.event_id is not None and latest.event_id != escalation.event_id:
        return (
            f"the button's message {_message(event)} is the post of an earlier escalation; "
            "the open one's post is not sent yet"
        )
    return None


def _trigger(event: Event) -> str | None:
    """The machine trigger of a button press (`claim`, `resolve`, `back_to_bot`), if ours."""
    action_id = event.data.get("action_id")
    return render.ACTION_TRIGGERS.get(action_id) if isinstance(action_id, str) else None


def _message(event: Event) -> str:
    """The message a button press came from, as a person reads it in a run's record."""
    return f"(ts {event.data.get('message_ts')} in {event.data.get('channel')})"
