"""The dispatcher (SPEC §8): takes due outbox rows and performs them through the senders.

Each round reads the due head of every lane (rows of one conversation leave in creation
order; conversational and transactional before marketing), keeps those whose destination has a
free rate slot and a closed breaker, leases them, and sends each in a task of its own. Every
attempt's outcome is recorded under the lease token, so a dispatcher that lost its lease
cannot record anything. A row that may be out without its outcome stored (a crash, no answer)
is looked for at the provider, from its first such attempt, before any resend (README, "After
a crash").

Woken when the worker commits rows; otherwise it sleeps until the next row falls due (a retry,
the end of quiet hours), the next rate slot frees, or the poll.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import msgspec

from channels.outbound import (
    FailureKind,
    NotCheckable,
    Outgoing,
    Sender,
    SendFailed,
    Sent,
)
from router import keys
from router.aio import cancel, wait_event
from router.clock import Clock
from router.config import Settings
from router.errors import StoreUnavailable
from router.events import EscalationThread
from router.ids import new_ulid
from router.logs import get_logger, mask_address
from router.metrics import Metrics
from router.pipeline import render
from router.pipeline.limits import Breakers, RateLimiter, retry_delay
from router.store.base import Store
from router.store.records import (
    HELD_FOR_REVIEW,
    AttemptOutcome,
    AttemptResult,
    BreakerNews,
    ClaimedRow,
    ContactRecord,
    DueRow,
    LedgerRecord,
    OutboxRow,
    SlotRequest,
)
from statemachines import consent
from statemachines.consent import ConsentState, Gate

log = get_logger("switchboard.dispatch")

#: How far ahead a round books rate slots: a row whose slot starts within this waits for it
#: in its own task, so one round sends several rows of one sender number, each at its slot.
_BOOK_AHEAD = timedelta(seconds=1)
#: Rows one dispatcher holds leased at most, per place of `dispatch.concurrency`: sending,
#: waiting for a rate slot or a place, or having the outcome recorded. Above one, a round leases
#: the next rows while the last ones are still being recorded, so rounds stay full.
_LEASED_PER_PLACE = 2
#: How often a dispatcher reads the breakers the others opened or closed.
_BREAKER_SYNC = timedelta(seconds=1)
#: Compliance notices: they leave even to an opted-out contact (consent.gate).
NOTICES = frozenset({"opt_out_confirmation", "opt_in_confirmation", "help"})
#: A marketing row claimed as its contact went into review (the hold at routing missed it,
#: it was being sent): looked at again this much later, until a person decides.
_REVIEW_RECHECK = timedelta(minutes=1)


class Dispatcher:
    """One dispatch loop over a store and a set of senders (one per channel)."""

    def __init__(
        self,
        store: Store,
        settings: Settings,
        senders: Mapping[str, Sender],
        clock: Clock,
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._metrics = metrics
        self._config = settings.dispatch
        self._senders = dict(senders)
        channels = settings.channels
        #: Per sender number (SMS, WhatsApp) and per Slack channel; none in sandbox mode,
        #: where nobody is called.
        self._rates = {
            name: rate
            for name, rate, mode in (
                ("sms", channels.sms.rate_per_second, channels.sms.mode),
                ("whatsapp", channels.sms.rate_per_second, channels.sms.mode),
                ("slack", channels.slack.rate_per_second, channels.slack.mode),
            )
            if mode == "live"
        }
        self._in_doubt_policy = {"email": settings.channels.email.in_doubt, "http": "resend"}
        self.limiter = RateLimiter(self._rate_of, clock)
        self.breakers = Breakers(
            clock,
            failure_threshold=self._config.breaker_failures,
            open_seconds=self._config.breaker_open_seconds,
            on_change=self._breaker_changed,
        )
        self._rng = rng or random.Random()
        #: Sends under way: started and not yet answered (at most `dispatch.concurrency`, which
        #: `_places` enforces). Rows waiting for a rate slot booked ahead are not sends yet:
        #: they are bounded by the rates (at most a second's worth per destination).
        self._sending = 0
        self._places = asyncio.Semaphore(self._config.concurrency)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        #: Row id -> its lease token and when the lease ends (renewed while it is held).
        self._held: dict[str, tuple[str, datetime]] = {}
        self._renewing: asyncio.Task[None] | None = None
        #: Destinations whose breaker opened or closed here since the last sync.
        self._breaker_news: set[str] = set()
        self._breakers_read = datetime.min.replace(tzinfo=UTC)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.owner = f"dispatch-{new_ulid(clock.now())}"
        self._recorder = _Recorder(store)
        self._consent = _ConsentReads(store)
        #: Attempts finished since start, by outcome (tests and bench read it).
        self.finished: dict[str, int] = {}

    def _rate_of(self, key: str) -> float:
        return self._rates.get(keys.channel_of_destination(key), float("inf"))

    # -- lifecycle -----------------------------------------------------------------------

    @property
    def in_flight(self) -> int:
        """Rows this dispatcher holds leased now (sending, or waiting for a slot or a place)."""
        return len(self._inflight)

    def wake(self) -> None:
        """Rows were committed: look for due ones now."""
        self._wake.set()

    async def start(self) -> None:
        for sender in {id(s): s for s in self._senders.values()}.values():
            await sender.start()
        self._task = asyncio.create_task(self._run(), name="dispatcher")
        self._renewing = asyncio.create_task(self._renew_forever(), name="dispatch-leases")

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._inflight:  # let sends under way record their outcome
            await asyncio.wait(list(self._inflight.values()), timeout=self._config.timeout_seconds)
        await cancel(self._renewing)
        self._renewing = None
        for sender in {id(s): s for s in self._senders.values()}.values():
            with contextlib.suppress(Exception):
                await sender.close()

    async def _run(self) -> None:
        while True:
            try:
                sleep = await self.run_once()
            except StoreUnavailable as exc:
                log.warning("dispatch paused", stage="dispatch", error=str(exc))
                sleep = self._config.poll_seconds
            except Exception as exc:  # a bug must not end dispatch
                log.error("dispatch round failed", stage="dispatch", error=repr(exc)[:500])
                sleep = self._config.poll_seconds
            if sleep <= 0:
                await asyncio.sleep(0)
                continue
            self._wake.clear()
            await wait_event(self._wake, sleep)

    # -- one round -----------------------------------------------------------------------

    async def run_once(self) -> float:
        """Start the sends of one round; the seconds until there may be more to do."""
        now = self._clock.now()
        free = _LEASED_PER_PLACE * self._config.concurrency - len(self._inflight)
        if free <= 0:
            return self._config.poll_seconds  # an attempt that ends wakes the loop
        limit = max(2 * free, 64)
        await self._sync_breakers(now)
        due = await self._store.due_rows(now, limit)
        chosen: list[DueRow] = []
        slots: list[SlotRequest | None] = []
        destinations: dict[str, tuple[str, timedelta]] = {}  # row id -> destination, slot held
        # A slot booked ahead is waited for under the row's lease: at most a third of it, so
        # the send starts well before the lease ends (see `_too_late`).
        horizon = now + min(_BOOK_AHEAD, timedelta(seconds=self._config.lease_seconds / 3))
        soonest: datetime | None = None
        for head in due:
            if len(chosen) >= free:
                break
            row = head.row
            if row.id in self._inflight:
                continue
            destination = self._destination(head)
            slot = None
            if destination is not None:
                key, units = destination
                free_at = self.limiter.next_free(key)  # as far as this process knows
                if free_at > horizon:
                    soonest = free_at if soonest is None else min(soonest, free_at)
                    continue
                if not self.breakers.allow(key):  # in half-open: this row is the one probe
                    continue
                hold = self.limiter.spacing(key) * units
                if hold > timedelta(0):  # the store books it: the spacing holds fleet-wide
                    slot = SlotRequest(key=key, hold_seconds=hold.total_seconds())
                destinations[row.id] = (key, hold)
            chosen.append(head)
            slots.append(slot)
        if chosen:
            claims = await self._store.claim_rows(
                chosen, self.owner, now, self._config.lease_seconds, slots, horizon
            )
            for key, free_at in claims.busy_until.items():  # booked by another dispatcher
                self.limiter.learn(key, free_at)
                soonest = free_at if soonest is None else min(soonest, free_at)
            taken = {claimed.row.id for claimed in claims.claimed}
            for row_id, (key, _) in destinations.items():
                if row_id not in taken:
                    self.breakers.release(key)  # not sent this round: no probe spent
            lease_end = now + timedelta(seconds=self._config.lease_seconds)
            for claimed in claims.claimed:
                self._held[claimed.row.id] = (claimed.token, lease_end)
                start = claimed.start or now
                if claimed.row.id in destinations:
                    key, hold = destinations[claimed.row.id]
                    self.limiter.learn(key, start + hold)
                self._inflight[claimed.row.id] = asyncio.create_task(self._attempt(claimed, start))
        if chosen and (len(chosen) == free or len(due) >= limit):
            return 0.0  # more may be ready now; when nothing was, sleep (no busy-wait)
        waits = [self._config.poll_seconds]
        if soonest is not None:
            waits.append((soonest - now).total_seconds())
        next_due = await self._store.next_due(now)
        if next_due is not None:
            waits.append((next_due - now).total_seconds())
        return max(0.0, min(waits))

    def _destination(self, head: DueRow) -> tuple[str, int] | None:
        """The row's rate and breaker key, and how many rate slots its send takes."""
        sender = self._senders.get(head.row.channel)
        if sender is None:
            return None
        try:
            message = _outgoing(head)
            key = keys.destination(head.row.channel, sender.destination(message))
            return key, sender.units(message)
        except Exception:  # a row the sender cannot read fails in its attempt, not here
            return None

    # -- one attempt ---------------------------------------------------------------------

    async def _attempt(self, claimed: ClaimedRow, start: datetime) -> None:
        row = claimed.row
        try:
            wait = (start - self._clock.now()).total_seconds()
            if wait > 0:  # a rate slot booked just ahead
                await asyncio.sleep(wait)
            async with self._places:
                self._sending += 1
                try:
                    started = time.perf_counter()
                    result = await self._perform(claimed)
                finally:
                    self._sending -= 1  # the provider has answered: the place is free again
            result = _with_duration(result, started)
            recorded = await self._recorder.record(result)
            self._observe(claimed, result, recorded)
        except StoreUnavailable as exc:  # the lease expires; the next attempt asks first
            log.error("attempt not recorded", stage="dispatch", outbox_id=row.id, error=str(exc))
        except Exception as exc:
            log.error("attempt failed", stage="dispatch", outbox_id=row.id, error=repr(exc)[:500])
        finally:
            self._inflight.pop(row.id, None)
            self._held.pop(row.id, None)
            self.wake()  # the lane's next row may go now

    async def _perform(self, claimed: ClaimedRow) -> AttemptResult:
        row = claimed.row
        now = self._clock.now()
        sender = self._senders.get(row.channel)
        if sender is None:
            return self._result(
                claimed, AttemptOutcome.DEAD, f"no sender for channel {row.channel!r}"
            )
        if row.contact_key and row.kind not in NOTICES:
            # An opt-out, or a review, committed a moment before the send wins.
            state = ConsentState(await self._consent.state(row.contact_key))
            decided = consent.gate(state, row.category)
            if decided is Gate.CANCEL:
                return self._result(claimed, AttemptOutcome.CANCELLED, "contact opted out")
            if decided is Gate.HOLD:  # asked again later, using no attempt, until decided
                return msgspec.structs.replace(
                    self._result(claimed, AttemptOutcome.RETRY, HELD_FOR_REVIEW),
                    next_attempt_at=now + _REVIEW_RECHECK,
                    throttled=True,
                )
        try:
            message = await self._prepared(claimed)
        except SendFailed as failed:
            return self._result(claimed, AttemptOutcome.DEAD, failed.reason, failed.code)
        key = keys.destination(row.channel, sender.destination(message))
        if claimed.in_doubt:
            checked = await self._check(claimed, sender, message, key)
            if checked is not None:
                return checked
        lease_end = self._held.get(row.id, (claimed.token, now))[1]
        if self._clock.now() >= lease_end - timedelta(seconds=self._config.lease_seconds / 3):
            return self._too_late(claimed)
        try:
            async with asyncio.timeout(self._config.timeout_seconds):
                sent = await sender.send(message)
        except SendFailed as failed:
            return await self._failed(claimed, key, failed, now)
        except TimeoutError:
            late = SendFailed(
                FailureKind.IN_DOUBT, "no answer in time: it may have been sent", unanswered=True
            )
            return await self._failed(claimed, key, late, now)
        self.breakers.success(key)
        return self._sent(claimed, sent)

    async def _prepared(self, claimed: ClaimedRow) -> Outgoing:
        """The row as its sender sees it; a thread post learns its escalation's thread, and an
        escalation update is the post itself, rewritten."""
        message = _outgoing(claimed)
        row = claimed.row
        if row.kind == "escalation_update":
            post = await self._store.escalation_post(row.conversation_key or "")
            if post is None or post.provider_message_id is None:
                raise SendFailed(FailureKind.PERMANENT, "the escalation post was never sent")
            rewritten = render.escalation_update_payload(
                post.payload,
                str(row.payload.get("state")),
                row.payload.get("agent"),
                row.conversation_key or "",
            )
            return msgspec.structs.replace(
                message, payload={**rewritten, "ts": post.provider_message_id}
            )
        if (
            row.channel == "slack"
            and row.kind in ("relay_to_thread", "reminder")
            and not (message.payload.get("thread_ts"))
        ):
            thread = await self._store.escalation_thread(row.conversation_key or "")
            if thread is not None:
                payload = {**message.payload, "thread_ts": thread}
                message = msgspec.structs.replace(message, payload=payload)
        return message

    async def _check(
        self, claimed: ClaimedRow, sender: Sender, message: Outgoing, key: str
    ) -> AttemptResult | None:
        """A row that may be out already: ask the provider before any resend. None: send.

        The look searches from the start of the first attempt that may have sent it (the row's
        doubt window), however many claims and looks came since: a look that found the message
        and then crashed before its outcome was stored must not leave the next one searching
        too late. A failed look leaves the window open (`may_have_sent`), so the next attempt
        looks again rather than sending."""
        since = claimed.doubt_since or claimed.row.created_at
        try:
            found = await sender.find(message, since - timedelta(seconds=5))
        except NotCheckable:
            policy = self._in_doubt_policy.get(claimed.row.channel, "resend")
            if policy == "dead":
                return self._result(
                    claimed,
                    AttemptOutcome.DEAD,
                    f"in doubt after a crash and {claimed.row.channel} cannot be checked: "
                    f"not resent (channels.{claimed.row.channel}.in_doubt = dead)",
                )
            log.warning(
                "in doubt, resending", stage="dispatch", outbox_id=claimed.row.id, policy=policy
            )
            return None
        except SendFailed as failed:  # the check itself failed: ask again later
            return await self._failed(claimed, key, failed, self._clock.now())
        if found is not None:  # only a send found says the destination works: a lookup can
            # answer while sending still fails, and must not close the breaker then
            self.breakers.success(key)
            log.info("in doubt, found sent", stage="dispatch", outbox_id=claimed.row.id)
            return self._sent(claimed, found)
        return None

    def _too_late(self, claimed: ClaimedRow) -> AttemptResult:
        """Not sent: the row's lease is (nearly) over after waiting for its rate slot, a place,
        the store. Once it ends another dispatcher may take the row, look for the message,
        find none and send it: sent now, the request could land after that look and go twice.
        The last third of a lease is for the request to land, not to start. Back to pending
        at once, using no attempt (fenced, harmlessly, if another dispatcher has it already)."""
        log.warning("lease running out, not sent", stage="dispatch", outbox_id=claimed.row.id)
        return msgspec.structs.replace(
            self._result(claimed, AttemptOutcome.RETRY, "lease ran out before the send"),
            next_attempt_at=self._clock.now(),
            throttled=True,
        )

    def _sent(self, claimed: ClaimedRow, sent: Sent) -> AttemptResult:
        return AttemptResult(
            id=claimed.row.id,
            token=claimed.token,
            outcome=AttemptOutcome.SENT,
            at=self._clock.now(),
            duration_ms=0.0,
            provider_message_id=sent.provider_message_id,
            provider_status=sent.status if sent.status != "sent" else None,
            thread=escalation_thread(claimed.row, sent.provider_message_id),
        )

    async def _failed(
        self, claimed: ClaimedRow, key: str, failure: SendFailed, now: datetime
    ) -> AttemptResult:
        row = claimed.row
        kind = failure.kind
        if kind is FailureKind.OPTED_OUT:
            self.breakers.success(key)
            contact = ContactRecord(
                address=row.contact_key or row.to, consent="opted_out", opted_out_at=now
            )
            ledger = LedgerRecord(
                at=now,
                event_id=row.event_id,
                channel=row.channel,
                change="opted_out",
                reason=failure.reason
                if not failure.code or failure.code in failure.reason
                else f"{failure.reason} ({failure.code})",
            )
            return msgspec.structs.replace(
                self._result(claimed, AttemptOutcome.CANCELLED, failure.reason, failure.code),
                opted_out=contact,
                ledger=ledger,
            )
        if kind is FailureKind.PERMANENT:
            self.breakers.success(key)  # the provider answered: the destination is up
            return self._result(claimed, AttemptOutcome.DEAD, failure.reason, failure.code)
        out = claimed.in_doubt or kind is FailureKind.IN_DOUBT  # may this row be out now?
        if failure.retry_after is not None and kind is FailureKind.TRANSIENT:
            # Throttled (429, Slack `ratelimited`): slow the destination down; the row is not
            # failing, so it uses no attempt and does not count against the breaker.
            until = self.limiter.penalize(key, failure.retry_after)
            with contextlib.suppress(StoreUnavailable):  # then only this process waits
                await self._store.delay_slot(key, until)  # every dispatcher waits
            return msgspec.structs.replace(
                self._result(claimed, AttemptOutcome.RETRY, failure.reason, failure.code),
                next_attempt_at=now + timedelta(seconds=failure.retry_after),
                throttled=True,
            )
        self.breakers.failure(key)
        tries = row.attempts + 1
        if tries >= self._config.max_attempts:
            dead = self._result(
                claimed,
                AttemptOutcome.DEAD,
                f"gave up after {tries} attempts: {failure.reason}",
                failure.code,
            )
            return msgspec.structs.replace(dead, may_have_sent=out)
        delay = retry_delay(
            row.attempts,
            failure.retry_after,
            self._rng,
            base=self._config.backoff_base_seconds,
            cap=self._config.backoff_cap_seconds,
        )
        if failure.unanswered:  # still on its way, maybe: a look at once could miss it
            delay = max(delay, self._config.timeout_seconds)
        outcome = AttemptOutcome.IN_DOUBT if kind is FailureKind.IN_DOUBT else AttemptOutcome.RETRY
        return msgspec.structs.replace(
            self._result(claimed, outcome, failure.reason, failure.code),
            next_attempt_at=now + timedelta(seconds=delay),
            may_have_sent=out,
        )

    def _result(
        self,
        claimed: ClaimedRow,
        outcome: AttemptOutcome,
        error: str | None = None,
        code: str | None = None,
    ) -> AttemptResult:
        return AttemptResult(
            id=claimed.row.id,
            token=claimed.token,
            outcome=outcome,
            at=self._clock.now(),
            duration_ms=0.0,
            error=error,
            error_code=code,
            # Not sent by this attempt, but an earlier one may have sent it: keep looking.
            may_have_sent=claimed.in_doubt,
        )

    # -- observation ---------------------------------------------------------------------

    def _observe(self, claimed: ClaimedRow, result: AttemptResult, recorded: bool) -> None:
        row = claimed.row
        outcome = result.outcome.value if recorded else "fenced"
        self.finished[outcome] = self.finished.get(outcome, 0) + 1
        self._metrics.send_attempts.labels(row.channel, outcome).inc()
        self._metrics.send_seconds.labels(row.channel).observe(result.duration_ms / 1000)
        if result.outcome is AttemptOutcome.DEAD and recorded:
            self._metrics.dead_letters.labels(row.channel).inc()
        log.info(
            "attempt",
            stage="dispatch",
            outbox_id=row.id,
            event_id=row.event_id,
            channel=row.channel,
            to=mask_address(row.to),
            outcome=outcome,
            attempt=row.attempts + 1,
            error=result.error,
            error_code=result.error_code,
            duration_ms=round(result.duration_ms, 3),
        )

    def _breaker_changed(self, key: str, old: str, new: str) -> None:
        log.warning(
            "circuit breaker", stage="dispatch", destination=mask_address(key), old=old, new=new
        )
        for state in ("closed", "open", "half_open"):
            self._metrics.breaker_state.labels(key, state).set(1 if state == new else 0)
        if new != "half_open":
            self._breaker_news.add(key)  # the other dispatchers hear of it at the next round
            self.wake()

    async def _renew_forever(self) -> None:
        """Every third of a lease, extend the leases of the rows this dispatcher holds: a row
        waiting for its slot or place, or a send slower than the lease, stays its own (another
        dispatcher would take an expired one as in doubt, and could send it too)."""
        every = self._config.lease_seconds / 3
        while True:
            await asyncio.sleep(every)
            if not self._held:
                continue
            until = self._clock.now() + timedelta(seconds=self._config.lease_seconds)
            held = [(row_id, token) for row_id, (token, _) in self._held.items()]
            try:
                renewed = await self._store.renew_rows(held, until)
            except StoreUnavailable as exc:  # the sends check their lease before they start
                log.warning("leases not renewed", stage="dispatch", error=str(exc))
                continue
            for row_id, token in held:
                if row_id in renewed and row_id in self._held:
                    self._held[row_id] = (token, until)

    async def _sync_breakers(self, now: datetime) -> None:
        """Tell the store of breakers that opened or closed here, and take what the other
        dispatchers told it: at most once a `_BREAKER_SYNC`, sooner when there is news."""
        if not self._breaker_news and now < self._breakers_read + _BREAKER_SYNC:
            return
        news = {}
        for key in self._breaker_news:
            told = self.breakers.news(key)
            if told is not None:
                news[key] = BreakerNews(state=told[0], changed_at=told[1])
        try:
            await self._store.save_breakers(news)
            self._breaker_news.clear()
            shared = await self._store.breakers()
        except StoreUnavailable as exc:
            log.warning("breakers not shared", stage="dispatch", error=str(exc))
            return
        self._breakers_read = now
        for key, item in shared.items():
            self.breakers.adopt(key, item.state, item.changed_at)


class _ConsentReads:
    """The consent checks of concurrent attempts, coalesced into few reads.

    Whoever asks while a read is under way waits for the next one, which begins after the
    read in hand ends: every answer comes from a read that began after its question, so an
    opt-out committed before the check is always seen, and a burst of sends costs a few
    reads instead of one each (each a hop to the store's reader, queued behind the rest).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        #: Contact key -> the attempts waiting for it, asked since the last read began.
        self._asked: dict[str, list[asyncio.Future[str]]] = {}
        self._reading: asyncio.Task[None] | None = None

    async def state(self, contact_key: str) -> str:
        """The contact's consent (`subscribed` when unknown), read after the question."""
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._asked.setdefault(contact_key, []).append(answer)
        if self._reading is None:
            self._reading = asyncio.create_task(self._read(), name="consent-reads")
        return await answer

    async def _read(self) -> None:
        try:
            while self._asked:
                asked, self._asked = self._asked, {}
                try:
                    found = await self._store.contacts(list(asked))
                except asyncio.CancelledError:
                    for answer in itertools.chain.from_iterable(asked.values()):
                        answer.cancel()
                    raise
                except Exception as exc:  # StoreUnavailable: each attempt handles it
                    for answer in itertools.chain.from_iterable(asked.values()):
                        if not answer.done():
                            answer.set_exception(exc)
                    continue
                for key, answers in asked.items():
                    contact = found.get(key)
                    state = contact.consent if contact is not None else "subscribed"
                    for answer in answers:
                        if not answer.done():
                            answer.set_result(state)
        finally:
            self._reading = None


class _Recorder:
    """Group commit of attempt outcomes: the sends that finish while a commit is under way
    are recorded together in the next one (one fsync for a burst, not one per message)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._waiting: list[tuple[AttemptResult, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None

    async def record(self, result: AttemptResult) -> bool:
        """True once recorded; False if the row's lease was lost (fenced)."""
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((result, done))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await done

    async def _flush(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # outcomes finishing in this same tick join the batch
            batch, self._waiting = self._waiting, []
            try:
                recorded = await self._store.finish_attempts([result for result, _ in batch])
            except Exception as exc:  # each sender hears it, as with its own commit
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (_, done), applied in zip(batch, recorded, strict=True):
                if not done.done():
                    done.set_result(applied)


def _outgoing(head: DueRow | ClaimedRow) -> Outgoing:
    row = head.row
    return Outgoing(
        id=row.id,
        channel=row.channel,
        to=row.to,
        category=row.category,
        kind=row.kind,
        payload=row.payload,
        conversation_key=row.conversation_key,
        attempts=row.attempts,
    )


def escalation_thread(row: OutboxRow, ts: str | None) -> EscalationThread | None:
    """The Slack thread a sent escalation post opened (its ts is the thread's root), which
    belongs to the post's conversation from now on; None for any other row."""
    if row.kind != "escalation" or row.conversation_key is None or not ts:
        return None
    return EscalationThread(channel=row.to, ts=ts, conversation_key=row.conversation_key)


def _with_duration(result: AttemptResult, started: float) -> AttemptResult:
    return msgspec.structs.replace(result, duration_ms=(time.perf_counter() - started) * 1000)
