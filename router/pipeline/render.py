"""Slack payloads for the conversation machine's effects: what an outbox row stores.

Pure functions, no I/O and no provider SDK: the Slack sender posts these dicts as they are.
Customer text is shown to agents (it is the conversation) but escaped, so it cannot mention
`<!channel>` or forge a link; the contact is masked unless `debug` is on.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from router.logs import mask_address
from router.slack_markup import escape
from statemachines.consent import Decision
from statemachines.effects import HistoryLine, PostEscalation, PostReminder, RelayToThread

ACTION_CLAIM = "switchboard.claim"
ACTION_RESOLVE = "switchboard.resolve"
ACTION_BACK_TO_BOT = "switchboard.back_to_bot"
#: Button action id -> the conversation machine trigger it fires.
ACTION_TRIGGERS: dict[str, str] = {
    ACTION_CLAIM: "claim",
    ACTION_RESOLVE: "resolve",
    ACTION_BACK_TO_BOT: "back_to_bot",
}

ACTION_OPT_OUT = "switchboard.consent.opt_out"
ACTION_KEEP_SUBSCRIBED = "switchboard.consent.keep_subscribed"
#: Button action id -> the person's answer to a possible opt-out (SPEC §7 `review`).
CONSENT_ACTIONS: dict[str, Decision] = {
    ACTION_OPT_OUT: Decision.OPT_OUT,
    ACTION_KEEP_SUBSCRIBED: Decision.KEEP_SUBSCRIBED,
}

#: Slack Block Kit limits: blocks per message, section text, section field, top-level text.
MAX_BLOCKS = 50
MAX_SECTION = 3000
MAX_FIELD = 2000
MAX_TEXT = 40_000
#: One history message at most, escaped, so a long email cannot crowd out the others.
MAX_LINE = 1000
_ARROWS = {"in": "→ customer", "out": "← reply"}
_FIXED_BLOCKS = 4  # header, fields, history caption, actions


def _clip(text: str, limit: int) -> str:
    """Cut escaped text to `limit` chars with an ellipsis, never inside an `&..;` entity."""
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    amp = cut.rfind("&", max(0, len(cut) - 4))
    if amp != -1 and ";" not in cut[amp:]:
        cut = cut[:amp]
    return cut + "…"


def _when(at: datetime) -> str:
    """A Slack date token: the agent sees it in their own time zone, UTC as the fallback."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    fallback = at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"<!date^{int(at.timestamp())}^{{date_short_pretty}} {{time}}|{fallback}>"


def _line(message: HistoryLine) -> str:
    arrow = _ARROWS.get(message.direction, escape(message.direction))
    return f"*{arrow}* {_when(message.at)}\n{_clip(escape(message.text), MAX_LINE)}"


def _history_sections(history: tuple[HistoryLine, ...]) -> tuple[list[str], int]:
    """Pack the most recent lines into section texts, oldest first; also the count left out."""
    sections: list[list[str]] = []
    size = 0
    kept = 0
    for message in reversed(history):
        line = _line(message)
        if sections and size + 1 + len(line) <= MAX_SECTION:
            sections[-1].insert(0, line)
            size += 1 + len(line)
        elif len(sections) < MAX_BLOCKS - _FIXED_BLOCKS:
            sections.append([line])
            size = len(line)
        else:
            break
        kept += 1
    return ["\n".join(lines) for lines in reversed(sections)], len(history) - kept


def _mrkdwn(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


def _button(label: str, action_id: str, value: str) -> dict[str, Any]:
    return {
        "type": "button",
        "text": {"type": "plain_text", "text": label},
        "action_id": action_id,
        "value": value,
    }


def _consent_buttons(conversation_key: str) -> list[dict[str, Any]]:
    """Opt out / Keep subscribed: a person decides whether the message was a revocation."""
    opt_out = _button("Opt out", ACTION_OPT_OUT, conversation_key)
    opt_out["style"] = "danger"
    return [opt_out, _button("Keep subscribed", ACTION_KEEP_SUBSCRIBED, conversation_key)]


def escalation_payload(
    effect: PostEscalation, conversation_key: str, *, debug: bool
) -> dict[str, Any]:
    """The escalation post: who, why, which rule, the last messages, and claim/resolve buttons."""
    contact = effect.contact if debug else mask_address(effect.contact)
    who = escape(contact) if contact else "unknown"
    reason = escape(effect.reason) if effect.reason else "not given"
    rule = f"`{escape(effect.rule_id)}`" if effect.rule_id else "none"
    sections, dropped = _history_sections(effect.history)
    caption = "Last messages, oldest first" if sections else "No messages recorded"
    if dropped:
        caption += f" ({dropped} earlier not shown)"
    claim = _button("Claim", ACTION_CLAIM, conversation_key)
    claim["style"] = "primary"
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": "A customer needs a person"}},
        {
            "type": "section",
            "fields": [
                _mrkdwn(_clip(f"*Contact*\n{who}", MAX_FIELD)),
                _mrkdwn(_clip(f"*Reason*\n{reason}", MAX_FIELD)),
                _mrkdwn(_clip(f"*Rule*\n{rule}", MAX_FIELD)),
            ],
        },
        {"type": "context", "elements": [_mrkdwn(caption)]},
        *({"type": "section", "text": _mrkdwn(text)} for text in sections),
        {
            "type": "actions",
            "elements": [
                claim,
                _button("Resolve", ACTION_RESOLVE, conversation_key),
                _button("Back to bot", ACTION_BACK_TO_BOT, conversation_key),
            ],
        },
    ]
    if effect.consent_review:
        blocks.append(_consent_block(conversation_key))
    text = _clip(f"A customer needs a person: {who} ({reason})", MAX_TEXT)
    return {"text": text, "blocks": blocks, "conversation_key": conversation_key}


def reminder_payload(effect: PostReminder) -> dict[str, Any]:
    """A nudge in the escalation thread: the conversation is still unclaimed."""
    return {
        "text": ":alarm_clock: Reminder: nobody has claimed this conversation yet.",
        "thread_ts": effect.thread_ts,
    }


def relay_payload(
    effect: RelayToThread,
    *,
    debug: bool,
    consent_review: str | None = None,
    key: str | None = None,
) -> dict[str, Any]:
    """A customer message copied into the thread; shown in full (escaped) whatever `debug`.
    A possible opt-out (`consent_review`, the reason) carries the Opt out / Keep subscribed
    buttons for conversation `key`."""
    del debug  # the text is the conversation itself: agents see it either way
    text = _clip(f"Customer: {escape(effect.text)}", MAX_TEXT)
    payload: dict[str, Any] = {"text": text, "thread_ts": effect.thread_ts}
    if consent_review is not None:
        ask = f"*{escape(consent_review).capitalize()}*: does the customer want no more messages?"
        payload["blocks"] = [
            {"type": "section", "text": _mrkdwn(_clip(text, MAX_SECTION))},
            {"type": "context", "elements": [_mrkdwn(ask)]},
            _consent_block(key or ""),
        ]
    return payload


def _consent_block(conversation_key: str) -> dict[str, Any]:
    """The actions block of a possible opt-out: marketing to the contact waits for this."""
    return {
        "type": "actions",
        "block_id": "consent",
        "elements": _consent_buttons(conversation_key),
    }


#: What an escalation post says once people act on it, by the conversation's new state.
_OUTCOMES = {
    "agent": ":raising_hand: Claimed by {who}",
    "closed": ":white_check_mark: Resolved by {who}",
    "bot": ":robot_face: Handed back to the bot by {who}",
}


def escalation_update_payload(
    post: dict[str, Any], state: str, agent: str | None, conversation_key: str
) -> dict[str, Any]:
    """The escalation post as `chat.update` rewrites it after a claim, a resolve or a hand-back:
    the same context, a line saying who did what, and only the buttons still useful (a claimed
    conversation can still be resolved or handed back; a finished one has none)."""
    who = f"<@{escape(agent)}>" if agent else "someone"
    line = _OUTCOMES.get(state, "{who} acted on it").format(who=who)
    kept = [  # the buttons still useful follow; a possible opt-out still waits for its answer
        block
        for block in post.get("blocks", [])
        if block.get("type") != "actions" or block.get("block_id") == "consent"
    ]
    blocks: list[dict[str, Any]] = [*kept, {"type": "context", "elements": [_mrkdwn(line)]}]
    if state == "agent":
        blocks.append(
            {
                "type": "actions",
                "elements": [
                    _button("Resolve", ACTION_RESOLVE, conversation_key),
                    _button("Back to bot", ACTION_BACK_TO_BOT, conversation_key),
                ],
            }
        )
    text = _clip(f"{post.get('text', 'Escalation')} — {line}", MAX_TEXT)
    return {"text": text, "blocks": blocks[-MAX_BLOCKS:]}
