"""The outage story for Slack (issue 18, SPEC §12), end to end with real processes: a
customer is handed to support through `serve`; `serve` stops; an agent answers in the
escalation thread meanwhile (Slack gives up retrying the Events API delivery); `serve`
starts again and its first pass brings the reply in once and relays it to the customer by
SMS (the fake Twilio gets it once); the late Events API delivery of the same reply is a
duplicate."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cases import slack
from tests.fakes.slack_api import FakeSlack
from tests.fakes.twilio_api import FakeTwilio
from tests.integration.test_reconcile_outage import cli_json, inbound_webhook
from tests.support import SECRETS, ServerProcess, server_process, wait_for

OURS, CUSTOMER = "+15559870000", "+15551230003"
SUPPORT = "C0ESCALATE"
CONVERSATION = f"sms:{CUSTOMER}:{OURS}"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


@pytest.fixture
def desk() -> Iterator[FakeSlack]:
    with FakeSlack(channels=[SUPPORT]) as running:
        yield running


def config(twilio: FakeTwilio, desk: FakeSlack) -> str:
    return f"""
[channels.sms]
mode = "live"
account_sid = "{twilio.account_sid}"
auth_token = "{twilio.auth_token}"
from = "{OURS}"
api_base = "{twilio.url}"

[channels.slack]
mode = "live"
api_base = "{desk.base_url}"
bot_token = "{desk.token}"
escalation_channel = "{SUPPORT}"

[reconcile]
interval = "0"
on_start = true
"""


def agent_replies(server: ServerProcess) -> list[dict[str, Any]]:
    return server.events("--source", "slack", "--type", "agent.reply")


def texts_to_customer(twilio: FakeTwilio, text: str) -> int:
    return sum(1 for m in twilio.accepted_to(CUSTOMER) if m.body == text)


def late_delivery(parent: str, ts: str, text: str) -> Any:
    inner = {
        "type": "message",
        "channel": SUPPORT,
        "channel_type": "channel",
        "user": slack.AGENT,
        "text": text,
        "ts": ts,
        "thread_ts": parent,
        "event_ts": ts,
    }
    now = int(time.time())
    body = slack.callback("Ev0LATE", inner, event_time=now)
    secret = SECRETS["slack"][0]
    return slack.signed(slack.EVENTS_PATH, body, "application/json", secret, now)


def test_an_agents_reply_posted_while_serve_was_down_reaches_the_customer_once(
    tmp_path: Path, twilio: FakeTwilio, desk: FakeSlack
) -> None:
    options = {"extra": config(twilio, desk)}
    with server_process(tmp_path, **options) as server:
        answer = server.post(inbound_webhook("SM" + "a" * 32, CUSTOMER, "Can I talk to a human?"))
        assert answer.status_code == 200
        wait_for(lambda: len(desk.posts_in(SUPPORT)) == 1, timeout=15)
        wait_for(
            lambda: cli_json(server, "conversations", "show", CONVERSATION)["state"] == "escalated",
            timeout=15,
        )
    [post] = desk.posts_in(SUPPORT)

    text = "Hi, Ann here: your refund went out today."
    ts = desk.say(SUPPORT, text, user=slack.AGENT, thread_ts=post.ts)

    with server_process(tmp_path, log_name="server2.log", **options) as server:
        wait_for(lambda: texts_to_customer(twilio, text) == 1, timeout=20)
        [reply] = agent_replies(server)
        assert (reply["dedupe_key"], reply["via"]) == (f"slack:{SUPPORT}:{ts}", "reconcile")
        wait_for(lambda: agent_replies(server)[0]["status"] == "processed", timeout=10)
        assert cli_json(server, "conversations", "show", CONVERSATION)["state"] == "agent"

        assert server.post(late_delivery(post.ts, ts, text)).status_code == 200
        assert len(agent_replies(server)) == 1
        again = cli_json(server, "reconcile", "slack")
        assert [(r["source"], r["seen"], r["recovered"], r["error"]) for r in again] == [
            ("slack", 1, 0, None)
        ]
    assert texts_to_customer(twilio, text) == 1
