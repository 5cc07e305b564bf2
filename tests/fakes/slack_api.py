"""A fake Slack Web API on loopback, for slack_sdk's `AsyncWebClient`.

    with FakeSlack() as fake:
        client = AsyncWebClient(token=fake.token, base_url=fake.base_url, retry_handlers=[])
        answer = await client.chat_postMessage(channel="C0FAKE", text="hi", metadata=...)

`base_url` is `http://127.0.0.1:PORT/api/` (the SDK's default is `https://slack.com/api/`);
`retry_handlers=[]` drops the SDK's one hidden retry on a reset (notes §2, "Retry handlers").

What it reproduces (`../shared/notes/outbound-providers.md` §2):

- `chat.postMessage` (channel, text, blocks, thread_ts, metadata, as JSON or form): `ok`,
  `channel`, `ts` unique and increasing ("1700000000.000100"), `message`. No idempotency:
  every accepted post is a new message. `no_text` without text or blocks, `msg_too_long` over
  40,000 chars, `invalid_metadata_format` for metadata without `event_type`.
- `chat.update` (channel, ts, text, blocks, metadata) keyed by ts, `message_not_found`.
- `conversations.history` (channel, oldest, latest, inclusive, limit, cursor): thread parents
  and unthreaded messages, newest first; `conversations.replies` (channel, ts, ...): the parent
  then its replies, oldest first, `thread_not_found`. Both page with `has_more` and
  `response_metadata.next_cursor`, and carry `metadata` only with `include_all_metadata`.
- `auth.test`. Bearer token (or a `token` argument): `not_authed` when missing,
  `invalid_auth` when wrong; unknown methods `unknown_method`. `channels=` limits the known
  channels (others `channel_not_found`); None accepts any.
- Errors are HTTP 200 with `{"ok": false, "error": ...}` (`slack_error`), except `ratelimited`:
  HTTP 429 with Retry-After (`ratelimited`), and 5xx (`server_error`, an HTML page as a load
  balancer sends). With the generic `timeout`, `reset`, `accept_then_drop` (posted, answer
  lost: in doubt). Faults default to op "chat.postMessage"; keys are channel ids.

`say(channel, text, user=..., thread_ts=...)` adds a message written in Slack (an agent's
thread reply). Counters: `posts` (`SlackPost` with monotonic and wall times),
`posts_in(channel)`, `updates`, `messages[channel]` (stored, oldest first), plus `calls` and
`applied`.
"""

from __future__ import annotations

import base64
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tests.fakes._http import (
    FakeHTTPService,
    Fault,
    Request,
    Response,
    accept_then_drop,
    reset,
    respond,
    timeout,
)

__all__ = [
    "TRANSIENT",
    "FakeSlack",
    "SlackPost",
    "accept_then_drop",
    "ratelimited",
    "reset",
    "server_error",
    "slack_error",
    "timeout",
]

_CHANNEL_METHODS = {
    "chat.postMessage",
    "chat.update",
    "conversations.history",
    "conversations.replies",
}


def slack_error(error: str, status: int = 200) -> Fault:
    """`{"ok": false, "error": error}`: channel_not_found, not_in_channel, internal_error..."""
    return respond(Response.json(status, {"ok": False, "error": error}), label=error)


def ratelimited(retry_after: int = 1) -> Fault:
    """HTTP 429, `Retry-After: <s>`, `error: ratelimited`."""
    return respond(
        Response.json(
            429, {"ok": False, "error": "ratelimited"}, (("Retry-After", str(retry_after)),)
        ),
        label="ratelimited",
    )


def server_error(status: int = 500) -> Fault:
    page = f"<html><body><h1>{status} Server Error</h1></body></html>".encode()
    return respond(
        Response(status, page, (("Content-Type", "text/html; charset=utf-8"),)), label=str(status)
    )


TRANSIENT: tuple[Fault, ...] = (server_error(500), server_error(503), ratelimited(0), reset())


@dataclass(frozen=True)
class SlackPost:
    channel: str
    ts: str
    text: str | None
    blocks: list[Any] | None
    thread_ts: str | None
    metadata: dict[str, Any] | None
    accepted_at: float  # time.monotonic()
    accepted_wall: datetime


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("1", "true")


def _parsed(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in ("{", "["):
        return json.loads(value)
    return value


def _args(request: Request) -> dict[str, Any]:
    args: dict[str, Any] = {k: v[0] for k, v in request.query.items()}
    args.update({k: v[0] for k, v in request.form().items()})
    if request.content_type == "application/json" and request.body:
        payload = request.json()
        if isinstance(payload, dict):
            args.update(payload)
    return {k: _parsed(v) if k in ("blocks", "metadata") else v for k, v in args.items()}


def _cursor(index: int) -> str:
    return base64.b64encode(f"next_index:{index}".encode()).decode()


def _uncursor(cursor: str | None) -> int:
    if not cursor:
        return 0
    return int(base64.b64decode(cursor).decode().split(":")[1])


class FakeSlack(FakeHTTPService):
    default_op = "chat.postMessage"

    def __init__(
        self,
        token: str = "xoxb-fake-token",
        *,
        channels: list[str] | None = None,
        team_id: str = "T0FAKE",
        bot_user_id: str = "U0FAKEBOT",
        bot_id: str = "B0FAKE",
    ) -> None:
        super().__init__()
        self.token = token
        self.channels = None if channels is None else set(channels)
        self.team_id, self.bot_user_id, self.bot_id = team_id, bot_user_id, bot_id
        self.posts: list[SlackPost] = []
        self.updates: list[dict[str, Any]] = []
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self._last_us = 0

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/"

    def posts_in(self, channel: str) -> list[SlackPost]:
        with self.lock:
            return [p for p in self.posts if p.channel == channel]

    def say(
        self, channel: str, text: str, *, user: str, thread_ts: str | None = None, bot: bool = False
    ) -> str:
        """A message written in Slack itself, not through the API (a person, or another app
        when `bot`), stored as conversations.replies/history list it; its ts."""
        with self.lock:
            ts = self._next_ts()
            message: dict[str, Any] = {"type": "message", "text": text, "ts": ts, "user": user}
            message["team"] = self.team_id
            if bot:
                message.update(subtype="bot_message", bot_id=f"B{user}")
            if thread_ts:
                message.update(thread_ts=thread_ts, parent_user_id=self.bot_user_id)
            self.messages.setdefault(channel, []).append(message)
            return ts

    def snapshot(self) -> list[SlackPost]:
        with self.lock:
            return list(self.posts)

    # -- routing and handling ---------------------------------------------------------------
    def route(self, request: Request) -> tuple[str, str | None]:
        method = request.path.removeprefix("/api/")
        channel = _args(request).get("channel") if method in _CHANNEL_METHODS else None
        return method, channel if isinstance(channel, str) else None

    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        args = _args(request)
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        token = bearer if scheme.lower() == "bearer" else args.get("token")
        if not token:
            return self._fail("not_authed")
        if token != self.token:
            return self._fail("invalid_auth")
        if op == "auth.test":
            return self._ok(
                url="https://fake-switchboard.slack.com/",
                team="Fake",
                user="switchboard",
                team_id=self.team_id,
                user_id=self.bot_user_id,
                bot_id=self.bot_id,
                is_enterprise_install=False,
            )
        if op not in _CHANNEL_METHODS:
            return self._fail("unknown_method")
        channel = args.get("channel")
        if not channel or (self.channels is not None and channel not in self.channels):
            return self._fail("channel_not_found")
        if op == "chat.postMessage":
            return self._post(channel, args)
        if op == "chat.update":
            return self._update(channel, args)
        if op == "conversations.history":
            return self._history(channel, args)
        return self._replies(channel, args)

    def _ok(self, **fields: Any) -> Response:
        return Response.json(200, {"ok": True, **fields})

    def _fail(self, error: str) -> Response:
        return Response.json(200, {"ok": False, "error": error})

    def _next_ts(self) -> str:
        self._last_us = max(int(time.time() * 1_000_000), self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _post(self, channel: str, args: dict[str, Any]) -> Response:
        text, blocks, metadata = args.get("text"), args.get("blocks"), args.get("metadata")
        thread_ts = args.get("thread_ts") or None
        if not text and not blocks and not args.get("attachments"):
            return self._fail("no_text")
        if text and len(text) > 40_000:
            return self._fail("msg_too_long")
        if metadata is not None and not (isinstance(metadata, dict) and metadata.get("event_type")):
            return self._fail("invalid_metadata_format")
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "subtype": "bot_message",
            "text": text or "",
            "ts": ts,
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": "A0FAKE",
            "team": self.team_id,
        }
        if blocks:
            message["blocks"] = blocks
        if metadata:
            message["metadata"] = {
                "event_type": metadata["event_type"],
                "event_payload": metadata.get("event_payload", {}),
            }
        stored = self.messages.setdefault(channel, [])
        if thread_ts:
            message["thread_ts"] = thread_ts
            message["parent_user_id"] = self.bot_user_id
            parent = next((m for m in stored if m["ts"] == thread_ts), None)
            if parent is not None:
                parent["thread_ts"] = thread_ts
                parent["reply_count"] = parent.get("reply_count", 0) + 1
                parent["reply_users"] = [self.bot_user_id]
                parent["latest_reply"] = ts
        stored.append(message)
        self.posts.append(
            SlackPost(
                channel,
                ts,
                text,
                blocks,
                thread_ts,
                message.get("metadata"),
                time.monotonic(),
                datetime.now(UTC),
            )
        )
        return self._ok(channel=channel, ts=ts, message=dict(message))

    def _update(self, channel: str, args: dict[str, Any]) -> Response:
        ts = args.get("ts")
        message = next((m for m in self.messages.get(channel, []) if m["ts"] == ts), None)
        if message is None:
            return self._fail("message_not_found")
        for name in ("text", "blocks"):
            if args.get(name) is not None:
                message[name] = args[name]
        if isinstance(args.get("metadata"), dict):
            message["metadata"] = args["metadata"]
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        self.updates.append({"channel": channel, **dict(message), "at": time.monotonic()})
        return self._ok(channel=channel, ts=ts, text=message["text"], message=dict(message))

    def _page(
        self, found: list[dict[str, Any]], args: dict[str, Any], default_limit: int
    ) -> dict[str, Any]:
        start = _uncursor(args.get("cursor"))
        limit = int(args.get("limit") or default_limit) or default_limit
        keep = _truthy(args.get("include_all_metadata"))
        chunk = [
            {k: v for k, v in m.items() if keep or k != "metadata"}
            for m in found[start : start + limit]
        ]
        more = start + limit < len(found)
        return {
            "messages": chunk,
            "has_more": more,
            "response_metadata": {"next_cursor": _cursor(start + limit) if more else ""},
        }

    def _in_window(self, message: dict[str, Any], args: dict[str, Any]) -> bool:
        ts = float(message["ts"])
        oldest, latest = float(args.get("oldest") or 0), args.get("latest")
        inclusive = _truthy(args.get("inclusive"))
        if ts < oldest or (ts == oldest and not inclusive):
            return False
        if latest is not None:
            bound = float(latest)
            return ts < bound or (ts == bound and inclusive)
        return True

    def _history(self, channel: str, args: dict[str, Any]) -> Response:
        found = [
            m
            for m in reversed(self.messages.get(channel, []))
            if m.get("thread_ts") in (None, m["ts"]) and self._in_window(m, args)
        ]
        return self._ok(**self._page(found, args, 100), pin_count=0)

    def _replies(self, channel: str, args: dict[str, Any]) -> Response:
        ts = args.get("ts")
        stored = self.messages.get(channel, [])
        parent = next((m for m in stored if m["ts"] == ts), None)
        if parent is None:
            return self._fail("thread_not_found")
        replies = [m for m in stored if m.get("thread_ts") == ts and m["ts"] != ts]
        found = [parent, *(m for m in replies if self._in_window(m, args))]
        return self._ok(**self._page(found, args, 1000))
