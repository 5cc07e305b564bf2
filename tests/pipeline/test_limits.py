"""Send pacing: rate limits, circuit breakers, backoff, priorities — all on a FrozenClock, so
nothing here sleeps; time moves only when a test advances it."""

from __future__ import annotations

import itertools
import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from router.clock import FrozenClock
from router.pipeline.limits import (
    PRIORITY,
    Breakers,
    RateLimiter,
    backoff,
    priority_of,
    retry_delay,
)
from router.store.records import SlotRequest
from router.store.shared import book_slots, plan_slots

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
SMS = "sms:+15551230001"
SMS2 = "sms:+15551230002"
SLACK = "slack:C0123"


def seconds(delta: timedelta) -> float:
    return delta.total_seconds()


def limiter(clock: FrozenClock, rates: dict[str, float] | None = None) -> RateLimiter:
    table = rates or {}
    return RateLimiter(lambda key: table.get(key, 5.0), clock)


# -- rate limits ---------------------------------------------------------------------------


def slot(key: str, hold: float = 0.2) -> SlotRequest:
    return SlotRequest(key=key, hold_seconds=hold)


def book(
    requests: list[SlotRequest | None], nexts: dict[str, datetime], now: datetime
) -> list[datetime | None]:
    """What a store does with one claim's slots when every row is taken: plan, then book."""
    places, _ = plan_slots(requests, nexts, now, now + timedelta(days=1))
    starts, booked = book_slots([requests[p] for p in places], nexts, now)
    nexts.update(booked)
    return starts


def test_fifty_sends_at_five_per_second_are_spaced_a_fifth_of_a_second() -> None:
    nexts: dict[str, datetime] = {}
    starts = book([slot(SMS)] * 50, nexts, T0)
    gaps = {round(seconds(b - a), 6) for a, b in itertools.pairwise(starts)}  # type: ignore[operator]
    assert gaps == {0.2}
    assert starts[0] == T0
    assert nexts[SMS] == T0 + timedelta(seconds=10)  # 50 sends take 10 s


def test_bookings_in_later_claims_carry_on_from_the_stored_slot() -> None:
    nexts: dict[str, datetime] = {}
    book([slot(SMS)] * 5, nexts, T0)
    later = book([slot(SMS)], nexts, T0 + timedelta(seconds=0.5))  # another round, or process
    assert later == [T0 + timedelta(seconds=1)]


def test_a_send_of_three_segments_holds_the_key_for_three_spacings() -> None:
    nexts: dict[str, datetime] = {}
    starts = book([slot(SMS, 3.0), slot(SMS, 1.0)], nexts, T0)
    assert starts == [T0, T0 + timedelta(seconds=3)]
    assert nexts[SMS] == T0 + timedelta(seconds=4)


def test_no_burst_beyond_one_after_idling() -> None:
    nexts: dict[str, datetime] = {}
    book([slot(SMS)], nexts, T0)
    an_hour_on = T0 + timedelta(hours=1)  # idle: no credit accumulates
    assert book([slot(SMS)] * 2, nexts, an_hour_on) == [
        an_hour_on,
        an_hour_on + timedelta(seconds=0.2),
    ]


def test_keys_are_independent_and_unlimited_rows_book_nothing() -> None:
    nexts: dict[str, datetime] = {}
    starts = book([slot(SMS)] * 10 + [slot(SLACK, 1.0), None, slot(SMS2)], nexts, T0)
    assert starts[10:] == [T0, None, T0]
    assert nexts == {
        SMS: T0 + timedelta(seconds=2),
        SLACK: T0 + timedelta(seconds=1),
        SMS2: T0 + timedelta(seconds=0.2),
    }


def test_rows_whose_slot_lies_beyond_the_horizon_are_left_with_when_the_key_frees() -> None:
    requests = [slot(SMS, 0.5)] * 4 + [slot(SMS2, 0.5)]
    places, busy = plan_slots(requests, {}, T0, T0 + timedelta(seconds=1))
    assert places == [0, 1, 2, 4]  # at 0, 0.5 and 1.0 s; the fourth would start at 1.5 s
    assert busy == {SMS: T0 + timedelta(seconds=1.5)}
    # A key booked far ahead by another dispatcher: its rows all wait.
    places, busy = plan_slots([slot(SMS)], {SMS: T0 + timedelta(seconds=9)}, T0, T0)
    assert (places, busy) == ([], {SMS: T0 + timedelta(seconds=9)})


def test_spacing_is_one_over_the_rate_and_unlimited_keys_have_none() -> None:
    limits = limiter(FrozenClock(T0), {SLACK: 1.0, "email:a@example.com": math.inf})
    assert limits.spacing(SMS) == timedelta(seconds=0.2)
    assert limits.spacing(SLACK) == timedelta(seconds=1)
    assert limits.spacing("email:a@example.com") == timedelta(0)


def test_a_rate_of_zero_is_refused() -> None:
    limits = limiter(FrozenClock(T0), {SMS: 0.0})
    with pytest.raises(ValueError, match="must be > 0"):
        limits.spacing(SMS)


def test_what_a_process_learns_of_a_key_only_moves_later_and_passes() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    assert limits.next_free(SMS) == T0  # knows of no booking
    limits.learn(SMS, T0 + timedelta(seconds=3))
    limits.learn(SMS, T0 + timedelta(seconds=1))  # an older answer: ignored
    limits.learn(SMS2, (T0 + timedelta(seconds=4)).replace(tzinfo=None))  # naive: UTC
    assert limits.next_free(SMS) == T0 + timedelta(seconds=3)
    assert limits.next_free(SMS2) == T0 + timedelta(seconds=4)
    assert limits.next_free(SLACK) == T0  # others stay free
    clock.advance(timedelta(seconds=5))
    assert limits.next_free(SMS) == clock.now()


def test_penalize_pushes_only_its_key_and_says_until_when() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    assert limits.penalize(SMS, 30) == T0 + timedelta(seconds=30)
    assert limits.next_free(SMS) == T0 + timedelta(seconds=30)
    assert limits.next_free(SMS2) == T0
    assert limits.rate(SMS2) == 5.0


def test_penalize_never_pulls_a_slot_earlier() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    limits.penalize(SMS, 60)
    limits.penalize(SMS, 5)
    assert limits.next_free(SMS) == T0 + timedelta(seconds=60)


def test_penalize_halves_the_rate_for_a_while() -> None:
    clock = FrozenClock(T0)
    limits = RateLimiter(lambda key: 4.0, clock, slow_seconds=60)
    limits.penalize(SMS, 10)
    assert limits.rate(SMS) == 2.0
    clock.advance(timedelta(seconds=10))
    assert limits.spacing(SMS) == timedelta(seconds=0.5)
    limits.penalize(SMS, 0)  # a second 429 halves again
    assert limits.rate(SMS) == 1.0
    for _ in range(10):
        limits.penalize(SMS, None)
    assert limits.rate(SMS) == 4.0 * 0.125  # floor: min_factor
    clock.advance(timedelta(seconds=60))  # a quiet minute: back to the configured rate
    assert limits.rate(SMS) == 4.0


def test_slowdown_can_be_turned_off() -> None:
    clock = FrozenClock(T0)
    limits = RateLimiter(lambda key: 4.0, clock, slow_seconds=0)
    limits.penalize(SMS, 1)
    assert limits.rate(SMS) == 4.0
    assert limits.next_free(SMS) == T0 + timedelta(seconds=1)


@pytest.mark.parametrize("bad", [None, -5.0, math.nan, math.inf])
def test_penalize_ignores_an_unusable_retry_after(bad: float | None) -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    assert limits.penalize(SMS, bad) == T0
    assert limits.next_free(SMS) == T0


# -- circuit breakers ----------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.changes: list[tuple[str, str, str]] = []

    def __call__(self, key: str, old: str, new: str) -> None:
        self.changes.append((key, old, new))


def tripped(clock: FrozenClock, threshold: int = 5) -> tuple[Breakers, Recorder]:
    seen = Recorder()
    breakers = Breakers(clock, failure_threshold=threshold, open_seconds=30.0, on_change=seen)
    for _ in range(threshold):
        breakers.failure(SLACK)
    return breakers, seen


def test_breaker_opens_after_n_consecutive_failures() -> None:
    clock = FrozenClock(T0)
    breakers = Breakers(clock, failure_threshold=5, open_seconds=30.0)
    for _ in range(4):
        breakers.failure(SLACK)
    assert breakers.state(SLACK) == "closed"
    assert breakers.allow(SLACK)
    breakers.failure(SLACK)
    assert breakers.state(SLACK) == "open"
    assert not breakers.allow(SLACK)


def test_a_success_resets_the_failure_count() -> None:
    clock = FrozenClock(T0)
    breakers = Breakers(clock, failure_threshold=3)
    for _ in range(10):
        breakers.failure(SLACK)
        breakers.failure(SLACK)
        breakers.success(SLACK)
    assert breakers.state(SLACK) == "closed"
    assert breakers.states() == {}  # nothing worth remembering


def test_open_breaker_refuses_until_open_seconds_then_allows_exactly_one_probe() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    clock.advance(timedelta(seconds=29.999))
    assert not breakers.allow(SLACK)
    clock.advance(timedelta(seconds=0.001))
    assert breakers.allow(SLACK)  # the probe
    assert breakers.state(SLACK) == "half_open"
    assert [breakers.allow(SLACK) for _ in range(5)] == [False] * 5


def test_probe_success_closes() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    clock.advance(timedelta(seconds=30))
    assert breakers.allow(SLACK)
    breakers.success(SLACK)
    assert breakers.state(SLACK) == "closed"
    assert all(breakers.allow(SLACK) for _ in range(5))
    for _ in range(4):  # the count starts over
        breakers.failure(SLACK)
    assert breakers.state(SLACK) == "closed"


def test_probe_failure_reopens_for_another_open_seconds() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    clock.advance(timedelta(seconds=30))
    assert breakers.allow(SLACK)
    breakers.failure(SLACK)
    assert breakers.state(SLACK) == "open"
    clock.advance(timedelta(seconds=29))
    assert not breakers.allow(SLACK)
    clock.advance(timedelta(seconds=1))
    assert breakers.allow(SLACK)
    assert breakers.state(SLACK) == "half_open"


def test_on_change_sees_every_transition() -> None:
    clock = FrozenClock(T0)
    breakers, seen = tripped(clock)
    clock.advance(timedelta(seconds=30))
    breakers.allow(SLACK)
    breakers.failure(SLACK)
    clock.advance(timedelta(seconds=30))
    breakers.allow(SLACK)
    breakers.success(SLACK)
    assert seen.changes == [
        (SLACK, "closed", "open"),
        (SLACK, "open", "half_open"),
        (SLACK, "half_open", "open"),
        (SLACK, "open", "half_open"),
        (SLACK, "half_open", "closed"),
    ]
    assert breakers.states() == {SLACK: "closed"}  # once tripped, kept for /metrics


def test_on_change_can_be_set_later() -> None:
    clock = FrozenClock(T0)
    breakers = Breakers(clock, failure_threshold=1)
    seen = Recorder()
    breakers.on_change = seen
    breakers.failure(SMS)
    assert seen.changes == [(SMS, "closed", "open")]


def test_one_destinations_outage_does_not_block_others() -> None:
    clock = FrozenClock(T0)
    breakers, seen = tripped(clock)
    assert not breakers.allow(SLACK)
    assert breakers.allow(SMS)
    assert breakers.state(SMS) == "closed"
    breakers.failure(SMS)
    assert breakers.states() == {SLACK: "open", SMS: "closed"}
    assert {key for key, _, _ in seen.changes} == {SLACK}


def test_late_outcomes_while_open_are_ignored() -> None:
    clock = FrozenClock(T0)
    breakers, seen = tripped(clock)
    breakers.success(SLACK)  # a send from before the outage, finishing late
    breakers.failure(SLACK)
    assert breakers.state(SLACK) == "open"
    clock.advance(timedelta(seconds=30))  # the late failure did not extend the open period
    assert breakers.allow(SLACK)
    assert len(seen.changes) == 2


def test_a_released_probe_can_be_handed_out_again() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    clock.advance(timedelta(seconds=30))
    assert breakers.allow(SLACK)
    breakers.release(SLACK)  # the dispatcher skipped the row after all
    assert breakers.allow(SLACK)
    assert not breakers.allow(SLACK)


def test_a_lost_probe_is_given_up_after_open_seconds() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    clock.advance(timedelta(seconds=30))
    assert breakers.allow(SLACK)  # ...and its send never reports back
    clock.advance(timedelta(seconds=29))
    assert not breakers.allow(SLACK)
    clock.advance(timedelta(seconds=1))
    assert breakers.allow(SLACK)
    assert breakers.state(SLACK) == "half_open"


# -- breakers shared by several dispatchers (through the store) -----------------------------


def test_news_tells_when_a_breaker_opened_and_closed() -> None:
    clock = FrozenClock(T0)
    breakers, _ = tripped(clock)
    assert breakers.news(SLACK) == ("open", T0)
    assert breakers.news(SMS) is None  # never opened: nothing to tell
    clock.advance(timedelta(seconds=30))
    assert breakers.allow(SLACK)
    assert breakers.news(SLACK) is None  # half-open: this process is probing
    breakers.success(SLACK)
    assert breakers.news(SLACK) == ("closed", T0 + timedelta(seconds=30))


def test_an_outage_another_dispatcher_saw_holds_this_one_back_for_its_open_seconds() -> None:
    clock = FrozenClock(T0)
    seen = Recorder()
    breakers = Breakers(clock, failure_threshold=5, open_seconds=30.0, on_change=seen)
    opened = T0 - timedelta(seconds=10)
    breakers.adopt(SLACK, "open", opened)
    assert seen.changes == [(SLACK, "closed", "open")]
    assert not breakers.allow(SLACK)
    clock.advance(timedelta(seconds=20))  # 30 s after the other one opened it
    assert breakers.allow(SLACK)  # this process may probe now
    assert breakers.state(SLACK) == "half_open"


def test_a_probe_that_went_through_elsewhere_closes_it_here() -> None:
    clock = FrozenClock(T0)
    breakers, seen = tripped(clock)
    breakers.adopt(SLACK, "closed", T0 + timedelta(seconds=31))
    assert breakers.state(SLACK) == "closed"
    assert seen.changes[-1] == (SLACK, "open", "closed")
    assert breakers.allow(SLACK)


def test_news_older_than_this_breakers_last_change_is_ignored() -> None:
    clock = FrozenClock(T0 + timedelta(seconds=60))
    breakers, seen = tripped(clock)  # opened here at T0 + 60 s
    breakers.adopt(SLACK, "closed", T0 + timedelta(seconds=59))  # closed before that: old
    assert breakers.state(SLACK) == "open"
    breakers.adopt(SLACK, "open", T0 + timedelta(seconds=60))  # its own news, read back
    assert len(seen.changes) == 1
    breakers.adopt(SMS, "closed", T0)  # closed news of a key never opened here: nothing
    assert breakers.state(SMS) == "closed" and breakers.states() == {SLACK: "open"}


def test_breakers_refuse_nonsense_settings() -> None:
    with pytest.raises(ValueError):
        Breakers(FrozenClock(T0), failure_threshold=0)
    with pytest.raises(ValueError):
        Breakers(FrozenClock(T0), open_seconds=0)


# -- backoff -------------------------------------------------------------------------------


@given(
    attempt=st.integers(min_value=0, max_value=5000),
    base=st.floats(min_value=0, max_value=1000, allow_nan=False),
    cap=st.floats(min_value=0, max_value=10_000, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_backoff_is_full_jitter_within_the_capped_window(
    attempt: int, base: float, cap: float, seed: int
) -> None:
    delay = backoff(attempt, base=base, cap=cap, rng=random.Random(seed))
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(attempt, 1000))
    assert delay <= cap


def test_backoff_spreads_over_the_whole_window() -> None:
    rng = random.Random(7)
    delays = [backoff(3, base=1.0, cap=300.0, rng=rng) for _ in range(2000)]
    assert max(delays) <= 8.0
    assert min(delays) < 0.5  # full jitter: near zero happens...
    assert max(delays) > 7.5  # ...and so does near the ceiling
    assert sum(delays) / len(delays) == pytest.approx(4.0, rel=0.1)


def test_backoff_is_capped_for_huge_attempts() -> None:
    rng = random.Random(1)
    assert all(backoff(10**6, rng=rng) <= 300.0 for _ in range(100))


def test_backoff_is_deterministic_for_a_seed() -> None:
    assert backoff(4, rng=random.Random(3)) == backoff(4, rng=random.Random(3))


def test_backoff_refuses_a_negative_attempt() -> None:
    with pytest.raises(ValueError):
        backoff(-1, rng=random.Random(0))


@given(
    attempt=st.integers(min_value=0, max_value=64),
    retry_after=st.floats(min_value=0, max_value=100_000, allow_nan=False),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_retry_after_is_a_floor(attempt: int, retry_after: float, seed: int) -> None:
    delay = retry_delay(attempt, retry_after, random.Random(seed), base=1.0, cap=300.0)
    assert delay >= retry_after
    assert delay <= max(retry_after, 300.0)


def test_retry_after_wins_over_a_shorter_backoff_and_loses_to_a_longer_one() -> None:
    assert retry_delay(0, 120.0, random.Random(0)) == 120.0  # backoff(0) <= 1 s
    rng = random.Random(5)
    expected = backoff(8, rng=random.Random(5))
    assert expected > 0.5
    assert retry_delay(8, 0.5, rng) == expected


@pytest.mark.parametrize("bad", [None, -1.0, math.nan, math.inf])
def test_retry_delay_without_a_usable_retry_after_is_plain_backoff(bad: float | None) -> None:
    assert retry_delay(2, bad, random.Random(9)) == backoff(2, rng=random.Random(9))


# -- priorities ----------------------------------------------------------------------------


def test_priorities() -> None:
    assert PRIORITY == {"conversational": 0, "transactional": 0, "marketing": 1}
    categories = ["marketing", "transactional", "marketing", "conversational", "unknown"]
    # The dispatcher's order: priority, then creation order (a stable sort keeps it).
    ordered = sorted(enumerate(categories), key=lambda item: priority_of(item[1]))
    assert [i for i, _ in ordered] == [1, 3, 4, 0, 2]
