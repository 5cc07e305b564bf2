"""Twilio: inbound SMS/MMS/WhatsApp and message status callbacks.

Verification is the documented X-Twilio-Signature scheme, computed once: HMAC over the URL
Twilio called followed by the sorted form parameters (each name, then each of its distinct
values, sorted), base64. twilio's `RequestValidator.validate` signs the URL twice (with and
without the port) on every call and halves the ingest ceiling; here the port variant is tried
only when the first comparison fails. tests/channels/test_twilio_signature.py holds the
equivalence with the library on every fixture and on its own test vectors. Twilio signs no
timestamp: replay protection is the dedupe on MessageSid.

Below the adapter, the sending side: `TwilioSender` (SMS and WhatsApp through the Messages
API), the Twilio half of the dispatcher's senders (channels/outbound.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import functools
import hashlib
import hmac
import itertools
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, ClassVar, Literal
from urllib.parse import parse_qs, quote, urlencode, urlparse

from channels.base import Ack, InboundRequest, Parsed, PayloadError, SignatureError
from channels.outbound import FailureKind, Outgoing, SendFailed, Sent
from router.events import Attachment, Channel, Contact, Event, EventType
from router.ids import new_ulid
from router.keys import number_conversation

if TYPE_CHECKING:
    import aiohttp

SIGNATURE_HEADER = "x-twilio-signature"
SETTINGS_HEADER = "x-twilio-webhooks-signature-settings"
_HASHES = {"HMAC_SHA1": hashlib.sha1, "HMAC_SHA256": hashlib.sha256}
TWIML_EMPTY = b'<?xml version="1.0" encoding="UTF-8"?><Response/>'


def compute_signature(
    token: bytes, url: str, params: Iterable[tuple[str, str]], algorithm: str = "HMAC_SHA1"
) -> bytes:
    """Twilio's signature of `url` + params, base64 (bytes).

    The library sorts the distinct names, then each name's distinct values: that is the
    order of the distinct (name, value) pairs sorted as tuples.
    """
    signed = url + "".join(itertools.chain.from_iterable(sorted(set(params))))
    return base64.b64encode(hmac.digest(token, signed.encode("utf-8"), _HASHES[algorithm]))


@functools.lru_cache(maxsize=256)
def signed_urls(url: str) -> tuple[str, str]:
    """The URL as twilio's library reads it, then the same URL with its port removed, or
    with the default port added (Twilio signs either form depending on its backend).

    Both go through `urlparse(...).geturl()` as in the library, which normalises the URL
    (lower-case scheme, no empty `?`), so we accept exactly the URLs it accepts.
    """
    parts = urlparse(url)
    if parts.port:
        alternate = parts._replace(netloc=parts.netloc.rpartition(":")[0])
    else:
        port = 443 if parts.scheme == "https" else 80
        alternate = parts._replace(netloc=f"{parts.netloc}:{port}")
    return parts.geturl(), alternate.geturl()


def signature_algorithm(settings_header: str | None) -> str:
    """`algorithm=` of X-Twilio-Webhooks-Signature-Settings; HMAC_SHA1 when absent."""
    for part in (settings_header or "").split(","):
        name, sep, value = part.partition("=")
        if sep and name.strip() == "algorithm" and value.strip():
            return value.strip().upper()
    return "HMAC_SHA1"


class TwilioAdapter:
    """One Twilio webhook endpoint: `messages` (inbound) or `status` (delivery callbacks)."""

    source = "twilio"
    content_types: ClassVar[frozenset[str]] = frozenset({"application/x-www-form-urlencoded"})

    def __init__(self, auth_tokens: Sequence[str], kind: Literal["messages", "status"]) -> None:
        self._tokens = [token.encode("utf-8") for token in auth_tokens]
        self.kind = kind

    def verify(self, request: InboundRequest) -> None:
        signature = request.headers.get(SIGNATURE_HEADER)
        if not signature:
            raise SignatureError("missing X-Twilio-Signature")
        algorithm = signature_algorithm(request.headers.get(SETTINGS_HEADER))
        if algorithm not in _HASHES:
            raise SignatureError(f"unsupported signature algorithm {algorithm}")
        params = self._signed_params(request)
        given = signature.encode("ascii", "replace")
        for url in signed_urls(request.url):
            if self._matches(url, params, given, algorithm):
                return
        raise SignatureError("X-Twilio-Signature does not match")

    def _matches(self, url: str, params: list[tuple[str, str]], given: bytes, alg: str) -> bool:
        found = False
        for token in self._tokens:
            found |= hmac.compare_digest(compute_signature(token, url, params, alg), given)
        return found

    @staticmethod
    def _signed_params(request: InboundRequest) -> list[tuple[str, str]]:
        """Form params; for a JSON body none, its hash being in the URL's bodySHA256 instead.

        A form body is signed through its params even if the URL has a bodySHA256 (as the
        library does when given the form).
        """
        if request.content_type == "application/x-www-form-urlencoded":
            try:
                return request.form()
            except PayloadError as exc:
                raise SignatureError("body is not UTF-8 form data") from exc
        query = parse_qs(urlparse(request.url).query)
        if "bodySHA256" not in query:
            raise SignatureError("a non-form body needs bodySHA256 in the URL")
        expected = hashlib.sha256(request.body).hexdigest().encode()
        if not hmac.compare_digest(expected, query["bodySHA256"][0].encode()):
            raise SignatureError("bodySHA256 does not match the body")
        return []

    def parse(self, request: InboundRequest) -> Parsed:
        form = request.form()
        event = (
            self._message(request, form) if self.kind == "messages" else self._status(request, form)
        )
        return Parsed(events=[event], ack=Ack(media_type="text/xml", body=TWIML_EMPTY))

    def _message(self, request: InboundRequest, form: list[tuple[str, str]]) -> Event:
        params = dict(form)
        sid = _required(params, "MessageSid", "SmsMessageSid", "SmsSid")
        sender, ours = _required(params, "From"), _required(params, "To")
        channel, customer = _split_address(sender)
        return Event(
            id=new_ulid(request.received_at),
            source=self.source,
            type=EventType.MESSAGE_RECEIVED,
            provider_type="message",
            dedupe_key=f"twilio:{sid}",
            channel=channel,
            contact=Contact(address=customer, name=params.get("ProfileName") or None),
            conversation_key=number_conversation(channel, customer, _split_address(ours)[1]),
            text=params.get("Body", ""),
            attachments=_media(params),
            data=_data(params, _MESSAGE_FIELDS),
            received_at=request.received_at,
            correlation_id=request.correlation_id,
        )

    def _status(self, request: InboundRequest, form: list[tuple[str, str]]) -> Event:
        params = dict(form)
        sid = _required(params, "MessageSid", "SmsSid")
        status = _required(params, "MessageStatus", "SmsStatus")
        customer_raw = _required(params, "To")
        channel, customer = _split_address(customer_raw)
        ours = params.get("From")
        return Event(
            id=new_ulid(request.received_at),
            source=self.source,
            type=EventType.MESSAGE_STATUS,
            provider_type=f"message.{status}",
            dedupe_key=f"twilio:{sid}:{status}",
            channel=channel,
            contact=Contact(address=customer),
            conversation_key=(
                number_conversation(channel, customer, _split_address(ours)[1]) if ours else None
            ),
            data={**_data(params, _STATUS_FIELDS), "status": status},
            received_at=request.received_at,
            correlation_id=request.correlation_id,
        )


_MESSAGE_FIELDS = {
    "MessageSid": "message_sid",
    "AccountSid": "account_sid",
    "To": "to",
    "From": "from",
    "MessagingServiceSid": "messaging_service_sid",
    "NumMedia": "num_media",
    "NumSegments": "num_segments",
    "OptOutType": "opt_out_type",
    "WaId": "wa_id",
    "ButtonPayload": "button_payload",
    "ButtonText": "button_text",
    "FromCountry": "from_country",
    "FromState": "from_state",
    "FromCity": "from_city",
    "Latitude": "latitude",
    "Longitude": "longitude",
    "ReferralNumMedia": "referral_num_media",
}
_STATUS_FIELDS = {
    "MessageSid": "message_sid",
    "AccountSid": "account_sid",
    "To": "to",
    "From": "from",
    "MessagingServiceSid": "messaging_service_sid",
    "ErrorCode": "error_code",
    "ErrorMessage": "error_message",
    "RawDlrDoneDate": "raw_dlr_done_date",
    "ChannelStatusMessage": "channel_status_message",
}


def _required(params: dict[str, str], *names: str) -> str:
    for name in names:
        value = params.get(name)
        if value:
            return value
    raise PayloadError(f"missing {names[0]}")


def _split_address(address: str) -> tuple[Channel, str]:
    """`whatsapp:+1555...` -> (whatsapp, +1555...); a bare number is SMS."""
    if address.startswith("whatsapp:"):
        return Channel.WHATSAPP, address[len("whatsapp:") :]
    return Channel.SMS, address


def _data(params: dict[str, str], fields: dict[str, str]) -> dict[str, Any]:
    return {fields[name]: value for name, value in params.items() if name in fields}


def _media(params: dict[str, str]) -> tuple[Attachment, ...]:
    try:
        count = int(params.get("NumMedia") or 0)
    except ValueError as exc:
        raise PayloadError("NumMedia is not a number") from exc
    return tuple(
        Attachment(url=params[f"MediaUrl{i}"], content_type=params.get(f"MediaContentType{i}"))
        for i in range(min(count, 10))
        if f"MediaUrl{i}" in params
    )


# --- Sending: TwilioSender (SMS, WhatsApp) ----------------------------------------------------
#
# The official client with its aiohttp transport (`AsyncTwilioHttpClient`), `max_retries` left
# unset: aiohttp-retry would repeat a POST that Twilio answered 5xx, and a create is not
# idempotent (../shared/notes/outbound-providers.md §1). Three things the client does not do,
# done here:
#
# - a timeout: `AsyncTwilioHttpClient(timeout=...)` is stored but never applied to a request,
#   so each call runs under `asyncio.timeout`;
# - Retry-After: `TwilioRestException` carries the status and code, not the headers; they are
#   read from the answer through an aiohttp trace, per call (a context variable), so
#   concurrent sends on the one session never see each other's answers;
# - whether the request went out: the same trace notes when the request's headers were
#   handed to the connection. A timeout or a broken connection before that is transient
#   (refused, DNS, connect timeout: Twilio saw nothing); after it, in doubt.
#
# And one thing it does slowly: `AsyncTwilioHttpClient.request` hands aiohttp the form as a
# dict, which aiohttp wraps in a `FormData` that builds a multipart writer (with a `uuid4`
# boundary) on every request, only to urlencode the dict in the end. `_form_client()` is the
# same client sending the bytes it urlencodes itself: the same wire bytes, session and trace,
# about 55 of 320 us of CPU less per send (bench/README.md, "The send path").
#
# The SDKs are imported on first use: every process imports this module for the inbound
# adapter, and twilio with aiohttp costs about 0.2 s to import.
#
# Twilio keeps no field of ours on a Message and does not echo StatusCallback, so the outbox
# id rides in the StatusCallback query (`?oid=`), which tags the delivery receipts; a send left
# in doubt is looked up by to, from, day and text (`find`).

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
