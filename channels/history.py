"""What a reconciliation pass asks of a provider (SPEC §12): the seam between the core's
`router/pipeline/reconcile.py` and the provider modules that hold each API's quirks.

A history turns what the provider's API lists into the events its webhooks would have
brought, through the same parse as the webhook (so a webhook arriving later is a duplicate
of the same dedupe key, and nothing is normalised twice), marked `via = reconcile`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar, runtime_checkable

import msgspec

from channels.base import InboundAdapter, InboundRequest, PayloadError
from channels.outbound import SendFailed
from router.events import EscalationThread, Event, Via
from router.ids import new_ulid


class HistoryError(Exception):
    """The provider could not be asked (an error answer, too many 429s, no connection): the
    pass of that source failed and the next one tries again from the same point."""


class Recovered(msgspec.Struct, frozen=True, kw_only=True):
    """One item a pass fetched, as its webhook would have brought it."""

    event: Event
    #: The webhook body rebuilt from the API's resource (kept, as a webhook's raw body is).
    raw_body: bytes
    content_type: str


T = TypeVar("T")


async def waiting_out_throttles(
    read: Callable[[], Awaitable[T]],
    *,
    throttled: Collection[str],
    max_wait: float,
    retries: int,
    provider: str,
) -> T:
    """`read()`, asked again after each throttled answer (a SendFailed whose code is in
    `throttled`) as its Retry-After asks, `retries` times at most: the pass slows down
    instead of failing. Any other SendFailed, or a wait over `max_wait` seconds, is raised;
    HistoryError when the provider keeps asking to slow down."""
    for _ in range(retries + 1):
        try:
            return await read()
        except SendFailed as exc:
            wait = exc.retry_after
            if exc.code not in throttled or wait is None or wait > max_wait:
                raise
            await asyncio.sleep(wait)
    raise HistoryError(f"{provider} kept asking to slow down ({retries + 1} answers 429)")


def reparse(
    adapter: InboundAdapter, body: bytes, content_type: str, url: str, refused: str
) -> Recovered:
    """The one event the webhook's own `adapter` makes of a webhook body rebuilt from the
    provider's API (posted to `url`), marked `via = reconcile`. HistoryError, starting with
    `refused`, when the parse refuses it or makes other than one event."""
    now = datetime.now(UTC)
    request = InboundRequest(
        body=body,
        headers={},
        url=url,
        content_type=content_type,
        received_at=now,
        correlation_id=new_ulid(now),
    )
    try:
        (event,) = adapter.parse(request).events
    except (PayloadError, ValueError) as exc:
        raise HistoryError(f"{refused}: {exc}") from exc
    reconciled = msgspec.structs.replace(event, via=Via.RECONCILE)
    return Recovered(event=reconciled, raw_body=body, content_type=content_type)


class History(Protocol):
    """A provider's record of what it sent us, read back by a reconciliation pass."""

    #: The event `source` of what it recovers (`twilio`, `stripe`, `slack`).
    source: str

    async def fetch(self, since: datetime, until: datetime) -> list[Recovered]:
        """Everything the provider says it delivered (or should have) between `since` and
        `until`, oldest first; HistoryError when it cannot be asked."""
        ...

    async def close(self) -> None:
        """Release the client's connections."""
        ...


@runtime_checkable
class ReceiptHistory(History, Protocol):
    """A history that can also read back the delivery status of messages we sent (Twilio):
    what a status callback that never came would have said."""

    #: The outbox channels whose rows it can look up by provider id.
    receipt_channels: tuple[str, ...]

    async def receipts(self, provider_ids: list[str]) -> list[Recovered]:
        """The status callback each of these messages would have brought, for those whose
        status is final at the provider (others, and ids it does not know, are left out);
        HistoryError when it cannot be asked."""
        ...


@runtime_checkable
class ThreadHistory(Protocol):
    """A provider read back thread by thread (Slack): the API lists no account-wide history,
    so the core tells it which threads are open (the store knows) on each pass."""

    #: The event `source` of what it recovers (`slack`).
    source: str

    async def fetch_threads(
        self, threads: Sequence[EscalationThread], since: datetime, until: datetime
    ) -> list[Recovered]:
        """The replies in `threads` posted between `since` and `until`, as their webhooks
        would have brought them, oldest first; HistoryError when it cannot be asked."""
        ...

    async def close(self) -> None:
        """Release the client's connections."""
        ...


#: What a reconciliation pass can ask: an account-wide history or a thread-by-thread one.
AnyHistory = History | ThreadHistory
