"""Events start doing things: end to end through HTTP, a real SQLite file, the worker in the
server, a frozen clock; read back as a user reads it (`switchboard ... --json`)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.clock import FrozenClock
from tests.cases import slack, stripe, twilio
from tests.cases.base import SignedRequest
from tests.support import ADMIN_TOKEN, PUBLIC_URL, SECRETS, LiveServer, live_server, wait_for

CUSTOMER = "+15551230001"
OURS = "+15559870000"
CONVERSATION = f"sms:{CUSTOMER}:{OURS}"
SUPPORT = "C0ESCALATE"
RULES = """version: 1
rules:
  - id: human-please
    when: {channel: sms, text: {contains_any: [human, agent]}}
    then:
      - escalate: {reason: "asked for a human"}
      - reply: {text: "A person will text you back shortly."}
  - id: hours
    when: {channel: sms, text: {contains_any: [hours]}}
    then:
      - reply: {text: "We are open 9 to 5."}
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
#: A Friday, 22:00 in New York (quiet hours 21:00-08:00 there). Far ahead of the real time on
#: purpose: timers fire on real time (apscheduler), so a frozen clock in the past would see
#: the ones it arms (a claim reminder, say) fire at once and route events nobody sent. This
#: was 2026-11-28 03:00 UTC, and the flows broke once that moment had passed.
FRIDAY_NIGHT = datetime(2099, 11, 21, 3, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(FRIDAY_NIGHT)


@pytest.fixture
def server(tmp_path: Path, clock: FrozenClock) -> Iterator[LiveServer]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "flows.yaml").write_text(RULES)
    extra = f"""
[rules]
path = "{rules}"
[channels.slack]
escalation_channel = "{SUPPORT}"
[compliance]
quiet_hours = "21:00-08:00"
default_timezone = "America/New_York"
"""
    with live_server(tmp_path, clock=clock, routing=True, extra=extra) as running:
        yield running


class Flow:
    """Sends webhooks like the providers do and waits for the worker to route them."""

    def __init__(self, server: LiveServer, clock: FrozenClock) -> None:
        self.server, self.clock = server, clock
        self.sent = 0

    def deliver(self, request: SignedRequest) -> None:
        response = self.server.post(request)
        assert response.status_code == 200, response.text
        self.sent += 1
        wait_for(lambda: self.routed() == self.sent, timeout=10)

    def routed(self) -> int:
        events = self.server.events()
        return sum(event["status"] in ("processed", "failed") for event in events)

    def sms(self, text: str, sid: str, **extra: str) -> None:
        params = {
            "MessageSid": sid,
            "AccountSid": "AC" + "1" * 32,
            "From": CUSTOMER,
            "To": OURS,
            "Body": text,
            **extra,
        }
        secret = SECRETS["twilio"][0]
        self.deliver(twilio.signed(PUBLIC_URL, "/webhooks/twilio/messages", params, secret))

    def stripe(self, event_type: str, event_id: str, phone: str = CUSTOMER) -> None:
        payload = stripe.stripe_event(event_id, event_type, {"id": "obj_1", "phone": phone})
        now = int(self.clock.now().timestamp())
        self.deliver(stripe.signed(payload, SECRETS["stripe"][0], now))

    def thread_reply(self, text: str, thread_ts: str, event_id: str) -> None:
        now = int(self.clock.now().timestamp())
        inner = {
            "type": "message",
            "channel": SUPPORT,
            "channel_type": "channel",
            "user": slack.AGENT,
            "text": text,
            "ts": f"{now}.000200",
            "thread_ts": thread_ts,
            "event_ts": f"{now}.000200",
        }
        body = slack.callback(event_id, inner, event_time=now)
        secret = SECRETS["slack"][0]
        self.deliver(slack.signed(slack.EVENTS_PATH, body, "application/json", secret, now))

    def button(self, action_id: str, thread_ts: str, trigger: str) -> None:
        now = int(self.clock.now().timestamp())
        payload = slack.block_actions(trigger, value=CONVERSATION)
        payload["container"]["message_ts"] = thread_ts
        payload["message"]["ts"] = thread_ts
        payload["actions"][0]["action_id"] = action_id
        secret = SECRETS["slack"][0]
        body = slack.form_body(payload)
        self.deliver(
            slack.signed(
                slack.INTERACTIONS_PATH, body, "application/x-www-form-urlencoded", secret, now
            )
        )

    def cli_json(self, *args: str) -> Any:
        result = self.server.cli(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def conversation(self) -> dict[str, Any]:
        found: dict[str, Any] = self.cli_json("conversations", "show", CONVERSATION)
        return found

    def outbox(self, *filters: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.cli_json("outbox", "list", *filters)
        return sorted(rows, key=lambda row: row["id"])

    def escalation_thread(self) -> str:
        """The ts Slack gave the escalation post (the sandbox sender makes one up): the
        thread agents answer in."""
        posts: list[dict[str, Any]] = []

        def sent() -> bool:
            posts[:] = [
                row
                for row in self.outbox("--channel", "slack")
                if row["kind"] == "escalation" and row["provider_message_id"]
            ]
            return bool(posts)

        wait_for(sent, timeout=10)
        ts: str = posts[-1]["provider_message_id"]
        return ts


@pytest.fixture
def flow(server: LiveServer, clock: FrozenClock) -> Flow:
    return Flow(server, clock)


def test_a_customer_who_asks_for_a_human_is_handed_to_support_and_back(flow: Flow) -> None:
    flow.sms("Can I talk to a human please?", "SM1")
    conversation = flow.conversation()
    assert conversation["state"] == "escalated"
    [post] = flow.outbox("--channel", "slack")
    assert (post["kind"], post["to"]) == ("escalation", SUPPORT)
    shown = json.dumps(post["payload"]["blocks"])
    assert "asked for a human" in shown and "human-please" in shown
    assert "Can I talk to a human please?" in shown  # the last messages, for the agent
    assert CUSTOMER not in post["payload"]["text"]  # the contact is masked
    [reply] = flow.outbox("--channel", "sms")
    assert reply["payload"]["text"] == "A person will text you back shortly."

    # While with people the bot is silent: the customer's words go to the thread instead.
    thread = flow.escalation_thread()
    flow.sms("what are your hours?", "SM2")
    relays = [row for row in flow.outbox("--channel", "slack") if row["kind"] == "relay_to_thread"]
    assert [row["payload"]["text"] for row in relays] == ["Customer: what are your hours?"]
    assert len(flow.outbox("--channel", "sms")) == 1  # no "We are open 9 to 5"

    flow.thread_reply("Hi, this is Ann. How can I help?", thread, "EvReply1")
    assert flow.conversation()["state"] == "agent"
    to_customer = [
        row for row in flow.outbox("--channel", "sms") if row["kind"] == "relay_to_customer"
    ]
    assert [(r["to"], r["payload"]["text"], r["category"]) for r in to_customer] == [
        (CUSTOMER, "Hi, this is Ann. How can I help?", "conversational")
    ]

    flow.button("switchboard.resolve", thread, "1337.1.resolve")
    assert flow.conversation()["state"] == "closed"
    [update] = [
        row for row in flow.outbox("--channel", "slack") if row["kind"] == "escalation_update"
    ]
    assert update["payload"] == {"state": "closed", "agent": slack.AGENT}  # shown on the post

    flow.sms("what are your hours?", "SM3")
    assert flow.conversation()["state"] == "bot"
    texts = [row["payload"]["text"] for row in flow.outbox("--channel", "sms")]
    assert "We are open 9 to 5." in texts
    history = [(line["direction"], line["text"]) for line in flow.conversation()["history"]]
    assert history[0] == ("in", "Can I talk to a human please?")
    assert ("out", "Hi, this is Ann. How can I help?") in history
    assert history[-2:] == [("in", "what are your hours?"), ("out", "We are open 9 to 5.")]


def test_an_illegal_transition_changes_nothing_and_is_recorded(flow: Flow) -> None:
    flow.sms("a human please", "SM1")
    thread = flow.escalation_thread()
    flow.button("switchboard.resolve", thread, "1337.1.resolve")
    assert flow.conversation()["state"] == "closed"
    rows_before = [row["id"] for row in flow.outbox()]
    flow.button("switchboard.claim", thread, "1337.2.claim")  # nothing to claim
    assert flow.conversation()["state"] == "closed"
    assert [row["id"] for row in flow.outbox()] == rows_before
    [_, late] = [e for e in flow.server.events() if e["type"] == "agent.action"][::-1]
    shown = flow.cli_json("events", "show", late["id"])
    assert shown["outbox"] == []
    [run] = shown["runs"]
    assert run["transition"]["trigger"] == "claim"
    assert "not allowed in state 'closed'" in run["transition"]["refused"]


def test_stop_cancels_waiting_messages_blocks_later_ones_and_start_resubscribes(
    flow: Flow,
) -> None:
    flow.stripe("customer.subscription.deleted", "evt_winback1")  # marketing, at 22:00: held
    [held] = flow.outbox()
    assert held["status"] == "deferred"
    assert held["not_before"] == "2099-11-21T13:00:00Z"  # 08:00 in New York

    flow.sms("Stop!", "SM1")
    rows = {row["kind"]: row for row in flow.outbox()}
    assert rows["send"]["status"] == "cancelled"
    confirmation = rows["opt_out_confirmation"]
    assert confirmation["status"] not in ("deferred", "cancelled")  # at once, even at 22:00
    assert confirmation["not_before"] is None
    assert confirmation["to"] == CUSTOMER

    flow.stripe("invoice.paid", "evt_receipt1")  # even a transactional send is not live now
    [after] = [
        row
        for row in flow.outbox()
        if row["event_id"] != held["event_id"] and row["kind"] == "send"
    ]
    # Refused at routing: cancelled as it is committed, so no attempt was ever made (the
    # dispatcher's own check writes the same words, with an attempt).
    assert (after["status"], after["last_error"]) == ("cancelled", "contact opted out")
    assert after["attempts"] == 0

    flow.sms("start", "SM2")
    contact = flow.cli_json("contacts", "show", f"whatsapp:{CUSTOMER}")  # one contact
    assert contact["consent"] == "subscribed"
    assert [(e["change"], e["reason"]) for e in contact["ledger"]] == [
        ("opted_out", "STOP"),
        ("subscribed", "START"),
    ]
    confirmations = [row for row in flow.outbox() if row["kind"] == "opt_in_confirmation"]
    assert len(confirmations) == 1
    # The rules never saw the keywords: no rule matched either message.
    for event in flow.server.events("--source", "twilio"):
        [run] = flow.cli_json("events", "show", event["id"])["runs"]
        assert run["matched"] == []


def test_twilio_opt_out_type_and_opt_out_with_a_space_count(flow: Flow) -> None:
    flow.sms("Opt out.", "SM1")
    assert flow.cli_json("contacts", "show", CUSTOMER)["consent"] == "opted_out"
    flow.sms("arrête", "SM2", OptOutType="START")
    ledger = flow.cli_json("contacts", "show", CUSTOMER)["ledger"]
    assert [entry["reason"] for entry in ledger] == ["OPT OUT", "OptOutType=START"]


def test_help_is_answered_with_the_configured_text(flow: Flow, server: LiveServer) -> None:
    flow.sms("HELP", "SM1")
    [row] = flow.outbox()
    assert (row["kind"], row["payload"]["text"]) == ("help", server.settings.compliance.help_text)


@pytest.mark.parametrize(
    ("now", "phone", "opens"),
    [
        # New York, the night DST ends (Sun 1 Nov 2026, 02:00 -> 01:00): 08:00 EST = 13:00 UTC.
        (datetime(2026, 11, 1, 5, 30, tzinfo=UTC), "+12125550100", "2026-11-01T13:00:00Z"),
        # Los Angeles, the night DST starts (Sun 8 Mar 2026): 08:00 PDT = 15:00 UTC.
        (datetime(2026, 3, 8, 9, 0, tzinfo=UTC), "+14155550100", "2026-03-08T15:00:00Z"),
        # Texas on a Sunday: 08:00 ends quiet hours, but the state allows noon on Sundays.
        (datetime(2026, 11, 29, 6, 0, tzinfo=UTC), "+15125550100", "2026-11-29T18:00:00Z"),
        # Florida in the evening: 20:30 is outside the state's 8-20 window, before 21:00.
        (datetime(2026, 11, 25, 1, 30, tzinfo=UTC), "+13055550100", "2026-11-25T13:00:00Z"),
    ],
)
def test_marketing_waits_for_the_window_in_the_recipients_zone(
    flow: Flow, clock: FrozenClock, now: datetime, phone: str, opens: str
) -> None:
    clock.set(now)
    flow.stripe("customer.subscription.deleted", "evt_dst", phone=phone)
    [row] = flow.outbox()
    assert (row["status"], row["not_before"]) == ("deferred", opens)
    clock.set(datetime.fromisoformat(opens) + timedelta(seconds=1))
    flow.stripe("customer.subscription.deleted", "evt_dst_open", phone=phone)
    [fresh] = [r for r in flow.outbox() if r["id"] != row["id"]]
    assert fresh["status"] != "deferred" and fresh["not_before"] is None


def outbox_rows(server: LiveServer) -> dict[tuple[str, str], float]:
    """`switchboard_outbox_rows` as /metrics shows it now, by (status, channel)."""
    answer = httpx.get(
        server.base_url + "/metrics",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    found = re.findall(
        r'^switchboard_outbox_rows\{channel="(\w+)",status="(\w+)"\} ([0-9.]+)$',
        answer.text,
        re.MULTILINE,
    )
    return {(status, channel): float(n) for channel, status, n in found}


def test_metrics_count_moving_rows_at_once_and_settled_ones_at_most_a_minute_late(
    flow: Flow, server: LiveServer
) -> None:
    assert outbox_rows(server) == {}  # the settled rows are counted now: none
    flow.stripe("customer.subscription.deleted", "evt_winback1")  # marketing at 22:00: held
    flow.sms("what are your hours?", "SM1")  # the reply leaves at once (sandbox: delivered)
    wait_for(lambda: any(r["status"] == "delivered" for r in flow.outbox()), timeout=10)
    # The held row shows at the next scrape; the delivered one waits for the next count of
    # the settled rows, which a scrape starts at most once a minute.
    assert outbox_rows(server) == {("deferred", "sms"): 1.0}
    flow.clock.advance(timedelta(seconds=59))
    assert outbox_rows(server) == {("deferred", "sms"): 1.0}
    flow.clock.advance(timedelta(seconds=2))
    assert outbox_rows(server) == {("deferred", "sms"): 1.0, ("delivered", "sms"): 1.0}


def test_a_restart_past_the_retention_removes_what_is_over_and_keeps_the_rest(
    tmp_path: Path, clock: FrozenClock
) -> None:
    """Upkeep runs as `serve` starts: a month later, with 30 days of retention, the routed
    question and its delivered answer are gone; the conversation stays."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "flows.yaml").write_text(RULES)
    extra = f'[rules]\npath = "{rules}"\n'
    with live_server(tmp_path, clock=clock, routing=True, extra=extra) as server:
        flow = Flow(server, clock)
        flow.sms("What are your hours?", "SM" + "7" * 32)
        wait_for(lambda: [r["status"] for r in flow.outbox()] == ["delivered"], timeout=10)
        [question] = server.events()

    clock.advance(timedelta(days=31))
    retained = "retention_days = 30"
    with live_server(
        tmp_path, clock=clock, routing=True, extra=extra, storage_options=retained
    ) as server:
        flow = Flow(server, clock)
        wait_for(lambda: server.events() == [], timeout=10)
        assert flow.outbox() == []
        assert server.cli("events", "show", question["id"]).exit_code == 1
        assert flow.conversation()["state"] == "bot"  # conversations are never pruned
        metrics = httpx.get(
            f"{server.base_url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).text
        assert 'switchboard_pruned_total{what="events"} 1.0' in metrics
        assert 'switchboard_pruned_total{what="outbox_rows"} 1.0' in metrics
