"""Slack, outbound: `SlackSender` (posts, thread replies, edits of the escalation post), the
Slack half of the dispatcher's senders (channels/outbound.py); the inbound side is
`channels/slack.py`.

slack_sdk's AsyncWebClient with `retry_handlers=[]`: its default handler retries once after
a reset, and a reset can follow a post Slack accepted (a double post; tests/fakes proves it).
The outbox retries instead, with Retry-After from a 429 (notes §2).

The SDK is imported on first use: every process that wires providers in imports this module
(router/http/providers.py).

The client runs on one aiohttp session of ours (made on first use, in the running loop):
without one, the SDK opens a session, so a new TCP and TLS connection, for every call. With
one, the SDK's own `timeout` is not applied, so the session carries it (ClientTimeout).

Every post carries the outbox id as message metadata, so a send left in doubt is found again
through conversations.history (thread parents) or conversations.replies (thread replies) with
include_all_metadata. `chat.update` is keyed by ts: repeating one is harmless, so its failures
are never in doubt.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from channels.outbound import FailureKind, Outgoing, SendFailed, Sent

if TYPE_CHECKING:
    import aiohttp
    from slack_sdk.errors import SlackApiError
    from slack_sdk.web.async_client import AsyncWebClient

#: The metadata event type on every Switchboard post.
METADATA_EVENT_TYPE = "switchboard_outbound"
#: The kind of outbox row that edits the escalation post (payload `ts`) instead of posting.
UPDATE_KIND = "escalation_update"
#: Slack's clock against ours, on top of the margin the dispatcher gives `find`.
FIND_SKEW = timedelta(seconds=10)
#: Pages of 200 messages `find` reads at most.
FIND_PAGES = 10
_DEFAULT_API = "https://slack.com/api/"

#: What a person reads on a dead row, by Slack error; `{to}` is the channel.
SLACK_REASONS: dict[str, str] = {
    "channel_not_found": "Slack channel {to} not found, or the bot cannot see it",
    "not_in_channel": "the Switchboard bot is not in Slack channel {to}: invite it",
    "is_archived": "Slack channel {to} is archived",
    "msg_too_long": "the message is too long for Slack",
    "no_text": "the message has neither text nor blocks",
    "invalid_auth": "Slack refused the bot token: check channels.slack.bot_token",
    "not_authed": "no Slack bot token: set channels.slack.bot_token",
    "account_inactive": "the Slack bot token belongs to a deactivated user or workspace",
    "token_revoked": "the Slack bot token was revoked: reinstall the app",
    "token_expired": "the Slack bot token expired: reinstall the app",
    "missing_scope": "the Slack app lacks a scope it needs",
    "invalid_blocks": "Slack refused the message's blocks",
    "invalid_blocks_format": "the message's blocks are not valid Block Kit JSON",
    "restricted_action": "the workspace does not let the bot post in Slack channel {to}",
    "message_not_found": "the Slack message to update no longer exists",
    "cant_update_message": "the bot cannot edit that Slack message",
    "edit_window_closed": "the Slack message can no longer be edited",
    "invalid_metadata_format": "Slack refused the message metadata",
}
#: Slack did not act and asks to come back later.
_TRANSIENT_ERRORS = frozenset({"ratelimited", "request_timeout"})
#: Part may have succeeded: check before any resend (a post), or just repeat (an update).
_IN_DOUBT_ERRORS = frozenset({"internal_error", "fatal_error", "service_unavailable"})


def slack_failure(exc: SlackApiError, to: str = "", *, idempotent: bool = False) -> SendFailed:
    """A SlackApiError, classified (notes §2). `idempotent`: the call can be repeated safely
    (chat.update, a read), so what would be in doubt is transient."""
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    error = _error(exc)
    code = str(error) if error else str(status)
    headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    if status == 429 or error in _TRANSIENT_ERRORS:
        return SendFailed(
            FailureKind.TRANSIENT,
            f"Slack asked to slow down (Slack {code})",
            code=code,
            retry_after=_retry_after(headers),
        )
    if status >= 500 or error in _IN_DOUBT_ERRORS:
        what = f"Slack answered HTTP {status}" if status >= 500 else "Slack failed inside"
        if idempotent:
            return SendFailed(FailureKind.TRANSIENT, f"{what} (Slack {code})", code=code)
        return SendFailed(
            FailureKind.IN_DOUBT,
            f"{what}, the message may have been posted (Slack {code})",
            code=code,
        )
    reason = SLACK_REASONS.get(str(error), "Slack refused the message").format(to=to or "?")
    if error == "missing_scope" and response.get("needed"):
        reason += f" ({response.get('needed')})"
    return SendFailed(FailureKind.PERMANENT, f"{reason} (Slack {code})", code=code)


def _error(exc: SlackApiError) -> str | None:
    """Slack's `error`; None when the answer was not Slack's JSON (a proxy's 5xx page)."""
    data = getattr(exc.response, "data", None)
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, str) else None


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Slack's Retry-After is whole seconds."""
    value = headers.get("Retry-After") or headers.get("retry-after")
    try:
        seconds = float(value) if value else None
    except ValueError:
        return None
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _transport_failure(exc: BaseException, *, idempotent: bool) -> SendFailed:
    """Connecting failed (refused, DNS, TLS, connect timeout): Slack saw nothing. Any later
    break (a reset, a read timeout) may follow an accepted post: in doubt."""
    import aiohttp

    detail = f"{type(exc).__name__}: {exc}".rstrip(": ")
    if isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
        return SendFailed(FailureKind.TRANSIENT, f"could not connect to Slack: {detail}")
    if idempotent:
        return SendFailed(FailureKind.TRANSIENT, f"no answer from Slack: {detail}")
    return SendFailed(
        FailureKind.IN_DOUBT,
        f"no answer from Slack after the post went out: {detail}",
        unanswered=True,
    )


def _base_url(api_base: str | None) -> str:
    """`api_base` as the SDK wants it: ending in `/`, `/api/` added to a bare host."""
    if not api_base:
        return _DEFAULT_API
    base = api_base.rstrip("/")
    return base + ("/api/" if urlsplit(base).path in ("", "/") else "/")


class SlackSender:
    """Posts and edits in Slack through the Web API (`channels.slack`, SPEC §5)."""

    channels: tuple[str, ...] = ("slack",)

    def __init__(
        self, *, bot_token: str, api_base: str | None = None, timeout_seconds: float = 10.0
    ) -> None:
        """`api_base` replaces https://slack.com/api/ (a bare `http://host:port` gets
        `/api/`)."""
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._token = bot_token
        self._base_url = _base_url(api_base)
        self._timeout = timeout_seconds
        self._session: aiohttp.ClientSession | None = None
        self._client: AsyncWebClient | None = None

    # -- the Sender protocol -----------------------------------------------------------------

    def destination(self, message: Outgoing) -> str:
        return message.to

    def units(self, message: Outgoing) -> int:
        return 1

    async def send(self, message: Outgoing) -> Sent:
        import aiohttp
        from slack_sdk.errors import SlackApiError

        payload = message.payload
        client = self._slack()
        update = message.kind == UPDATE_KIND
        if update and not payload.get("ts"):
            raise SendFailed(
                FailureKind.PERMANENT, "an escalation update without the ts of the post to edit"
            )
        try:
            async with asyncio.timeout(self._timeout + 1):  # the session's timeout first
                if update:
                    answer = await client.chat_update(
                        channel=message.to,
                        ts=str(payload["ts"]),
                        text=payload.get("text"),
                        blocks=payload.get("blocks"),
                    )
                else:
                    answer = await client.chat_postMessage(
                        channel=message.to,
                        text=payload.get("text"),
                        blocks=payload.get("blocks"),
                        thread_ts=payload.get("thread_ts") or None,
                        unfurl_links=False,
                        unfurl_media=False,
                        metadata={
                            "event_type": METADATA_EVENT_TYPE,
                            "event_payload": {"outbox_id": message.id},
                        },
                    )
        except SlackApiError as exc:
            raise slack_failure(exc, message.to, idempotent=update) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _transport_failure(exc, idempotent=update) from exc
        return Sent(provider_message_id=str(answer["ts"]))

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        """The post carrying this outbox id in its metadata, posted since `since` (less
        FIND_SKEW): read back from the thread (`thread_ts`) or the channel's parents. An
        update is never looked for: repeating it is harmless."""
        if message.kind == UPDATE_KIND:
            return None
        import aiohttp
        from slack_sdk.errors import SlackApiError

        client = self._slack()
        thread = message.payload.get("thread_ts") or None
        since = since if since.tzinfo else since.replace(tzinfo=UTC)
        oldest = f"{(since - FIND_SKEW).timestamp():.6f}"
        cursor: str | None = None
        try:
            async with asyncio.timeout(self._timeout * 2):
                for _ in range(FIND_PAGES):
                    if thread:
                        page = await client.conversations_replies(
                            channel=message.to,
                            ts=str(thread),
                            oldest=oldest,
                            inclusive=True,
                            include_all_metadata=True,
                            limit=200,
                            cursor=cursor,
                        )
                    else:
                        page = await client.conversations_history(
                            channel=message.to,
                            oldest=oldest,
                            inclusive=True,
                            include_all_metadata=True,
                            limit=200,
                            cursor=cursor,
                        )
                    for found in page.get("messages") or []:
                        if _carries(found, message.id):
                            return Sent(provider_message_id=str(found["ts"]))
                    cursor = (page.get("response_metadata") or {}).get("next_cursor") or None
                    if not page.get("has_more") or not cursor:
                        return None
        except SlackApiError as exc:
            if _error(exc) == "thread_not_found":
                return None  # no parent, so no reply in it
            failure = slack_failure(exc, message.to, idempotent=True)
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = _transport_failure(exc, idempotent=True)
        else:  # FIND_PAGES read and more to come: "not there" would be a guess
            failure = SendFailed(
                FailureKind.TRANSIENT,
                f"over {FIND_PAGES * 200} posts since {since - FIND_SKEW:%Y-%m-%d %H:%M:%S} UTC, "
                "the look cannot reach its first post",
            )
        raise SendFailed(
            failure.kind,
            f"looking the message up failed: {failure.reason}",
            code=failure.code,
            retry_after=failure.retry_after,
        )

    async def replies(
        self, channel: str, ts: str, *, oldest: str, cursor: str | None = None, limit: int = 200
    ) -> dict[str, Any]:
        """One page of `conversations.replies` (the parent first, then replies from
        `oldest`): the answer's data; SendFailed (a 429 with its Retry-After) when Slack
        did not answer it."""
        import aiohttp
        from slack_sdk.errors import SlackApiError

        client = self._slack()
        try:
            async with asyncio.timeout(self._timeout + 1):
                page = await client.conversations_replies(
                    channel=channel, ts=ts, oldest=oldest, inclusive=True, limit=limit,
                    cursor=cursor,
                )  # fmt: skip
        except SlackApiError as exc:
            raise slack_failure(exc, channel, idempotent=True) from exc
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise _transport_failure(exc, idempotent=True) from exc
        return dict(page.data) if isinstance(page.data, dict) else {}

    async def close(self) -> None:
        session, self._session, self._client = self._session, None, None
        if session is not None:
            await session.close()

    # -- helpers -----------------------------------------------------------------------------

    async def start(self) -> None:
        self._slack()

    def _slack(self) -> AsyncWebClient:
        if self._client is None:
            import aiohttp
            from slack_sdk.web.async_client import AsyncWebClient

            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
            self._client = AsyncWebClient(
                token=self._token,
                base_url=self._base_url,
                timeout=max(1, math.ceil(self._timeout)),
                session=self._session,
                retry_handlers=[],
            )
        return self._client


def _carries(message: Any, outbox_id: str) -> bool:
    metadata = message.get("metadata") if isinstance(message, dict) else None
    if not isinstance(metadata, dict) or metadata.get("event_type") != METADATA_EVENT_TYPE:
        return False
    payload = metadata.get("event_payload")
    return isinstance(payload, dict) and payload.get("outbox_id") == outbox_id
