# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Stripe reconciliation (SPEC §12) on every backend, the official `stripe` library pointed at
the loopback FakeStripe: missed Events are ingested once, as their webhook would have made
them, every page followed; `accept_types` applies as at the webhook; a provider error fails
the pass and the next recovers."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from channels.base import InboundRequest
from channels.stripe import StripeAdapter
from channels.stripe_history import StripeHistory
from router.clock import FrozenClock
from router.config import ReconcileConfig
from router.events import EventStatus, Via
from router.metrics import Metrics
from router.pipeline.reconcile import Reconciler, SourceReport
from router.store.base import EventFilter, Store
from tests.fakes.stripe_api import FakeStripe, rate_limited, server_error
from tests.router.test_store import backend, open_backend, store  # noqa: F401  (fixtures)

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
def fake() -> Iterator[FakeStripe]:
    with FakeStripe() as running:
        yield running


def reconciler(store: Store, fake: FakeStripe, **accept: list[str]) -> Reconciler:
    history = StripeHistory(fake.api_key, api_base=fake.url, page_size=2)
    return Reconciler(
        store, {"stripe": history}, ReconcileConfig(), FrozenClock(NOW), Metrics(),
        accept_types=accept,
    )  # fmt: skip


async def stripe_pass(found: Reconciler) -> SourceReport:
    [report] = await found.run("stripe")
    return report


def invoice(n: int) -> dict[str, object]:
    return {"id": f"in_{n}", "object": "invoice", "customer_phone": "+15551230001"}


async def test_missed_events_are_ingested_once_as_their_webhook_would(
    store: Store, fake: FakeStripe
) -> None:
    ids = [
        fake.add("invoice.paid", invoice(i), created=NOW - timedelta(minutes=50 - i))
        for i in range(5)
    ]
    fake.add("invoice.paid", invoice(99), created=NOW - timedelta(hours=25))  # before lookback
    found = reconciler(store, fake)
    try:
        first = await stripe_pass(found)
        second = await stripe_pass(found)
    finally:
        await found.close()

    assert (first.error, first.seen, first.recovered) == (None, 5, 5)
    assert fake.calls["list"] == 3 + 1  # 2 a page, every page; the second from its mark
    assert (second.error, second.recovered) == (None, 0)
    events = await store.list_events(EventFilter(source="stripe"))
    assert sorted(e.dedupe_key for e in events) == sorted(f"stripe:{i}" for i in ids)
    webhook = _webhook_event(fake.event_json(ids[0]))
    [recovered] = [e for e in events if e.dedupe_key == webhook.dedupe_key]
    for field in ("type", "provider_type", "contact", "data", "occurred_at"):
        assert getattr(recovered, field) == getattr(webhook, field), field
    assert recovered.via is Via.RECONCILE and recovered.status is EventStatus.RECEIVED


async def test_accept_types_apply_as_at_the_webhook(store: Store, fake: FakeStripe) -> None:
    paid = fake.add("invoice.paid", invoice(1), created=NOW - timedelta(minutes=5))
    other = fake.add("charge.refunded", {"id": "ch_1"}, created=NOW - timedelta(minutes=4))
    found = reconciler(store, fake, stripe=["invoice.*"])
    try:
        report = await stripe_pass(found)
    finally:
        await found.close()
    assert report.recovered == 2
    statuses = {e.dedupe_key: e.status for e in await store.list_events(EventFilter())}
    assert statuses == {
        f"stripe:{paid}": EventStatus.RECEIVED,
        f"stripe:{other}": EventStatus.IGNORED,
    }


@pytest.mark.parametrize("fault", [server_error(500), rate_limited()], ids=["500", "429"])
async def test_an_error_fails_the_pass_and_the_next_recovers(
    store: Store, fake: FakeStripe, fault: object
) -> None:
    fake.add("invoice.paid", invoice(1), created=NOW - timedelta(minutes=5))
    fake.add("invoice.paid", invoice(2), created=NOW - timedelta(minutes=4))
    fake.add("invoice.paid", invoice(3), created=NOW - timedelta(minutes=3))
    found = reconciler(store, fake)
    fake.faults.fail_next(1, fault, op="list")  # type: ignore[arg-type]
    try:
        failed = await stripe_pass(found)
        assert failed.error is not None and failed.recovered == 0
        assert (await store.reconcile_state())["stripe"].last_error == failed.error
        recovered = await stripe_pass(found)
    finally:
        await found.close()
    assert (recovered.error, recovered.recovered) == (None, 3)


def _webhook_event(body: bytes):  # type: ignore[no-untyped-def]
    request = InboundRequest(
        body=body,
        headers={},
        url="https://sb.example.com/webhooks/stripe",
        content_type="application/json",
        received_at=NOW,
        correlation_id="c1",
    )
    return StripeAdapter(["whsec_x"], 300, FrozenClock(NOW)).parse(request).events[0]
