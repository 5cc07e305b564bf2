# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Retention (`storage.retention_days`): an old event whose work is over goes, with its runs,
outbox rows and their attempts; whatever still waits for the worker, the dispatcher or a
person stays, whatever its age. Both backends."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from router.clock import FrozenClock
from router.config import ConfigError, parse_settings
from router.events import Event
from router.ids import new_ulid
from router.metrics import Metrics
from router.store.base import QuarantinedRequest, Store
from router.store.housekeeping import PRUNE_BATCH, prune_old, upkeep_once
from router.store.records import (
    AttemptOutcome,
    LaneCommit,
    OutboxFilter,
    OutboxStatus,
    Pruned,
    Receipt,
)
from tests.router.test_store import T0, backend, store  # noqa: F401  (fixtures)
from tests.router.test_store_dispatch import attempt, claim_all, routed
from tests.router.test_store_routing import LEASE, done, message, put, row

DAY = timedelta(days=1)
CUTOFF = T0 + 8 * DAY


async def outbox_of(store: Store, event: Event) -> list[str]:
    rows = await store.list_outbox(OutboxFilter(event_id=event.id))
    return sorted(r.id.rsplit(":", 1)[1] for r in rows)


async def test_an_old_finished_event_goes_with_its_rows_and_the_rest_stays(store: Store) -> None:
    finished = message(1, "sms:+1:+2")
    await routed(store, finished, row(finished, "reply", conversation_key=None))
    [claimed] = await claim_all(store)
    sent = attempt(claimed, AttemptOutcome.SENT, provider_message_id="SM1")
    assert await store.finish_attempts([sent]) == [True]
    assert len(await store.attempts(claimed.row.id)) == 1

    waiting = message(2, "sms:+3:+2", at_ms=1)
    later = T0 + 30 * DAY
    held = row(waiting, "later", status=OutboxStatus.DEFERRED, not_before=later)
    await routed(store, waiting, msgspec.structs.replace(held, conversation_key=None))
    dead = message(3, "sms:+4:+2", at_ms=2)
    await routed(store, dead, row(dead, "dead", status=OutboxStatus.DEAD, conversation_key=None))
    escalated = message(4, "sms:+5:+2", at_ms=3)
    await routed(
        store,
        escalated,
        row(escalated, "post", kind="escalation", channel="slack", status=OutboxStatus.SENT),
    )
    unrouted = message(5, "sms:+6:+2", at_ms=4)
    await put(store, unrouted)
    recent = message(6, "sms:+7:+2", at_ms=int(9 * DAY / timedelta(milliseconds=1)))
    await put(store, recent)  # received after the cutoff, routed like `finished`
    [lane] = [
        lane
        for lane in await store.claim("w1", T0, LEASE, 10, 10)
        if lane.events[0].id == recent.id
    ]
    recent_row = row(recent, "reply", status=OutboxStatus.SENT, conversation_key=None)
    applied = await store.commit(
        [LaneCommit(lease=lane.lease, results=[done(recent)], outbox=[recent_row])], T0
    )
    assert applied.applied == [True]

    pruned = await store.prune(CUTOFF, PRUNE_BATCH)

    assert pruned.events == 1 and pruned.outbox_rows == 1
    assert await store.get_event(finished.id) is None
    assert await store.get_raw(finished.id) is None
    assert await store.runs(finished.id) == []
    assert await outbox_of(store, finished) == []
    assert await store.attempts(claimed.row.id) == []
    for kept, rows in [
        (waiting, ["later"]),
        (dead, ["dead"]),
        (escalated, ["post"]),
        (unrouted, []),
        (recent, ["reply"]),
    ]:
        assert await store.get_event(kept.id) is not None, kept.dedupe_key
        assert await outbox_of(store, kept) == rows, kept.dedupe_key
    assert await store.runs(waiting.id) != []
    assert await store.prune(CUTOFF, PRUNE_BATCH) == Pruned()  # nothing more is old and over


async def test_old_quarantine_and_unclaimed_receipts_go(store: Store) -> None:
    for n, at in [(1, T0), (2, CUTOFF + DAY)]:
        await store.quarantine(
            QuarantinedRequest(
                id=new_ulid(at),
                source="twilio",
                received_at=at,
                reason="bad",
                content_type="text/plain",
                raw_body=b"?",
                correlation_id=f"c{n}",
            )
        )
    status = message(9, None)
    await put(store, status)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    receipt = Receipt(provider_message_id="SMnobody", status="delivered", at=T0)
    commit = LaneCommit(lease=lane.lease, results=[done(status)], receipts=[receipt])
    await store.commit([commit], T0)

    pruned = await store.prune(CUTOFF, PRUNE_BATCH)

    assert (pruned.quarantined, pruned.receipts, pruned.events) == (1, 1, 1)
    assert [q.received_at for q in await store.list_quarantine()] == [CUTOFF + DAY]


async def test_a_backlog_goes_in_batches(store: Store) -> None:
    events = [message(n, None, at_ms=n) for n in range(PRUNE_BATCH + 20)]
    await put(store, *events)
    while lanes := await store.claim("w1", T0, LEASE, 100, 10):
        await store.commit(
            [LaneCommit(lease=ln.lease, results=[done(e) for e in ln.events]) for ln in lanes], T0
        )
    total = await prune_old(store, CUTOFF)
    assert total.events == len(events)
    assert await store.get_event(events[-1].id) is None


async def test_upkeep_prunes_only_when_retention_is_set(store: Store) -> None:
    finished = message(1, None)
    await routed(store, finished)
    clock = FrozenClock(T0 + 31 * DAY)
    await upkeep_once(store, clock, parse_settings(""))  # retention_days = 0: keep everything
    assert await store.get_event(finished.id) is not None
    metrics = Metrics()
    retained = parse_settings("[storage]\nretention_days = 30\n")
    await upkeep_once(store, clock, retained, metrics.count_pruned)
    assert await store.get_event(finished.id) is None
    assert b'switchboard_pruned_total{what="events"} 1.0' in metrics.render()


def test_retention_is_off_or_at_least_a_week() -> None:
    assert parse_settings("[storage]\nretention_days = 7\n").storage.retention_days == 7
    with pytest.raises(ConfigError, match=r"storage\.retention_days"):
        parse_settings("[storage]\nretention_days = 3\n")
