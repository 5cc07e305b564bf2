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


def test_fifty_takes_at_five_per_second_are_spaced_a_fifth_of_a_second() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    starts = []
    for _ in range(50):
        start = limits.next_free(SMS)
        clock.set(max(clock.now(), start))  # the dispatcher sleeps until the slot
        starts.append(limits.take(SMS))
    gaps = {round(seconds(b - a), 6) for a, b in itertools.pairwise(starts)}
    assert gaps == {0.2}
    assert starts[0] == T0
    assert seconds(starts[-1] - T0) == pytest.approx(9.8)
    assert seconds(limits.next_free(SMS) - T0) == pytest.approx(10.0)  # 50 sends take 10 s


def test_a_send_of_three_segments_holds_the_key_for_three_spacings() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock, {SMS: 1.0})
    assert limits.take(SMS, 3) == T0
    assert seconds(limits.next_free(SMS) - T0) == pytest.approx(3.0)
    assert seconds(limits.take(SMS) - T0) == pytest.approx(3.0)  # the next send waits
    assert seconds(limits.next_free(SMS) - T0) == pytest.approx(4.0)


def test_reserve_books_future_slots_without_double_booking() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    slots = [limits.reserve(SMS) for _ in range(5)]
    assert [seconds(s - T0) for s in slots] == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])


def test_next_free_books_nothing() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    limits.take(SMS)
    busy = limits.next_free(SMS)
    assert busy == T0 + timedelta(seconds=0.2)
    assert limits.next_free(SMS) == busy  # asking again changes nothing
    assert limits.next_free(SMS2) == T0  # a skipped busy key leaves others free


def test_no_burst_beyond_one_after_idling() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    limits.take(SMS)
    clock.advance(timedelta(hours=1))  # idle: no credit accumulates
    assert limits.take(SMS) == clock.now()
    assert limits.next_free(SMS) == clock.now() + timedelta(seconds=0.2)


def test_keys_are_independent() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock, {SLACK: 1.0})
    for _ in range(10):
        limits.take(SMS)
    assert limits.next_free(SMS) == T0 + timedelta(seconds=2)
    assert limits.take(SLACK) == T0
    assert limits.next_free(SLACK) == T0 + timedelta(seconds=1)
    assert limits.next_free(SMS2) == T0


def test_unlimited_keys_are_free_and_kept_nowhere() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock, {"email:a@example.com": math.inf})
    for _ in range(3):
        assert limits.take("email:a@example.com") == T0
    assert limits.state() == {}


def test_a_rate_of_zero_is_refused() -> None:
    limits = limiter(FrozenClock(T0), {SMS: 0.0})
    with pytest.raises(ValueError, match="must be > 0"):
        limits.take(SMS)


def test_penalize_pushes_only_its_key() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    limits.take(SMS)
    limits.take(SMS2)
    limits.penalize(SMS, 30)
    assert limits.next_free(SMS) == T0 + timedelta(seconds=30)
    assert limits.next_free(SMS2) == T0 + timedelta(seconds=0.2)
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
    assert limits.take(SMS) == clock.now()
    assert limits.next_free(SMS) == clock.now() + timedelta(seconds=0.5)
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
    limits.penalize(SMS, bad)
    assert limits.next_free(SMS) == T0


def test_state_and_restore_keep_the_next_slot_across_a_restart() -> None:
    clock = FrozenClock(T0)
    before = limiter(clock)
    for _ in range(5):
        before.take(SMS)
    before.penalize(SLACK, 20)
    before.take(SMS2)
    clock.advance(timedelta(seconds=0.5))  # SMS2's slot (0.2 s) has passed: not worth saving
    saved = before.state()
    assert saved == {SMS: T0 + timedelta(seconds=1), SLACK: T0 + timedelta(seconds=20)}

    after = limiter(clock)  # the restart: a new instance fed from the store
    after.restore(saved)
    assert after.next_free(SMS) == T0 + timedelta(seconds=1)
    assert after.next_free(SLACK) == T0 + timedelta(seconds=20)
    assert after.next_free(SMS2) == clock.now()
    clock.set(T0 + timedelta(seconds=1))
    assert after.take(SMS) == T0 + timedelta(seconds=1)
    assert after.next_free(SMS) == T0 + timedelta(seconds=1.2)  # spacing carries on


def test_restore_keeps_the_later_slot_drops_past_ones_and_reads_naive_as_utc() -> None:
    clock = FrozenClock(T0)
    limits = limiter(clock)
    limits.penalize(SMS, 10)
    limits.restore(
        {
            SMS: T0 + timedelta(seconds=3),
            SMS2: (T0 + timedelta(seconds=4)).replace(tzinfo=None),
            SLACK: T0 - timedelta(seconds=4),
        }
    )
    assert limits.next_free(SMS) == T0 + timedelta(seconds=10)
    assert limits.next_free(SMS2) == T0 + timedelta(seconds=4)
    assert SLACK not in limits.state()


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
