# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""The store's dispatch and bookkeeping verbs, on every backend: due lane heads, leases on
rows, attempts and their outcomes, receipts that never go back, carrier opt-outs, dead rows,
counts and clocks, conversations, contacts, timers, replays."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from router.events import EscalationThread, Event, EventStatus
from router.store.base import Store
from router.store.records import (
    LIVE,
    AttemptOutcome,
    AttemptResult,
    BreakerNews,
    ClaimedRow,
    ContactRecord,
    ConversationRecord,
    DueRow,
    EventResult,
    LaneCommit,
    LedgerRecord,
    OutboxFilter,
    OutboxRow,
    OutboxStatus,
    Receipt,
    RunRecord,
    SlotRequest,
    TimerRecord,
)
from tests.router.test_store import T0, backend, open_backend, store  # noqa: F401  (fixtures)
from tests.router.test_store_routing import LEASE, done, message, put, row


async def routed(store: Store, event: Event, *rows: OutboxRow, **commit: Any) -> None:
    """Ingest `event`, claim its lane and commit it with `rows` (and any other commit field)."""
    await put(store, event)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    lane_commit = LaneCommit(lease=lane.lease, results=[done(event)], outbox=list(rows), **commit)
    assert (await store.commit([lane_commit], T0)).applied == [True]


async def claim_all(store: Store, now: datetime = T0, limit: int = 50) -> list[ClaimedRow]:
    return (await store.claim_rows(await store.due_rows(now, limit), "d1", now, LEASE)).claimed


def attempt(claimed: ClaimedRow, outcome: AttemptOutcome, **fields: Any) -> AttemptResult:
    values: dict[str, Any] = {"at": T0, "duration_ms": 2.5}
    values.update(fields)
    return AttemptResult(id=claimed.row.id, token=claimed.token, outcome=outcome, **values)


async def by_id(store: Store) -> dict[str, OutboxRow]:
    return {r.id.rsplit(":", 1)[1]: r for r in await store.list_outbox(OutboxFilter())}


async def test_due_rows_are_lane_heads_urgent_first(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    other = message(2, "sms:+3:+2", at_ms=1)
    await routed(
        store,
        ev,
        row(ev, "promo", category="marketing", conversation_key=None),
        row(ev, "first"),
        row(ev, "second"),  # same lane as `first`: waits for it
        row(
            ev,
            "quiet",
            status=OutboxStatus.DEFERRED,
            not_before=T0 + timedelta(hours=8),
            conversation_key="sms:+9:+2",
        ),
        row(ev, "after_quiet", conversation_key="sms:+9:+2"),
    )
    await routed(store, other, row(other, "other", conversation_key="sms:+3:+2"))
    due = await store.due_rows(T0, 10)
    assert [d.row.id.rsplit(":", 1)[1] for d in due] == ["first", "after_quiet", "other", "promo"]
    assert not any(d.in_doubt for d in due)
    assert [d.row.id for d in await store.due_rows(T0, 1)] == [f"{ev.id}:first"]
    # Quiet hours over: the deferred row is its lane's head again.
    later = await store.due_rows(T0 + timedelta(hours=9), 10)
    assert f"{ev.id}:quiet" in [d.row.id for d in later]


async def test_a_reply_behind_a_deep_marketing_backlog_still_comes_first(store: Store) -> None:
    # Deeper than a first page of the scan (PostgreSQL reads it in growing pages): the scan
    # goes on until it has enough urgent heads, so the reply is found behind the burst.
    ev = message(1, "sms:+1:+2")
    burst = [
        row(ev, f"promo{i}", category="marketing", conversation_key=f"sms:+{1000 + i}:+2")
        for i in range(700)
    ]
    await routed(store, ev, *burst, row(ev, "reply"))
    due = await store.due_rows(T0, 3)
    assert [d.row.id.rsplit(":", 1)[1] for d in due] == ["reply", "promo0", "promo1"]


async def test_a_row_is_claimed_once_and_its_lane_waits_while_in_flight(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"), row(ev, "b"))
    due = await store.due_rows(T0, 10)
    [claimed] = (await store.claim_rows(due, "d1", T0, LEASE)).claimed
    assert claimed.row.id == f"{ev.id}:a" and claimed.token and claimed.start is None
    assert (await store.claim_rows(due, "d2", T0, LEASE)).claimed == []  # taken already
    assert await store.due_rows(T0, 10) == []  # `b` waits behind `a` in flight
    assert (await by_id(store))["a"].status is OutboxStatus.SENDING


async def test_retry_dead_and_the_dead_letter_verbs(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a", conversation_key=None))
    [claimed] = await claim_all(store)
    retry_at = T0 + timedelta(seconds=30)
    result = attempt(
        claimed, AttemptOutcome.RETRY, error="503", error_code="503", next_attempt_at=retry_at
    )
    assert await store.finish_attempts([result]) == [True]
    assert await store.finish_attempts([result]) == [False]  # its lease is gone: fenced
    stored = (await by_id(store))["a"]
    assert (stored.status, stored.attempts, stored.next_attempt_at) == (
        OutboxStatus.PENDING,
        1,
        retry_at,
    )
    assert await store.due_rows(T0, 10) == []  # waiting for its retry
    assert await store.next_due(T0) == retry_at
    [again] = await claim_all(store, retry_at)
    throttled = attempt(again, AttemptOutcome.RETRY, next_attempt_at=retry_at, throttled=True)
    assert await store.finish_attempts([throttled]) == [True]
    assert (await by_id(store))["a"].attempts == 1  # a 429 uses no attempt
    [last] = await claim_all(store, retry_at)
    dead = attempt(last, AttemptOutcome.DEAD, error="invalid number", error_code="21211")
    assert await store.finish_attempts([dead]) == [True]
    stored = (await by_id(store))["a"]
    assert (stored.status, stored.attempts, stored.error_code) == (OutboxStatus.DEAD, 2, "21211")
    assert [a.outcome for a in await store.attempts(stored.id)] == ["retry", "retry", "dead"]
    assert await store.requeue_dead(stored.id) is True
    assert await store.requeue_dead(stored.id) is False  # not dead any more
    requeued = (await by_id(store))["a"]
    assert (requeued.status, requeued.attempts) == (OutboxStatus.PENDING, 0)
    assert len(await store.attempts(stored.id)) == 3  # history kept
    [final] = await claim_all(store, retry_at)
    await store.finish_attempts([attempt(final, AttemptOutcome.DEAD, error="again")])
    assert await store.discard_dead(stored.id, "by hand") is True
    discarded = (await by_id(store))["a"]
    assert (discarded.status, discarded.last_error) == (OutboxStatus.CANCELLED, "by hand")
    assert await store.discard_dead(stored.id, "twice") is False


async def test_an_in_doubt_row_comes_back_as_in_doubt(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    check_at = T0 + timedelta(seconds=60)
    doubt = attempt(claimed, AttemptOutcome.IN_DOUBT, error="timeout", next_attempt_at=check_at)
    assert await store.finish_attempts([doubt]) == [True]
    assert await store.due_rows(T0 + timedelta(seconds=59), 10) == []
    assert await store.next_due(T0) == check_at
    [due] = await store.due_rows(check_at, 10)
    assert due.in_doubt and due.doubt_since == T0
    [reclaimed] = (await store.claim_rows([due], "d2", check_at, LEASE)).claimed
    assert reclaimed.in_doubt and reclaimed.token != claimed.token


async def test_a_renewed_lease_keeps_the_row_and_a_stale_token_renews_nothing(
    store: Store,
) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    later = T0 + timedelta(seconds=LEASE + 5)
    renewed = await store.renew_rows(
        [(claimed.row.id, claimed.token), (claimed.row.id, "not-its-token")], later
    )
    assert renewed == {claimed.row.id}
    assert await store.due_rows(T0 + timedelta(seconds=LEASE), 10) == []  # still held
    [due] = await store.due_rows(later, 10)  # the renewed lease ends in its turn
    assert due.in_doubt
    assert await store.renew_rows([(claimed.row.id, "not-its-token")], later) == set()


async def test_an_expired_lease_leaves_the_row_in_doubt(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    assert await store.due_rows(T0 + timedelta(seconds=LEASE - 1), 10) == []
    [due] = await store.due_rows(T0 + timedelta(seconds=LEASE), 10)
    assert due.in_doubt and due.doubt_since == T0
    [taken] = (await store.claim_rows([due], "d2", T0 + timedelta(seconds=LEASE), LEASE)).claimed
    late = attempt(claimed, AttemptOutcome.SENT, provider_message_id="SMlate")
    assert await store.finish_attempts([late]) == [False]  # the old holder is fenced
    assert await store.finish_attempts([attempt(taken, AttemptOutcome.SENT)]) == [True]


async def test_the_doubt_window_stays_open_across_claims_until_an_outcome_settles_it(
    store: Store,
) -> None:
    """Sent, then two claims whose holders died: the third look must still search from the
    first attempt, which is the one that may have sent it (issue 17)."""
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"))
    await claim_all(store)  # the first attempt, at T0: it may have sent the message
    moment = T0
    for _ in range(2):  # each later holder dies too, before any outcome is stored
        moment += timedelta(seconds=LEASE + 60)
        [due] = await store.due_rows(moment, 10)
        assert due.in_doubt and due.doubt_since == T0
        assert (await store.claim_rows([due], "d", moment, LEASE)).claimed
    [due] = await store.due_rows(moment + timedelta(seconds=LEASE), 10)
    assert due.in_doubt and due.doubt_since == T0


async def test_a_retry_keeps_the_window_only_when_the_row_may_be_out(store: Store) -> None:
    """A look that failed, or a send refused after a look found nothing, cannot say an earlier
    attempt did not send: the row waits for its retry still in doubt. A refusal of an attempt
    nothing was in doubt for closes the window: the next attempt sends without looking."""
    first, second = message(1, "sms:+1:+2"), message(2, "sms:+3:+4")
    await routed(store, first, row(first, "a"))
    await routed(store, second, row(second, "b"))
    claims = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store)}
    retry_at = T0 + timedelta(seconds=5)
    failed_look = attempt(
        claims["a"], AttemptOutcome.RETRY, next_attempt_at=retry_at, may_have_sent=True
    )
    refused = attempt(claims["b"], AttemptOutcome.RETRY, next_attempt_at=retry_at)
    assert await store.finish_attempts([failed_look, refused]) == [True, True]
    due = {d.row.id.rsplit(":", 1)[1]: d for d in await store.due_rows(retry_at, 10)}
    assert (due["a"].in_doubt, due["a"].doubt_since) == (True, T0)
    assert (due["b"].in_doubt, due["b"].doubt_since) == (False, None)
    later = retry_at + timedelta(seconds=1)
    again = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store, later)}
    assert again["a"].in_doubt and again["a"].doubt_since == T0
    assert not again["b"].in_doubt


async def test_a_dead_row_that_may_be_out_is_looked_for_when_retried_by_hand(
    store: Store,
) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    gave_up = attempt(claimed, AttemptOutcome.DEAD, error="no answer", may_have_sent=True)
    assert await store.finish_attempts([gave_up]) == [True]
    assert await store.requeue_dead(claimed.row.id) is True
    [due] = await store.due_rows(T0, 10)
    assert due.in_doubt and due.doubt_since == T0


async def test_receipts_move_a_row_forward_never_back(store: Store) -> None:
    ev, status_event = message(1, "sms:+1:+2"), message(2, None, at_ms=5)
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    sent = attempt(
        claimed, AttemptOutcome.SENT, provider_message_id="SM1", provider_status="queued"
    )
    assert await store.finish_attempts([sent]) == [True]
    assert (await by_id(store))["a"].status is OutboxStatus.SENT
    receipts = [
        Receipt(provider_message_id="SM1", status="delivered", at=T0),
        Receipt(provider_message_id="SM1", status="sent", at=T0),  # late: changes nothing
        Receipt(provider_message_id="SM1", status="failed", error_code="30007", at=T0),
    ]
    await routed(store, status_event, receipts=receipts)
    stored = (await by_id(store))["a"]
    assert (stored.status, stored.provider_message_id) == (OutboxStatus.DELIVERED, "SM1")


async def test_a_receipt_before_the_send_is_recorded_is_kept_for_then(store: Store) -> None:
    ev, status_event = message(1, "sms:+1:+2"), message(2, None, at_ms=5)
    await routed(store, ev, row(ev, "a"))
    [claimed] = await claim_all(store)
    early = Receipt(provider_message_id="SMfast", status="undelivered", error_code="30003", at=T0)
    await routed(store, status_event, receipts=[early])
    sent = attempt(claimed, AttemptOutcome.SENT, provider_message_id="SMfast")
    assert await store.finish_attempts([sent]) == [True]
    stored = (await by_id(store))["a"]
    assert (stored.status, stored.error_code) == (OutboxStatus.UNDELIVERED, "30003")


async def test_one_finish_of_many_rows_gives_each_its_own_outcome(store: Store) -> None:
    """A round's attempts are finished together (PostgreSQL writes each kind in one statement):
    every row still ends as its own attempt says, with its own receipts and history."""
    sms, esc, early, sandbox, retry, dead, lost = (
        message(n, f"sms:+{n}:+2", at_ms=n) for n in range(1, 8)
    )
    await routed(store, sms, row(sms, "sms"))
    post = row(esc, "esc", channel="slack", to="C1", kind="escalation", contact_key=None)
    await routed(store, esc, post)
    for ev, name in ((early, "early"), (sandbox, "sandbox"), (retry, "retry"), (dead, "dead")):
        await routed(store, ev, row(ev, name))
    await routed(store, lost, row(lost, "lost"))
    claimed = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store)}
    assert len(claimed) == 7
    receipt = Receipt(provider_message_id="SMearly", status="failed", error_code="30008", at=T0)
    await routed(store, message(9, None, at_ms=9), receipts=[receipt])
    later = T0 + timedelta(seconds=30)
    stale = AttemptResult(
        id=claimed["lost"].row.id, token="not-its-token", outcome=AttemptOutcome.SENT, at=T0,
        duration_ms=1.0, provider_message_id="SMlost",
    )  # fmt: skip
    results = [
        attempt(claimed["sms"], AttemptOutcome.SENT, provider_message_id="SM1",
                provider_status="queued"),
        attempt(claimed["retry"], AttemptOutcome.RETRY, error="503", error_code="503",
                next_attempt_at=later),
        attempt(claimed["esc"], AttemptOutcome.SENT, provider_message_id="1700000000.000200",
                thread=EscalationThread(channel="C1", ts="1700000000.000200",
                                        conversation_key="sms:+2:+2")),
        stale,
        attempt(claimed["early"], AttemptOutcome.SENT, provider_message_id="SMearly"),
        attempt(claimed["dead"], AttemptOutcome.DEAD, error="invalid number", error_code="21211"),
        attempt(claimed["sandbox"], AttemptOutcome.SENT, provider_message_id="sandbox-1",
                provider_status="delivered"),
    ]  # fmt: skip
    assert await store.finish_attempts(results) == [True, True, True, False, True, True, True]
    stored = await by_id(store)
    got = {name: (r.status, r.provider_message_id, r.error_code) for name, r in stored.items()}
    assert got == {
        "sms": (OutboxStatus.SENT, "SM1", None),
        "esc": (OutboxStatus.SENT, "1700000000.000200", None),
        "early": (OutboxStatus.FAILED, "SMearly", "30008"),  # its receipt came first
        "sandbox": (OutboxStatus.DELIVERED, "sandbox-1", None),
        "retry": (OutboxStatus.PENDING, None, "503"),
        "dead": (OutboxStatus.DEAD, None, "21211"),
        "lost": (OutboxStatus.SENDING, None, None),  # fenced: nothing written
    }
    assert {name: r.attempts for name, r in stored.items()} == {
        "sms": 1, "esc": 1, "early": 1, "sandbox": 1, "retry": 1, "dead": 1, "lost": 0
    }  # fmt: skip
    for name in ("sms", "esc", "early", "sandbox"):
        [one] = await store.attempts(stored[name].id)
        assert (one.outcome, one.duration_ms) == ("sent", 2.5)
    assert [a.outcome for a in await store.attempts(stored["retry"].id)] == ["retry"]
    assert [a.error_code for a in await store.attempts(stored["dead"].id)] == ["21211"]
    assert await store.attempts(stored["lost"].id) == []
    assert await store.escalation_thread("sms:+2:+2") == "1700000000.000200"
    # The post's Slack thread now belongs to its conversation: a reply there is in its lane.
    reply = message(11, "slack:C1:1700000000.000200", at_ms=11)
    await put(store, reply)
    [thread] = await store.claim("w1", T0, LEASE, 10, 10)
    assert thread.lease.lane == "sms:+2:+2"
    await store.commit([LaneCommit(lease=thread.lease, results=[done(reply)])], T0)
    # The early receipt was used up: it does not move another row sent under the same id.
    tenth = message(10, "sms:+10:+2", at_ms=10)
    await routed(store, tenth, row(tenth, "again"))
    [again] = [c for c in await claim_all(store) if c.row.id.endswith(":again")]
    sent_again = attempt(again, AttemptOutcome.SENT, provider_message_id="SMearly")
    assert await store.finish_attempts([sent_again]) == [True]
    assert (await by_id(store))["again"].status is OutboxStatus.SENT


async def test_a_carrier_opt_out_cancels_the_contacts_waiting_rows(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(
        store,
        ev,
        row(ev, "a", conversation_key=None),
        row(ev, "b", conversation_key=None),
        row(ev, "c", conversation_key=None, to="+15557770000", contact_key="+15557770000"),
    )
    claimed = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store)}
    contact = ContactRecord(address="+15551230001", consent="opted_out", opted_out_at=T0)
    entry = LedgerRecord(at=T0, event_id=ev.id, channel="sms", change="opted_out", reason="21610")
    refused = attempt(
        claimed["a"], AttemptOutcome.CANCELLED, error_code="21610", opted_out=contact, ledger=entry
    )
    assert await store.finish_attempts([refused]) == [True]
    status = {key: r.status for key, r in (await by_id(store)).items()}
    assert status == {
        "a": OutboxStatus.CANCELLED,
        "b": OutboxStatus.SENDING,  # already handed to the dispatcher: it checks consent itself
        "c": OutboxStatus.SENDING,
    }
    found = await store.get_contact("+15551230001")
    assert found is not None and found.consent == "opted_out" and found.opted_out_at == T0
    assert found.ledger == [entry]
    assert await store.contacts(["+15551230001", "+1nobody"]) == {
        "+15551230001": ContactRecord(address="+15551230001", consent="opted_out", opted_out_at=T0)
    }


async def test_counts_and_ages(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(
        store,
        ev,
        row(ev, "a", conversation_key=None, created_at=T0 - timedelta(minutes=5)),
        row(ev, "b", conversation_key=None, channel="slack", to="C1", contact_key=None),
        row(ev, "c", status=OutboxStatus.DEFERRED, not_before=T0 + timedelta(hours=1)),
    )
    assert await store.outbox_counts() == {
        ("pending", "sms"): 1,
        ("pending", "slack"): 1,
        ("deferred", "sms"): 1,
    }
    assert await store.oldest_due(T0) == T0 - timedelta(minutes=5)
    assert await store.next_due(T0) == T0 + timedelta(hours=1)


async def test_live_counts_are_the_live_statuses_of_all_counts(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    rows = [
        row(ev, f"{status}-{channel}", status=status, conversation_key=None, channel=channel)
        for status in OutboxStatus
        for channel in ("sms", "slack")
    ]
    await routed(store, ev, *rows)
    every = await store.outbox_counts()
    channels = ("sms", "slack")
    assert every == {(status.value, channel): 1 for status in OutboxStatus for channel in channels}
    live = {key: n for key, n in every.items() if key[0] in LIVE}
    assert len(live) == 8 and await store.outbox_counts(live_only=True) == live


# -- rate slots, booked with the claims -------------------------------------------------------

SMS_KEY, SLACK_KEY = "sms:+15559870000", "slack:C1"


async def rows_to(store: Store, count: int) -> list[DueRow]:
    """`count` due rows in `count` lanes (each its own conversation)."""
    for n in range(count):
        ev = message(100 + n, f"sms:+1{n:03}:+2", at_ms=n)
        await routed(store, ev, row(ev, "a"))
    due = await store.due_rows(T0, count)
    assert len(due) == count
    return due


def spaced(key: str, seconds: float) -> SlotRequest:
    return SlotRequest(key=key, hold_seconds=seconds)


async def test_claims_book_rate_slots_in_order_and_later_claims_carry_on(store: Store) -> None:
    due = await rows_to(store, 6)
    horizon = T0 + timedelta(seconds=1)
    first = await store.claim_rows(due[:3], "d1", T0, LEASE, [spaced(SMS_KEY, 0.25)] * 3, horizon)
    assert [c.start for c in first.claimed] == [T0 + timedelta(seconds=s) for s in (0, 0.25, 0.5)]
    assert first.busy_until == {}
    # Another dispatcher (or round) books after them, never over them; beyond the horizon, the
    # rows are left and the key reported busy until then.
    second = await store.claim_rows(
        due[3:], "d2", T0, LEASE, [spaced(SMS_KEY, 0.25)] * 2 + [None], horizon
    )
    assert [c.start for c in second.claimed] == [
        T0 + timedelta(seconds=0.75),
        T0 + timedelta(seconds=1),
        None,  # no limit: nothing booked
    ]
    assert (await store.rate_slots())[SMS_KEY] == T0 + timedelta(seconds=1.25)
    due_more = await rows_to_more(store)
    third = await store.claim_rows(due_more, "d1", T0, LEASE, [spaced(SMS_KEY, 0.25)], horizon)
    assert third.claimed == []
    assert third.busy_until == {SMS_KEY: T0 + timedelta(seconds=1.25)}
    assert [d.row.id for d in await store.due_rows(T0, 10)] == [due_more[0].row.id]  # left


async def rows_to_more(store: Store) -> list[DueRow]:
    ev = message(200, "sms:+1999:+2", at_ms=50)
    await routed(store, ev, row(ev, "a"))
    return await store.due_rows(T0, 10)


async def test_two_stores_booking_at_once_never_share_a_slot(backend: str, tmp_path: Path) -> None:
    """Two dispatchers, each on a store of its own (two processes), claim rows to one sender
    number at the same moment, again and again: the slots they are given never overlap."""
    async with (
        open_backend(backend, tmp_path) as first,
        open_backend(backend, tmp_path) as second,
    ):
        due = await rows_to(first, 40)
        horizon = T0 + timedelta(days=1)
        starts: list[datetime] = []
        for n in range(0, 40, 4):
            claims = await asyncio.gather(
                first.claim_rows(
                    due[n : n + 2], "d1", T0, LEASE, [spaced(SMS_KEY, 0.2)] * 2, horizon
                ),
                second.claim_rows(
                    due[n + 2 : n + 4], "d2", T0, LEASE, [spaced(SMS_KEY, 0.2)] * 2, horizon
                ),
            )
            starts += [c.start for claim in claims for c in claim.claimed if c.start is not None]
        assert len(starts) == 40
        assert sorted(starts) == [T0 + timedelta(seconds=0.2 * n) for n in range(40)]


async def test_breaker_news_keeps_the_newest_change_of_each_destination(store: Store) -> None:
    assert await store.breakers() == {}
    opened = BreakerNews(state="open", changed_at=T0)
    await store.save_breakers({SLACK_KEY: opened, SMS_KEY: opened})
    closed = BreakerNews(state="closed", changed_at=T0 + timedelta(seconds=30))
    stale = BreakerNews(state="open", changed_at=T0 - timedelta(seconds=5))
    await store.save_breakers({SLACK_KEY: closed, SMS_KEY: stale})
    assert await store.breakers() == {SLACK_KEY: closed, SMS_KEY: opened}


async def test_a_row_taken_by_another_dispatcher_books_no_slot(store: Store) -> None:
    due = await rows_to(store, 2)
    await store.claim_rows(due[:1], "d1", T0, LEASE)  # no slot asked
    horizon = T0 + timedelta(seconds=1)
    claims = await store.claim_rows(due, "d2", T0, LEASE, [spaced(SMS_KEY, 0.5)] * 2, horizon)
    assert [c.row.id for c in claims.claimed] == [due[1].row.id]
    assert [c.start for c in claims.claimed] == [T0]  # the first slot: the taken row had none
    assert (await store.rate_slots())[SMS_KEY] == T0 + timedelta(seconds=0.5)


async def test_a_delayed_slot_holds_every_claim_and_only_moves_later(store: Store) -> None:
    due = await rows_to(store, 1)
    await store.delay_slot(SLACK_KEY, T0 + timedelta(seconds=30))
    await store.delay_slot(SLACK_KEY, T0 + timedelta(seconds=5))  # never earlier
    assert (await store.rate_slots())[SLACK_KEY] == T0 + timedelta(seconds=30)
    claims = await store.claim_rows(
        due, "d1", T0, LEASE, [spaced(SLACK_KEY, 1.0)], T0 + timedelta(seconds=1)
    )
    assert claims.claimed == []
    assert claims.busy_until == {SLACK_KEY: T0 + timedelta(seconds=30)}
    late = T0 + timedelta(seconds=30)
    claims = await store.claim_rows(due, "d1", late, LEASE, [spaced(SLACK_KEY, 1.0)], late)
    assert [c.start for c in claims.claimed] == [late]


async def test_list_outbox_filters_and_pages(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    rows = [row(ev, f"r{n}", conversation_key=None) for n in range(5)]
    rows.append(row(ev, "slack", channel="slack", to="C1", contact_key=None))
    await routed(store, ev, *rows)
    listed = await store.list_outbox(OutboxFilter())
    assert [r.id.rsplit(":", 1)[1] for r in listed] == ["slack", "r4", "r3", "r2", "r1", "r0"]
    page = await store.list_outbox(OutboxFilter(limit=2, before=listed[1].id))
    assert [r.id for r in page] == [listed[2].id, listed[3].id]
    assert [r.channel for r in await store.list_outbox(OutboxFilter(channel="slack"))] == ["slack"]
    assert len(await store.list_outbox(OutboxFilter(to="+15551230001", event_id=ev.id))) == 5
    assert await store.list_outbox(OutboxFilter(status=OutboxStatus.SENT)) == []
    assert listed[-1] == rows[0]  # every field round-trips


async def test_escalation_post_and_thread_are_the_latest_sent_post(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    post = row(ev, "esc", channel="slack", to="C1", kind="escalation", contact_key=None)
    await routed(store, ev, post)
    assert await store.escalation_post("sms:+1:+2") is None
    [claimed] = await claim_all(store)
    sent = attempt(claimed, AttemptOutcome.SENT, provider_message_id="1700000000.000100")
    await store.finish_attempts([sent])
    found = await store.escalation_post("sms:+1:+2")
    assert found is not None and found.id == post.id
    assert await store.escalation_thread("sms:+1:+2") == "1700000000.000100"
    assert await store.escalation_thread("sms:+9:+9") is None


async def test_conversations_contacts_and_timers_are_kept(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    conversation = ConversationRecord(
        key="sms:+1:+2",
        state="escalated",
        channel="sms",
        contact="+1",
        body=b'{"s":1}',
        updated_at=T0,
    )
    contact = ContactRecord(address="+15551230001", consent="subscribed", timezone="Europe/Paris")
    entry = LedgerRecord(at=T0, event_id=ev.id, channel="sms", change="subscribed", reason="START")
    remind = TimerRecord(
        conversation_key="sms:+1:+2", timer="remind", due_at=T0 + timedelta(minutes=10)
    )
    close = TimerRecord(
        conversation_key="sms:+1:+2", timer="close", due_at=T0 + timedelta(hours=24)
    )
    earlier = msgspec.structs.replace(close, due_at=T0 + timedelta(hours=1))
    await routed(  # a timer armed twice in one commit: the last arming holds
        store,
        ev,
        conversation=conversation,
        contacts=[(contact, entry)],
        timers_set=[earlier, remind, close],
    )
    assert await store.get_conversation("sms:+1:+2") == conversation
    assert await store.list_conversations("escalated") == [conversation]
    assert await store.list_conversations("bot") == []
    assert await store.get_conversation("sms:+9:+9") is None
    assert await store.get_contact("+15551230001") == msgspec.structs.replace(
        contact, ledger=[entry]
    )
    assert await store.get_contact("+1nobody") is None
    assert await store.timers() == [remind, close]
    assert await store.timers(due_before=T0 + timedelta(hours=1)) == [remind]
    # Disarming names the due time it saw: a re-armed timer stays armed.
    follow = message(2, "sms:+1:+2", at_ms=1)
    await routed(
        store,
        follow,
        contacts=[(ContactRecord(address="+15551230001"), None)],
        timers_cleared=[("sms:+1:+2", "remind", T0), ("sms:+1:+2", "close", None)],
    )
    assert await store.timers() == [remind]
    kept = await store.get_contact("+15551230001")
    assert kept is not None and kept.timezone == "Europe/Paris"  # a None zone keeps the known one


async def test_a_failed_event_holds_its_lane_until_the_retry(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await put(store, ev)
    [lane] = await store.claim("w1", T0, LEASE, 10, 10)
    assert lane.attempts == {ev.id: 0}
    retry_at = T0 + timedelta(seconds=5)
    raised = LaneCommit(lease=lane.lease, failed_attempt=ev.id, retry_at=retry_at)
    assert (await store.commit([raised], T0)).applied == [True]
    stored = await store.get_event(ev.id)  # tried once, to be tried again
    assert stored is not None and stored.status is EventStatus.PROCESSING
    assert await store.claim("w1", T0 + timedelta(seconds=4), LEASE, 10, 10) == []
    [again] = await store.claim("w1", retry_at, LEASE, 10, 10)
    assert again.attempts == {ev.id: 1} and [e.id for e in again.events] == [ev.id]


async def test_replay_commits_runs_and_only_new_rows(store: Store) -> None:
    ev = message(1, "sms:+1:+2")
    await routed(store, ev, row(ev, "old"))
    run = RunRecord(event_id=ev.id, at=T0 + timedelta(hours=1), rules_version="v2", replay=True)
    replayed = EventResult(event_id=ev.id, status=EventStatus.PROCESSED, run=run)
    new_rows = [row(ev, "old"), row(ev, "new")]
    assert await store.existing_outbox_ids([r.id for r in new_rows]) == {f"{ev.id}:old"}
    assert await store.commit_replay([replayed], new_rows) == [f"{ev.id}:new"]
    assert [r.replay for r in await store.runs(ev.id)] == [False, True]
    assert await store.existing_outbox_ids([]) == set()


async def test_one_commit_of_many_lanes_applies_them_in_order(store: Store) -> None:
    """An opt-out in the second lane cancels the row the first lane made to that contact, not
    the one the third lane makes after it; a row committed twice is made once."""
    events = [message(n, f"sms:+{n}:+2", at_ms=n) for n in range(3)]
    await put(store, *events)
    lanes = {lane.lease.lane: lane for lane in await store.claim("w1", T0, LEASE, 10, 10)}
    first, stop, third = (lanes[e.conversation_key or ""] for e in events)
    shared = row(events[0], "shared", conversation_key=None)
    outcome = await store.commit(
        [
            LaneCommit(lease=first.lease, results=[done(events[0])], outbox=[row(events[0], "a")]),
            LaneCommit(
                lease=stop.lease,
                results=[done(events[1])],
                cancel_contacts=[("+15551230001", "contact opted out")],
                outbox=[shared],
            ),
            LaneCommit(
                lease=third.lease,
                results=[done(events[2])],
                outbox=[row(events[2], "c"), shared],
            ),
        ],
        T0,
    )
    assert outcome.applied == [True, True, True]
    assert outcome.cancelled_outbox_ids == [f"{events[0].id}:a"]
    assert outcome.new_outbox_ids == [f"{events[0].id}:a", shared.id, f"{events[2].id}:c"]
    listed = await store.list_outbox(OutboxFilter())
    assert [(r.id, r.status) for r in reversed(listed)] == [
        (f"{events[0].id}:a", OutboxStatus.CANCELLED),
        (shared.id, OutboxStatus.PENDING),
        (f"{events[2].id}:c", OutboxStatus.PENDING),
    ]
