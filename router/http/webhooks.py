"""POST /webhooks/...: every provider's webhook, as a raw ASGI endpoint mounted in litestar.

This is the ingest hot path, so it skips litestar's per-request machinery (Request object,
handler signature model, Response conversion): under callgrind that machinery cost more than
verifying and parsing a Twilio webhook. What it gave us is done here in a few lines: the
body-size limit (413), the method check (405), JSON errors in the app's `{"error"}` shape.
Everything else is `router.pipeline.ingest.Ingestor`: verify -> parse -> commit -> answer.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING, Any

import msgspec
from litestar.enums import ScopeType
from litestar.handlers import asgi
from litestar.types import Receive, Scope, Send

from channels.base import MAX_FORM_FIELDS, InboundAdapter, InboundRequest, LimitExceeded
from router.ids import new_ulid

if TYPE_CHECKING:
    from router.http.app import AppContext

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_PREFIX = "/webhooks"
_FORM = "application/x-www-form-urlencoded"


class _ClientGone(Exception):
    """The client disconnected before its body was complete: nothing to answer."""


class _OverBudget(Exception):
    """Taking this body in would hold more body bytes than the server allows at once."""


class BodyBudget:
    """Webhook body bytes held in memory at once, over every request (one event loop, so no
    lock). Bounds what many slow or large uploads together can make the process hold."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, size: int) -> None:
        """Hold `size` more bytes, or raise _OverBudget."""
        if self.held + size > self.limit:
            raise _OverBudget
        self.held += size

    def give(self, size: int) -> None:
        self.held -= size


class Answer:
    """A complete answer as an ASGI app: status, content type, length, body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, media_type: str, body: bytes, **extra: str) -> None:
        self.status = status
        self.body = body
        self.headers = [
            (b"content-type", _content_type(media_type)),
            (b"content-length", str(len(body)).encode()),
            *((name.replace("_", "-").encode(), value.encode()) for name, value in extra.items()),
        ]

    @classmethod
    def error(cls, status: int, message: str, **extra: str) -> Answer:
        """`{"error": message}` as JSON."""
        return cls(status, "application/json", msgspec.json.encode({"error": message}), **extra)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status, "headers": self.headers})
        await send({"type": "http.response.body", "body": self.body, "more_body": False})


@functools.cache
def _content_type(media_type: str) -> bytes:
    """`text/xml` -> `text/xml; charset=utf-8`, as litestar writes text types."""
    text = media_type.startswith("text/")
    return (f"{media_type}; charset=utf-8" if text else media_type).encode()


@asgi(_PREFIX, is_mount=True, copy_scope=False, include_in_schema=False)
async def webhooks(scope: Scope, receive: Receive, send: Send) -> None:
    """Find the adapter for the path, read the body within the limit, run the ingest path."""
    if scope["type"] != ScopeType.HTTP:  # a websocket: uvicorn refuses it with 403
        return
    ctx: AppContext = scope["litestar_app"].state.ctx
    answer = await _answer(ctx, scope, receive)
    if answer is not None:
        await answer(scope, receive, send)


def _path(scope: Scope) -> tuple[str, str]:
    """The request path as sent, and the route key after /webhooks/ (`twilio/messages`)."""
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
    path = raw_path.decode("latin-1")
    return path, path.removeprefix(_PREFIX).strip("/")


async def _answer(ctx: AppContext, scope: Scope, receive: Receive) -> Answer | None:
    path, key = _path(scope)
    if scope.get("method") != "POST":
        return Answer.error(405, "Method Not Allowed", allow="POST")
    adapter = ctx.adapters.get(key)
    if adapter is None:
        return Answer.error(404, f"no source is configured at /webhooks/{key}")
    headers = _headers(scope)
    limit = ctx.body_limits[key]
    try:
        body = await _read_body(receive, headers, limit, ctx.body_budget)
    except _ClientGone:
        return None
    except _OverBudget:
        return Answer.error(503, "too many request bodies in flight, retry", retry_after="1")
    except LimitExceeded as exc:
        return Answer.error(413, str(exc))
    if body is None:
        return Answer.error(413, f"body larger than {limit} bytes")
    try:
        return await _ingest(ctx, scope, path, adapter, headers, body)
    finally:
        ctx.body_budget.give(2 * len(body))


async def _ingest(
    ctx: AppContext,
    scope: Scope,
    path: str,
    adapter: InboundAdapter,
    headers: dict[str, str],
    body: bytes,
) -> Answer:
    query: bytes = scope.get("query_string", b"")
    now = ctx.clock.now()
    request_id = headers.get("x-request-id", "")
    inbound = InboundRequest(
        body=body,
        headers=headers,
        url=ctx.public_url + path + ("?" + query.decode("latin-1") if query else ""),
        content_type=headers.get("content-type", "").split(";", 1)[0].strip().lower(),
        received_at=now,
        correlation_id=request_id if _REQUEST_ID.match(request_id) else new_ulid(now),
    )
    ack = await ctx.ingestor.handle(adapter, inbound)
    return Answer(ack.status, ack.media_type, ack.body)


def _headers(scope: Scope) -> dict[str, str]:
    """Lower-case names to values (latin-1, as HTTP defines); the first of repeated names."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        found.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return found


async def _read_body(
    receive: Receive, headers: dict[str, str], limit: int, budget: BodyBudget
) -> bytes | None:
    """The whole body, or None as soon as it is known to exceed `limit` bytes.

    Each chunk is taken from `budget` twice over (the chunks, then their join); a body that
    is returned stays taken, for the caller to give back once it is answered.
    """
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    # A form's fields are counted as it arrives: a million of them is refused at its first
    # chunk, not read, joined and scanned (the adapter's own check stays the guarantee).
    form = headers.get("content-type", "").lower().startswith(_FORM)
    separators = 0
    chunks: list[bytes] = []
    size = 0
    try:
        while True:
            message: Any = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                budget.give(2 * (size - len(chunk)))
                return None
            if form:
                separators += chunk.count(b"&")
                if separators >= MAX_FORM_FIELDS:
                    raise LimitExceeded(f"form has more than {MAX_FORM_FIELDS} fields")
            budget.take(2 * len(chunk))
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)
    except BaseException:
        budget.give(2 * sum(map(len, chunks)))
        raise
