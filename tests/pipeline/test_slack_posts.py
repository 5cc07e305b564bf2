"""What reaches Slack, end to end: signed webhooks in, the worker and the dispatcher in the
server, the official slack_sdk client out to `tests/fakes/slack_api.FakeSlack` on loopback.

- A customer's text never turns into Slack markup: not in a rule's `send` to Slack, not in the
  escalation post, not in a relay; the rule's own literal markup (`<!here>`) still works.
- Buttons act only on the escalation they were posted with (SPEC §7: an illegal transition
  changes nothing and is recorded on the run).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cases import slack, twilio
from tests.fakes.slack_api import FakeSlack, SlackPost, slack_error
from tests.support import PUBLIC_URL, SECRETS, LiveServer, live_server, wait_for

CUSTOMER = "+15551230001"
OURS = "+15559870000"
CONVERSATION = f"sms:{CUSTOMER}:{OURS}"
SUPPORT = "C0ESCALATE"
SALES = "C0SALES"
HOSTILE = "<!channel> urgent <@U0OWNER> <https://evil.example/x|click here> & co"
SHOWN = (
    "&lt;!channel&gt; urgent &lt;@U0OWNER&gt; &lt;https://evil.example/x|click here&gt; &amp; co"
)
RULES = """version: 1
rules:
  - id: lead
    when: {channel: sms, text: {contains_any: [urgent]}}
    then:
      - send: {channel: slack, to: C0SALES, category: transactional,
               text: "<!here> new lead: {{ text }}"}
      - escalate: {reason: "the customer wrote: {{ text }}"}
  - id: human-please
    when: {channel: sms, text: {contains_any: [human]}}
    then:
      - escalate: {reason: "asked for a human"}
"""
#: Every form of markup the hostile text carries: none of it may reach Slack unescaped.
MARKUP = ("<!channel>", "<@U0OWNER>", "<https://evil.example")


@dataclass
class Desk:
    """The server and the fake Slack, driven like the providers and read like a user."""

    server: LiveServer
    slack: FakeSlack
    sent: int = 0

    def deliver(self, request: Any) -> None:
        answer = self.server.post(request)
        assert answer.status_code == 200, answer.text
        self.sent += 1
        wait_for(lambda: self.routed() == self.sent, timeout=10)

    def routed(self) -> int:
        return sum(e["status"] in ("processed", "failed") for e in self.server.events())

    def sms(self, text: str, sid: str) -> None:
        params = {
            "MessageSid": sid,
            "AccountSid": "AC" + "1" * 32,
            "From": CUSTOMER,
            "To": OURS,
            "Body": text,
        }
        secret = SECRETS["twilio"][0]
        self.deliver(twilio.signed(PUBLIC_URL, "/webhooks/twilio/messages", params, secret))

    def button(self, action_id: str, message_ts: str, trigger: str) -> None:
        now = int(time.time())
        payload = slack.block_actions(trigger, value=CONVERSATION)
        payload["container"]["message_ts"] = message_ts
        payload["message"]["ts"] = message_ts
        payload["actions"][0]["action_id"] = action_id
        body = slack.form_body(payload)
        content_type = "application/x-www-form-urlencoded"
        secret = SECRETS["slack"][0]
        self.deliver(slack.signed(slack.INTERACTIONS_PATH, body, content_type, secret, now))

    def cli_json(self, *args: str) -> Any:
        result = self.server.cli(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def state(self) -> str:
        state: str = self.cli_json("conversations", "show", CONVERSATION)["state"]
        return state

    def posts(self, channel: str, count: int) -> list[SlackPost]:
        """The first `count` posts Slack accepted in `channel`, once there are that many."""
        wait_for(lambda: len(self.slack.posts_in(channel)) >= count, timeout=10)
        return self.slack.posts_in(channel)[:count]

    def last_run(self, event_type: str) -> dict[str, Any]:
        newest = next(e for e in self.server.events() if e["type"] == event_type)
        shown = self.cli_json("events", "show", newest["id"])
        run: dict[str, Any] = shown["runs"][-1]
        assert shown["outbox"] == []  # a refusal makes nothing
        return run


@contextmanager
def open_desk(tmp_path: Path, extra: str = "") -> Iterator[Desk]:
    """The server routing and dispatching, Slack live against a fake; `extra` TOML appended."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "desk.yaml").write_text(RULES)
    with FakeSlack(channels=[SUPPORT, SALES]) as fake:
        config = f"""
[rules]
path = "{rules}"
[channels.slack]
mode = "live"
api_base = "{fake.base_url}"
bot_token = "{fake.token}"
escalation_channel = "{SUPPORT}"
rate_per_second = 100
[dispatch]
poll_seconds = 0.1
backoff_base_seconds = 0.05
backoff_cap_seconds = 0.2
{extra}
"""
        with live_server(tmp_path, routing=True, extra=config) as server:
            yield Desk(server, fake)


@pytest.fixture
def desk(tmp_path: Path) -> Iterator[Desk]:
    with open_desk(tmp_path) as opened:
        yield opened


def test_a_customers_markup_reaches_slack_escaped_and_the_rules_own_markup_stays(
    desk: Desk,
) -> None:
    desk.sms(HOSTILE, "SM1")
    [lead] = desk.posts(SALES, 1)
    assert lead.text == f"<!here> new lead: {SHOWN}"
    [escalation] = desk.posts(SUPPORT, 1)
    shown = json.dumps([escalation.text, escalation.blocks])
    assert f"the customer wrote: {SHOWN}" in json.loads(shown)[0]
    assert SHOWN in shown
    assert not any(markup in shown for markup in MARKUP)

    desk.sms(f"still {HOSTILE}", "SM2")  # with people now: relayed to the thread
    [_, relay] = desk.posts(SUPPORT, 2)
    assert (relay.thread_ts, relay.text) == (escalation.ts, f"Customer: still {SHOWN}")


def escalate_resolve_escalate(desk: Desk) -> SlackPost:
    """An escalation resolved from its post, then a newer one opened; the older post."""
    desk.sms("a human please", "SM1")
    [older] = desk.posts(SUPPORT, 1)
    desk.button("switchboard.resolve", older.ts, "1.1.resolve")
    assert desk.state() == "closed"
    wait_for(lambda: len(desk.slack.updates) == 1, timeout=10)  # the post says it is resolved
    return older


def test_a_button_on_an_earlier_escalations_post_is_refused_with_the_reason(desk: Desk) -> None:
    older = escalate_resolve_escalate(desk)
    desk.sms("a human again please", "SM2")
    [_, newer] = desk.posts(SUPPORT, 2)
    assert desk.state() == "escalated"

    desk.button("switchboard.claim", older.ts, "1.2.claim")
    assert desk.state() == "escalated"  # unclaimed: nobody has seen the newer one
    run = desk.last_run("agent.action")
    assert run["transition"]["trigger"] == "claim"
    assert "post of an earlier escalation" in run["transition"]["refused"]
    assert older.ts in run["transition"]["refused"]

    desk.button("switchboard.claim", newer.ts, "1.3.claim")  # its own post's button works
    assert desk.state() == "agent"


def test_a_button_on_the_older_post_is_refused_while_the_newer_post_is_unsent(
    desk: Desk,
) -> None:
    older = escalate_resolve_escalate(desk)
    desk.slack.fail_for(SUPPORT, slack_error("not_in_channel"))  # the newer post goes nowhere
    desk.sms("a human again please", "SM2")
    assert desk.state() == "escalated"

    desk.button("switchboard.resolve", older.ts, "1.2.resolve")
    assert desk.state() == "escalated"
    run = desk.last_run("agent.action")
    assert run["transition"]["trigger"] == "resolve"
    assert "the open one's post is not sent yet" in run["transition"]["refused"]
    assert len(desk.slack.posts_in(SUPPORT)) == 1


def test_a_click_on_a_message_that_is_no_escalation_post_records_why(desk: Desk) -> None:
    desk.sms("a human please", "SM1")
    desk.posts(SUPPORT, 1)
    desk.button("switchboard.claim", "1700000000.000001", "1.1.claim")
    assert desk.state() == "escalated"
    run = desk.last_run("agent.action")
    assert run["transition"] == {
        "trigger": "claim",
        "refused": f"the button's message (ts 1700000000.000001 in {SUPPORT}) "
        "is no escalation post sent",
    }


def buttons(blocks: list[dict[str, Any]]) -> list[str]:
    """The action ids of a message's buttons, in order."""
    return [
        element["action_id"]
        for block in blocks
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


def edits(desk: Desk, count: int) -> list[dict[str, Any]]:
    """The first `count` messages as `chat.update` left them, once there are that many."""
    wait_for(lambda: len(desk.slack.updates) >= count, timeout=10)
    return desk.slack.updates[:count]


def test_a_claim_then_a_resolve_edit_the_escalation_post_itself(desk: Desk) -> None:
    desk.sms("a human please", "SM1")
    [post] = desk.posts(SUPPORT, 1)
    assert post.blocks is not None and post.text is not None
    assert buttons(post.blocks) == [
        "switchboard.claim",
        "switchboard.resolve",
        "switchboard.back_to_bot",
    ]
    context = [block for block in post.blocks if block["type"] != "actions"]

    desk.button("switchboard.claim", post.ts, "1.1.claim")
    assert desk.state() == "agent"
    [claimed] = edits(desk, 1)
    assert (claimed["channel"], claimed["ts"]) == (SUPPORT, post.ts)  # the post, not a new one
    line = f":raising_hand: Claimed by <@{slack.AGENT}>"
    assert claimed["text"] == f"{post.text} — {line}"
    assert claimed["blocks"][: len(context)] == context  # who, why, the last messages: kept
    assert {"type": "context", "elements": [{"type": "mrkdwn", "text": line}]} in claimed["blocks"]
    assert buttons(claimed["blocks"]) == ["switchboard.resolve", "switchboard.back_to_bot"]

    desk.button("switchboard.resolve", post.ts, "1.2.resolve")
    assert desk.state() == "closed"
    [_, resolved] = edits(desk, 2)
    assert (resolved["channel"], resolved["ts"]) == (SUPPORT, post.ts)
    line = f":white_check_mark: Resolved by <@{slack.AGENT}>"
    assert resolved["text"] == f"{post.text} — {line}"
    assert resolved["blocks"] == [
        *context,
        {"type": "context", "elements": [{"type": "mrkdwn", "text": line}]},
    ]
    assert buttons(resolved["blocks"]) == []  # finished: nothing left to press

    # What the channel shows now: the one post, as last edited; nothing posted again.
    assert len(desk.slack.posts_in(SUPPORT)) == 1
    [shown] = desk.slack.messages[SUPPORT]
    assert (shown["ts"], shown["text"], shown["blocks"]) == (
        post.ts,
        resolved["text"],
        resolved["blocks"],
    )

    def updates() -> list[str]:
        rows = desk.cli_json("outbox", "list", "--channel", "slack")
        return [row["status"] for row in rows if row["kind"] == "escalation_update"]

    wait_for(lambda: updates() == ["sent", "sent"], timeout=10)  # their outcomes recorded


def test_a_reminder_and_a_relay_go_to_the_escalation_posts_thread(tmp_path: Path) -> None:
    """The rows carry no thread (routing does not know the post's ts): the dispatcher finds it
    as it sends. What Slack receives is checked, not the rows."""
    with open_desk(tmp_path, '[escalation]\nclaim_timeout = "1s"\n') as desk:
        desk.sms("a human please", "SM1")
        [post, reminder] = desk.posts(SUPPORT, 2)  # a second later, still unclaimed
        assert len(desk.server.events("--type", "timer.claim_reminder")) == 1
        desk.sent += 1  # routed like the webhooks: `deliver` counts it
        assert reminder.thread_ts == post.ts
        assert reminder.text == ":alarm_clock: Reminder: nobody has claimed this conversation yet."
        desk.sms("hello? anyone?", "SM2")
        [*_, relay] = desk.posts(SUPPORT, 3)
        assert (relay.thread_ts, relay.text) == (post.ts, "Customer: hello? anyone?")
