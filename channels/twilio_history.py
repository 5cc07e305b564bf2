"""Twilio's side of reconciliation (SPEC §12): inbound Messages its webhooks never brought.

Twilio never retries a failed inbound webhook, so every SMS sent while Switchboard was down
is only at Twilio. `TwilioHistory.fetch` lists the account's Messages by date sent (the
official client, page by page), keeps those with `direction = inbound`, rebuilds the form
Twilio would have posted from each resource (with the Media list of an MMS: its pictures'
URLs are a subresource), and parses it with the webhook's own
`TwilioAdapter`: the same event, the same dedupe key (`twilio:` + MessageSid).

`receipts` fetches each outbound Message still `sent` in the outbox (by its sid) and, when
its status is final, rebuilds the status callback Twilio would have posted and parses it with
the status webhook's adapter: a `message.status` event with the callback's dedupe key
(`twilio:SID:STATUS`), which the worker applies as it applies a callback (never backwards).

Twilio filters `DateSent>` by whole GMT days, so the window is applied here too. A 429 is
waited out as its Retry-After asks (up to `max_wait` seconds, a few times), then the page is
asked again: the pass slows down instead of failing; anything else fails the pass.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import msgspec

from channels.history import HistoryError, Recovered, reparse, waiting_out_throttles
from channels.outbound import SendFailed
from channels.twilio import TwilioAdapter
from channels.twilio_send import TwilioSender

FORM = "application/x-www-form-urlencoded"
_INBOUND = "inbound"
#: Statuses after which Twilio sends no more callbacks for a Message.
_FINAL = frozenset({"delivered", "read", "undelivered", "failed"})
_UNKNOWN = "20404"


#: Where a webhook's `MediaUrlN` points: Twilio's own API host, whatever `api_base` says.
MEDIA_HOST = "https://api.twilio.com"


def webhook_form(message: Any, media: Sequence[Any] = ()) -> list[tuple[str, str]]:
    """The form fields of the inbound-message webhook Twilio would have posted for a Message
    resource (`MessageInstance`), in the webhook's names, with `MediaUrlN` and
    `MediaContentTypeN` of each of its Media resources (a subresource, listed apart)."""
    fields = {
        "MessageSid": message.sid,
        "SmsMessageSid": message.sid,
        "SmsSid": message.sid,
        "AccountSid": message.account_sid,
        "MessagingServiceSid": message.messaging_service_sid,
        "From": message.from_,
        "To": message.to,
        "Body": message.body or "",
        "NumMedia": message.num_media,
        "NumSegments": message.num_segments,
        "SmsStatus": "received",
        "ApiVersion": message.api_version,
    }
    for n, item in enumerate(media):
        fields[f"MediaUrl{n}"] = MEDIA_HOST + str(item.uri).removesuffix(".json")
        fields[f"MediaContentType{n}"] = item.content_type
    return [(name, str(value)) for name, value in fields.items() if value is not None]


def status_form(message: Any) -> list[tuple[str, str]]:
    """The form fields of the status callback Twilio would have posted for a Message
    resource at its current status, in the callback's names."""
    fields = {
        "MessageSid": message.sid,
        "SmsSid": message.sid,
        "AccountSid": message.account_sid,
        "MessagingServiceSid": message.messaging_service_sid,
        "From": message.from_,
        "To": message.to,
        "MessageStatus": message.status,
        "SmsStatus": message.status,
        "ErrorCode": message.error_code,
        "ApiVersion": message.api_version,
    }
    return [(name, str(value)) for name, value in fields.items() if value is not None]


class TwilioHistory:
    """Inbound Messages of the account, read back through `TwilioSender`'s client."""

    source = "twilio"
    receipt_channels = ("sms", "whatsapp")

    def __init__(
        self,
        sender: TwilioSender,
        *,
        messages_url: str,
        page_size: int = 200,
        max_wait: float = 60.0,
        rate_limit_retries: int = 5,
    ) -> None:
        """`messages_url`: the public URL of /webhooks/twilio/messages (what a webhook's
        request names). A 429 asking for more than `max_wait` seconds fails the pass."""
        self._sender = sender
        self._url = messages_url
        self._page_size = page_size
        self._max_wait = max_wait
        self._retries = rate_limit_retries
        self._adapter = TwilioAdapter((), "messages")
        self._status_adapter = TwilioAdapter((), "status")

    async def fetch(self, since: datetime, until: datetime) -> list[Recovered]:
        found: list[Recovered] = []
        page = await self._page(
            lambda client: client.messages.page_async(
                date_sent_after=since.astimezone(UTC), page_size=self._page_size
            )
        )
        while page is not None:
            for message in page:
                if _wanted(message, since, until):
                    found.append(self._recovered(message, await self._media(message)))
            url = page.next_page_url
            page = await self._next(url) if url else None
        found.sort(key=lambda r: (r.event.occurred_at or until, r.event.dedupe_key))
        return found

    async def receipts(self, provider_ids: list[str]) -> list[Recovered]:
        found = []
        for sid in provider_ids:
            message = await self._message(sid)
            if message is not None and message.status in _FINAL:
                found.append(self._receipt(message))
        return found

    async def close(self) -> None:
        await self._sender.close()

    async def _next(self, url: str) -> Any:
        return await self._page(lambda client: client.messages.get_page_async(url))

    async def _media(self, message: Any) -> list[Any]:
        """The Media resources of an MMS in Twilio's order (none asked for a plain SMS)."""
        if not int(message.num_media or 0):
            return []
        media: list[Any] = await self._page(
            lambda client: client.messages(message.sid).media.list_async()
        )
        return media

    async def _message(self, sid: str) -> Any:
        """The Message `sid`, None if Twilio does not know it (deleted, another account)."""
        return await self._page(lambda client: client.messages(sid).fetch_async(), _UNKNOWN)

    async def _page(
        self, request: Callable[[Any], Awaitable[Any]], absent: str | None = None
    ) -> Any:
        """One read, 429s waited out; an answer with the error code `absent` is None."""
        try:
            return await waiting_out_throttles(
                lambda: self._sender.read(request),
                throttled=("429", "20429"),
                max_wait=self._max_wait,
                retries=self._retries,
                provider="Twilio",
            )
        except SendFailed as exc:
            if absent is not None and exc.code == absent:
                return None
            raise HistoryError(_reason(exc)) from exc

    def _recovered(self, message: Any, media: Sequence[Any]) -> Recovered:
        body = urlencode(webhook_form(message, media)).encode()
        refused = "Twilio listed a Message the webhook parse refuses"
        recovered = reparse(self._adapter, body, FORM, self._url, refused)
        return _occurred(recovered, message.date_sent or message.date_created)

    def _receipt(self, message: Any) -> Recovered:
        body = urlencode(status_form(message)).encode()
        refused = f"Twilio's Message {message.sid} makes no callback"
        recovered = reparse(self._status_adapter, body, FORM, self._url, refused)
        return _occurred(recovered, message.date_updated)


def _wanted(message: Any, since: datetime, until: datetime) -> bool:
    sent = message.date_sent or message.date_created
    return message.direction == _INBOUND and isinstance(sent, datetime) and since <= sent < until


def _occurred(recovered: Recovered, at: datetime | None) -> Recovered:
    """The event dated when Twilio says the message was sent (the webhook carries no date)."""
    event = msgspec.structs.replace(recovered.event, occurred_at=at)
    return msgspec.structs.replace(recovered, event=event)


def _reason(exc: SendFailed) -> str:
    return exc.reason.removeprefix("looking the message up failed: ")
