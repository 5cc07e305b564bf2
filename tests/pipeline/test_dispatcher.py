"""The dispatcher as users see it (SPEC §8, issue 9): signed webhooks in over HTTP, the worker
and the dispatcher in the server (`live_server(routing=True)`), `channels.sms` and
`channels.slack` live against the loopback fakes (`tests/fakes/`), through the real twilio and
slack_sdk clients. What is asserted is what a person sees: `switchboard outbox list --json`,
`dlq list --json`, `contacts show --json`, `/metrics`, and the fakes' own counters.

The clock is the real one (retries, rate slots and breakers run on it), with small backoff,
breaker and poll settings so a scenario takes a second or two. Attempt histories of rows that
are not dead are not shown by any command (`dlq list` shows them for dead rows only), so where
a test checks one it reads `outbox_attempts` from the database, read-only.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.logs import configure_logging
from tests.cases import stripe, twilio
from tests.fakes.slack_api import FakeSlack
from tests.fakes.slack_api import server_error as slack_server_error
from tests.fakes.twilio_api import (
    FakeTwilio,
    rate_limited,
    server_error,
    twilio_error,
)
from tests.support import (
    ADMIN_TOKEN,
    PUBLIC_URL,
    SECRETS,
    LiveServer,
    live_server,
    open_quiet_hours,
    wait_for,
)

OURS = "+15559870000"
SUPPORT = "C0ESCALATE"
RULES = """version: 1
rules:
  - id: human
    when: {channel: sms, type: message.received, text: {contains_any: [human]}}
    then:
      - escalate: {reason: "asked for a human"}
      - reply: {text: "A person will text you back."}
  - id: ping
    when: {channel: sms, type: message.received, text: {contains_any: [ping]}}
    then:
      - reply: {text: "pong: {{ text }}"}
  - id: winback
    when: {source: stripe, type: customer.subscription.deleted}
    then:
      - send: {channel: sms, to: "{{ data.phone }}", category: marketing,
               text: "Come back: 20% off"}
"""
#: Fast retries: every test here runs on the real clock.
FAST = """
poll_seconds = 0.1
backoff_base_seconds = 0.05
backoff_cap_seconds = 0.2
timeout_seconds = 3
"""


@dataclass
class Switchboard:
    """The server, the two fakes, and what a user reads."""

    server: LiveServer
    twilio: FakeTwilio
    slack: FakeSlack
    db_path: Path
    log_path: Path

    # -- webhooks in ------------------------------------------------------------------------
    def sms(self, sender: str, text: str, sid: str) -> None:
        params = {
            "MessageSid": sid,
            "AccountSid": "AC" + "1" * 32,
            "From": sender,
            "To": OURS,
            "Body": text,
        }
        request = twilio.signed(
            PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0]
        )
        answer = self.server.post(request)
        assert answer.status_code == 200, answer.text

    def winback(self, phone: str, event_id: str) -> None:
        """A Stripe `customer.subscription.deleted`: the `winback` rule's marketing SMS."""
        payload = stripe.stripe_event(
            event_id, "customer.subscription.deleted", {"id": "sub_1", "phone": phone}
        )
        answer = self.server.post(stripe.signed(payload, SECRETS["stripe"][0], int(time.time())))
        assert answer.status_code == 200, answer.text

    def routed(self, count: int) -> None:
        """Wait until `count` events are routed (processed or failed)."""

        def done() -> bool:
            events = self.server.events()
            return sum(e["status"] in ("processed", "failed") for e in events) >= count

        wait_for(done, timeout=10, interval=0.05)

    # -- what users read --------------------------------------------------------------------
    def cli_json(self, *args: str) -> Any:
        result = self.server.cli(*args, "--json")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    def outbox(self, *filters: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.cli_json("outbox", "list", "--limit", "1000", *filters)
        return sorted(rows, key=lambda row: row["id"])

    def row(self, **match: Any) -> dict[str, Any] | None:
        """The only outbox row with these fields, None while there is none."""
        found = [r for r in self.outbox() if all(_matches(r[k], v) for k, v in match.items())]
        assert len(found) <= 1, found
        return found[0] if found else None

    def wait_row(self, timeout: float = 10, **match: Any) -> dict[str, Any]:
        """Wait for the one row with these fields (e.g. `to=..., status="sent"`)."""
        found: list[dict[str, Any]] = []

        def there() -> bool:
            row = self.row(**match)
            found[:] = [row] if row else []
            return bool(found)

        wait_for(there, timeout=timeout, interval=0.05)
        return found[0]

    def stored(self, recipient: str) -> list[tuple[str, str, str]]:
        """`(kind, category, status)` of the rows to `recipient`, oldest first, read straight
        from the database (read-only): quicker than a command where timing matters."""
        uri = f"file:{self.db_path}?mode=ro"
        try:
            with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
                found = conn.execute(
                    "SELECT kind, category, status FROM outbox WHERE recipient = ? ORDER BY seq",
                    (recipient,),
                ).fetchall()
        except sqlite3.OperationalError:  # locked a moment
            return []
        return [(kind, category, status) for kind, category, status in found]

    def help_settled(self, customer: str, sid: str) -> dict[str, Any]:
        """`customer` texts HELP; its answer (a compliance notice: offered even to an opted-out
        contact) is attempted and its outcome recorded. Rows of one conversation leave in
        creation order, so the customer's earlier rows have been dealt with by then: what must
        stay unsent is seen to stay so, with no bare sleep. The answer's row."""
        self.sms(customer, "HELP", sid)
        found: list[dict[str, Any]] = []

        def settled() -> bool:
            row = self.row(to=customer, kind="help")
            found[:] = [row] if row and row["status"] in ("sent", "cancelled", "dead") else []
            return bool(found)

        wait_for(settled, timeout=10, interval=0.05)
        return found[0]

    def dlq(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.cli_json("dlq", "list")
        return rows

    def attempts(self, outbox_id: str) -> list[dict[str, Any]]:
        """Every attempt of a row, oldest first (read-only from the database)."""
        uri = f"file:{self.db_path}?mode=ro"
        with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
            found = conn.execute(
                "SELECT outcome, error, error_code FROM outbox_attempts WHERE outbox_id = ?"
                " ORDER BY seq",
                (outbox_id,),
            ).fetchall()
        return [{"outcome": o, "error": e, "error_code": c} for o, e, c in found]

    def metrics(self) -> str:
        answer = httpx.get(
            self.server.base_url + "/metrics",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return answer.text

    def transitions(self, destination: str) -> list[tuple[str, str]]:
        """The breaker changes the server logged for `destination`, `(old, new)`, in order."""
        lines = self.log_path.read_bytes().splitlines()
        records = [json.loads(line) for line in lines if line.strip()]
        return [
            (r["old"], r["new"])
            for r in records
            if r.get("event") == "circuit breaker" and r.get("destination") == destination
        ]

    def breaker(self, destination: str) -> str | None:
        """The state `/metrics` shows as 1.0 for `destination`, None if it shows none."""
        pattern = re.compile(
            r'^switchboard_breaker_state\{destination="'
            + re.escape(destination)
            + r'",state="(\w+)"\} 1\.0$',
            re.MULTILINE,
        )
        found = pattern.findall(self.metrics())
        assert len(found) <= 1, found
        return found[0] if found else None


#: In `Switchboard.row(...)`: any non-empty text.
ANY_TEXT = object()


def _matches(value: Any, wanted: Any) -> bool:
    if wanted is ANY_TEXT:
        return isinstance(value, str) and bool(value)
    return bool(value == wanted)


@contextmanager
def switchboard(
    tmp_path: Path,
    *,
    dispatch: str = FAST,
    sms_rate: float = 100,
    marketing_to: tuple[str, ...] = (),
) -> Iterator[Switchboard]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "dispatch.yaml").write_text(RULES)
    window = open_quiet_hours(list(marketing_to) or [OURS])
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
rate_per_second = {sms_rate}

[channels.slack]
mode = "live"
api_base = "{fake_slack.base_url}"
bot_token = "{fake_slack.token}"
escalation_channel = "{SUPPORT}"
rate_per_second = 100

[compliance]
quiet_hours = "{window}"
default_timezone = "UTC"
state_windows = false

[dispatch]
{dispatch}

# The Messages lists counted here are the dispatcher's look-ups, not a reconciliation pass's.
[reconcile]
on_start = false
interval = "0"
"""
        # The server's log lines to a file of their own: written to stdout, a line logged by
        # the server thread while a CLI command runs in this process would land in the
        # command's output (click's runner swaps sys.stdout), and the breaker test reads them.
        log_path = tmp_path / "server.log"
        with log_path.open("wb") as log:
            configure_logging("warning", stream=log)
            try:
                with live_server(tmp_path, routing=True, quiet=False, extra=extra) as server:
                    # Status callbacks are signed over the public URL, posted to this server.
                    fake_twilio.callback_target = server.base_url
                    yield Switchboard(
                        server,
                        fake_twilio,
                        fake_slack,
                        tmp_path / "var" / "switchboard.db",
                        log_path,
                    )
            finally:
                configure_logging("info")


# -- permanent failures and dead letters -------------------------------------------------------


def test_a_permanent_failure_is_dead_at_once_and_dlq_retry_and_discard_act_on_it(
    tmp_path: Path,
) -> None:
    invalid, landline = "+15553000001", "+15553000002"
    with switchboard(tmp_path) as sb:
        sb.twilio.fail_for(invalid, twilio_error(21211))
        sb.twilio.fail_for(landline, twilio_error(21614))
        sb.sms(invalid, "ping one", "SMbad1")
        sb.sms(landline, "ping two", "SMbad2")
        dead = sb.wait_row(to=invalid, status="dead")
        other = sb.wait_row(to=landline, status="dead")

        # Dead at the first answer: one attempt, and a reason a person understands.
        assert dead["attempts"] == 1
        assert dead["last_error"] == "invalid 'To' number (Twilio 21211)"
        assert other["last_error"] == "the 'To' number is not a mobile number (Twilio 21614)"
        assert sb.twilio.calls["create"] == 2 and sb.twilio.accepted_count() == 0
        listed = {row["id"]: row for row in sb.dlq()}
        assert set(listed) == {dead["id"], other["id"]}
        shown = listed[dead["id"]]
        assert (shown["to"], shown["payload"]["text"]) == (invalid, "pong: ping one")
        [attempt] = shown["attempts_made"]
        assert (attempt["outcome"], attempt["error_code"]) == ("dead", "21211")
        assert attempt["error"] == "invalid 'To' number (Twilio 21211)"

        # The number is fixed at Twilio's end: a person queues the row again.
        sb.twilio.clear_faults()
        assert sb.server.cli("dlq", "retry", dead["id"]).exit_code == 0
        sent = sb.wait_row(to=invalid, status="sent")
        [message] = sb.twilio.accepted_to(invalid)
        assert (message.body, message.from_) == ("pong: ping one", OURS)
        assert sent["provider_message_id"] == message.sid
        assert sent["attempts"] == 1  # attempts start again from zero
        history = sb.attempts(dead["id"])
        assert [a["outcome"] for a in history] == ["dead", "sent"]  # the history is kept
        assert history[0]["error_code"] == "21211"

        # The other one is given up for good: cancelled, kept for the record, not sent.
        assert sb.server.cli("dlq", "discard", other["id"]).exit_code == 0
        discarded = sb.wait_row(to=landline)
        assert discarded["status"] == "cancelled"
        assert "discarded" in (discarded["last_error"] or "")
        assert sb.dlq() == []
        for verb in ("retry", "discard"):  # neither is dead any more
            refused = sb.server.cli("dlq", verb, other["id"])
            assert refused.exit_code == 1 and "no dead row" in refused.stderr
        assert sb.help_settled(landline, "SMhelp")["status"] == "sent"  # after the discarded
        help_text = sb.server.settings.compliance.help_text  # row, which stays unsent
        assert [m.body for m in sb.twilio.accepted_to(landline)] == [help_text]
        assert sb.twilio.calls["create"] == 4  # the help answer's
        assert sb.wait_row(id=other["id"])["status"] == "cancelled"


def test_twilio_21610_cancels_the_row_opts_the_contact_out_and_stops_later_rows(
    tmp_path: Path,
) -> None:
    customer = "+15553000010"
    with switchboard(tmp_path) as sb:
        sb.twilio.fail_for(customer, twilio_error(21610))
        sb.sms(customer, "ping", "SMstop1")
        row = sb.wait_row(to=customer, status="cancelled")
        assert row["attempts"] == 1
        assert "opted out" in row["last_error"] and "21610" in row["last_error"]
        assert sb.dlq() == []  # not a dead letter: nobody should retry it

        contact = sb.cli_json("contacts", "show", customer)
        assert contact["consent"] == "opted_out"
        [entry] = contact["ledger"]
        assert entry["change"] == "opted_out"
        assert "21610" in entry["reason"]
        assert entry["channel"] == "sms"

        # Later rows to the same number never reach Twilio.
        creates = sb.twilio.calls["create"]
        assert creates == 1
        sb.sms(customer, "ping again", "SMstop2")
        sb.routed(2)
        later = [r for r in sb.outbox("--to", customer) if r["id"] != row["id"]]
        # Refused at routing: no attempt, and never offered to Twilio since.
        assert [(r["status"], r["attempts"]) for r in later] == [("cancelled", 0)]
        refused = sb.help_settled(customer, "SMhelp")  # Twilio refuses it too (21610)
        assert (refused["status"], refused["attempts"]) == ("cancelled", 1)
        assert sb.twilio.calls["create"] == creates + 1  # the help answer's, after the later row
        assert sb.twilio.accepted_count() == 0
        assert [(r["kind"], r["status"], r["attempts"]) for r in sb.outbox("--to", customer)] == [
            ("reply", "cancelled", 1),
            ("reply", "cancelled", 0),
            ("help", "cancelled", 1),
        ]


# -- transient failures and throttling ---------------------------------------------------------


def test_two_503s_then_success_send_one_message_after_checking_twilio(tmp_path: Path) -> None:
    customer = "+15553000020"
    with switchboard(tmp_path) as sb:
        sb.twilio.fail_next(2, server_error(503))
        sb.sms(customer, "ping", "SMflaky")
        row = sb.wait_row(to=customer, status="sent")
        [message] = sb.twilio.accepted_to(customer)  # exactly one Message
        assert row["provider_message_id"] == message.sid
        assert row["attempts"] == 3
        history = sb.attempts(row["id"])
        # A 503 on Twilio's create may have created the Message: each retry asked first.
        assert [a["outcome"] for a in history] == ["in_doubt", "in_doubt", "sent"]
        assert all(a["error_code"] == "20503" for a in history[:2])
        assert "503" in history[0]["error"]
        assert sb.twilio.calls["create"] == 3
        assert sb.twilio.calls["list"] == 2  # the look-ups before each resend

        # Twilio's receipts move it on.
        sb.twilio.advance(message.sid, "delivered").result(5)
        sb.wait_row(to=customer, status="delivered")


def test_a_429_waits_for_retry_after_and_costs_the_row_no_attempt(tmp_path: Path) -> None:
    customer = "+15553000030"
    with switchboard(tmp_path) as sb:
        sb.twilio.fail_next(1, rate_limited(1))
        sb.sms(customer, "ping", "SMthrottled")
        # Waiting out the Retry-After (1 s): pending, no attempt used, the reason shown.
        waiting = sb.wait_row(to=customer, status="pending", attempts=0, last_error=ANY_TEXT)
        assert "slow down" in waiting["last_error"] and "429" in waiting["last_error"]
        row = sb.wait_row(to=customer, status="sent")
        assert row["attempts"] == 1  # the throttled try did not count
        [refused] = sb.twilio.applied
        [message] = sb.twilio.accepted_to(customer)
        assert message.accepted_at - refused.at >= 1.0  # not before Retry-After
        assert [a["outcome"] for a in sb.attempts(row["id"])] == ["retry", "sent"]
        assert sb.dlq() == []


# -- delivery receipts -------------------------------------------------------------------------


def test_status_callbacks_late_duplicated_and_out_of_order_never_move_a_row_back(
    tmp_path: Path,
) -> None:
    customer = "+15553000040"
    with switchboard(tmp_path) as sb:
        sb.sms(customer, "ping", "SMreceipts")
        row = sb.wait_row(to=customer, status="sent")
        [message] = sb.twilio.accepted_to(customer)
        assert message.status_callback is not None
        assert message.status_callback.startswith(f"{PUBLIC_URL}/webhooks/twilio/status")

        assert sb.twilio.advance(message.sid, "delivered").result(5) == 200
        sb.routed(2)
        sb.wait_row(id=row["id"], status="delivered")
        # Late `sent`, `delivered` twice, then a contradicting `undelivered`: all answered
        # 200 (Twilio would retry otherwise), none moves the row.
        for status, code in (("sent", None), ("delivered", None), ("undelivered", 30003)):
            assert sb.twilio.advance(message.sid, status, code).result(5) == 200
        sb.routed(4)  # the duplicate `delivered` is the same event, stored once
        statuses = [
            e for e in sb.server.events("--source", "twilio") if e["type"] == "message.status"
        ]
        assert len(statuses) == 3
        assert all(e["status"] == "processed" for e in statuses)
        final = sb.row(id=row["id"]) or {}
        assert final["status"] == "delivered"
        assert final["provider_message_id"] == message.sid
        assert sb.twilio.accepted_count() == 1


# -- circuit breaker ---------------------------------------------------------------------------

BREAKER = f"""{FAST}
breaker_failures = 2
breaker_open_seconds = 0.5
"""


@pytest.mark.parametrize(
    "op",
    [
        pytest.param("*", id="every-call-fails"),
        # Posting fails, reading does not: the in-doubt look-up before each retry succeeds.
        pytest.param("chat.postMessage", id="posts-fail-lookups-answer"),
    ],
)
def test_a_slack_outage_opens_its_breaker_while_sms_keeps_flowing_and_it_closes_after(
    tmp_path: Path, op: str
) -> None:
    customers = [f"+1555300005{i}" for i in range(3)]
    destination = f"slack:{SUPPORT}"
    with switchboard(tmp_path, dispatch=BREAKER) as sb:
        sb.slack.fail_always(slack_server_error(503), op=op)
        for n, customer in enumerate(customers):
            sb.sms(customer, "a human please", f"SMhuman{n}")

        # SMS is not held back by Slack's outage.
        wait_for(lambda: sb.twilio.accepted_count() == len(customers), timeout=10)
        for customer in customers:
            sb.wait_row(to=customer, status="sent")
        wait_for(lambda: sb.breaker(destination) == "open", timeout=10, interval=0.05)
        posts = sb.outbox("--channel", "slack")
        assert [r["kind"] for r in posts] == ["escalation"] * len(customers)
        assert all(r["status"] in ("pending", "sending") for r in posts), posts
        assert sb.slack.posts == []
        assert sb.dlq() == []

        # While open, the outage does not burn the rows' attempts: one probe per open period
        # (0.5 s) reaches Slack, plus at most one post that started as it opened. A probe that
        # fails opens it again; nothing closes it while Slack is failing.
        calls = sb.slack.calls["chat.postMessage"]
        time.sleep(0.8)
        rows = [(r["status"], r["attempts"]) for r in sb.outbox("--channel", "slack")]
        during = sb.transitions(destination)
        assert ("open", "half_open") in during, during  # it probed
        assert [new for _, new in during if new == "closed"] == [], (
            f"closed while Slack was failing: {during}; (status, tries): {rows}"
        )
        posted = sb.slack.calls["chat.postMessage"] - calls
        assert posted <= 3, f"{posted} posts in 0.8 s of an open breaker; (status, tries): {rows}"
        assert sb.dlq() == [], rows

        sb.slack.clear_faults()
        wait_for(lambda: len(sb.slack.posts) == len(customers), timeout=10)
        for row in sb.outbox("--channel", "slack"):  # the last post's outcome may still be
            sent = sb.wait_row(id=row["id"], status="sent")  # on its way to the store
            assert sent["attempts"] < 8  # max_attempts: never near dead
        assert sorted(p.ts for p in sb.slack.posts) == sorted(
            r["provider_message_id"] for r in sb.outbox("--channel", "slack")
        )
        wait_for(lambda: sb.breaker(destination) == "closed", timeout=5, interval=0.05)
        assert sb.transitions(destination)[-1] == ("half_open", "closed")
        assert sb.breaker(f"sms:{OURS}") is None  # SMS never tripped
        assert sb.twilio.accepted_count() == len(customers)


# -- sends at once ------------------------------------------------------------------------------


def test_no_more_sends_at_once_than_dispatch_concurrency_with_slots_booked_ahead(
    tmp_path: Path,
) -> None:
    """Rows booked a rate slot just ahead wait for it without holding a place; when they wake
    while others are being sent, they still queue for one of the `concurrency` places."""
    customers = [f"+1555300009{i}" for i in range(6)]
    with switchboard(tmp_path, dispatch=FAST + "concurrency = 2\n", sms_rate=10) as sb:
        sb.twilio.slow = 0.5  # each send is answered after half a second
        for n, customer in enumerate(customers):
            sb.sms(customer, "ping", f"SMplace{n}")
        wait_for(lambda: sb.twilio.accepted_count() == len(customers), timeout=20)
        assert sb.twilio.peak_in_flight <= 2
        assert sb.twilio.peak_in_flight == 2  # both places were used: the test can fail


def test_a_row_waiting_longer_than_its_lease_keeps_it_and_is_sent_once(tmp_path: Path) -> None:
    """One place, and a send slower than the lease: the second row waits for the place longer
    than it was leased for. Its lease is renewed every third of it, so it is neither taken over
    nor given up (a send that could only start in the last third of its lease is not made: that
    guard is for a dispatcher whose renewals fail), and each reply goes once."""
    first, second = "+15553000101", "+15553000102"
    dispatch = FAST.replace("timeout_seconds = 3", "timeout_seconds = 5")
    dispatch += "concurrency = 1\nlease_seconds = 3\n"
    with switchboard(tmp_path, dispatch=dispatch) as sb:
        sb.twilio.slow = 2.2  # the one place is held past two thirds of the lease
        sb.sms(first, "ping", "SMlate1")
        sb.sms(second, "ping", "SMlate2")
        wait_for(lambda: sb.twilio.accepted_count() == 2, timeout=20)
        for customer in (first, second):
            [reply] = [r for r in sb.outbox("--to", customer) if r["kind"] == "reply"]
            row = sb.wait_row(id=reply["id"], status="sent")
            assert row["attempts"] == 1
        assert sorted(m.to for m in sb.twilio.accepted) == [first, second]  # once each
        lines = [json.loads(line) for line in sb.log_path.read_bytes().splitlines()]
        assert not any(line["event"] == "lease running out, not sent" for line in lines)


# -- consent, checked again just before each send ----------------------------------------------

#: One send a second from our number: a row can be seen waiting for its slot.
SLOW_SENDER = 1


def test_a_stop_committed_before_a_waiting_marketing_row_leaves_cancels_it(
    tmp_path: Path,
) -> None:
    customer = "+15553000070"
    with switchboard(tmp_path, sms_rate=SLOW_SENDER, marketing_to=(customer,)) as sb:
        sb.winback(customer, "evt_winback_1")
        wait_for(lambda: sb.twilio.accepted_count() == 1, timeout=5)
        sb.winback(customer, "evt_winback_2")  # waits for our number's next slot (1 s)
        # (Read straight from the database: the STOP must come well within that second.)
        wait_for(lambda: len(sb.stored(customer)) == 2, timeout=5, interval=0.005)
        # Waiting: `pending`, or `sending` once the dispatcher has booked it the slot ahead.
        assert sb.stored(customer)[1] in (
            ("send", "marketing", "pending"),
            ("send", "marketing", "sending"),
        )
        sb.sms(customer, "STOP", "SMstop")
        sb.routed(3)
        [first, second] = sb.outbox("--to", customer)[:2]
        sb.wait_row(id=first["id"], status="sent")  # accepted; its outcome may be on its way
        cancelled = sb.wait_row(id=second["id"], status="cancelled")
        assert "opted out" in cancelled["last_error"]
        # Twilio got the first offer and, perhaps by now, the STOP confirmation (a compliance
        # notice, sent even so); never the second offer.
        bodies = [m.body for m in sb.twilio.accepted_to(customer)]
        stop_confirmation = sb.server.settings.compliance.stop_confirmation
        assert bodies in (["Come back: 20% off"], ["Come back: 20% off", stop_confirmation])
        assert sb.twilio.calls["create"] == len(bodies)


def test_a_row_in_doubt_is_not_resent_to_a_contact_who_opted_out_meanwhile(
    tmp_path: Path,
) -> None:
    """A row left `sending` by an answer that may mean accepted (Twilio 503) is not one a STOP
    cancels as it is committed; the dispatcher's own check before the next attempt is what
    keeps it from going out again."""
    customer = "+15553000080"
    with switchboard(tmp_path, sms_rate=SLOW_SENDER) as sb:
        sb.twilio.fail_for(customer, server_error(503), times=1)
        sb.sms(customer, "ping", "SMdoubt")
        assert sb.twilio.wait_until(lambda: sb.twilio.calls["create"] == 1, timeout=5)
        sb.sms(customer, "STOP", "SMstop")  # before our number's next slot (1 s)
        sb.routed(2)
        [doubtful] = [r for r in sb.outbox("--to", customer) if r["kind"] == "reply"]
        cancelled = sb.wait_row(id=doubtful["id"], status="cancelled")
        assert cancelled["last_error"] == "contact opted out"  # the dispatcher's words
        assert cancelled["attempts"] == 2
        # Twilio saw the reply once (the 503); it accepted nothing but, perhaps by now, the
        # STOP confirmation.
        accepted = sb.twilio.accepted_to(customer)
        stop_confirmation = sb.server.settings.compliance.stop_confirmation
        assert {m.body for m in accepted} <= {stop_confirmation}
        assert sb.twilio.calls["create"] - len(accepted) == 1
