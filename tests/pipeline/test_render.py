"""The Slack payloads an agent sees for escalations, reminders and relayed messages."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest

from router import logs
from router.pipeline import render
from statemachines.definitions.conversation import TRANSITIONS
from statemachines.effects import HistoryLine, PostEscalation, PostReminder, RelayToThread

PHONE = "+15551230001"
KEY = f"sms:{PHONE}:+15550009999"
T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _logs_not_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logs, "_DEBUG", False)


def escalation(history: list[HistoryLine] | None = None, **fields: Any) -> PostEscalation:
    values: dict[str, Any] = {
        "slack_channel": "C0ESCALATE",
        "contact": PHONE,
        "reason": "asked for a human",
        "rule_id": "vip-escalate",
        "history": tuple(history or ()),
    }
    return PostEscalation(**{**values, **fields})


def line(i: int, text: str | None = None, direction: str = "in") -> HistoryLine:
    return HistoryLine(
        direction=direction, text=text or f"message {i}", at=T0 + timedelta(minutes=i)
    )


def texts(node: Any) -> Iterator[str]:
    """Every text an agent can read: the `text` of each text object, anywhere in the payload."""
    if isinstance(node, dict):
        if node.get("type") in ("plain_text", "mrkdwn"):
            yield node["text"]
        for value in node.values():
            yield from texts(value)
    elif isinstance(node, list):
        for item in node:
            yield from texts(item)


def history_text(payload: dict[str, Any]) -> str:
    return "\n".join(
        b["text"]["text"] for b in payload["blocks"] if b["type"] == "section" and "text" in b
    )


def check_block_kit(payload: dict[str, Any]) -> None:
    """Slack's published limits for the blocks we use; Slack rejects the post otherwise."""
    assert json.loads(json.dumps(payload)) == payload
    blocks = payload["blocks"]
    assert 0 < len(blocks) <= 50
    assert len(payload["text"]) <= 40_000
    for block in blocks:
        kind = block["type"]
        if kind == "header":
            assert block["text"]["type"] == "plain_text"
            assert 0 < len(block["text"]["text"]) <= 150
        elif kind == "section":
            assert "text" in block or "fields" in block
            if "text" in block:
                assert 0 < len(block["text"]["text"]) <= 3000
            assert len(block.get("fields", [])) <= 10
            assert all(0 < len(f["text"]) <= 2000 for f in block.get("fields", []))
        elif kind == "context":
            assert 0 < len(block["elements"]) <= 10
        elif kind == "actions":
            assert 0 < len(block["elements"]) <= 25
            ids = [e["action_id"] for e in block["elements"]]
            assert len(set(ids)) == len(ids)
            for button in block["elements"]:
                assert button["type"] == "button"
                assert button["text"]["type"] == "plain_text"
                assert 0 < len(button["text"]["text"]) <= 75
                assert len(button["action_id"]) <= 255
                assert 0 < len(button["value"]) <= 2000
                assert button.get("style", "primary") in ("primary", "danger")
        else:
            pytest.fail(f"unexpected block type {kind}")


def test_escalation_masks_the_contact_unless_debug() -> None:
    masked = render.escalation_payload(escalation([line(1)]), KEY, debug=False)
    check_block_kit(masked)
    shown = "\n".join(texts(masked)) + masked["text"]
    assert PHONE not in shown
    assert "+1555*****01" in shown
    assert "asked for a human" in shown
    assert "vip-escalate" in shown

    clear = render.escalation_payload(escalation([line(1)]), KEY, debug=True)
    assert PHONE in "\n".join(texts(clear))
    assert clear["conversation_key"] == KEY


def test_escalation_buttons_map_back_to_the_conversation() -> None:
    payload = render.escalation_payload(escalation(), KEY, debug=False)
    check_block_kit(payload)
    (actions,) = [b for b in payload["blocks"] if b["type"] == "actions"]
    buttons = {b["action_id"]: b for b in actions["elements"]}
    assert list(buttons) == ["switchboard.claim", "switchboard.resolve", "switchboard.back_to_bot"]
    assert {b["value"] for b in buttons.values()} == {KEY}
    assert buttons["switchboard.claim"]["style"] == "primary"
    assert "style" not in buttons["switchboard.resolve"]
    triggers = {t["trigger"] for t in TRANSITIONS}
    assert render.ACTION_TRIGGERS == {
        "switchboard.claim": "claim",
        "switchboard.resolve": "resolve",
        "switchboard.back_to_bot": "back_to_bot",
    }
    assert set(render.ACTION_TRIGGERS.values()) <= triggers


def test_escalation_without_context_still_valid() -> None:
    payload = render.escalation_payload(
        escalation(contact=None, reason=None, rule_id=None), KEY, debug=False
    )
    check_block_kit(payload)
    shown = "\n".join(texts(payload))
    assert "unknown" in shown
    assert "No messages recorded" in shown


def test_history_shows_direction_time_and_text_oldest_first() -> None:
    history = [line(1, "hello"), line(2, "Hi! How can I help?", "out"), line(3, "a person please")]
    text = history_text(render.escalation_payload(escalation(history), KEY, debug=False))
    assert text.index("hello") < text.index("How can I help") < text.index("a person please")
    assert "*→ customer*" in text and "*← reply*" in text
    at = int((T0 + timedelta(minutes=3)).timestamp())
    assert f"<!date^{at}^{{date_short_pretty}} {{time}}|2026-11-23 15:03 UTC>" in text


def test_long_history_keeps_the_most_recent_within_limits() -> None:
    history = [line(i, f"msg-{i:03d} " + "x" * 2000) for i in range(200)]
    payload = render.escalation_payload(escalation(history), KEY, debug=False)
    check_block_kit(payload)
    text = history_text(payload)
    assert "msg-199" in text
    assert "msg-000" not in text
    shown = [i for i in range(200) if f"msg-{i:03d}" in text]
    assert shown == list(range(shown[0], 200))  # a contiguous, most-recent run, in order
    assert text.index("msg-198") < text.index("msg-199")
    assert f"({shown[0]} earlier not shown)" in "\n".join(texts(payload))
    assert "…" in text  # each long message was cut


def test_customer_text_cannot_mention_or_link() -> None:
    attack = "<!channel> see <https://evil.example|your bank> & <@U123>"
    payload = render.escalation_payload(
        escalation([line(1, attack)], reason="<!here>", contact="<!everyone>"), KEY, debug=True
    )
    check_block_kit(payload)
    for text in [*texts(payload), payload["text"]]:
        assert "<!channel>" not in text and "<!here>" not in text and "<!everyone>" not in text
        assert "<https://" not in text and "<@U123>" not in text
    assert (
        "&lt;!channel&gt; see &lt;https://evil.example|your bank&gt; &amp; &lt;@U123&gt;"
        in history_text(payload)
    )


def test_truncation_never_splits_an_escape() -> None:
    history = [line(1, "&" * 5000)]
    text = history_text(render.escalation_payload(escalation(history), KEY, debug=False))
    body = text.split("\n", 1)[1]
    assert body.endswith("&amp;…")
    assert body[:-1].replace("&amp;", "") == ""


def test_reminder_goes_to_the_thread() -> None:
    payload = render.reminder_payload(PostReminder(slack_channel="C0ESCALATE", thread_ts="17.01"))
    assert payload["thread_ts"] == "17.01"
    assert "nobody has claimed this conversation yet" in payload["text"]


@pytest.mark.parametrize("debug", [False, True])
def test_relay_shows_the_customer_text_escaped(debug: bool) -> None:
    effect = RelayToThread(slack_channel="C0ESCALATE", thread_ts="17.01", text="call me <!channel>")
    payload = render.relay_payload(effect, debug=debug)
    assert payload == {"text": "Customer: call me &lt;!channel&gt;", "thread_ts": "17.01"}


def test_relay_of_a_huge_message_fits_slack() -> None:
    effect = RelayToThread(slack_channel="C0ESCALATE", thread_ts=None, text="y" * 50_000)
    payload = render.relay_payload(effect, debug=False)
    assert len(payload["text"]) <= 40_000
    assert payload["text"].startswith("Customer: yyy") and payload["thread_ts"] is None


def test_an_update_keeps_the_context_says_who_and_keeps_only_useful_buttons() -> None:
    post = render.escalation_payload(escalation([line(1)]), KEY, debug=False)
    claimed = render.escalation_update_payload(post, "agent", "U0AGENT", KEY)
    assert post["blocks"][:-1] == claimed["blocks"][: len(post["blocks"]) - 1]
    actions = [b for b in claimed["blocks"] if b["type"] == "actions"]
    assert [e["action_id"] for e in actions[0]["elements"]] == [
        render.ACTION_RESOLVE,
        render.ACTION_BACK_TO_BOT,
    ]
    assert "Claimed by <@U0AGENT>" in json.dumps(claimed["blocks"])
    resolved = render.escalation_update_payload(post, "closed", "U0<!channel>", KEY)
    assert not [b for b in resolved["blocks"] if b["type"] == "actions"]
    assert "<!channel>" not in json.dumps(resolved)


def _action_ids(payload: dict[str, Any]) -> list[list[str]]:
    return [
        [e["action_id"] for e in b["elements"]] for b in payload["blocks"] if b["type"] == "actions"
    ]


def test_a_possible_opt_out_asks_opt_out_or_keep_subscribed() -> None:
    post = escalation([line(1, "cancel my order")], reason="possible opt-out: CANCEL")
    payload = render.escalation_payload(post, KEY, debug=False)
    assert _action_ids(payload)[-1:] == [
        ["switchboard.claim", "switchboard.resolve", "switchboard.back_to_bot"]
    ]

    review = render.escalation_payload(
        msgspec.structs.replace(post, consent_review=True), KEY, debug=False
    )
    check_block_kit(review)
    assert _action_ids(review)[-1] == [render.ACTION_OPT_OUT, render.ACTION_KEEP_SUBSCRIBED]
    (consent,) = [b for b in review["blocks"] if b.get("block_id") == "consent"]
    assert {e["value"] for e in consent["elements"]} == {KEY}
    assert consent["elements"][0]["style"] == "danger"
    assert set(render.CONSENT_ACTIONS) == {render.ACTION_OPT_OUT, render.ACTION_KEEP_SUBSCRIBED}
    # A claim keeps the question: the contact's marketing waits for its answer.
    claimed = render.escalation_update_payload(review, "agent", "U0AGENT", KEY)
    assert [render.ACTION_OPT_OUT, render.ACTION_KEEP_SUBSCRIBED] in _action_ids(claimed)


def test_a_possible_opt_out_relayed_to_the_thread_carries_the_buttons_escaped() -> None:
    effect = RelayToThread(slack_channel="C0ESCALATE", thread_ts=None, text="end <!channel>")
    payload = render.relay_payload(
        effect, debug=False, consent_review="possible opt-out: END", key=KEY
    )
    check_block_kit(payload)
    assert payload["text"] == "Customer: end &lt;!channel&gt;"
    assert _action_ids(payload) == [[render.ACTION_OPT_OUT, render.ACTION_KEEP_SUBSCRIBED]]
    assert "<!channel>" not in json.dumps(payload)
