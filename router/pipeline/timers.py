"""Conversation timers (SPEC §7: a reminder when an escalation stays unclaimed).

An armed timer is a `TimerRecord` row in the store; this scheduler only keeps each one in an
in-memory apscheduler job until it falls due. A due timer is not acted on here: it becomes a
`timer.<name>` event ingested through the store, so the worker processes it in order with the
conversation's other events, and the store's dedupe key makes it fire once however many
processes or restarts see it due (the key carries the due time, so a re-armed timer is a new
firing). The row stays until the worker clears it; at start-up every row is scheduled again,
and one that fell due while the server was down fires at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.date import DateTrigger

from router.clock import Clock
from router.errors import UnstorableEvent
from router.events import Event
from router.ids import new_ulid
from router.logs import get_logger, scrub
from router.store.base import IngestItem, Store
from router.store.records import TimerRecord

log = get_logger("switchboard.timers")

#: Where timer events come from (`Event.source`).
TIMER_SOURCE = "switchboard"
#: Seconds before a firing whose ingest failed (store unavailable) is tried again.
RETRY_SECONDS = 5.0
#: Timers due within this window are held as jobs; later ones (a 24 h inactivity timer, re-armed
#: by every message) stay in the store until a refresh brings them near.
HORIZON = timedelta(minutes=15)
#: How often the store's timers are read again: a timer armed by another process (several on
#: PostgreSQL), or by one that died before it fired, is held here within this long.
REFRESH = timedelta(seconds=30)


def timer_event(record: TimerRecord, now: datetime) -> Event:
    """The event a due timer becomes. Pure: its dedupe key depends only on the record, so every
    process that sees the same timer due builds the same key."""
    timer_type = f"timer.{record.timer}"
    # In UTC, as the store keeps it: the same timer read back after a restart has the same key.
    due = record.due_at.astimezone(UTC).isoformat()
    return Event(
        id=new_ulid(now),
        source=TIMER_SOURCE,
        type=timer_type,
        provider_type=timer_type,
        dedupe_key=f"{TIMER_SOURCE}:timer:{record.conversation_key}:{record.timer}:{due}",
        conversation_key=record.conversation_key,
        data={"timer": record.timer, "due_at": due},
        received_at=now,
        correlation_id=new_ulid(now),
    )


def job_id(conversation_key: str, timer: str) -> str:
    """One apscheduler job per (conversation, timer)."""
    return f"{conversation_key}|{timer}"


def _log_fields(record: TimerRecord) -> dict[str, str]:
    """What a log line may say about a timer: conversation keys hold phone numbers and emails,
    so they are masked, with a short hash to correlate lines of the same conversation."""
    digest = hashlib.sha256(record.conversation_key.encode()).hexdigest()[:12]
    return {
        "timer": record.timer,
        "conversation": scrub(record.conversation_key),
        "conversation_hash": digest,
        "due_at": record.due_at.astimezone(UTC).isoformat(),
    }


class TimerScheduler:
    """Holds every armed timer as an apscheduler job; a due one is ingested as an event, then
    `wake` is called so the worker picks it up without waiting for its next poll.

    `arm`, `disarm` and the firings run on the event loop `start` was awaited on."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        wake: Callable[[], None],
        *,
        retry_seconds: float = RETRY_SECONDS,
        horizon: timedelta = HORIZON,
        refresh: timedelta = REFRESH,
    ) -> None:
        self._horizon = horizon
        self._refresh_every = min(refresh, horizon / 2)
        self._store = store
        self._clock = clock
        self._wake = wake
        self._retry = timedelta(seconds=max(retry_seconds, 0.001))
        # Missed runs are never dropped: a timer that fell due while the server was down (or
        # while the loop was busy) fires once when it comes back.
        self._scheduler = AsyncIOScheduler(
            timezone=UTC,
            job_defaults={"misfire_grace_time": None, "coalesce": True, "max_instances": 1},
        )
        #: The record each job stands for: a retry goes on only while its record is current.
        self._armed: dict[str, TimerRecord] = {}
        #: Timers this scheduler fired, by due time: a refresh that reads one again before the
        #: worker cleared its row does not fire it twice.
        self._fired: dict[str, datetime] = {}
        self._firing: set[asyncio.Task[object]] = set()
        self._stopping = False

    async def start(self) -> None:
        """Start on the running loop, then schedule every timer the store holds."""
        self._stopping = False
        self._scheduler.start()
        await self._refresh()
        self._scheduler.add_job(
            self._refresh,
            "interval",
            seconds=self._refresh_every.total_seconds(),
            id="timers.refresh",
            replace_existing=True,
        )

    async def _refresh(self) -> None:
        """Hold every stored timer due within the horizon (at start, then every refresh)."""
        try:
            # apscheduler runs on real time, so the horizon is real time too.
            due_soon = await self._store.timers(due_before=datetime.now(UTC) + self._horizon)
        except Exception as exc:  # the next refresh tries again; the rows are safe in the store
            log.warning("timer_refresh_failed", error=scrub(str(exc)))
            return
        stored = {job_id(r.conversation_key, r.timer): r for r in due_soon}
        for key in [key for key in self._fired if key not in stored]:
            del self._fired[key]  # cleared by the worker: forget it
        for key, record in stored.items():
            # One armed while the store was being read is newer than the row read.
            if key not in self._armed and self._fired.get(key) != record.due_at:
                self.arm(record)

    def arm(self, record: TimerRecord) -> None:
        """Schedule `record`, replacing any timer of the same name in its conversation; one due
        beyond the horizon replaces it too, and is held once a refresh brings it near."""
        if record.due_at > datetime.now(UTC) + self._horizon:
            self.disarm(record.conversation_key, record.timer)
            return
        self._schedule(record, record.due_at)

    def disarm(self, conversation_key: str, timer: str) -> None:
        """Forget a timer; nothing happens if it is not armed."""
        key = job_id(conversation_key, timer)
        if self._armed.pop(key, None) is None:
            return
        with contextlib.suppress(JobLookupError):
            self._scheduler.remove_job(key)

    async def stop(self) -> None:
        """Stop scheduling; firings under way finish their ingest first (a timer not ingested
        stays in the store and fires at the next start)."""
        self._stopping = True
        if not self._scheduler.running:
            return
        self._scheduler.pause()
        await asyncio.sleep(0)  # a firing submitted just now starts, so it is waited for
        if self._firing:
            await asyncio.gather(*self._firing, return_exceptions=True)
        self._scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down in a callback of the loop

    def armed(self) -> list[TimerRecord]:
        """The timers scheduled now (for inspection and tests)."""
        return list(self._armed.values())

    def _schedule(self, record: TimerRecord, run_at: datetime) -> None:
        key = job_id(record.conversation_key, record.timer)
        self._armed[key] = record
        self._scheduler.add_job(
            self._fire,
            DateTrigger(run_date=run_at, timezone=UTC),
            args=(record,),
            id=key,
            name=f"timer.{record.timer}",
            replace_existing=True,
            misfire_grace_time=None,
            coalesce=True,
        )

    async def _fire(self, record: TimerRecord) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._firing.add(task)
        try:
            await self._ingest(record)
        finally:
            if task is not None:
                self._firing.discard(task)

    async def _ingest(self, record: TimerRecord) -> None:
        key = job_id(record.conversation_key, record.timer)
        event = timer_event(record, self._clock.now())
        try:
            outcome = await self._store.ingest(
                IngestItem(event=event, raw_body=b"", content_type="application/json")
            )
        except UnstorableEvent as exc:  # retrying cannot help: the event itself is bad
            log.error("timer_unstorable", error=scrub(str(exc)), **_log_fields(record))
            self._forget(key, record)
            return
        except Exception as exc:  # StoreUnavailable, or anything else: never lose the timer
            self._retry_later(key, record, exc)
            return
        self._forget(key, record)
        self._fired[key] = record.due_at
        log.info("timer_fired", outcome=str(outcome), event_id=event.id, **_log_fields(record))
        self._wake()

    def _retry_later(self, key: str, record: TimerRecord, exc: Exception) -> None:
        fields = _log_fields(record)
        if self._armed.get(key) != record:
            # Re-armed or disarmed while this firing was under way: the newer state wins.
            log.warning("timer_ingest_failed", error=scrub(str(exc)), retry=False, **fields)
            return
        if self._stopping:
            # The store row remains: the next start fires it.
            log.warning("timer_ingest_failed", error=scrub(str(exc)), retry=False, **fields)
            return
        retry_at = datetime.now(UTC) + self._retry
        log.warning(
            "timer_ingest_failed",
            error=scrub(str(exc)),
            retry=True,
            retry_at=retry_at.isoformat(),
            **fields,
        )
        self._schedule(record, retry_at)

    def _forget(self, key: str, record: TimerRecord) -> None:
        """A firing is over: drop its record unless it was armed again meanwhile."""
        if self._armed.get(key) == record and self._scheduler.get_job(key) is None:
            del self._armed[key]
