"""The HTTP app (SPEC §4, §10): thin handlers over the ingest path and the store."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, TypeVar
from urllib.parse import urlencode

import msgspec
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.params import FromPath

from channels.base import InboundAdapter
from router.aio import cancel
from router.clock import Clock, SystemClock
from router.config import Settings
from router.console import console_router, templates
from router.errors import StoreUnavailable
from router.events import EventStatus, encode_event
from router.http.providers import (
    accept_types,
    body_limits,
    inbound_adapters,
    reconciler,
    senders,
)
from router.http.webhooks import BodyBudget, webhooks
from router.logs import flush_logs, flush_logs_forever, get_logger, mask_address, scrub
from router.metrics import Metrics
from router.pipeline.ingest import Ingestor
from router.pipeline.reconcile import reconcile_forever
from router.pipeline.replay import replay, select
from router.pipeline.worker import Routing, routing
from router.rules.live import LiveRules
from router.status.model import ServerCheck, ServerStatus
from router.status.read import read_status, server_url
from router.store.backup_schedule import backups_forever
from router.store.base import EventFilter, Store
from router.store.factory import store_from_settings
from router.store.housekeeping import upkeep_forever
from router.store.records import LIVE, OutboxFilter, OutboxRow, OutboxStatus
from router.timeutil import parse_since
from router.views import (
    conversation_to_builtins,
    dead_letters,
    event_detail,
    outbox_filter,
    outbox_row,
    outbox_to_builtins,
)

log = get_logger("switchboard.admin")


class AppContext:
    """Everything handlers need, built once per app and kept on `app.state.ctx`."""

    def __init__(self, settings: Settings, store: Store, clock: Clock, metrics: Metrics) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.metrics = metrics
        #: The live rules (version and last error on /readyz); the routing worker reads
        #: `rules.ruleset` for every event.
        self.rules = LiveRules.from_settings(settings, metrics)
        self.public_url = settings.server.public_url.rstrip("/")
        self.adapters: dict[str, InboundAdapter] = inbound_adapters(settings, clock)
        #: Largest body each route reads, by the path after /webhooks/.
        self.body_limits = body_limits(settings)
        self.body_budget = BodyBudget(settings.server.max_body_memory_bytes)
        #: The worker, its timers and the dispatcher, when they run in this process
        #: (`worker.in_serve`).
        self.routing: Routing | None = None
        if settings.worker.in_serve:
            self.routing = routing(
                store, settings, lambda: self.rules.ruleset, clock, metrics, senders(settings)
            )
        self.worker = self.routing.worker if self.routing is not None else None
        self.ingestor = Ingestor(
            store,
            store.blobs,
            metrics,
            accept_types=accept_types(settings),
            blob_threshold_bytes=settings.storage.blob_threshold_bytes,
            on_stored=self.worker.wake if self.worker is not None else None,
        )
        self.outbox_counts = OutboxCounts(store, clock)
        #: Reconciliation passes (SPEC §12), off the request path: at start, then every
        #: `reconcile.interval`.
        self.reconciler = reconciler(
            store, settings, clock, metrics, self.routing.wake if self.routing else None
        )


def _ctx(state: State) -> AppContext:
    ctx: AppContext = state.ctx
    return ctx


def _respond(status: int, media_type: str, body: bytes) -> Response[bytes]:
    return Response(content=body, status_code=status, media_type=media_type)


def _json(status: int, payload: Any) -> Response[bytes]:
    return _respond(status, "application/json", msgspec.json.encode(payload))


@get("/healthz", include_in_schema=False)
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@get("/readyz", include_in_schema=False)
async def readyz(state: State) -> Response[bytes]:
    """Readiness: the store answers; also tells the live rules version and any rules error."""
    ctx = _ctx(state)
    try:
        await ctx.store.ping()
    except StoreUnavailable as exc:
        return _json(
            503,
            {
                "status": "unavailable",
                "error": str(exc),
                "rules_version": ctx.rules.version,
                "rules_error": ctx.rules.error,
            },
        )
    return _json(
        200, {"status": "ok", "rules_version": ctx.rules.version, "rules_error": ctx.rules.error}
    )


def _authorised(request: Request[Any, Any, Any], ctx: AppContext) -> Response[bytes] | None:
    """None if the bearer token is right, else the 401/403 to answer."""
    token = ctx.settings.server.admin_token
    if not token:
        return _json(403, {"error": "admin API disabled: set server.admin_token"})
    given = request.headers.get("authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(value.encode(), token.encode()):
        return _json(401, {"error": "bearer token required"})
    return None


@get("/metrics", include_in_schema=False)
async def metrics(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Prometheus text format (admin token); the outbox gauges are read from the store."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    with contextlib.suppress(StoreUnavailable):  # the other figures are still worth a scrape
        await _outbox_gauges(ctx)
        await _reconcile_gauges(ctx)
    return _respond(200, "text/plain; version=0.0.4", ctx.metrics.render())


class OutboxCounts:
    """Outbox rows by (status, channel) for /metrics, at a cost that does not grow with the
    table: the rows still moving (and the dead letters) are counted at every scrape, through
    the status index; the settled ones, which only ever pile up, by a scan of the whole table
    at most once a minute, and never for more than 1% of the time (a slower scan waits
    longer before the next)."""

    #: The least time between two counts of the settled rows.
    SETTLED_EVERY = timedelta(seconds=60)

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._settled: dict[tuple[str, str], int] = {}
        self._settled_next = datetime.min.replace(tzinfo=UTC)

    async def read(self) -> dict[tuple[str, str], int]:
        now = self._clock.now()
        if now >= self._settled_next:
            started = time.perf_counter()
            every = await self._store.outbox_counts()
            cost = timedelta(seconds=100 * (time.perf_counter() - started))
            self._settled = {key: n for key, n in every.items() if key[0] not in LIVE}
            self._settled_next = now + max(self.SETTLED_EVERY, cost)
        live = await self._store.outbox_counts(live_only=True)
        return {**self._settled, **live}


async def _reconcile_gauges(ctx: AppContext) -> None:
    for source, record in (await ctx.store.reconcile_state()).items():
        if record.last_success is not None:
            gauge = ctx.metrics.reconcile_last_success.labels(source)
            gauge.set(record.last_success.timestamp())


async def _outbox_gauges(ctx: AppContext) -> None:
    now = ctx.clock.now()
    counts = await ctx.outbox_counts.read()
    ctx.metrics.outbox.clear()
    for (status, channel), count in counts.items():
        ctx.metrics.outbox.labels(status, channel).set(count)
    oldest = await ctx.store.oldest_due(now)
    ctx.metrics.queue_age.set((now - oldest).total_seconds() if oldest is not None else 0)


@get("/api/status", include_in_schema=False)
async def api_status(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """The object of `switchboard status --json` (SPEC §12), this server telling its own
    readiness."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    try:
        await ctx.store.ping()
        check = ServerCheck(
            status=ServerStatus(
                url=server_url(ctx.settings.server),
                ready=True,
                rules_version=ctx.rules.version,
                rules_error=ctx.rules.error,
            )
        )
        status = await read_status(ctx.store, ctx.settings, check, ctx.clock.now())
    except StoreUnavailable as exc:
        return _json(503, {"error": f"store unavailable: {exc}"})
    return _json(200, status)


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The body of POST /api/replay (the CLI's filters; rules are always the live ones)."""

    source: str | None = None
    type: str | None = None
    since: str | None = None
    until: str | None = None
    dry_run: bool = False


@post("/api/replay", include_in_schema=False, status_code=200)
async def api_replay(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Replay recorded events through the live rules (SPEC §9 `replay`); answers the report."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    try:
        asked = msgspec.json.decode(await request.body() or b"{}", type=ReplayRequest)
        now = ctx.clock.now()
        where = EventFilter(
            source=asked.source,
            type=asked.type,
            since=parse_since(asked.since, now) if asked.since else None,
            until=parse_since(asked.until, now) if asked.until else None,
        )
    except (msgspec.DecodeError, ValueError) as exc:
        return _json(400, {"error": f"bad replay request: {exc}"})
    ruleset = ctx.rules.ruleset
    if ruleset is None:
        return _json(503, {"error": "no rules loaded"})
    try:
        events = await select(ctx.store, where)
        report = await replay(
            ctx.store, ctx.settings, ruleset, events, ctx.clock.now, dry_run=asked.dry_run
        )
    except StoreUnavailable:
        return _json(503, {"error": "store unavailable"})
    if ctx.routing is not None and not asked.dry_run:
        ctx.routing.dispatcher.wake()
    return _json(200, report)


#: Most items one page of /api/events or /api/outbox holds, and most bytes: a page stops at
#: whichever comes first, and the `Link: <...>; rel="next"` header gives the rest.
MAX_PAGE_ITEMS = 200
MAX_PAGE_BYTES = 1024 * 1024
_ULID = "[0-9A-HJKMNP-TV-Z]{26}"
Filter = TypeVar("Filter")
Item = TypeVar("Item")


@dataclass(frozen=True)
class Listing(Generic[Filter, Item]):
    """A paged admin listing: its query read into a store filter, the store's read, and how one
    item is shown. Every listing pages, caps and refuses alike (`_listed`)."""

    path: str
    #: What a `cursor` must look like (the id of the last item of the previous page).
    cursor: re.Pattern[str]
    cursor_is: str
    #: The store filter of a query, for `limit` items older than `cursor`; ValueError names
    #: what is wrong.
    where: Callable[[Mapping[str, str], int, str | None, datetime], Filter]
    read: Callable[[Store, Filter], Awaitable[list[Item]]]
    encode: Callable[[Item], bytes]
    ident: Callable[[Item], str]


async def _listed(
    request: Request[Any, Any, Any], state: State, listing: Listing[Filter, Item]
) -> Response[bytes]:
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    params = request.query_params
    try:
        limit = _query_int(params, "limit", default=100, low=1, high=MAX_PAGE_ITEMS)
        cursor = params.get("cursor")
        if cursor is not None and not listing.cursor.fullmatch(cursor):
            raise ValueError(f"cursor must be {listing.cursor_is}, as given by the Link header")
        where = listing.where(params, limit + 1, cursor, ctx.clock.now())
    except ValueError as exc:
        return _json(400, {"error": f"bad query: {exc}"})
    try:
        items = await listing.read(ctx.store, where)
    except StoreUnavailable:
        return _json(503, {"error": "store unavailable"})
    encoded, more = _page(items, limit, listing.encode)
    response = _respond(200, "application/json", b"[" + b",".join(encoded) + b"]")
    if more:
        query = {**params.dict(), "cursor": [listing.ident(items[len(encoded) - 1])]}
        link = urlencode([(name, value) for name, values in query.items() for value in values])
        response.headers["link"] = f'<{listing.path}?{link}>; rel="next"'
    return response


def _page(
    items: list[Item], limit: int, encode: Callable[[Item], bytes]
) -> tuple[list[bytes], bool]:
    """The encoded items of one page (at least one, at most `limit` or MAX_PAGE_BYTES), and
    whether more are left."""
    encoded: list[bytes] = []
    size = 0
    for item in items[:limit]:
        body = encode(item)
        size += len(body) + 1
        if encoded and size > MAX_PAGE_BYTES:
            return encoded, True
        encoded.append(body)
    return encoded, len(items) > limit


def _event_filter(
    params: Mapping[str, str], limit: int, cursor: str | None, now: datetime
) -> EventFilter:
    """The /api/events query as a filter; ValueError names what is wrong."""
    return EventFilter(
        source=params.get("source"),
        type=params.get("type"),
        status=EventStatus(params["status"]) if params.get("status") else None,
        since=parse_since(params["since"], now) if params.get("since") else None,
        before=cursor,
        limit=limit,
    )


def _outbox_filter(
    params: Mapping[str, str], limit: int, cursor: str | None, now: datetime
) -> OutboxFilter:
    del now  # no time filters here
    return outbox_filter(params, limit=limit, before=cursor)


_encode_json = msgspec.json.Encoder().encode


EVENTS = Listing(
    path="/api/events",
    cursor=re.compile(_ULID),
    cursor_is="an event id",
    where=_event_filter,
    read=lambda store, where: store.list_events(where),
    encode=encode_event,
    ident=lambda event: event.id,
)
OUTBOX = Listing(
    path="/api/outbox",
    #: An outbox id: the event's id, `:`, then a rule id and action index or an effect's name.
    cursor=re.compile(_ULID + r":[A-Za-z0-9_.:-]{1,300}"),
    cursor_is="an outbox row id",
    where=_outbox_filter,
    read=lambda store, where: store.list_outbox(where),
    encode=lambda row: _encode_json(outbox_to_builtins(row)),
    ident=lambda row: row.id,
)


@get("/api/events", include_in_schema=False)
async def api_events(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Events, newest first; filters `source`, `type`, `status`, `since`, `limit`; pages by
    `cursor` (from the `Link` header of the previous page)."""
    return await _listed(request, state, EVENTS)


def _query_int(params: Mapping[str, str], name: str, *, default: int, low: int, high: int) -> int:
    """A query integer in plain ASCII digits (`int()` also takes full-width digits and `1_000`)."""
    text = params.get(name)
    if not text:
        return default
    if not (text.isascii() and text.isdigit() and len(text) <= 9 and low <= int(text) <= high):
        raise ValueError(f"{name} must be a whole number from {low} to {high}")
    return int(text)


@get("/api/events/{event_id:str}", include_in_schema=False)
async def api_event(
    request: Request[Any, Any, Any], event_id: FromPath[str], state: State
) -> Response[bytes]:
    """One event with its routing runs and outbox rows."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    try:
        event = await ctx.store.get_event(event_id)
        if event is None:
            return _json(404, {"error": f"no event {event_id}"})
        detail = await event_detail(ctx.store, event)
    except StoreUnavailable:
        return _json(503, {"error": "store unavailable"})
    return _json(200, detail)


@get("/api/outbox", include_in_schema=False)
async def api_outbox(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Outbox rows, newest first; filters `status`, `channel`, `to` (as stored: E.164 for
    phones), `limit`; pages by `cursor` (from the `Link` header of the previous page), with the
    caps and refusals of /api/events."""
    return await _listed(request, state, OUTBOX)


def _dead_filter(
    params: Mapping[str, str], limit: int, cursor: str | None, now: datetime
) -> OutboxFilter:
    """The /api/dlq query: the /api/outbox filters, `status` always `dead`."""
    if params.get("status") not in (None, "", "dead"):
        raise ValueError("status is always dead here (/api/outbox lists the others)")
    return _outbox_filter(params, limit, cursor, now)


DLQ = Listing(
    path="/api/dlq",
    cursor=OUTBOX.cursor,
    cursor_is=OUTBOX.cursor_is,
    where=_dead_filter,
    read=dead_letters,
    encode=_encode_json,
    ident=lambda row: str(row["id"]),
)


@get("/api/dlq", include_in_schema=False)
async def api_dlq(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """Dead rows, newest first, each with `attempts_made` (as `switchboard dlq list --json`);
    filters `channel`, `to`, `limit`; pages by `cursor` as /api/outbox does."""
    return await _listed(request, state, DLQ)


class DiscardRequest(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The optional body of POST /api/dlq/{id}/discard."""

    reason: str = "discarded by an operator (admin API)"


async def _on_dead_row(
    ctx: AppContext, outbox_id: str, change: Callable[[OutboxRow], Awaitable[bool]]
) -> Response[bytes]:
    """Apply `change` to a dead row (False: it was no longer dead): 200 with the row as it is
    now, 404 for an unknown id, 409 naming the status of a row that is not dead."""
    try:
        known = OUTBOX.cursor.fullmatch(outbox_id)
        row = await outbox_row(ctx.store, outbox_id) if known else None
        if row is not None and row.status is OutboxStatus.DEAD:
            changed = await change(row)  # False: someone else changed it meanwhile
            row = await outbox_row(ctx.store, outbox_id)
            if changed and row is not None:
                return _json(200, outbox_to_builtins(row))
    except StoreUnavailable:
        return _json(503, {"error": "store unavailable"})
    if row is None:
        return _json(404, {"error": f"no outbox row {outbox_id}"})
    return _json(409, {"error": f"{outbox_id} is {row.status.value}, not dead"})


@post("/api/dlq/{outbox_id:str}/retry", include_in_schema=False, status_code=200)
async def api_dlq_retry(
    request: Request[Any, Any, Any], outbox_id: FromPath[str], state: State
) -> Response[bytes]:
    """`switchboard dlq retry`: the dead row is pending again, attempts from zero (its attempt
    history is kept), and this process's dispatcher looks at once."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied

    async def retry(row: OutboxRow) -> bool:
        if not await ctx.store.requeue_dead(row.id):
            return False
        if ctx.routing is not None:  # the store's watch tells the other processes only
            ctx.routing.dispatcher.wake()
        log.info("dlq retry", stage="admin", outbox_id=row.id, to=mask_address(row.to))
        return True

    return await _on_dead_row(ctx, outbox_id, retry)


@post("/api/dlq/{outbox_id:str}/discard", include_in_schema=False, status_code=200)
async def api_dlq_discard(
    request: Request[Any, Any, Any], outbox_id: FromPath[str], state: State
) -> Response[bytes]:
    """`switchboard dlq discard`: the dead row is cancelled for good, with the reason (optional
    body `{"reason": "..."}`) as its `last_error`."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    try:
        reason = msgspec.json.decode(await request.body() or b"{}", type=DiscardRequest).reason
    except msgspec.DecodeError as exc:
        return _json(400, {"error": f"bad discard request: {exc}"})
    if not reason.strip() or len(reason) > 1000 or not reason.isprintable():
        return _json(
            400, {"error": "bad discard request: reason must be 1 to 1000 printable characters"}
        )

    async def discard(row: OutboxRow) -> bool:
        if not await ctx.store.discard_dead(row.id, reason):
            return False
        log.info(
            "dlq discard",
            stage="admin",
            outbox_id=row.id,
            to=mask_address(row.to),
            reason=scrub(reason),
        )
        return True

    return await _on_dead_row(ctx, outbox_id, discard)


@get("/api/conversations/{key:str}", include_in_schema=False)
async def api_conversation(
    request: Request[Any, Any, Any], key: FromPath[str], state: State
) -> Response[bytes]:
    """One conversation by key (`sms:+15551230001:+15559870000`; `+` may be sent as `%2B`):
    state, history, tags, attributes, escalation."""
    ctx = _ctx(state)
    denied = _authorised(request, ctx)
    if denied:
        return denied
    try:
        record = await ctx.store.get_conversation(key)
    except StoreUnavailable:
        return _json(503, {"error": "store unavailable"})
    if record is None:
        return _json(404, {"error": f"no conversation {key}"})
    return _json(200, conversation_to_builtins(record))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    """The framework's own refusals (413, 405, unknown path) in the same `{"error"}` shape."""
    response = _json(exc.status_code, {"error": exc.detail})
    response.headers.update(exc.headers or {})
    return response


def create_app(
    settings: Settings, *, store: Store | None = None, clock: Clock | None = None
) -> Litestar:
    """The ASGI app; opens the store on start-up and closes it on shutdown."""
    the_store = store or store_from_settings(settings)
    ctx = AppContext(settings, the_store, clock or SystemClock(), Metrics())

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await the_store.open()
        try:
            await ctx.rules.start()  # RulesUnavailable: no valid rules, the app must not start
        except BaseException:
            await the_store.close()  # its thread would otherwise keep the process alive
            raise
        upkeep = asyncio.create_task(
            upkeep_forever(the_store, ctx.clock, settings, ctx.metrics.count_pruned)
        )
        backups = asyncio.create_task(backups_forever(settings, ctx.clock))
        if ctx.routing is not None:
            await ctx.routing.start()
        flusher = asyncio.create_task(flush_logs_forever())
        passes = asyncio.create_task(reconcile_forever(ctx.reconciler, settings.reconcile))
        try:
            yield
        finally:
            await cancel(upkeep)  # stopped before the store they use closes
            await cancel(backups)
            await cancel(flusher)
            await cancel(passes)
            await ctx.reconciler.close()
            if ctx.routing is not None:
                await ctx.routing.stop()
            flush_logs()
            ctx.ingestor.close()
            await ctx.rules.stop()
            await the_store.close()

    console = console_router(settings, the_store, ctx.clock)  # None: off, or no token
    return Litestar(
        route_handlers=[
            *([console] if console is not None else []),
            webhooks,
            healthz,
            readyz,
            metrics,
            api_events,
            api_event,
            api_outbox,
            api_dlq,
            api_dlq_retry,
            api_dlq_discard,
            api_conversation,
            api_replay,
            api_status,
        ],
        template_config=templates(),
        state=State({"ctx": ctx}),
        lifespan=[lifespan],
        request_max_body_size=settings.server.max_body_bytes,
        exception_handlers={HTTPException: _http_error},
        openapi_config=None,
        debug=False,
    )
