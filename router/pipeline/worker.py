"""The routing worker: claim lanes, route them, commit many lanes in one transaction.

Woken in-process right after an ingest commit (`wake`), so a new event waits for no poll; the
poll is only the safety net (another process ingested, a lease expired, a retry fell due).
Claims, leases and fencing live in the store (`Store.claim`, `Store.commit`); this loop owns
only the rhythm. Several workers, in one process or many, share the work safely.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

from channels.outbound import Sender
from router.aio import cancel, wait_event
from router.clock import Clock
from router.config import Settings
from router.errors import StoreUnavailable
from router.ids import new_ulid
from router.logs import get_logger
from router.metrics import Metrics
from router.pipeline.dispatch import Dispatcher
from router.pipeline.routing.route import ContactBook, LaneRouter
from router.pipeline.timers import TimerScheduler
from router.rules import RuleSet
from router.store.base import Store
from router.store.records import ClaimedLane, CommitOutcome, LaneCommit, TimerRecord
from statemachines import consent

log = get_logger("switchboard.worker")

#: Lanes routed between two chances for the event loop to answer webhooks.
_YIELD_EVERY_LANES = 8
#: Called after a commit with the timers it armed and disarmed (the scheduler follows them).
TimerListener = Callable[[list[TimerRecord], list[tuple[str, str]]], None]


class Worker:
    """One routing loop over a store."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        ruleset: Callable[[], RuleSet | None],
        clock: Clock,
        metrics: Metrics,
        *,
        on_timers: TimerListener | None = None,
        on_rows: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._config = settings.worker
        self._router = LaneRouter(settings, ruleset, store.escalation_post)
        self._on_timers = on_timers
        #: Called after a commit that made rows or receipts (wakes the dispatcher).
        self._on_rows = on_rows
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        #: Names this worker's leases (the store keeps it for people reading the table).
        self.owner = f"worker-{new_ulid(clock.now())}"
        #: Events routed (processed or failed) since start; tests and bench read it.
        self.routed = 0

    def wake(self) -> None:
        """New work was committed: run a claim now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="routing-worker")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None

    async def _run(self) -> None:
        while True:
            try:
                busy = await self.run_once()
            except StoreUnavailable as exc:
                log.warning("routing paused", stage="route", error=str(exc))
                busy = False
            except Exception as exc:  # a bug must not end routing: log it, retry at the poll
                log.error("routing batch failed", stage="route", error=repr(exc)[:500])
                busy = False
            if busy:
                await asyncio.sleep(0)  # let ingest answer between batches
                continue
            self._wake.clear()
            await wait_event(self._wake, self._config.poll_seconds)

    async def run_once(self) -> bool:
        """Claim, route and commit one batch; True if there was work (there may be more)."""
        config = self._config
        now = self._clock.now()
        lanes = await self._store.claim(
            self.owner, now, config.lease_seconds, config.batch_conversations, config.batch_events
        )
        if not lanes:
            return False
        started = time.perf_counter()
        book = ContactBook(self._store.contacts)
        await book.prefetch(_contact_keys(lanes))
        commits: list[LaneCommit] = []
        for position, lane in enumerate(lanes, 1):
            commits.append(await self._router.route(lane, book, now))
            if position % _YIELD_EVERY_LANES == 0:
                await asyncio.sleep(0)  # webhooks answer while a large batch is routed
        outcome = await self._store.commit(commits, self._clock.now())
        self._after_commit(commits, outcome, time.perf_counter() - started)
        return True

    def _after_commit(
        self, commits: list[LaneCommit], outcome: CommitOutcome, seconds: float
    ) -> None:
        armed: list[TimerRecord] = []
        disarmed: list[tuple[str, str]] = []
        for commit, applied in zip(commits, outcome.applied, strict=True):
            if not applied:
                log.warning(
                    "lease lost, commit refused",
                    stage="route",
                    lane_events=len(commit.results),
                    outcome="fenced",
                )
                self._metrics.routed.labels("fenced").inc(len(commit.results))
                continue
            for result in commit.results:
                self._metrics.routed.labels(result.status.value).inc()
            if commit.failed_attempt is not None:
                self._metrics.routed.labels("retry").inc()
                log.warning(
                    "event raised, will retry",
                    stage="route",
                    event_id=commit.failed_attempt,
                    outcome="retry",
                )
            self.routed += len(commit.results)
            armed += commit.timers_set
            disarmed += [(key, timer) for key, timer, _ in commit.timers_cleared]
        self._metrics.outbox_rows.inc(len(outcome.new_outbox_ids))
        self._metrics.route_batch_seconds.observe(seconds)
        if self._on_timers is not None and (armed or disarmed):
            self._on_timers(armed, disarmed)
        if self._on_rows is not None and outcome.new_outbox_ids:
            self._on_rows()


class Routing:
    """Everything after an event is stored, run together: the worker that routes events, the
    timers that feed it, and the dispatcher that sends the rows it makes. Commits in this
    process wake them directly; the store's watch wakes them for commits made elsewhere
    (`switchboard worker` beside `serve`, `dlq retry` from the CLI)."""

    def __init__(
        self, store: Store, worker: Worker, timers: TimerScheduler, dispatcher: Dispatcher
    ) -> None:
        self.worker, self.timers, self.dispatcher = worker, timers, dispatcher
        self._store = store
        self._watch: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Something was committed: the worker and the dispatcher look now."""
        self.worker.wake()
        self.dispatcher.wake()

    async def start(self) -> None:
        await self.timers.start()
        self.worker.start()
        await self.dispatcher.start()
        self._watch = asyncio.create_task(self._store.watch(self.wake), name="store-watch")

    async def stop(self) -> None:
        await cancel(self._watch)
        self._watch = None
        await self.worker.stop()
        await self.timers.stop()
        await self.dispatcher.stop()


def routing(
    store: Store,
    settings: Settings,
    ruleset: Callable[[], RuleSet | None],
    clock: Clock,
    metrics: Metrics,
    senders: Mapping[str, Sender],
) -> Routing:
    """Wire the three: timers the worker arms are scheduled, a timer that fires is an event
    that wakes the worker, and rows the worker commits wake the dispatcher."""
    worker: Worker

    def follow(armed: list[TimerRecord], disarmed: list[tuple[str, str]]) -> None:
        for key, timer in disarmed:
            timers.disarm(key, timer)
        for record in armed:
            timers.arm(record)

    dispatcher = Dispatcher(store, settings, senders, clock, metrics)
    timers = TimerScheduler(store, clock, lambda: worker.wake())
    worker = Worker(
        store, settings, ruleset, clock, metrics, on_timers=follow, on_rows=dispatcher.wake
    )
    return Routing(store, worker, timers, dispatcher)


def _contact_keys(lanes: list[ClaimedLane]) -> list[str]:
    return [
        consent.contact_key(event.contact.address)
        for lane in lanes
        for event in lane.events
        if event.contact is not None
    ]
