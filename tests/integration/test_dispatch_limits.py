"""Rate limits in real time (SPEC §5 and §8, issue 9): what the fake Twilio API sees.

`switchboard serve` runs as a process of its own (so the acceptance times the fake records in
this process are not skewed by the server sharing its interpreter), with `channels.sms` live
against `tests/fakes/twilio_api.FakeTwilio`, `rate_per_second = 5` and one sender number. A
Stripe rule makes one `marketing` SMS per `customer.subscription.deleted`; 50 of them drain at
the configured rate, spread over about 10 s, and a conversational reply queued after all 50
leaves at the next free slot, ahead of most of them.
"""

from __future__ import annotations

import itertools
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from tests.cases import stripe, twilio
from tests.fakes.twilio_api import FakeTwilio
from tests.support import PUBLIC_URL, SECRETS, open_quiet_hours, server_process, wait_for

pytestmark = pytest.mark.integration

OURS = "+15559870000"
CUSTOMER = "+15553200001"
RATE = 5
BURST = 50
RULES = """version: 1
rules:
  - id: winback
    when: {source: stripe, type: customer.subscription.deleted}
    then:
      - send: {channel: sms, to: "{{ data.phone }}", category: marketing,
               text: "Come back: 20% off"}
  - id: winback-long
    when: {source: stripe, type: customer.subscription.paused}
    then:
      - send: {channel: sms, to: "{{ data.phone }}", category: marketing,
               text: "LONG_OFFER"}
  - id: ping
    when: {channel: sms, type: message.received, text: {contains_any: [ping]}}
    then:
      - reply: {text: "pong"}
"""


def phone(n: int) -> str:
    return f"+1555310{n:04d}"


def test_a_two_segment_sms_takes_two_slots_of_its_sender(tmp_path: Path) -> None:
    """A long code sends about one segment a second: `rate_per_second` counts segments."""
    count = 8
    with FakeTwilio(auth_token=SECRETS["twilio"][0]) as fake:
        extra = config(tmp_path, fake, [phone(n) for n in range(count)])
        with (
            server_process(tmp_path, extra=extra) as server,
            httpx.Client(base_url=server.base_url, timeout=10) as client,
        ):
            for n in range(count):
                post_stripe(client, f"evt_long_{n}", "customer.subscription.paused", phone(n))
            assert fake.wait_until(lambda: len(fake.accepted) == count, timeout=20)
    accepted = sorted(fake.snapshot(), key=lambda m: m.accepted_at)
    assert {m.body for m in accepted} == {LONG_OFFER}
    gaps = [b.accepted_at - a.accepted_at for a, b in itertools.pairwise(accepted)]
    # Two slots of 0.2 s each: 0.4 s apart (less jitter), not 0.2.
    assert min(gaps) >= 0.33, [round(g, 3) for g in gaps]
    span = accepted[-1].accepted_at - accepted[0].accepted_at
    assert 2.6 <= span <= 5.0, f"{count} two-segment sends spread over {span:.2f} s"


def outbox_count(db_path: Path) -> int:
    try:
        with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as conn:
            count: int = conn.execute("SELECT count(*) FROM outbox").fetchone()[0]
            return count
    except sqlite3.OperationalError:  # no table yet, or locked a moment
        return -1


#: 200 GSM-7 characters: two segments (153 each), so two of the sender's slots per send.
LONG_OFFER = "Come back: 20% off. " * 10


def config(tmp_path: Path, fake: FakeTwilio, phones: list[str]) -> str:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "limits.yaml").write_text(RULES.replace("LONG_OFFER", LONG_OFFER))
    window = open_quiet_hours(phones)
    return f"""
[rules]
path = "{rules}"

[channels.sms]
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
from = "{OURS}"
mode = "live"
api_base = "{fake.url}"
rate_per_second = {RATE}

[compliance]
quiet_hours = "{window}"
default_timezone = "UTC"
state_windows = false

[dispatch]
poll_seconds = 0.2
"""


def post_stripe(client: httpx.Client, event_id: str, kind: str, phone: str) -> None:
    payload = stripe.stripe_event(event_id, kind, {"id": "s", "phone": phone})
    request = stripe.signed(payload, SECRETS["stripe"][0], int(time.time()))
    answer = client.post(request.path, content=request.body, headers=request.headers)
    assert answer.status_code == 200, answer.text


def test_a_marketing_burst_drains_at_the_rate_and_a_reply_goes_ahead_of_it(
    tmp_path: Path,
) -> None:
    with FakeTwilio(auth_token=SECRETS["twilio"][0]) as fake:
        extra = config(tmp_path, fake, [phone(n) for n in range(BURST)])
        with (
            server_process(tmp_path, extra=extra) as server,
            httpx.Client(base_url=server.base_url, timeout=10) as client,
        ):
            for n in range(BURST):
                post_stripe(client, f"evt_burst_{n}", "customer.subscription.deleted", phone(n))
            wait_for(lambda: outbox_count(server.db_path) == BURST, timeout=10, interval=0.05)

            # All 50 are queued: now a customer writes, and the reply joins the queue last.
            params = {
                "MessageSid": "SMreply1",
                "AccountSid": "AC" + "1" * 32,
                "From": CUSTOMER,
                "To": OURS,
                "Body": "ping",
            }
            inbound = twilio.signed(
                PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0]
            )
            queued_at = time.monotonic()
            answer = client.post(inbound.path, content=inbound.body, headers=inbound.headers)
            assert answer.status_code == 200, answer.text
            assert fake.wait_until(lambda: len(fake.accepted) == BURST + 1, timeout=20), (
                f"{len(fake.accepted)} of {BURST + 1} accepted"
            )

    accepted = sorted(fake.snapshot(), key=lambda m: m.accepted_at)
    assert {m.from_ for m in accepted} == {OURS}
    marketing = [m for m in accepted if m.to != CUSTOMER]
    assert sorted(m.to for m in marketing) == sorted(phone(n) for n in range(BURST))
    assert all(m.body == "Come back: 20% off" for m in marketing)

    # Drained at 5/s from one number: 50 sends (and the reply's slot) over about 10 s.
    times = [m.accepted_at for m in accepted]
    span = marketing[-1].accepted_at - marketing[0].accepted_at
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert 8.0 <= span <= 13.0, f"{BURST} marketing sends spread over {span:.2f} s"

    # The reply, queued behind all 50, went out within a few slots, ahead of most of them
    # (slots already booked ahead for marketing rows, up to a second of them, go first).
    [reply] = [m for m in accepted if m.to == CUSTOMER]
    assert reply.body == "pong"
    behind = sum(m.accepted_at > reply.accepted_at for m in marketing)
    assert behind > BURST // 2, f"the reply left after {BURST - behind} of {BURST} marketing sends"
    waited = reply.accepted_at - queued_at
    assert waited < 2.0, f"the reply waited {waited:.2f} s ({waited * RATE:.0f} slots)"

    # No two sends from our number closer than the spacing allows (0.2 s, less jitter).
    closest = min(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[closest] >= 0.15, (
        f"sends {closest + 1} and {closest + 2} of {len(accepted)} accepted "
        f"{gaps[closest]:.3f} s apart (spacing {1 / RATE:g} s); first gaps: "
        f"{[round(g, 3) for g in gaps[:4]]}"
    )
