"""Send pacing for the dispatcher: rate limits, circuit breakers, retry backoff, priorities.

Everything here is pure and clock-driven: no I/O, no sleeping, no tasks. The dispatcher asks
these objects *when* something may happen and sleeps (or does other work) until then, and it
persists what they expose (`RateLimiter.state`) so a restart keeps the spacing. Keys are
destinations as the dispatcher names them (``"sms:+15551230001"``, ``"slack:C0123"``); each
key is independent, so one provider's outage or rate limit never holds back another.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from router.clock import Clock

__all__ = [
    "PRIORITY",
    "BreakerState",
    "Breakers",
    "RateLimiter",
    "backoff",
    "priority_of",
    "retry_delay",
]

# -- priorities ----------------------------------------------------------------------------

#: Claim priority of each outbox category: lower leaves first.
#:
#: How the dispatcher orders claims: due rows are ordered by ``(PRIORITY[category], creation
#: order)`` -- a stable sort, so rows of one priority keep the order they were created in (the
#: outbox id is a ULID, which sorts by creation time). Within one lane (a conversation's rows on
#: one channel) only the oldest pending row is a candidate at all, so priority never reorders a
#: conversation. Every round re-reads the due heads, so when a destination's rate slot frees,
#: the first candidate for it is a conversational or transactional row if one is waiting: a
#: reply queued behind 500 marketing rows from the same sender waits only for the slots the
#: dispatcher booked ahead (at most a second's worth), not for the burst to drain.
PRIORITY: dict[str, int] = {"conversational": 0, "transactional": 0, "marketing": 1}


def priority_of(category: str) -> int:
    """The claim priority of `category`; an unknown category ranks with the urgent ones, since
    holding back a message nobody classified as marketing is the worse mistake."""
    return PRIORITY.get(category, 0)


# -- rate limits ---------------------------------------------------------------------------

_EPOCH = datetime.min.replace(tzinfo=UTC)


class RateLimiter:
    """The pace of each destination key: ``1 / rate_per_second(key)`` seconds between sends.

    The slots themselves are booked in the store, with each row's claim (`Store.claim_rows`),
    so the spacing holds for every dispatcher on the store, across restarts. What this keeps
    is what one process needs to choose well: the spacing of each key now, and the next free
    moment of each key as far as it knows (``learn``: from its own bookings and from the ones
    the store refused), so a busy key's rows are passed over without asking the store. That
    knowledge can only be early, never late: the store's slots only move later.

    A 429 (``penalize``) pushes the key's next slot to now + Retry-After (the caller writes it
    to the store too) and also halves the key's rate, repeatedly down to ``min_factor`` of the
    configured one, until ``slow_seconds`` pass without another 429. Why halve: Retry-After
    says when to try again, not how fast. If the configured rate is above what the provider
    grants (a 10DLC campaign below 1 MPS, Slack's workspace-wide cap shared with other apps),
    resuming at full rate just earns the next 429, and every 429 costs a row an attempt. The
    slowdown lives in this process's memory only: after a restart the configured rate applies
    again and a new 429 re-learns it.
    """

    def __init__(
        self,
        rate_per_second: Callable[[str], float],
        clock: Clock,
        *,
        slow_seconds: float = 60.0,
        min_factor: float = 0.125,
    ) -> None:
        """`rate_per_second(key)` may return ``math.inf`` for unlimited keys (nothing is kept
        for them unless penalized). `slow_seconds = 0` turns the 429 slowdown off."""
        if slow_seconds < 0 or not 0 < min_factor <= 1:
            raise ValueError("slow_seconds must be >= 0 and min_factor in (0, 1]")
        self._rate_of = rate_per_second
        self._clock = clock
        self._slow_seconds = slow_seconds
        self._min_factor = min_factor
        self._next: dict[str, datetime] = {}
        #: key -> (rate factor, until when it applies)
        self._slow: dict[str, tuple[float, datetime]] = {}

    def rate(self, key: str) -> float:
        """The rate `key` is sent at now: the configured one, or less after recent 429s."""
        configured = self._rate_of(key)
        if not configured > 0:  # also catches NaN
            raise ValueError(f"rate_per_second for {key!r} must be > 0, got {configured!r}")
        slow = self._slow.get(key)
        if slow is None:
            return configured
        factor, until = slow
        if self._clock.now() >= until:
            del self._slow[key]
            return configured
        return configured * factor

    def spacing(self, key: str) -> timedelta:
        """The time between two sends to `key` now (zero: unlimited)."""
        rate = self.rate(key)
        return timedelta(0) if math.isinf(rate) else timedelta(seconds=1.0 / rate)

    def next_free(self, key: str) -> datetime:
        """The earliest moment a send to `key` may start as far as this process knows (now,
        if it knows of no booking)."""
        now = self._clock.now()
        slot = self._next.get(key, _EPOCH)
        if slot <= now:
            self._next.pop(key, None)  # past: it constrains nothing
            return now
        return slot

    def learn(self, key: str, free_at: datetime) -> None:
        """`key` is booked until `free_at` (by this process or another): only ever later."""
        if free_at.tzinfo is None:
            free_at = free_at.replace(tzinfo=UTC)
        if free_at > self._clock.now() and free_at > self._next.get(key, _EPOCH):
            self._next[key] = free_at

    def penalize(self, key: str, retry_after_seconds: float | None) -> datetime:
        """The provider said 429 (or Slack ``ratelimited``): no send to `key` before now +
        `retry_after_seconds`, and a halved rate for a while (see the class docstring). Returns
        that moment, for the store.

        Never pulls a later slot earlier. A missing, negative or non-finite Retry-After is taken
        as 0: the slot is not pushed, but the rate is still halved.
        """
        now = self._clock.now()
        wait = _seconds_or_none(retry_after_seconds) or 0.0
        until = now + timedelta(seconds=wait)
        self.learn(key, until)
        if self._slow_seconds > 0:
            current = self._slow.get(key)
            factor = current[0] if current is not None and now < current[1] else 1.0
            factor = max(self._min_factor, factor / 2)
            self._slow[key] = (factor, until + timedelta(seconds=self._slow_seconds))
        return until


# -- circuit breakers ----------------------------------------------------------------------

BreakerState = Literal["closed", "open", "half_open"]


@dataclass
class _Circuit:
    state: BreakerState = "closed"
    failures: int = 0
    opened_at: datetime | None = None
    #: When the half-open probe was handed out; None: no probe under way.
    probe_at: datetime | None = None
    #: Has been open: kept for `states()` after it closes again.
    tripped: bool = False
    #: When it last opened or closed (here, or as another dispatcher told).
    changed_at: datetime | None = None


class Breakers:
    """One circuit breaker per destination key: closed, open, half-open with a single probe.

    - **closed**: sends go; `failure_threshold` *consecutive* failures open it (a success in
      between resets the count). Only failures that say the destination is unwell count:
      transient and in-doubt ones; the dispatcher decides, and reports a permanent rejection
      (the provider answered) as a `success`.
    - **open**: `allow` refuses for `open_seconds`, so an outage does not burn the attempts of
      every row queued for it; rows for other keys are unaffected.
    - **half-open**: after `open_seconds`, `allow` grants exactly one probe and refuses the
      rest. Its `success` closes the breaker, its `failure` opens it for another
      `open_seconds`. A probe that never reports back (its send crashed, or the caller changed
      its mind without calling `release`) is given up after `open_seconds`, and the next
      `allow` hands out a new one, so a lost probe can never wedge a key half-open.

    Outcomes reported while open (sends that started before it opened and finished late) are
    ignored: only the probe decides when to close.

    `on_change(key, old, new)` is called after every transition, for logs and metrics; the new
    state is in place before it runs, so an exception from it loses only the hook's own work.

    Several dispatchers share a store: each tells the others when a breaker opens or closes
    (`news`), and takes what they tell (`adopt`), so one outage holds every process back and
    one probe that goes through closes it for all. Failures are counted per process.
    """

    def __init__(
        self,
        clock: Clock,
        failure_threshold: int = 5,
        open_seconds: float = 30.0,
        *,
        on_change: Callable[[str, str, str], None] | None = None,
    ) -> None:
        if failure_threshold < 1 or not open_seconds > 0:
            raise ValueError("failure_threshold must be >= 1 and open_seconds > 0")
        self._clock = clock
        self._threshold = failure_threshold
        self._open_for = timedelta(seconds=open_seconds)
        self._circuits: dict[str, _Circuit] = {}
        #: The transition listener; may be set after construction.
        self.on_change = on_change

    def allow(self, key: str) -> bool:
        """May a send to `key` start now? In half-open, True hands out the one probe: call it
        only for a send about to start, and `release` if it does not happen after all."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.state == "closed":
            return True
        now = self._clock.now()
        if circuit.state == "open":
            assert circuit.opened_at is not None
            if now < circuit.opened_at + self._open_for:
                return False
            circuit.probe_at = now
            self._move(key, circuit, "half_open")
            return True
        if circuit.probe_at is not None and now < circuit.probe_at + self._open_for:
            return False  # the probe is under way
        circuit.probe_at = now
        return True

    def release(self, key: str) -> None:
        """An allowed send did not start (the row was skipped or claimed elsewhere): give the
        half-open probe back, so the next `allow` may probe at once."""
        circuit = self._circuits.get(key)
        if circuit is not None and circuit.state == "half_open":
            circuit.probe_at = None

    def success(self, key: str) -> None:
        """A send to `key` went through (or was refused for reasons of its own)."""
        circuit = self._circuits.get(key)
        if circuit is None:
            return
        if circuit.state == "half_open":
            circuit.failures = 0
            circuit.opened_at = circuit.probe_at = None
            self._move(key, circuit, "closed")
        elif circuit.state == "closed":
            circuit.failures = 0
            if not circuit.tripped:
                del self._circuits[key]  # nothing worth remembering

    def failure(self, key: str) -> None:
        """A send to `key` failed in a way that says the destination is unwell (transient or
        in doubt)."""
        circuit = self._circuits.setdefault(key, _Circuit())
        if circuit.state == "open":
            return
        if circuit.state == "closed":
            circuit.failures += 1
            if circuit.failures < self._threshold:
                return
        circuit.opened_at = self._clock.now()
        circuit.probe_at = None
        circuit.tripped = True
        self._move(key, circuit, "open")

    def news(self, key: str) -> tuple[Literal["open", "closed"], datetime] | None:
        """What to tell the other dispatchers of `key`: it opened (when) or closed (when);
        None while half-open or never opened."""
        circuit = self._circuits.get(key)
        if circuit is None or circuit.changed_at is None or circuit.state == "half_open":
            return None
        if circuit.state == "open":
            assert circuit.opened_at is not None
            return "open", circuit.opened_at
        return "closed", circuit.changed_at

    def adopt(self, key: str, state: Literal["open", "closed"], at: datetime) -> None:
        """Another dispatcher's breaker for `key` opened (or closed) at `at`. News older than
        this breaker's own last change is ignored, so the latest change wins everywhere."""
        circuit = self._circuits.get(key)
        if circuit is not None and circuit.changed_at is not None and circuit.changed_at >= at:
            return
        if state == "open":
            circuit = circuit if circuit is not None else self._circuits.setdefault(key, _Circuit())
            circuit.opened_at, circuit.probe_at, circuit.tripped = at, None, True
            circuit.failures = 0
            self._move(key, circuit, "open", at)
        elif circuit is not None and circuit.state != "closed":
            circuit.failures = 0
            circuit.opened_at = circuit.probe_at = None
            self._move(key, circuit, "closed", at)

    def state(self, key: str) -> BreakerState:
        """The recorded state of `key`. Pure: an open breaker whose `open_seconds` have passed
        reads "open" until an `allow` hands out the probe and makes it half-open."""
        circuit = self._circuits.get(key)
        return "closed" if circuit is None else circuit.state

    def states(self) -> dict[str, str]:
        """The state of every key that has failed lately or has ever been open (for /metrics);
        keys never heard of are closed."""
        return {key: circuit.state for key, circuit in self._circuits.items()}

    def _move(
        self, key: str, circuit: _Circuit, new: BreakerState, at: datetime | None = None
    ) -> None:
        old, circuit.state = circuit.state, new
        if new != "half_open":
            circuit.changed_at = at or self._clock.now()
        if self.on_change is not None and old != new:
            self.on_change(key, old, new)


# -- backoff -------------------------------------------------------------------------------


def backoff(attempt: int, *, base: float = 1.0, cap: float = 300.0, rng: random.Random) -> float:
    """Seconds to wait before retry number `attempt` (0 for the first retry): capped
    exponential backoff with *full* jitter, ``uniform(0, min(cap, base * 2**attempt))``.

    Full jitter (AWS Architecture Blog, "Exponential Backoff And Jitter") spreads the retries of
    rows that failed together over the whole window instead of letting them return in a herd,
    which is what a provider recovering from an outage needs. `rng` is passed in so tests and
    replays are deterministic.
    """
    if attempt < 0 or base < 0 or cap < 0:
        raise ValueError("attempt, base and cap must be >= 0")
    # 2.0**1024 overflows; by then the cap has long applied (any base * 2**1000 > cap or base 0).
    ceiling = min(cap, base * 2.0 ** min(attempt, 1000))
    return rng.uniform(0.0, ceiling)


def retry_delay(
    attempt: int,
    retry_after: float | None,
    rng: random.Random,
    *,
    base: float = 1.0,
    cap: float = 300.0,
) -> float:
    """Seconds until a failed row's next attempt: the jittered `backoff`, but never before the
    provider's Retry-After.

    Retry-After is a floor, not a replacement: the provider said when it will listen again, and
    asking earlier only earns another 429. It is not capped by `cap` (the provider knows best),
    and a missing, negative or non-finite value is ignored. Rows that share a Retry-After do
    not stampede at its end: the rate limiter, penalized with the same value, spaces them.
    """
    delay = backoff(attempt, base=base, cap=cap, rng=rng)
    floor = _seconds_or_none(retry_after)
    return delay if floor is None else max(delay, floor)


def _seconds_or_none(value: float | None) -> float | None:
    """A usable, non-negative number of seconds, or None."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    return float(value)
