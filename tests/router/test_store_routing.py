# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""The store's routing verbs: claims in order per lane, leases that expire, fencing by token,
threads mapped to conversations, outbox rows made once, waiting rows cancelled by contact."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec

from router.events import Contact, EscalationThread, Event, EventStatus
from router.ids import new_ulid
from router.store.base import IngestItem, Store
from router.store.records import (
    HELD_UNTIL,
    AttemptOutcome,
    AttemptResult,
    EventResult,
    HoldChange,
    LaneCommit,
    OutboxFilter,
    OutboxRow,
    OutboxStatus,
    RunRecord,
)
from tests.router.test_store import T0, backend, store  # noqa: F401  (fixtures)

LEASE = 30.0


def message(n: int, conversation: str | None, *, at_ms: int = 0, **fields: Any) -> Event:
    at = T0 + timedelta(milliseconds=at_ms)
    return Event(
        id=new_ulid(at),
        source="twilio",
        type="message.received",
        provider_type="message.received",
        dedupe_key=f"twilio:SM{n}",
        contact=Contact(address="+15551230001"),
        conversation_key=conversation,
        text=f"message {n}",
        received_at=at,
        correlation_id=f"corr-{n}",
        **fields,
    )


async def put(store: Store, *events: Event) -> None:
    for event in events:
        await store.ingest(IngestItem(event=event, raw_body=b"x", content_type="text/plain"))


def row(event: Event, suffix: str, **fields: Any) -> OutboxRow:
    values: dict[str, Any] = {
        "id": f"{event.id}:{suffix}",
        "event_id": event.id,
        "conversation_key": event.conversation_key,
        "channel": "sms",
        "to": "+15551230001",
        "category": "conversational",
        "status": OutboxStatus.PENDING,
        "kind": "reply",
        "payload": {"text": "hi"},
        "created_at": T0,
        "contact_key": "+15551230001",
    }
    values.update(fields)
    return OutboxRow(**values)


def done(event: Event) -> EventResult:
    run = RunRecord(event_id=event.id, at=T0, rules_version="v1", matched=["r"])
    return EventResult(event_id=event.id, status=EventStatus.PROCESSED, run=run)


async def test_claim_gives_each_lane_its_events_in_arrival_order(store: Store) -> None:
    a = [message(i, "sms:+1:+2", at_ms=i * 2) for i in range(5)]
    b = [message(10 + i, "sms:+3:+2", at_ms=i * 2 + 1) for i in range(5)]
    stripe = message(99, None, at_ms=20)
    await put(store, *[e for pair in zip(a, b, strict=True) for e in pair], stripe)
    lanes = await store.claim("w1", T0, LEASE, max_lanes=10, max_events=3)
    by_lane = {lane.lease.lane: [e.id for e in lane.events] for lane in lanes}
    assert list(by_lane) == ["sms:+1:+2", "sms:+3:+2", f"event:{stripe.id}"]
    assert by_lane["sms:+1:+2"] == [e.id for e in a[:3]]
    assert by_lane["sms:+3:+2"] == [e.id for e in b[:3]]
    for lane in lanes:  # a claim writes nothing on the event: the lease says it is taken
        stored = await store.get_event(lane.events[0].id)
        assert stored is not None and stored.status is EventStatus.RECEIVED


async def test_a_leased_lane_is_not_claimed_again_until_its_lease_expires(store: Store) -> None:
    first, second = message(1, "sms:+1:+2"), message(2, "sms:+1:+2", at_ms=1)
    other = message(3, "sms:+3:+2", at_ms=2)
    await put(store, first, second)
    [held] = await store.claim("w1", T0, LEASE, max_lanes=10, max_events=1)
    assert [e.id for e in held.events] == [first.id]
    await put(store, other)
    # The conversation's later event waits behind the held one; other conversations go on.
    lanes = await store.claim("w2", T0 + timedelta(seconds=1), LEASE, 10, 10)
    assert [lane.lease.lane for lane in lanes] == ["sms:+3:+2"]
    # The holder died: after expiry another worker takes the lane over, from its first event.
    later = T0 + timedelta(seconds=LEASE + 0.5)
    [taken] = await store.claim("w2", later, LEASE, 10, 10)
    assert taken.lease.lane == "sms:+1:+2"
    assert [e.id for e in taken.events] == [first.id, second.id]
    assert taken.lease.token != held.lease.token


async def test_a_stale_lease_holder_cannot_commit(store: Store) -> None:
    event = message(1, "sms:+1:+2")
    await put(store, event)
    [stale] = await store.claim("w1", T0, LEASE, 10, 10)
    [fresh] = await store.claim("w2", T0 + timedelta(seconds=LEASE + 1), LEASE, 10, 10)
    refused = await store.commit(
        [LaneCommit(lease=stale.lease, results=[done(event)], outbox=[row(event, "stale")])], T0
    )
    assert refused.applied == [False]
    assert await store.list_outbox(OutboxFilter()) == []
    assert (await store.get_event(event.id)).status is EventStatus.RECEIVED  # type: ignore[union-attr]
    applied = await store.commit(
        [LaneCommit(lease=fresh.lease, results=[done(event)], outbox=[row(event, "fresh")])], T0
    )
    assert applied.applied == [True]
    assert [r.id for r in await store.list_outbox(OutboxFilter())] == [f"{event.id}:fresh"]
    assert (await store.get_event(event.id)).status is EventStatus.PROCESSED  # type: ignore[union-attr]
    assert [run.matched for run in await store.runs(event.id)] == [["r"]]
    # Committed and released: the old holder cannot commit again either.
    again = await store.commit([LaneCommit(lease=fresh.lease, results=[done(event)])], T0)
    assert again.applied == [False]


async def test_an_outbox_row_is_made_once_however_often_it_is_committed(store: Store) -> None:
    event = message(1, "sms:+1:+2")
    await put(store, event)
    for attempt in range(2):
        await store.ingest(  # a replay: the event is routed again under a new claim
            IngestItem(event=message(50 + attempt, None), raw_body=b"", content_type="x")
        )
        lanes = await store.claim("w1", T0, LEASE, 10, 10)
        commits = [
            LaneCommit(
                lease=lane.lease,
                results=[done(e) for e in lane.events],
                outbox=[row(event, "reply")],
            )
            for lane in lanes
        ]
        outcome = await store.commit(commits, T0)
        assert outcome.new_outbox_ids == ([f"{event.id}:reply"] if attempt == 0 else [])
    assert len(await store.list_outbox(OutboxFilter())) == 1


async def test_an_opt_out_cancels_waiting_rows_of_that_contact_only(store: Store) -> None:
    event, stop = message(1, "sms:+1:+2"), message(2, "sms:+1:+2", at_ms=1)
    await put(store, event)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    rows = [
        row(event, "pending"),
        row(event, "deferred", status=OutboxStatus.DEFERRED, not_before=T0 + timedelta(hours=9)),
        row(event, "sent", status=OutboxStatus.SENT),
        row(event, "other", to="+15557770000", contact_key="+15557770000"),
    ]
    await store.commit([LaneCommit(lease=lane.lease, results=[done(event)], outbox=rows)], T0)
    await put(store, stop)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    confirmation = row(stop, "opt_out_confirmation", kind="opt_out_confirmation")
    outcome = await store.commit(
        [
            LaneCommit(
                lease=lane.lease,
                results=[done(stop)],
                cancel_contacts=[("+15551230001", "contact opted out")],
                outbox=[confirmation],
            )
        ],
        T0,
    )
    assert sorted(outcome.cancelled_outbox_ids) == [f"{event.id}:deferred", f"{event.id}:pending"]
    status = {r.id.rsplit(":", 1)[1]: r.status for r in await store.list_outbox(OutboxFilter())}
    assert status == {
        "pending": OutboxStatus.CANCELLED,
        "deferred": OutboxStatus.CANCELLED,
        "sent": OutboxStatus.SENT,
        "other": OutboxStatus.PENDING,
        "opt_out_confirmation": OutboxStatus.PENDING,
    }


async def _commit_holds(store: Store, event: Event, *changes: HoldChange) -> None:
    await put(store, event)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    commit = LaneCommit(lease=lane.lease, results=[done(event)], holds=list(changes))
    assert (await store.commit([commit], T0)).applied == [True]


async def test_a_review_holds_waiting_marketing_and_a_release_lets_it_wait_for_quiet_hours(
    store: Store,
) -> None:
    event = message(1, "sms:+1:+2")
    await put(store, event)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    quiet_end = T0 + timedelta(hours=9)
    marketing = {"category": "marketing", "kind": "send"}
    rows = [
        row(event, "pending", **marketing),
        row(event, "deferred", status=OutboxStatus.DEFERRED, not_before=quiet_end, **marketing),
        row(event, "receipt", category="transactional"),
        row(event, "sent", status=OutboxStatus.SENT, **marketing),
        row(event, "other", to="+15557770000", contact_key="+15557770000", **marketing),
    ]
    await store.commit([LaneCommit(lease=lane.lease, results=[done(event)], outbox=rows)], T0)

    def rows_now() -> Any:
        return store.list_outbox(OutboxFilter())

    held = HoldChange(contact_key="+15551230001", hold=True, reason="held: review")
    await _commit_holds(store, message(2, "sms:+1:+2", at_ms=1), held)
    found = {r.id.rsplit(":", 1)[1]: r for r in await rows_now()}
    assert {k: (r.status, r.not_before) for k, r in found.items()} == {
        "pending": (OutboxStatus.DEFERRED, HELD_UNTIL),
        "deferred": (OutboxStatus.DEFERRED, HELD_UNTIL),
        "receipt": (OutboxStatus.PENDING, None),
        "sent": (OutboxStatus.SENT, None),
        "other": (OutboxStatus.PENDING, None),
    }
    assert found["pending"].last_error == "held: review"

    release = HoldChange(contact_key="+15551230001", hold=False, not_before=quiet_end)
    await _commit_holds(store, message(3, "sms:+1:+2", at_ms=2), release)
    found = {r.id.rsplit(":", 1)[1]: r for r in await rows_now()}
    for key in ("pending", "deferred"):
        assert (found[key].status, found[key].not_before) == (OutboxStatus.DEFERRED, quiet_end)
        assert found[key].last_error is None
    # Rows deferred by quiet hours only are not held ones: a release leaves them be.
    at_once = HoldChange(contact_key="+15551230001", hold=False)
    await _commit_holds(store, message(4, "sms:+1:+2", at_ms=3), at_once)
    deferred = await store.list_outbox(OutboxFilter(status=OutboxStatus.DEFERRED))
    assert sorted(r.id.rsplit(":", 1)[1] for r in deferred) == ["deferred", "pending"]
    # Held and released in one commit, in the events' order: they go at once.
    await _commit_holds(store, message(5, "sms:+1:+2", at_ms=4), held, at_once)
    found = {r.id.rsplit(":", 1)[1]: r for r in await rows_now()}
    for key in ("pending", "deferred"):
        assert (found[key].status, found[key].not_before) == (OutboxStatus.PENDING, None)


async def test_thread_events_join_the_conversation_they_escalated(store: Store) -> None:
    inbound = message(1, "sms:+15551230001:+15559870000")
    await put(store, inbound)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    post = row(
        inbound, "escalation", channel="slack", to="C0SUPPORT", kind="escalation", contact_key=None
    )
    await store.commit([LaneCommit(lease=lane.lease, results=[done(inbound)], outbox=[post])], T0)
    # Sent, as the dispatcher records it: Slack's ts of the post names the thread, which the
    # dispatcher hands to the store with the result.
    [due] = await store.due_rows(T0, 10)
    [claimed] = (await store.claim_rows([due], "d1", T0, LEASE)).claimed
    thread = EscalationThread(
        channel="C0SUPPORT", ts="1700000000.000100", conversation_key=inbound.conversation_key
    )
    sent = AttemptResult(
        id=post.id,
        token=claimed.token,
        outcome=AttemptOutcome.SENT,
        at=T0,
        duration_ms=1.0,
        provider_message_id="1700000000.000100",
        thread=thread,
    )
    assert await store.finish_attempts([sent]) == [True]
    reply = msgspec.structs.replace(
        message(2, "slack:C0SUPPORT:1700000000.000100", at_ms=5),
        type="agent.reply",
        source="slack",
    )
    unrelated = message(3, "slack:C0SUPPORT:1700000999.000100", at_ms=6)
    await put(store, reply, unrelated)
    lanes = await store.claim("w1", T0, LEASE, 10, 10)
    assert {lane.lease.lane: [e.id for e in lane.events] for lane in lanes} == {
        "sms:+15551230001:+15559870000": [reply.id],
        "slack:C0SUPPORT:1700000999.000100": [unrelated.id],
    }
    [sent] = await store.list_outbox(OutboxFilter(status=OutboxStatus.SENT))
    assert sent.provider_message_id == "1700000000.000100"


async def test_a_flood_in_one_conversation_does_not_hide_the_others(store: Store) -> None:
    flood = [message(i, "sms:+1:+2", at_ms=i) for i in range(5000)]
    await put(store, *flood)
    late = message(9999, "sms:+3:+2", at_ms=6000)
    await put(store, late)
    lanes = await store.claim("w1", T0, LEASE, max_lanes=10, max_events=4)
    assert {lane.lease.lane: len(lane.events) for lane in lanes} == {"sms:+1:+2": 4, "sms:+3:+2": 1}
