"""The status object read from the store, at a cost that does not grow with the store."""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec

from router.config import ServerConfig, Settings
from router.ids import ulid_time
from router.status.alerts import alerts
from router.status.model import (
    BreakerView,
    EscalationsStatus,
    EventsStatus,
    OutboxStatus,
    ServerCheck,
    Status,
    StorageStatus,
)
from router.status.sections import backup_reading, reconcile_reading
from router.store.base import Store
from router.store.records import BreakerNews, StatusCounts
from router.store.records import OutboxStatus as RowStatus
from router.views import decode_conversation


def server_url(server: ServerConfig) -> str:
    """Where this config's server listens, as a client on this box reaches it (a wildcard
    host is asked on loopback)."""
    wildcard = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}  # noqa: S104  (asked, not bound)
    host = wildcard.get(server.host, server.host)
    return f"http://[{host}]:{server.port}" if ":" in host else f"http://{host}:{server.port}"


async def read_status(
    store: Store, settings: Settings, server: ServerCheck, now: datetime
) -> Status:
    """Every section from the store and `sections`, then the alerts they call for."""
    counts = await store.status_counts(now)
    live = await store.outbox_counts(live_only=True)
    by_status = dict.fromkeys(RowStatus, 0)
    for (row_status, _channel), n in live.items():
        by_status[RowStatus(row_status)] += n
    use = await store.storage_use()
    reconcile = await reconcile_reading(store)
    backup = await backup_reading(settings, now)
    status = Status(
        server=server.status,
        events=EventsStatus(
            waiting=counts.events_waiting,
            oldest_waiting_seconds=_age(now, _oldest_waiting(counts)),
            failed=counts.events_failed,
        ),
        outbox=OutboxStatus(
            due=counts.outbox_due,
            oldest_due_seconds=_age(now, counts.oldest_due),
            deferred=by_status[RowStatus.DEFERRED],
            sending=by_status[RowStatus.SENDING],
            dead=by_status[RowStatus.DEAD],
        ),
        escalations=EscalationsStatus(
            open=counts.escalated + counts.agent,
            unclaimed=counts.escalated,
            oldest_unclaimed_seconds=_age(now, await _oldest_unclaimed(store, counts.escalated)),
        ),
        breakers=_breakers(await store.breakers(), settings, now),
        reconcile=reconcile.sources,
        backup=backup.status,
        storage=StorageStatus(
            bytes=use.database_bytes,
            blobs_bytes=use.blobs_bytes,
            disk_free_bytes=use.disk_free_bytes,
        ),
        alerts=[],
    )
    found = alerts(status, settings, server.problem, use.disk_total_bytes)
    return msgspec.structs.replace(status, alerts=[*found, *reconcile.alerts, *backup.alerts])


def _age(now: datetime, since: datetime | None) -> float | None:
    """Seconds from `since` to `now`, to the millisecond; None when there is nothing."""
    return None if since is None else round(max(0.0, (now - since).total_seconds()), 3)


def _oldest_waiting(counts: StatusCounts) -> datetime | None:
    """An event's id is a ULID of its `received_at`: the oldest waiting one's time, unread."""
    return ulid_time(counts.oldest_waiting_id) if counts.oldest_waiting_id else None


async def _oldest_unclaimed(store: Store, unclaimed: int) -> datetime | None:
    """When the longest-waiting unclaimed escalation was opened (kept in the conversation's
    value). Reads as many conversations as are unclaimed, through `conversations_by_state`:
    support's queue, which stays short while anyone is answering it."""
    if not unclaimed:
        return None
    queue = await store.list_conversations("escalated", limit=unclaimed)
    opened = [
        value.escalation.at
        for value in map(decode_conversation, queue)
        if value is not None and value.escalation is not None
    ]
    return min(opened, default=None)


def _breakers(
    news: dict[str, BreakerNews], settings: Settings, now: datetime
) -> dict[str, BreakerView]:
    """Each destination's breaker as the dispatchers last told it; an open one whose
    `dispatch.breaker_open_seconds` have passed lets the next send probe (`half_open`)."""
    wait = timedelta(seconds=settings.dispatch.breaker_open_seconds)
    views: dict[str, BreakerView] = {}
    for key, item in sorted(news.items()):
        if item.state == "closed":
            views[key] = "closed"
        else:
            views[key] = "open" if now < item.changed_at + wait else "half_open"
    return views
