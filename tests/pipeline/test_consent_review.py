"""A possible opt-out, end to end (SPEC §7 `review`, issue 17): signed webhooks over HTTP, a real
SQLite file, the worker and the dispatcher in the server, the official Twilio and Slack clients
sending to loopback fakes, a frozen clock; read back as a user reads it (`--json`)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from router.clock import FrozenClock
from tests.cases import slack, stripe, twilio
from tests.cases.base import SignedRequest
from tests.fakes.slack_api import FakeSlack, SlackPost
from tests.fakes.twilio_api import FakeTwilio
from tests.support import PUBLIC_URL, SECRETS, LiveServer, live_server, wait_for

CUSTOMER = "+15551230001"
OURS = "+15559870000"
CONVERSATION = f"sms:{CUSTOMER}:{OURS}"
SUPPORT = slack.CHANNEL
OPT_OUT, KEEP = "switchboard.consent.opt_out", "switchboard.consent.keep_subscribed"
RULES = """version: 1
rules:
  - id: human-please
    when: {channel: sms, text: {contains_any: [human, agent]}}
    then:
      - escalate: {reason: "asked for a human"}
  - id: orders
    when: {channel: sms, text: {contains_any: [order]}}
    then:
      - reply: {text: "Your order ships tomorrow."}
  - id: winback
    when: {source: stripe, type: customer.subscription.deleted}
    then:
      - send: {channel: sms, to: "{{ data.phone }}", category: marketing,
               text: "Come back: 20% off"}
  - id: receipt
    when: {source: stripe, type: invoice.paid}
    then:
      - send: {channel: sms, to: "{{ data.phone }}", category: transactional,
               text: "Thanks for your payment"}
"""
#: Noon in New York on a Friday, and 22:00 the same day (quiet hours 21:00-08:00). Far ahead
#: of the real time: timers fire on real time, and none armed here may fall due.
NOON = datetime(2099, 11, 20, 17, 0, tzinfo=UTC)
NIGHT = datetime(2099, 11, 21, 3, 0, tzinfo=UTC)
HELD = "9999-01-01T00:00:00Z"


class Desk:
    """The customer, Stripe and the support agent, and what a user reads."""

    def __init__(
        self, server: LiveServer, clock: FrozenClock, sms: FakeTwilio, chat: FakeSlack
    ) -> None:
        self.server, self.clock, self.twilio, self.slack = server, clock, sms, chat
        self.sent = 0

    def deliver(self, request: SignedRequest) -> None:
        answer = self.server.post(request)
        assert answer.status_code == 200, answer.text
        self.sent += 1
        wait_for(lambda: self.routed() == self.sent, timeout=10)

    def routed(self) -> int:
        return sum(e["status"] in ("processed", "failed") for e in self.server.events())

    def sms(self, text: str, sid: str) -> None:
        params = {"MessageSid": sid, "AccountSid": "AC" + "1" * 32, "From": CUSTOMER}
        params |= {"To": OURS, "Body": text}
        secret = SECRETS["twilio"][0]
        self.deliver(twilio.signed(PUBLIC_URL, "/webhooks/twilio/messages", params, secret))

    def stripe(self, event_type: str, event_id: str) -> None:
        payload = stripe.stripe_event(event_id, event_type, {"id": "obj_1", "phone": CUSTOMER})
        now = int(self.clock.now().timestamp())
        self.deliver(stripe.signed(payload, SECRETS["stripe"][0], now))

    def click(self, action_id: str, post: SlackPost, trigger: str) -> None:
        """An agent presses a button of `post`, signed as Slack signs it."""
        payload = slack.block_actions(trigger, value=CONVERSATION)
        payload["container"] |= {"message_ts": post.ts, "thread_ts": post.thread_ts}
        payload["message"] |= {"ts": post.ts, "thread_ts": post.thread_ts}
        payload["actions"][0] |= {"action_id": action_id, "block_id": "consent"}
        now = int(self.clock.now().timestamp())
        body = slack.form_body(payload)
        form = "application/x-www-form-urlencoded"
        self.deliver(slack.signed(slack.INTERACTIONS_PATH, body, form, SECRETS["slack"][0], now))

    def cli_json(self, *args: str) -> Any:
        result = self.server.cli(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def contact(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cli_json("contacts", "show", CUSTOMER)
        return found

    def rows(self, kind: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.cli_json("outbox", "list", "--to", CUSTOMER)
        return sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["id"])

    def texts_to_customer(self) -> list[str]:
        return [message.body for message in self.twilio.accepted_to(CUSTOMER)]

    def post_with_buttons(self) -> SlackPost:
        """The one Slack post (escalation or thread message) carrying the consent buttons."""
        found: list[SlackPost] = []

        def posted() -> bool:
            found[:] = [p for p in self.slack.posts_in(SUPPORT) if OPT_OUT in _actions(p)]
            return bool(found)

        wait_for(posted, timeout=10)
        [post] = found
        return post

    def event_id(self, type_: str, index: int = -1) -> str:
        found = [e for e in self.server.events() if e["type"] == type_]
        found.sort(key=lambda e: e["id"])
        event_id: str = found[index]["id"]
        return event_id


def _actions(post: SlackPost) -> list[str]:
    return [
        element["action_id"]
        for block in post.blocks or []
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(NOON)


@pytest.fixture
def desk(tmp_path: Path, clock: FrozenClock) -> Iterator[Desk]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "review.yaml").write_text(RULES)
    with (
        FakeTwilio(auth_token=SECRETS["twilio"][0]) as fake_twilio,
        FakeSlack(channels=[SUPPORT]) as fake_slack,
    ):
        extra = f"""
[rules]
path = "{rules}"
[channels.sms]
account_sid = "{fake_twilio.account_sid}"
auth_token = "{fake_twilio.auth_token}"
from = "{OURS}"
mode = "live"
api_base = "{fake_twilio.url}"
rate_per_second = 100
[channels.slack]
mode = "live"
api_base = "{fake_slack.base_url}"
bot_token = "{fake_slack.token}"
escalation_channel = "{SUPPORT}"
rate_per_second = 100
[compliance]
quiet_hours = "21:00-08:00"
default_timezone = "America/New_York"
"""
        with live_server(tmp_path, clock=clock, routing=True, extra=extra) as server:
            yield Desk(server, clock, fake_twilio, fake_slack)


def test_cancel_my_order_is_reviewed_and_opt_out_cancels_the_held_marketing(desk: Desk) -> None:
    desk.sms("I want to cancel my order", "SM1")

    # Not opted out, not answered by the bot: in review, escalated with the two buttons.
    contact = desk.contact()
    assert contact["consent"] == "review"
    review_event = desk.event_id("message.received")
    assert [(e["change"], e["reason"], e["event_id"]) for e in contact["ledger"]] == [
        ("review", "possible opt-out: CANCEL", review_event)
    ]
    human = desk.server.cli("contacts", "show", CUSTOMER)
    assert "marketing held until a person decides" in human.stdout, human.stdout
    post = desk.post_with_buttons()
    assert post.thread_ts is None  # the escalation post itself
    assert _actions(post) == [
        "switchboard.claim",
        "switchboard.resolve",
        "switchboard.back_to_bot",
        OPT_OUT,
        KEEP,
    ]
    assert "possible opt-out" in (post.text or "")
    assert desk.rows("reply") == []  # the orders rule never answered

    # Marketing waits for the decision; a transactional message still goes.
    desk.stripe("customer.subscription.deleted", "evt_winback1")
    desk.stripe("invoice.paid", "evt_receipt1")
    wait_for(lambda: desk.texts_to_customer() == ["Thanks for your payment"], timeout=10)
    [held] = [r for r in desk.rows("send") if r["category"] == "marketing"]
    assert (held["status"], held["not_before"]) == ("deferred", HELD)
    assert held["last_error"].startswith("held: possible opt-out under review")

    desk.click(OPT_OUT, post, "1337.1.optout")
    contact = desk.contact()
    assert contact["consent"] == "opted_out"
    decision_event = desk.event_id("agent.action")
    assert [(e["change"], e["reason"], e["event_id"]) for e in contact["ledger"]] == [
        ("review", "possible opt-out: CANCEL", review_event),
        ("opted_out", f"opt out, decided by {slack.AGENT} in Slack", decision_event),
    ]
    [held] = [r for r in desk.rows("send") if r["category"] == "marketing"]
    assert held["status"] == "cancelled"
    confirmation = desk.server.settings.compliance.stop_confirmation
    wait_for(lambda: desk.texts_to_customer()[-1:] == [confirmation], timeout=10)
    assert desk.texts_to_customer() == ["Thanks for your payment", confirmation]


def test_keep_subscribed_releases_the_held_marketing(desk: Desk) -> None:
    desk.sms("please don't stop", "SM1")
    post = desk.post_with_buttons()
    desk.stripe("customer.subscription.deleted", "evt_winback1")
    [held] = desk.rows("send")
    assert (held["status"], held["not_before"]) == ("deferred", HELD)

    desk.click(KEEP, post, "1337.1.keep")
    contact = desk.contact()
    assert contact["consent"] == "subscribed"
    assert [(e["change"], e["reason"]) for e in contact["ledger"]] == [
        ("review", "possible opt-out: STOP"),
        ("subscribed", f"keep subscribed, decided by {slack.AGENT} in Slack"),
    ]
    wait_for(lambda: desk.texts_to_customer() == ["Come back: 20% off"], timeout=10)
    [sent] = desk.rows("send")
    assert sent["last_error"] is None

    # Decided: a second click changes nothing, and says so in the event's run.
    desk.click(OPT_OUT, post, "1337.2.optout")
    assert desk.contact()["consent"] == "subscribed"
    [run] = desk.cli_json("events", "show", desk.event_id("agent.action"))["runs"]
    assert "'decide_opt_out' is not allowed in state 'subscribed'" in run["error"]


def test_marketing_already_waiting_for_quiet_hours_is_held_then_waits_for_them_again(
    desk: Desk, clock: FrozenClock
) -> None:
    clock.set(NIGHT)
    desk.stripe("customer.subscription.deleted", "evt_winback1")
    [row] = desk.rows("send")
    assert (row["status"], row["not_before"]) == ("deferred", "2099-11-21T13:00:00Z")

    desk.sms("End of story", "SM1")
    [row] = desk.rows("send")
    assert (row["status"], row["not_before"]) == ("deferred", HELD)

    desk.click(KEEP, desk.post_with_buttons(), "1337.1.keep")
    [row] = desk.rows("send")
    assert (row["status"], row["not_before"]) == ("deferred", "2099-11-21T13:00:00Z")
    assert desk.texts_to_customer() == []


def test_with_people_already_the_thread_gets_the_buttons(desk: Desk) -> None:
    desk.sms("a human please", "SM1")
    wait_for(lambda: len(desk.slack.posts_in(SUPPORT)) == 1, timeout=10)
    [escalation] = desk.slack.posts_in(SUPPORT)
    assert OPT_OUT not in _actions(escalation)

    desk.sms("ok, cancel my subscription", "SM2")
    post = desk.post_with_buttons()
    assert post.thread_ts == escalation.ts  # in the escalation's thread
    assert "cancel my subscription" in json.dumps(post.blocks)
    assert desk.contact()["consent"] == "review"

    desk.click(OPT_OUT, post, "1337.1.optout")
    assert desk.contact()["consent"] == "opted_out"


def test_never_an_accidental_opt_out(desk: Desk) -> None:
    for sid, text in enumerate(["Don't stop", "cancel my order", "End of story"]):
        desk.sms(text, f"SM{sid}")
        assert desk.contact()["consent"] == "review"
    # One review, one escalation: the later messages go to its thread.
    assert [e["change"] for e in desk.contact()["ledger"]] == ["review"]
    assert desk.rows("opt_out_confirmation") == []
    assert desk.texts_to_customer() == []


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("\uff33\uff54\uff4f\uff50", "STOP"),
        ("Please stop texting me", "STOP"),
        ("opt_out", "OPT OUT"),
        ("remove me from your list", '"remove me from your list"'),
        ("No más", "NO MAS"),
    ],
)
def test_a_plain_revocation_opts_out_at_once(desk: Desk, text: str, reason: str) -> None:
    desk.sms(text, "SM1")

    contact = desk.contact()
    assert contact["consent"] == "opted_out"
    assert [(e["change"], e["reason"]) for e in contact["ledger"]] == [("opted_out", reason)]
    confirmation = desk.server.settings.compliance.stop_confirmation
    wait_for(lambda: desk.texts_to_customer() == [confirmation], timeout=10)
    assert desk.slack.posts == []
