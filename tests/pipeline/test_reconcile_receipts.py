# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Reconciliation's outbound receipts (SPEC §12), on every backend against the loopback
FakeTwilio through the official client: rows still `sent` 10 minutes after their send get
their Message fetched, and a final status becomes the status callback it stands for (the same
event and dedupe key), which the worker applies as it applies a callback: forward only."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from channels.twilio_history import TwilioHistory
from channels.twilio_send import TwilioSender
from router.clock import FrozenClock
from router.config import ReconcileConfig, parse_settings
from router.events import EventType, Via
from router.metrics import Metrics
from router.pipeline.reconcile import Reconciler, SourceReport
from router.pipeline.worker import Worker
from router.rules import load_ruleset
from router.store.base import EventFilter, Store
from router.store.records import AttemptOutcome, OutboxRow, OutboxStatus
from tests.fakes.twilio_api import FakeTwilio, server_error
from tests.router.test_store import T0, backend, open_backend, store  # noqa: F401  (fixtures)
from tests.router.test_store_dispatch import attempt, by_id, claim_all, routed
from tests.router.test_store_routing import message, row

NOW = T0 + timedelta(hours=1)
CUSTOMER, OURS = "+15551230001", "+15559870000"


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio() as running:
        yield running


@pytest.fixture
async def reconciler(store: Store, fake: FakeTwilio) -> AsyncIterator[Reconciler]:
    sender = TwilioSender(
        account_sid=fake.account_sid, auth_token=fake.auth_token, api_base=fake.url
    )
    history = TwilioHistory(sender, messages_url="https://sb.example.com/webhooks/twilio/messages")
    found = Reconciler(store, {"twilio": history}, ReconcileConfig(), FrozenClock(NOW), Metrics())
    yield found
    await found.close()


def outbound(fake: FakeTwilio, status: str, error_code: int | None = None) -> str:
    """A Message we sent, at `status` at Twilio now (its callback never came)."""
    sid = fake.receive(OURS, CUSTOMER, "our reply", at=T0)
    fake.messages[sid].update(direction="outbound-api", status=status, error_code=error_code)
    return sid


async def sent_rows(store: Store, sent: dict[str, tuple[str, datetime, str]]) -> None:
    """Outbox rows `sent` with these provider ids: {suffix: (sid, send time, channel)}."""
    event = message(1, None)
    rows = [
        row(event, name, conversation_key=None, channel=ch) for name, (_, _, ch) in sent.items()
    ]
    await routed(store, event, *rows)
    for claimed in await claim_all(store, T0):
        sid, at, _ = sent[claimed.row.id.rsplit(":", 1)[1]]
        done = attempt(claimed, AttemptOutcome.SENT, at=at, provider_message_id=sid)
        assert await store.finish_attempts([done]) == [True]


async def twilio_pass(reconciler: Reconciler, **options: bool) -> SourceReport:
    [report] = await reconciler.run("twilio", **options)
    return report


async def work(store: Store, tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir(exist_ok=True)
    (tmp_path / "rules" / "none.yaml").write_text("version: 1\nrules: []\n")
    ruleset = load_ruleset(tmp_path / "rules")
    worker = Worker(store, parse_settings(""), lambda: ruleset, FrozenClock(NOW), Metrics())
    while await worker.run_once():
        pass


async def test_rows_sent_without_a_final_receipt_get_their_status_applied_once(
    store: Store, fake: FakeTwilio, reconciler: Reconciler, tmp_path: Path
) -> None:
    old, recent = NOW - timedelta(minutes=11), NOW - timedelta(minutes=9)
    delivered, failed = outbound(fake, "delivered"), outbound(fake, "undelivered", 30003)
    pending, too_soon = outbound(fake, "sent"), outbound(fake, "delivered")
    await sent_rows(
        store,
        {
            "delivered": (delivered, old, "sms"),
            "failed": (failed, old, "whatsapp"),
            "pending": (pending, old, "sms"),
            "too_soon": (too_soon, recent, "sms"),
            "slack": ("1700000000.000100", old, "slack"),
            "gone": ("SM" + "0" * 32, old, "sms"),  # Twilio no longer knows it: 404, skipped
        },
    )

    dry = await twilio_pass(reconciler, dry_run=True)
    assert (dry.error, dry.receipts) == (None, 2)
    report = await twilio_pass(reconciler)

    assert (report.error, report.receipts, report.recovered) == (None, 2, 0)
    assert fake.calls["fetch"] == 2 * 4  # sms and whatsapp rows sent over 10 minutes ago
    events = await store.list_events(EventFilter(type=EventType.MESSAGE_STATUS))
    assert sorted(e.dedupe_key for e in events) == sorted(
        [f"twilio:{delivered}:delivered", f"twilio:{failed}:undelivered"]
    )
    assert all(e.via is Via.RECONCILE for e in events)
    await work(store, tmp_path)
    rows = await by_id(store)
    assert _status(rows["delivered"]) == (OutboxStatus.DELIVERED, None)
    assert _status(rows["failed"]) == (OutboxStatus.UNDELIVERED, "30003")
    for name in ("pending", "too_soon", "slack", "gone"):
        assert rows[name].status is OutboxStatus.SENT, name

    again = await twilio_pass(reconciler)  # applied rows are asked no more
    assert (again.receipts, fake.calls["fetch"]) == (0, 2 * 4 + 2)


async def test_a_late_receipt_never_moves_a_row_back_and_is_one_event_with_the_callback(
    store: Store, fake: FakeTwilio, reconciler: Reconciler, tmp_path: Path
) -> None:
    sid = outbound(fake, "delivered")
    await sent_rows(store, {"a": (sid, NOW - timedelta(hours=2), "sms")})
    first = await twilio_pass(reconciler)
    second = await twilio_pass(reconciler)  # the worker has not applied it yet: a duplicate
    assert (first.receipts, second.receipts) == (1, 0)
    await work(store, tmp_path)
    assert (await by_id(store))["a"].status is OutboxStatus.DELIVERED
    fake.messages[sid]["status"] = "failed"  # what a late fetch might say: not a second end
    assert (await twilio_pass(reconciler)).receipts == 0
    assert (await by_id(store))["a"].status is OutboxStatus.DELIVERED


async def test_a_fetch_error_fails_the_pass_and_the_next_applies_it(
    store: Store, fake: FakeTwilio, reconciler: Reconciler
) -> None:
    sid = outbound(fake, "failed", 30007)
    await sent_rows(store, {"a": (sid, NOW - timedelta(hours=2), "sms")})
    fake.faults.fail_next(1, server_error(500), op="fetch")
    failed = await twilio_pass(reconciler)
    assert failed.error is not None and failed.receipts == 0
    recovered = await twilio_pass(reconciler)
    assert (recovered.error, recovered.receipts) == (None, 1)


def _status(stored: OutboxRow) -> tuple[OutboxStatus, str | None]:
    return stored.status, stored.error_code
