# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Reconciliation passes (SPEC §12) against a real store, on every backend, with the official
Twilio client pointed at the loopback FakeTwilio: what its webhooks never brought is ingested
once, as the webhook would have made it; a second pass changes nothing; provider errors fail
the pass and the next recovers; 429 slows it down; one pass at a time for the fleet."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlencode

import pytest

from channels.base import InboundRequest
from channels.twilio import TwilioAdapter
from channels.twilio_history import TwilioHistory
from channels.twilio_send import TwilioSender
from router.clock import FrozenClock
from router.config import ReconcileConfig
from router.events import EventStatus, Via
from router.metrics import Metrics
from router.pipeline.reconcile import HELD_ELSEWHERE, OVERLAP, Reconciler, SourceReport
from router.store.base import EventFilter, Store
from tests.fakes.twilio_api import FakeTwilio, rate_limited, server_error
from tests.router.test_store import backend, open_backend, store  # noqa: F401  (fixtures)

CUSTOMER, OURS = "+15551230001", "+15559870000"
URL = "https://switchboard.example.com/webhooks/twilio/messages"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC).replace(microsecond=0))


def history(fake: FakeTwilio, **options: float) -> TwilioHistory:
    sender = TwilioSender(
        account_sid=fake.account_sid, auth_token=fake.auth_token, api_base=fake.url
    )
    return TwilioHistory(sender, messages_url=URL, **options)  # type: ignore[arg-type]


@pytest.fixture
async def reconciler(
    store: Store, fake: FakeTwilio, clock: FrozenClock
) -> AsyncIterator[Reconciler]:
    found = Reconciler(
        store, {"twilio": history(fake, page_size=2)}, ReconcileConfig(), clock, Metrics()
    )
    yield found
    await found.close()


async def twilio_pass(reconciler: Reconciler, **options: object) -> SourceReport:
    [report] = await reconciler.run("twilio", **options)  # type: ignore[arg-type]
    return report


async def test_a_pass_ingests_inbound_messages_as_their_webhook_would(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    at = clock.now() - timedelta(minutes=30)
    sids = [
        fake.receive(CUSTOMER, OURS, f"message {i}", at=at + timedelta(seconds=i)) for i in range(5)
    ]
    outbound = fake.receive(OURS, CUSTOMER, "our own reply", at=at)
    fake.messages[outbound]["direction"] = "outbound-api"

    report = await twilio_pass(reconciler)

    assert report.error is None and report.seen == 5 and report.recovered == 5
    assert fake.calls["list"] == 3  # 6 Messages, 2 a page: the client followed every page
    events = await store.list_events(EventFilter(source="twilio"))
    assert sorted(e.dedupe_key for e in events) == sorted(f"twilio:{sid}" for sid in sids)
    webhook = _webhook_event(sids[0], "message 0")
    [recovered] = [e for e in events if e.dedupe_key == webhook.dedupe_key]
    for field in ("type", "provider_type", "channel", "contact", "conversation_key", "text"):
        assert getattr(recovered, field) == getattr(webhook, field), field
    assert recovered.via is Via.RECONCILE and webhook.via is Via.WEBHOOK
    assert recovered.status is EventStatus.RECEIVED  # the worker routes it like any other
    assert recovered.occurred_at == at


def _webhook_event(sid: str, body: str):  # type: ignore[no-untyped-def]
    """The event of the webhook Twilio posts for an inbound SMS (its documented fields)."""
    form = {
        "ToCountry": "US", "ToState": "CA", "SmsMessageSid": sid, "NumMedia": "0",
        "ToCity": "", "FromZip": "", "SmsSid": sid, "FromState": "CA", "SmsStatus": "received",
        "FromCity": "", "Body": body, "FromCountry": "US", "To": OURS, "ToZip": "",
        "NumSegments": "1", "MessageSid": sid, "AccountSid": "AC" + "f" * 32,
        "From": CUSTOMER, "ApiVersion": "2010-04-01",
    }  # fmt: skip
    request = InboundRequest(
        body=urlencode(form).encode(),
        headers={},
        url=URL,
        content_type="application/x-www-form-urlencoded",
        received_at=datetime.now(UTC),
        correlation_id="c1",
    )
    return TwilioAdapter(["token"], "messages").parse(request).events[0]


async def test_an_mms_is_recovered_with_its_pictures_as_its_webhook_names_them(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    """The pictures of an MMS are a subresource of the Message: the pass lists them, so the
    recovered event has the attachments its webhook (`MediaUrlN`) would have given."""
    sid = fake.receive(CUSTOMER, OURS, "my receipt", at=clock.now() - timedelta(minutes=5),
                       media=["image/jpeg", "image/png"])  # fmt: skip
    assert (await twilio_pass(reconciler)).recovered == 1
    [event] = await store.list_events(EventFilter(source="twilio"))
    base = f"https://api.twilio.com/2010-04-01/Accounts/{fake.account_sid}/Messages/{sid}/Media"
    assert [(a.url, a.content_type) for a in event.attachments] == [
        (f"{base}/{item['sid']}", item["content_type"]) for item in fake.media[sid]
    ]
    assert [a.content_type for a in event.attachments] == ["image/jpeg", "image/png"]
    assert fake.calls["media"] == 1  # asked for the MMS only


async def test_a_second_pass_changes_nothing(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    fake.receive(CUSTOMER, OURS, "hello", at=clock.now() - timedelta(minutes=1))
    first = await twilio_pass(reconciler)
    clock.advance(timedelta(minutes=10))
    second = await twilio_pass(reconciler)

    assert (first.recovered, second.recovered, second.seen) == (1, 0, 1)
    assert second.since == first.until - OVERLAP  # from the last success, with an overlap
    assert len(await store.list_events(EventFilter())) == 1
    state = (await store.reconcile_state())["twilio"]
    assert (state.last_success, state.recovered, state.last_error) == (second.until, 1, None)


async def test_the_first_pass_looks_back_lookback_and_since_overrides_it(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    fake.receive(CUSTOMER, OURS, "too old", at=clock.now() - timedelta(hours=25))
    fake.receive(CUSTOMER, OURS, "in the window", at=clock.now() - timedelta(hours=23))

    report = await twilio_pass(reconciler)
    assert report.since == clock.now() - timedelta(hours=24)
    assert [e.text for e in await store.list_events(EventFilter())] == ["in the window"]

    older = await twilio_pass(reconciler, since=clock.now() - timedelta(hours=26))
    assert older.recovered == 1


async def test_a_dry_run_lists_what_it_would_ingest_and_stores_nothing(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    sid = fake.receive(CUSTOMER, OURS, "hello", at=clock.now() - timedelta(minutes=1))
    report = await twilio_pass(reconciler, dry_run=True)
    assert (report.recovered, report.new) == (1, [f"twilio:{sid}"])
    assert await store.list_events(EventFilter()) == []
    assert await store.reconcile_state() == {}


async def test_a_provider_error_fails_the_pass_and_the_next_recovers(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    fake.receive(CUSTOMER, OURS, "hello", at=clock.now() - timedelta(minutes=1))
    fake.fail_next(1, server_error(500), op="list")

    failed = await twilio_pass(reconciler)
    assert failed.error is not None and "500" in failed.error and failed.recovered == 0
    state = (await store.reconcile_state())["twilio"]
    assert state.last_success is None and state.last_error == failed.error

    clock.advance(timedelta(minutes=10))
    again = await twilio_pass(reconciler)
    assert again.error is None and again.recovered == 1
    assert again.since == failed.since + timedelta(minutes=10)  # still the first window
    state = (await store.reconcile_state())["twilio"]
    assert (state.last_error, state.last_success) == (None, again.until)


async def test_a_429_slows_the_pass_down_as_retry_after_asks(
    store: Store, fake: FakeTwilio, clock: FrozenClock, reconciler: Reconciler
) -> None:
    fake.receive(CUSTOMER, OURS, "hello", at=clock.now() - timedelta(minutes=1))
    fake.fail_next(2, rate_limited(0.2), op="list")

    report = await twilio_pass(reconciler)

    assert report.error is None and report.recovered == 1
    assert fake.calls["list"] == 3  # asked again after each Retry-After


async def test_a_429_asking_for_too_long_fails_the_pass(
    store: Store, fake: FakeTwilio, clock: FrozenClock
) -> None:
    fake.receive(CUSTOMER, OURS, "hello", at=clock.now() - timedelta(minutes=1))
    fake.fail_next(1, rate_limited(120), op="list")
    slow = Reconciler(
        store, {"twilio": history(fake, max_wait=5)}, ReconcileConfig(), clock, Metrics()
    )
    try:
        report = await twilio_pass(slow)
    finally:
        await slow.close()
    assert report.error is not None and report.recovered == 0
    assert fake.calls["list"] == 1


async def test_one_pass_at_a_time_for_every_process_on_the_store(
    backend: str, tmp_path: Path, store: Store, reconciler: Reconciler
) -> None:
    async with open_backend(backend, tmp_path) as other_process:
        async with other_process.reconcile_lock() as held:
            assert held
            [report] = await reconciler.run("twilio")
            assert (report.skipped, report.seen) == (HELD_ELSEWHERE, 0)
        [report] = await reconciler.run("twilio")
        assert report.skipped is None and report.error is None


async def test_sources_without_a_history_are_skipped_and_say_why(
    store: Store, clock: FrozenClock
) -> None:
    reconciler = Reconciler(
        store, {}, ReconcileConfig(), clock, Metrics(), skipped={"twilio": "sandbox"}
    )
    reports = await reconciler.run()
    assert {r.source: r.skipped for r in reports} == {
        "twilio": "sandbox",
        "stripe": "not configured",
        "slack": "not configured",
    }
