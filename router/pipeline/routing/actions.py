"""What the rules decided, done for one event: each action kind (`router.rules.actions.ACTIONS`)
has one handler in `HANDLERS` (SPEC §6, §8).

`reply`, `send` and `forward` become rows (`<event id>:<rule id>:<index>`), through the consent
gate and quiet hours when they go to a person; `escalate` fires the conversation machine; `tag`
and `set` change the conversation; `drop` does nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from router.events import EventType
from router.pipeline.routing.effects import fire
from router.pipeline.routing.rows import Destination, customer_row, new_row, sender
from router.pipeline.routing.work import Step
from router.rules.model import Action
from statemachines import conversation
from statemachines.conversation import Context, Direction, Message

#: A handler of one action kind.
ActionHandler = Callable[[Step, Action], Awaitable[None]]
#: Event types of a customer writing in.
CUSTOMER_MESSAGES = frozenset({EventType.MESSAGE_RECEIVED, EventType.EMAIL_RECEIVED})
#: What a replay performs again: the actions that only make rows. `escalate`, `tag` and `set`
#: would move a conversation that has moved on since; a replay leaves them alone.
REPLAYED_ACTIONS = frozenset({"reply", "send", "forward"})


async def perform(step: Step, action: Action) -> None:
    """One action, through its kind's handler."""
    await HANDLERS[action.kind](step, action)


def _row_id(step: Step, action: Action) -> str:
    return f"{step.event.id}:{action.rule_id}:{action.index}"


async def _reply(step: Step, action: Action) -> None:
    """Answer the customer who wrote, from the number or address they wrote to."""
    event, work = step.event, step.work
    if event.contact is None or event.channel is None:
        work.errors.append(f"rule {action.rule_id}: reply to an event without a sender")
        return
    if event.type not in CUSTOMER_MESSAGES:
        # A reply answers someone who wrote; to a delivery receipt it would answer our own
        # message, and the receipt of that answer would be answered again.
        work.errors.append(f"rule {action.rule_id}: reply to a {event.type} event")
        return
    text = str(action.params["text"])
    to = Destination(event.channel.value, event.contact.address, "conversational")
    await customer_row(step, _row_id(step, action), "reply", to, {"text": text, **sender(event)})
    _record_bot(step, text)


def _record_bot(step: Step, text: str) -> None:
    """The bot's answer in the conversation's history."""
    current = step.work.conversation
    if current is None:
        return
    message = Message(direction=Direction.OUTBOUND, text=text, at=step.now, author="bot")
    step.work.conversation = conversation.record_message(
        current, message, step.config.policy.history_limit
    )


async def _send(step: Step, action: Action) -> None:
    params = action.params
    payload = {"text": str(params["text"])}
    if params.get("subject"):
        payload["subject"] = str(params["subject"])
    to = Destination(str(params["channel"]), str(params["to"]), str(params["category"]))
    await customer_row(step, _row_id(step, action), "send", to, payload)


async def _forward(step: Step, action: Action) -> None:
    to = Destination("http", str(action.params["to"]), "transactional")
    payload = {"event": msgspec.to_builtins(step.event)}
    step.work.rows.append(new_row(step, _row_id(step, action), "forward", to, payload))


async def _escalate(step: Step, action: Action) -> None:
    if step.work.conversation is None:
        step.work.errors.append(f"rule {action.rule_id}: escalate without a conversation")
        return
    context = Context(
        event_id=step.event.id,
        now=step.now,
        reason=_text(action.params.get("reason")),
        rule_id=action.rule_id,
        slack_channel=_text(action.params.get("channel")),
    )
    await fire(step, "escalate", context)


async def _tag(step: Step, action: Action) -> None:
    if step.work.conversation is not None:
        tags = [str(tag) for tag in action.params.get("tags", ())]
        step.work.conversation = conversation.add_tags(step.work.conversation, tags)


async def _set(step: Step, action: Action) -> None:
    if step.work.conversation is not None:
        step.work.conversation = conversation.set_attributes(step.work.conversation, action.params)


async def _drop(step: Step, action: Action) -> None:
    """Deliberately nothing: the event is processed and nobody is answered."""


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


#: Action kind -> its handler; every kind of `router.rules.actions.ACTIONS` has one.
HANDLERS: dict[str, ActionHandler] = {
    "reply": _reply,
    "send": _send,
    "forward": _forward,
    "escalate": _escalate,
    "tag": _tag,
    "set": _set,
    "drop": _drop,
}
