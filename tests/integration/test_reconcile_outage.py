"""The outage story (issue 18, SPEC §12), end to end with real processes: `serve` answers
webhooks; it stops; customers text meanwhile (Twilio keeps the SMS and never retries the
webhook); `serve` starts again and its first pass brings each message in once, routed like
any other (a STOP opts out, "human" escalates); the late webhooks of the same messages are
duplicates; the same for a Stripe event. And a pass cut by kill -9 loses nothing and doubles
nothing."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cases.stripe import signed as stripe_signed
from tests.cases.twilio import signed
from tests.fakes.stripe_api import FakeStripe
from tests.fakes.twilio_api import FakeTwilio
from tests.support import (
    ADMIN_TOKEN,
    PUBLIC_URL,
    SECRETS,
    ServerProcess,
    run_cli,
    server_process,
    wait_for,
)

OURS = "+15559870000"
HAPPY, STOPPER, HUMAN = "+15551230001", "+15551230002", "+15551230003"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


def sms_config(fake: FakeTwilio) -> str:
    return f"""
[channels.sms]
mode = "live"
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
from = "{OURS}"
api_base = "{fake.url}"

[reconcile]
interval = "0"
on_start = true
"""


def inbound_webhook(sid: str, customer: str, body: str) -> Any:
    params = {
        "MessageSid": sid,
        "SmsSid": sid,
        "AccountSid": "AC" + "f" * 32,
        "From": customer,
        "To": OURS,
        "Body": body,
        "NumMedia": "0",
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def cli_json(server: ServerProcess, *args: str) -> Any:
    result = run_cli(server.config_path, *args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def settled(server: ServerProcess, count: int) -> bool:
    events = server.events("--source", "twilio", "--type", "message.received")
    return len(events) == count and all(e["status"] == "processed" for e in events)


def test_messages_sent_while_serve_was_down_are_recovered_once_and_routed(
    tmp_path: Path, fake: FakeTwilio
) -> None:
    config = {"extra": sms_config(fake)}
    with server_process(tmp_path, **config) as server:
        answer = server.post(inbound_webhook("SM" + "a" * 32, HAPPY, "hello"))
        assert answer.status_code == 200
        wait_for(lambda: settled(server, 1), timeout=15)

    stop = fake.receive(STOPPER, OURS, "STOP")
    human = fake.receive(HUMAN, OURS, "Can I talk to a human?")

    with server_process(tmp_path, log_name="server2.log", **config) as server:
        wait_for(lambda: settled(server, 3), timeout=20)
        events = {e["dedupe_key"]: e for e in server.events("--source", "twilio")}
        assert events[f"twilio:{stop}"]["via"] == "reconcile"
        assert events[f"twilio:{human}"]["via"] == "reconcile"
        assert events["twilio:SM" + "a" * 32]["via"] == "webhook"
        assert cli_json(server, "contacts", "show", STOPPER)["consent"] == "opted_out"
        scrape = httpx.get(
            server.base_url + "/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        ).text
        assert 'switchboard_reconcile_recovered_total{source="twilio"} 2.0' in scrape
        assert 'switchboard_reconcile_last_success_timestamp_seconds{source="twilio"}' in scrape
        conversation = cli_json(server, "conversations", "show", f"sms:{HUMAN}:{OURS}")
        assert conversation["state"] == "escalated"

        late = [(stop, STOPPER, "STOP"), (human, HUMAN, "Can I talk to a human?")]
        for sid, customer, body in late:
            assert server.post(inbound_webhook(sid, customer, body)).status_code == 200
        assert len(server.events("--source", "twilio", "--type", "message.received")) == 3

        again = run_cli(server.config_path, "reconcile", "twilio", "--json")
        assert again.exit_code == 0, again.stderr
        [report] = json.loads(again.stdout)
        assert (report["source"], report["recovered"], report["error"]) == ("twilio", 0, None)
        assert report["seen"] == 2
        assert len(server.events("--source", "twilio")) == len(events)


def test_a_pass_cut_by_kill_9_loses_nothing_and_doubles_nothing(
    tmp_path: Path, fake: FakeTwilio
) -> None:
    sids = [fake.receive(f"+1555123{i:04d}", OURS, f"message {i}") for i in range(5)]
    config = {"extra": sms_config(fake)}
    fake.slow = 30.0  # the list hangs: the pass is in flight when the process dies
    with server_process(tmp_path, **config) as server:
        assert fake.wait_until(lambda: fake.in_flight_ops["list"] > 0)
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
    fake.slow = 0.0

    with server_process(tmp_path, log_name="server2.log", **config) as server:
        wait_for(lambda: settled(server, 5), timeout=20)
        keys = sorted(e["dedupe_key"] for e in server.events("--source", "twilio"))
        assert keys == sorted(f"twilio:{sid}" for sid in sids)


def test_a_stripe_event_sent_while_serve_was_down_is_recovered_once(tmp_path: Path) -> None:
    """Stripe retries for days, but a pass at start does not wait for that: the Event the
    fake holds is ingested once at start, and the webhook that comes later is a duplicate."""
    with FakeStripe() as stripe_fake:
        options = {
            "source_options": {
                "stripe": f'api_key = "{stripe_fake.api_key}"\napi_base = "{stripe_fake.url}"'
            },
            "extra": '\n[reconcile]\ninterval = "0"\non_start = true\n',
        }
        missed = stripe_fake.add(
            "invoice.payment_failed", {"id": "in_1", "object": "invoice", "amount_due": 4200}
        )
        with server_process(tmp_path, **options) as server:

            def recovered() -> list[dict[str, Any]]:
                return server.events("--source", "stripe")

            wait_for(lambda: [e["status"] for e in recovered()] == ["processed"], timeout=20)
            [event] = recovered()
            assert (event["dedupe_key"], event["via"]) == (f"stripe:{missed}", "reconcile")
            assert event["type"] == "invoice.payment_failed"

            body = stripe_fake.event_json(missed).decode()
            late = stripe_signed(body, SECRETS["stripe"][0], int(time.time()))
            answer = server.post(late)
            assert answer.status_code == 200 and answer.json() == {"received": True}
            assert [e["id"] for e in recovered()] == [event["id"]]
