"""Stripe's side of reconciliation (SPEC §12): the Events its webhooks never brought.

Stripe retries a failed webhook for three days, but a pass catches up at once. `fetch` lists
the account's Events created since the window's start through the official `stripe` library
(`StripeClient.v1.events.list_async`, newest first, `starting_after` the last id while
`has_more`), and parses each event's JSON with the webhook's own `StripeAdapter`: the same
event, the same dedupe key (`stripe:` + event id). The client does not retry: an error
answer (a 500, a 429) fails the pass, and the next pass asks the whole window again.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import stripe

from channels.history import HistoryError, Recovered, reparse
from channels.stripe import StripeAdapter
from router.clock import SystemClock

JSON = "application/json"
#: Stripe's largest page.
PAGE = 100


class StripeHistory:
    """Events of the account, read back with its secret API key."""

    source = "stripe"

    def __init__(
        self,
        api_key: str,
        *,
        api_base: str | None = None,
        webhook_url: str = "",
        timeout_seconds: float = 10.0,
        page_size: int = PAGE,
    ) -> None:
        """`api_base`: another base URL for the API (tests: a loopback fake)."""
        self._http = stripe.HTTPXClient(timeout=timeout_seconds)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": api_base} if api_base else {},
            http_client=self._http,
            max_network_retries=0,
        )
        self._url = webhook_url
        self._page_size = page_size
        self._adapter = StripeAdapter((), 300, SystemClock())

    async def fetch(self, since: datetime, until: datetime) -> list[Recovered]:
        params: dict[str, Any] = {"created": {"gte": int(since.timestamp())}}
        found: list[Recovered] = []
        while True:
            page = await self._page({**params, "limit": self._page_size})
            found += [self._recovered(e) for e in page.data if _within(e, since, until)]
            if not page.has_more or not page.data:
                break
            params["starting_after"] = page.data[-1].id
        found.sort(key=lambda r: (r.event.occurred_at or until, r.event.dedupe_key))
        return found

    async def close(self) -> None:
        await self._http.close_async()  # type: ignore[no-untyped-call]

    async def _page(self, params: dict[str, Any]) -> Any:
        try:
            return await self._client.v1.events.list_async(params)  # type: ignore[arg-type]
        except stripe.StripeError as exc:
            status = f"HTTP {exc.http_status}: " if exc.http_status else ""
            raise HistoryError(f"Stripe Events list: {status}{exc.user_message or exc}") from exc

    def _recovered(self, event: Any) -> Recovered:
        body = json.dumps(event.to_dict()).encode()
        refused = "Stripe listed an event the webhook parse refuses"
        return reparse(self._adapter, body, JSON, self._url, refused)


def _within(event: Any, since: datetime, until: datetime) -> bool:
    created: int = event.created
    return since.timestamp() <= created < until.timestamp()
