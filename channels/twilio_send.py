"""Twilio, outbound: `TwilioSender` (SMS and WhatsApp through the Messages API), the Twilio
half of the dispatcher's senders (channels/outbound.py); the inbound side is `channels/twilio.py`.

The official client with its aiohttp transport (`AsyncTwilioHttpClient`), `max_retries` left
unset: aiohttp-retry would repeat a POST that Twilio answered 5xx, and a create is not
idempotent (../shared/notes/outbound-providers.md §1). Three things the client does not do,
done here:

- a timeout: `AsyncTwilioHttpClient(timeout=...)` is stored but never applied to a request,
  so each call runs under `asyncio.timeout`;
- Retry-After: `TwilioRestException` carries the status and code, not the headers; they are
  read from the answer through an aiohttp trace, per call (a context variable), so
  concurrent sends on the one session never see each other's answers;
- whether the request went out: the same trace notes when the request's headers were
  handed to the connection. A timeout or a broken connection before that is transient
  (refused, DNS, connect timeout: Twilio saw nothing); after it, in doubt.

And one thing it does slowly: `AsyncTwilioHttpClient.request` hands aiohttp the form as a
dict, which aiohttp wraps in a `FormData` that builds a multipart writer (with a `uuid4`
boundary) on every request, only to urlencode the dict in the end. `_form_client()` is the
same client sending the bytes it urlencodes itself: the same wire bytes, session and trace,
about 55 of 320 us of CPU less per send (bench/README.md, "The send path").

The SDKs are imported on first use: every process that wires providers in imports this
module (router/http/providers.py), and twilio with aiohttp costs about 0.2 s to import.

Twilio keeps no field of ours on a Message and does not echo StatusCallback, so the outbox
id rides in the StatusCallback query (`?oid=`), which tags the delivery receipts; a send left
in doubt is looked up by to, from, day and text (`find`).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from channels.outbound import FailureKind, Outgoing, SendFailed, Sent

if TYPE_CHECKING:
    import aiohttp

#: Twilio's clock against ours, on top of the margin the dispatcher gives `find`.
FIND_SKEW = timedelta(seconds=10)
#: Messages `find` reads at most (to one recipient from one sender since a day).
FIND_LIMIT = 200
_WHATSAPP = "whatsapp:"

# The client logs every request and answer at INFO (URLs with phone numbers in a lookup):
# kept to warnings, under our name.
_sdk_log = logging.getLogger("switchboard.twilio.sdk")
_sdk_log.setLevel(logging.WARNING)

#: What a person reads on a dead row, by Twilio error code.
TWILIO_REASONS: dict[int, str] = {
    20003: "Twilio refused the credentials: check channels.sms account_sid and auth_token",
    20404: "Twilio does not know this account: check channels.sms account_sid",
    21211: "invalid 'To' number",
    21408: "sending to this number's region is not enabled on the Twilio account "
    "(Messaging Geo Permissions)",
    21602: "the message has no text",
    21603: "no sender: set channels.sms from or messaging_service_sid",
    21604: "no 'To' number",
    21606: "the 'From' number cannot send to this destination (not a messaging-capable "
    "Twilio number for it)",
    21609: "the StatusCallback URL is refused (at most 4,000 characters, no '_' in the host): "
    "check server.public_url",
    21610: "the recipient opted out (replied STOP) and must text START first",
    21611: "the sender's queue at Twilio is full (over 10 hours of messages)",
    21612: "the 'To' number cannot be reached from this 'From' number",
    21614: "the 'To' number is not a mobile number",
    21617: "the text is longer than 1,600 characters",
    63007: "no WhatsApp sender matches the 'From' address",
    63016: "WhatsApp free-form message outside the 24-hour window: send a template",
}
#: Codes where Twilio did not act and asks to come back later.
_TRANSIENT_CODES = frozenset({20429, 21611})


@dataclass
class _Exchange:
    """What one SDK call did on the wire, as aiohttp's trace saw it."""

    #: The request's headers were handed to the connection: from here it may reach Twilio.
    went_out: bool = False
    #: The headers of the answer, once one came.
    headers: Mapping[str, str] | None = None


_exchange: contextvars.ContextVar[_Exchange | None] = contextvars.ContextVar(
    "twilio_exchange", default=None
)


async def _on_headers_sent(
    _session: aiohttp.ClientSession,
    _context: SimpleNamespace,
    _params: aiohttp.TraceRequestHeadersSentParams,
) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.went_out = True


async def _on_request_end(
    _session: aiohttp.ClientSession,
    _context: SimpleNamespace,
    params: aiohttp.TraceRequestEndParams,
) -> None:
    exchange = _exchange.get()
    if exchange is not None:
        exchange.headers = params.response.headers


def _trace() -> aiohttp.TraceConfig:
    import aiohttp

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    trace.on_request_end.append(_on_request_end)
    return trace


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """HTTP Retry-After (seconds, or an HTTP date) as seconds from now; None if unreadable."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, seconds) if math.isfinite(seconds) else None


def twilio_failure(exc: Any, retry_after: float | None = None) -> SendFailed:
    """A `TwilioRestException` from a create, classified (notes §1).

    429 / 20429 and 21611 were never processed: transient. 21610: opted out. 5xx: in doubt
    (the create may have happened). Any other 4xx: permanent.
    """
    status = int(getattr(exc, "status", 0) or 0)
    raw_code = getattr(exc, "code", None)
    code = int(raw_code) if isinstance(raw_code, int | str) and str(raw_code).isdigit() else None
    label = f"Twilio {code}" if code is not None else f"Twilio HTTP {status}"
    detail = TWILIO_REASONS.get(code or 0) or str(getattr(exc, "msg", "") or "") or "no detail"
    code_text = str(code) if code is not None else str(status)
    if status == 429 or code in _TRANSIENT_CODES:
        return SendFailed(
            FailureKind.TRANSIENT,
            f"Twilio asked to slow down: {detail} ({label})",
            code=code_text,
            retry_after=retry_after,
        )
    if code == 21610:
        return SendFailed(FailureKind.OPTED_OUT, f"{detail} ({label})", code=code_text)
    if status >= 500:
        return SendFailed(
            FailureKind.IN_DOUBT,
            f"Twilio answered HTTP {status}, the message may have been created: {detail} ({label})",
            code=code_text,
        )
    return SendFailed(FailureKind.PERMANENT, f"{detail} ({label})", code=code_text)


def _transport_failure(exc: BaseException, exchange: _Exchange, timeout: float) -> SendFailed:
    """A timeout or a connection error: in doubt once the request may have gone out."""
    what = (
        f"no answer from Twilio in {timeout:g} s"
        if isinstance(exc, TimeoutError)
        else (f"connection to Twilio failed: {type(exc).__name__}: {exc}".rstrip(": "))
    )
    if exchange.went_out:
        return SendFailed(
            FailureKind.IN_DOUBT,
            f"{what}, after the request went out: it may have been created",
            unanswered=True,
        )
    return SendFailed(FailureKind.TRANSIENT, f"{what}, before the request went out")


class TwilioSender:
    """SMS and WhatsApp through Twilio's Messages API (`channels.sms`, SPEC §5)."""

    channels: tuple[str, ...] = ("sms", "whatsapp")

    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_: str | None = None,
        messaging_service_sid: str | None = None,
        api_base: str | None = None,
        status_callback_url: str | None = None,
        timeout_seconds: float = 10.0,
    ) -> None:
        """`status_callback_url`: the public URL of /webhooks/twilio/status (None: no
        receipts). `api_base` replaces https://api.twilio.com (a fake, a proxy)."""
        if timeout_seconds <= 0:
            raise ValueError("timeout_seconds must be positive")
        self._account_sid = account_sid
        self._auth_token = auth_token
        self._from = from_ or None
        self._service = messaging_service_sid or None
        self._api_base = api_base.rstrip("/") if api_base else None
        self._status_callback_url = status_callback_url or None
        self._timeout = timeout_seconds
        # Made on first use: aiohttp's session needs the running loop it will serve.
        self._http: Any = None
        self._client: Any = None

    # -- the Sender protocol -----------------------------------------------------------------

    def destination(self, message: Outgoing) -> str:
        """The sender number (without `whatsapp:`), else the Messaging Service."""
        sender = self._sender(message)
        if sender is None:
            return self._service or "unconfigured"
        return sender.removeprefix(_WHATSAPP)

    def units(self, message: Outgoing) -> int:
        """SMS segments: a long code sends about one segment a second, not one message.
        WhatsApp has no segments."""
        text = message.payload.get("text")
        if message.channel != "sms" or not isinstance(text, str):
            return 1
        return sms_segments(text)

    async def send(self, message: Outgoing) -> Sent:
        text = message.payload.get("text")
        if not isinstance(text, str) or not text:
            raise SendFailed(FailureKind.PERMANENT, "the message has no text", code="21602")
        params: dict[str, Any] = {"to": self._to(message), "body": text}
        sender = self._sender(message)
        if sender is not None:
            params["from_"] = sender
        elif self._service is not None:
            params["messaging_service_sid"] = self._service
        else:
            raise SendFailed(
                FailureKind.PERMANENT,
                "no sender: set channels.sms from or messaging_service_sid",
                code="21603",
            )
        if self._status_callback_url is not None:
            params["status_callback"] = self.status_callback(message.id)
        created = await self._call(lambda client: client.messages.create_async(**params))
        status = getattr(created, "status", None)
        return Sent(
            provider_message_id=str(created.sid),
            status=status if isinstance(status, str) and status else "queued",
        )

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        """A Message to the same number, from the same sender, with the same text, created
        since `since` (less FIND_SKEW): the newest such. Twilio filters by whole GMT day and
        keeps nothing of ours on a Message, so this is a match, not a key: two identical
        texts to one number within seconds would be taken for one another."""
        cutoff = (since if since.tzinfo else since.replace(tzinfo=UTC)) - FIND_SKEW
        text = message.payload.get("text")
        query: dict[str, Any] = {
            "to": self._to(message),
            "date_sent_after": cutoff.astimezone(UTC),
            "limit": FIND_LIMIT,
        }
        sender = self._sender(message)
        if sender is not None:
            query["from_"] = sender
        found = await self._call(lambda client: client.messages.list_async(**query), check=True)
        best: Any = None
        for candidate in found:
            created = getattr(candidate, "date_created", None)
            if (
                isinstance(created, datetime)
                and created >= cutoff
                and (candidate.body or "").strip() == (text or "").strip()
                and (sender is not None or candidate.messaging_service_sid == self._service)
                and (best is None or created > best.date_created)
            ):
                best = candidate
        if best is None and len(found) >= FIND_LIMIT and not _reaches(found, cutoff):
            raise SendFailed(  # "not found" would be a guess: the row stays in doubt
                FailureKind.TRANSIENT,
                f"looking the message up failed: over {FIND_LIMIT} messages to this number "
                f"since {cutoff:%Y-%m-%d %H:%M:%S} UTC, the look cannot reach its first send",
            )
        if best is None:
            return None
        status = getattr(best, "status", None)
        return Sent(
            provider_message_id=str(best.sid),
            status=status if isinstance(status, str) and status else "queued",
        )

    async def read(self, request: Any) -> Any:
        """One read-only SDK call (`request(client)`: a list page, a fetch) under the timeout;
        its failure raised as a `SendFailed` classified as for a lookup (retry_after kept)."""
        return await self._call(request, check=True)

    async def close(self) -> None:
        http, self._http, self._client = self._http, None, None
        if http is not None:
            await http.close()

    # -- helpers -----------------------------------------------------------------------------

    def status_callback(self, outbox_id: str) -> str:
        """The StatusCallback for one row: our status URL, `oid=<outbox id>` in its query."""
        base = self._status_callback_url or ""
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}oid={quote(outbox_id, safe='')}"

    def _sender(self, message: Outgoing) -> str | None:
        sender = message.payload.get("from") or self._from
        if not isinstance(sender, str) or not sender:
            return None
        return _whatsapp(sender) if message.channel == "whatsapp" else sender

    @staticmethod
    def _to(message: Outgoing) -> str:
        return _whatsapp(message.to) if message.channel == "whatsapp" else message.to

    async def start(self) -> None:
        self._twilio()

    def _twilio(self) -> Any:
        if self._client is None:
            from twilio.rest import Client

            self._http = _form_client()(trace_configs=[_trace()], logger=_sdk_log)
            client = Client(self._account_sid, self._auth_token, http_client=self._http)
            if self._api_base:
                client.api.base_url = self._api_base
            self._client = client
        return self._client

    async def _call(self, request: Any, *, check: bool = False) -> Any:
        """One SDK call under the timeout, its failure classified. `check`: a read (a lookup
        for `find`), safe to repeat, so what would be in doubt is transient."""
        import aiohttp
        from twilio.base.exceptions import TwilioException, TwilioRestException

        client = self._twilio()
        exchange = _Exchange()
        token = _exchange.set(exchange)
        try:
            async with asyncio.timeout(self._timeout):
                return await request(client)
        except TwilioRestException as exc:
            headers = exchange.headers or {}
            failure = twilio_failure(exc, parse_retry_after(headers.get("Retry-After")))
        except TwilioException as exc:  # a list page answered non-200 ("Unable to fetch page")
            headers = exchange.headers or {}
            failure = twilio_failure(
                _page_error(exc), parse_retry_after(headers.get("Retry-After"))
            )
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            failure = _transport_failure(exc, exchange, self._timeout)
        finally:
            _exchange.reset(token)
        if check:
            failure = SendFailed(
                FailureKind.TRANSIENT if failure.kind is FailureKind.IN_DOUBT else failure.kind,
                f"looking the message up failed: {failure.reason}",
                code=failure.code,
                retry_after=failure.retry_after,
            )
        raise failure


def _reaches(found: list[Any], cutoff: datetime) -> bool:
    """Whether a list of Messages, newest first, cut at its limit, goes back to `cutoff`."""
    created = [m.date_created for m in found if isinstance(m.date_created, datetime)]
    return bool(created) and min(created) < cutoff


#: GSM 03.38: the basic set (one septet each) and the extension set (two: escape + char).
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> int:
    """How many segments a carrier splits `text` into (Twilio bills and paces by them).

    GSM-7 when every character is in GSM 03.38: 160 septets in one segment, else 153 each
    (7 go to the concatenation header); an extension character takes two septets. Otherwise
    UCS-2: 70 UTF-16 code units in one, else 67 each. (Twilio's Smart Encoding may turn some
    Unicode into GSM-7 first; counting without it never undercounts.)
    """
    if all(ch in _GSM7_BASIC or ch in _GSM7_EXTENSION for ch in text):
        length, single, multi = sum(2 if ch in _GSM7_EXTENSION else 1 for ch in text), 160, 153
    else:
        length, single, multi = len(text.encode("utf-16-le")) // 2, 70, 67
    return 1 if length <= single else math.ceil(length / multi)


@functools.cache
def _form_client() -> type:
    """`AsyncTwilioHttpClient` posting its form as urlencoded bytes (see "one thing it does
    slowly" above). Made on first use, as the SDK is imported then."""
    import aiohttp
    from twilio.http.async_http_client import AsyncTwilioHttpClient
    from twilio.http.response import Response

    class FormHttpClient(AsyncTwilioHttpClient):  # type: ignore[misc]
        async def request(
            self,
            method: str,
            url: str,
            params: dict[str, object] | None = None,
            data: dict[str, object] | None = None,
            headers: dict[str, str] | None = None,
            auth: tuple[str, str] | None = None,
            timeout: float | None = None,  # noqa: ASYNC109 (the SDK calls it so)
            allow_redirects: bool = False,
        ) -> Response:
            if timeout is not None and timeout <= 0:
                raise ValueError(timeout)
            sent = dict(headers or {})
            body = None
            if data:
                body = urlencode(data, doseq=True).encode()
                sent["Content-Type"] = "application/x-www-form-urlencoded"
            if auth is not None:
                sent["Authorization"] = _basic_auth(*auth)
            async with self.session.request(
                method.upper(),
                url,
                params=params,
                data=body,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout) if timeout is not None else None,
                allow_redirects=allow_redirects,
            ) as response:
                return Response(response.status, await response.text(), response.headers)

    return FormHttpClient


@functools.lru_cache(maxsize=8)
def _basic_auth(login: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{login}:{password}".encode()).decode("ascii")


def _page_error(exc: Any) -> SimpleNamespace:
    """The status, code and message of a list page the client refused to read: it raises a
    bare `TwilioException("Unable to fetch page", response)`, not a TwilioRestException."""
    response = exc.args[1] if len(exc.args) > 1 else None
    status = int(getattr(response, "status_code", 0) or 0)
    try:
        body = json.loads(getattr(response, "text", "") or "{}")
    except ValueError:
        body = {}
    body = body if isinstance(body, dict) else {}
    return SimpleNamespace(status=status, code=body.get("code"), msg=body.get("message") or exc)


def _whatsapp(address: str) -> str:
    return address if address.startswith(_WHATSAPP) else _WHATSAPP + address
