"""Slack's side of reconciliation (SPEC §12): agent replies the Events API never brought.

Slack retries an Events API delivery three times within about five minutes, so an agent's
reply in an escalation thread posted while Switchboard was down longer is only at Slack.
`SlackHistory.fetch_threads` reads each open escalation thread (the core passes them: it
reads them from the store) with `conversations.replies`, page by page from the window's
start, keeps a person's replies (not the parent, not bot posts, ours included), rebuilds the
`event_callback` the Events API would have posted for each and parses it with the webhook's
own `SlackEventsAdapter`: the same `agent.reply`, the same dedupe key (`slack:CHANNEL:TS`).

A 429 is waited out as its Retry-After asks (up to `max_wait` seconds, a few times), then
the page is asked again; anything else fails the pass. A thread whose parent is gone
(`thread_not_found`) has nothing to read back and is passed over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec

from channels.history import HistoryError, Recovered, reparse, waiting_out_throttles
from channels.outbound import SendFailed
from channels.slack import SlackEventsAdapter
from channels.slack_send import SlackSender
from router.clock import SystemClock
from router.events import EscalationThread, EventType

JSON = "application/json"
#: Message subtypes that are still a person writing (as the Events API parse counts them).
_PERSON_SUBTYPES = frozenset({None, "file_share", "me_message", "thread_broadcast"})
#: The fields of a message resource that its Events API `message` event carries too.
_EVENT_FIELDS = ("type", "subtype", "user", "bot_id", "text", "ts", "thread_ts", "files")


def callback_body(channel: str, message: Mapping[str, Any]) -> bytes:
    """The Events API `event_callback` body Slack would have posted for a message resource
    read from `conversations.replies` (which names no channel and has no event_id: a
    message's dedupe key needs neither)."""
    event = {name: message[name] for name in _EVENT_FIELDS if name in message}
    event.update(channel=channel, event_ts=message.get("ts"))
    envelope = {
        "type": "event_callback",
        "team_id": message.get("team"),
        "event_time": int(float(str(message.get("ts") or 0))),
        "event": event,
    }
    return msgspec.json.encode(envelope)


class SlackHistory:
    """Replies in open escalation threads, read back through `SlackSender`'s client."""

    source = "slack"

    def __init__(
        self,
        sender: SlackSender,
        *,
        events_url: str,
        page_size: int = 200,
        max_wait: float = 60.0,
        rate_limit_retries: int = 5,
    ) -> None:
        """`events_url`: the public URL of /webhooks/slack/events. A 429 asking for more
        than `max_wait` seconds fails the pass."""
        self._sender = sender
        self._url = events_url
        self._page_size = page_size
        self._max_wait = max_wait
        self._retries = rate_limit_retries
        self._adapter = SlackEventsAdapter((), 0, SystemClock())

    async def fetch_threads(
        self, threads: Sequence[EscalationThread], since: datetime, until: datetime
    ) -> list[Recovered]:
        found: list[Recovered] = []
        for thread in threads:
            found += await self._thread(thread, since, until)
        found.sort(key=lambda r: (r.event.occurred_at or until, r.event.dedupe_key))
        return found

    async def close(self) -> None:
        await self._sender.close()

    async def _thread(
        self, thread: EscalationThread, since: datetime, until: datetime
    ) -> list[Recovered]:
        found: list[Recovered] = []
        oldest = f"{since.timestamp():.6f}"
        cursor: str | None = None
        while True:
            page = await self._page(thread, oldest, cursor)
            for message in page.get("messages") or []:
                if _wanted(message, thread, since, until):
                    found += self._recovered(thread, message)
            cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
            if not page.get("has_more") or not cursor:
                return found

    async def _page(
        self, thread: EscalationThread, oldest: str, cursor: str | None
    ) -> dict[str, Any]:
        try:
            return await waiting_out_throttles(
                lambda: self._sender.replies(
                    thread.channel, thread.ts, oldest=oldest, cursor=cursor, limit=self._page_size
                ),
                throttled=("429", "ratelimited"),
                max_wait=self._max_wait,
                retries=self._retries,
                provider="Slack",
            )
        except SendFailed as exc:
            if exc.code == "thread_not_found":
                return {}  # the escalation post was deleted: no thread to read
            raise HistoryError(f"conversations.replies: {exc.reason}") from exc

    def _recovered(self, thread: EscalationThread, message: Mapping[str, Any]) -> list[Recovered]:
        """The reply as its Events API delivery would have made it (nothing when the parse
        does not make it an agent.reply)."""
        body = callback_body(thread.channel, message)
        refused = "Slack listed a reply the Events parse refuses"
        recovered = reparse(self._adapter, body, JSON, self._url, refused)
        return [recovered] if recovered.event.type == EventType.AGENT_REPLY else []


def _wanted(
    message: Mapping[str, Any], thread: EscalationThread, since: datetime, until: datetime
) -> bool:
    """A person's reply (not the parent, not a bot's post) posted in the window."""
    ts = message.get("ts")
    if not isinstance(ts, str) or ts == thread.ts or message.get("bot_id"):
        return False
    if message.get("subtype") not in _PERSON_SUBTYPES or not message.get("user"):
        return False
    try:
        posted = datetime.fromtimestamp(float(ts), UTC)
    except (ValueError, OverflowError, OSError):
        return False
    return since <= posted < until
