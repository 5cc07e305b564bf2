# ruff: noqa: F811  (fixtures are imported, then named by the tests)
"""The consent gate at send time: a marketing row already claimed when its contact went into
review (the hold at routing cannot see a row being sent) is not sent and not lost; it waits,
using no attempt, until a person decides. Real stores (both backends), the real TwilioSender
against the fake Twilio API on loopback."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from pathlib import Path

from router.clock import FrozenClock
from router.pipeline.dispatch import Dispatcher
from router.store.base import Store
from router.store.records import HELD_FOR_REVIEW, ContactRecord, OutboxFilter, OutboxStatus
from tests.fakes.twilio_api import FakeTwilio
from tests.pipeline.dispatching import dispatcher_on, twilio_channel
from tests.pipeline.test_dispatchers_share import round_of
from tests.router.test_store import T0, backend, store  # noqa: F401
from tests.router.test_store_dispatch import routed
from tests.router.test_store_routing import message, row
from tests.support import SECRETS

CUSTOMER = "+15551230001"


def dispatcher(
    store: Store, fake: FakeTwilio, clock: FrozenClock, tmp_path: Path
) -> AbstractAsyncContextManager[Dispatcher]:
    return dispatcher_on(store, clock, tmp_path, twilio_channel(fake, "+15559870000", 100))


async def consent(store: Store, n: int, state: str) -> None:
    """An event of its own whose commit sets the contact's consent (as routing would)."""
    event = message(n, None, at_ms=n)
    await routed(store, event, contacts=[(ContactRecord(address=CUSTOMER, consent=state), None)])


async def test_marketing_claimed_as_its_contact_goes_into_review_waits_for_the_decision(
    store: Store, tmp_path: Path
) -> None:
    clock = FrozenClock(T0)
    with FakeTwilio(auth_token=SECRETS["twilio"][0]) as fake:
        async with dispatcher(store, fake, clock, tmp_path) as one:
            event = message(1, None)
            winback = row(event, "winback", category="marketing", kind="send")
            receipt = row(event, "receipt", category="transactional", kind="send")
            await routed(store, event, winback, receipt)
            await consent(store, 2, "review")  # committed after the rows, before the send

            await round_of(one)
            rows = {r.id.rsplit(":", 1)[1]: r for r in await store.list_outbox(OutboxFilter())}
            assert rows["receipt"].status is OutboxStatus.SENT  # not marketing: it goes
            held = rows["winback"]
            assert (held.status, held.last_error) == (OutboxStatus.PENDING, HELD_FOR_REVIEW)
            assert held.attempts == 0 and held.next_attempt_at == T0 + timedelta(minutes=1)
            assert len(fake.accepted_to(CUSTOMER)) == 1

            clock.advance(timedelta(minutes=1, seconds=1))
            await round_of(one)  # still in review: asked again later, still no attempt used
            [held] = [r for r in await store.list_outbox(OutboxFilter()) if r.id == winback.id]
            assert (held.status, held.attempts) == (OutboxStatus.PENDING, 0)

            await consent(store, 3, "subscribed")  # a person kept them subscribed
            clock.advance(timedelta(minutes=1, seconds=1))
            await round_of(one)
            [sent] = [r for r in await store.list_outbox(OutboxFilter()) if r.id == winback.id]
            assert sent.status is OutboxStatus.SENT
            assert len(fake.accepted_to(CUSTOMER)) == 2


async def test_a_row_routed_before_its_contact_opted_out_is_cancelled_at_the_send(
    store: Store, tmp_path: Path
) -> None:
    """The send-time check alone: routing let the row through (the contact was subscribed),
    and the opt-out committed after it cancels no waiting row (only a STOP's own commit does).
    The dispatcher's check is what keeps it from Twilio; it records the attempt it refused."""
    clock = FrozenClock(T0)
    with FakeTwilio(auth_token=SECRETS["twilio"][0]) as fake:
        async with dispatcher(store, fake, clock, tmp_path) as one:
            event = message(1, None)
            receipt = row(event, "receipt", category="transactional", kind="send")
            await routed(store, event, receipt)
            await consent(store, 2, "opted_out")
            [waiting] = await store.list_outbox(OutboxFilter())
            assert (waiting.status, waiting.attempts) == (OutboxStatus.PENDING, 0)

            await round_of(one)
            [cancelled] = await store.list_outbox(OutboxFilter())
            assert (cancelled.status, cancelled.last_error) == (
                OutboxStatus.CANCELLED,
                "contact opted out",
            )
            assert cancelled.attempts == 1  # refused by the dispatcher, not at routing
            assert one.finished == {"cancelled": 1}
            assert fake.calls["create"] == 0
