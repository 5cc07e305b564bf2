"""A fake Twilio Messages API on loopback, for the official `twilio` client (9.x).

Pointing the real client at it (twilio 9.13; `Client.api` is the `api.twilio.com` Domain,
whose `base_url` every Messages URL is built from, next-page links included)::

    with FakeTwilio() as fake:
        http = AsyncTwilioHttpClient(timeout=2)           # max_retries left None (notes §1)
        client = Client(fake.account_sid, fake.auth_token, http_client=http)
        client.api.base_url = fake.url                    # default https://api.twilio.com
        msg = await client.messages.create_async(to=..., from_=..., body=...)
        await http.close()

What it reproduces (`../shared/notes/outbound-providers.md` §1):

- `POST /2010-04-01/Accounts/{AccountSid}/Messages.json` (form To, From or
  MessagingServiceSid, Body, StatusCallback, ...): 201 with the Message JSON, `sid` "SM" + 32
  hex, status `queued` (`accepted` with a Messaging Service and no From). Not idempotent: every
  accepted POST is a new Message. Validation as Twilio: 21604 (no To), 21603 (no From or
  service), 21602 (no Body/MediaUrl/ContentSid), 21617 (Body over 1,600 chars), 21609 (bad
  StatusCallback: over 4,000 chars or `_` in the host).
- HTTP basic auth: the account SID and auth token (or `extra_credentials`), else 401 code
  20003; another account in the path is 404 code 20404.
- `GET .../Messages.json` with To, From, DateSent, DateSent< and DateSent> (whole GMT days,
  on the date sent, or the date created while not sent yet), newest first, paged with
  PageSize/Page and Twilio's `first_page_uri`, `next_page_uri`, `previous_page_uri`, `page`,
  `page_size`, `start`, `end`, `uri`; `GET .../Messages/{Sid}.json`, 404 code 20404 if unknown.
- Errors as `{code, message, more_info, status}` (`twilio_error`), 5xx (`server_error`), 429
  code 20429 with Retry-After (`rate_limited`), plus the generic `timeout`, `reset` and
  `accept_then_drop` (the Message exists, the answer is lost: in doubt); `status_failure(63016)`
  creates the Message (201 queued) then fails it with that code, as a WhatsApp send outside
  the 24 h window does. Faults default to op "create"; keys are the `To` number (`fail_for`).
- Inbound messages: `receive(from_, to, body, at=)` adds a Message with `direction`
  `inbound` (status `received`, `date_sent` = `at`) that the list shows, as Twilio keeps the
  SMS its webhook could not deliver (what reconciliation reads back). The list does not
  filter by direction (Twilio's does not either).
- Status callbacks: `advance(sid, status, error_code)` sets a Message's status and POSTs the
  callback Twilio would send to its StatusCallback (form AccountSid, MessageSid, SmsSid,
  MessageStatus, SmsStatus, To, From, ApiVersion, ErrorCode; `X-Twilio-Signature` from
  twilio's `RequestValidator` over the StatusCallback URL). `auto_callbacks=True` sends `sent`
  then `delivered` (or `failed` with the scripted code) after each create. `callback_target`
  ("http://127.0.0.1:PORT") replaces scheme and host of the URL posted to, the signature still
  over the URL given at create, like a proxy in front of the server. Loopback only.

Counters: `accepted` (every Message created, `TwilioMessage` with monotonic and wall times),
`accepted_to(number)`, `messages[sid]` (current JSON), `callbacks` (each callback posted),
plus `calls` and `applied` from `FakeHTTPService`.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import re
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
from twilio.request_validator import RequestValidator

from tests.fakes._http import (
    FakeHTTPService,
    Fault,
    Request,
    Response,
    accept_then_drop,
    first,
    reset,
    respond,
    timeout,
)

__all__ = [
    "TRANSIENT",
    "FakeTwilio",
    "TwilioMessage",
    "accept_then_drop",
    "rate_limited",
    "reset",
    "server_error",
    "status_failure",
    "timeout",
    "twilio_error",
]

API = "/2010-04-01"
_PATH = re.compile(r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages(?:/(?P<sid>[^/]+))?\.json$")
_MEDIA = re.compile(
    r"^/2010-04-01/Accounts/(?P<account>[^/]+)/Messages/(?P<sid>[^/]+)/Media\.json$"
)
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}
_SENT_STATUSES = {"sent", "delivered", "undelivered", "failed", "read"}

MESSAGES: dict[int, str] = {
    20003: "Authentication Error - invalid username",
    20404: "The requested resource was not found",
    20429: "Too Many Requests",
    20500: "An internal server error has occurred",
    20503: "Service Unavailable",
    21211: "Invalid 'To' Phone Number",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
    "'To' number",
    21602: "Message body is required.",
    21603: "A 'From' phone number is required.",
    21604: "A 'To' phone number is required.",
    21609: "Invalid StatusCallback url",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number is not currently reachable using the 'From' phone number "
    "via SMS.",
    21614: "'To' number is not a valid mobile number",
    21617: "The concatenated message body exceeds the 1600 character limit.",
    30003: "Unreachable destination handset",
    63016: "Failed to send freeform message because you are outside the allowed window. "
    "If you are using WhatsApp, please use a Message Template.",
}


def _error_body(code: int, status: int) -> dict[str, Any]:
    return {
        "code": code,
        "message": MESSAGES.get(code, f"Error {code}"),
        "more_info": f"https://www.twilio.com/docs/errors/{code}",
        "status": status,
    }


def _error(code: int, status: int, headers: tuple[tuple[str, str], ...] = ()) -> Response:
    return Response.json(status, _error_body(code, status), headers)


def twilio_error(code: int, status: int = 400) -> Fault:
    """A create rejected with `code` (21211, 21614, 21408, 21610, ...): nothing is created."""
    return respond(_error(code, status), label=str(code))


def server_error(status: int = 500) -> Fault:
    """500 (code 20500) or 503 (20503): in the fake nothing is created."""
    return respond(_error(20000 + status, status), label=str(status))


def rate_limited(retry_after: float = 1) -> Fault:
    """429 code 20429 ("never processed, always safe to retry") with Retry-After seconds."""
    value = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
    return respond(_error(20429, 429, (("Retry-After", value),)), label="429")


def status_failure(code: int = 63016, status: str = "failed") -> Fault:
    """Created and answered 201 `queued`, then the Message turns `status` with `code`."""
    return Fault("accept_then_fail", code=code, label=f"{status}:{code}")


# Failures where Twilio did not act: for "fail 30% of calls transiently".
TRANSIENT: tuple[Fault, ...] = (server_error(500), server_error(503), rate_limited(0), reset())


@dataclass(frozen=True)
class TwilioMessage:
    """One Message created by the fake (the counter tests read)."""

    sid: str
    to: str
    from_: str | None
    messaging_service_sid: str | None
    body: str
    status_callback: str | None
    params: dict[str, list[str]]
    accepted_at: float  # time.monotonic()
    accepted_wall: datetime  # UTC


@dataclass(frozen=True)
class CallbackSent:
    sid: str
    status: str
    error_code: int | None
    url: str
    http_status: int | None  # None: no answer (error in `error`)
    error: str | None = None


def _rfc2822(moment: datetime) -> str:
    return format_datetime(moment)


class FakeTwilio(FakeHTTPService):
    default_op = "create"

    def __init__(
        self,
        account_sid: str = "AC" + "f" * 32,
        auth_token: str = "fake-auth-token",
        *,
        extra_credentials: dict[str, str] | None = None,
        auto_callbacks: bool = False,
        callback_target: str | None = None,
        callback_delay: float = 0.01,
    ) -> None:
        super().__init__()
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.credentials = {account_sid: auth_token, **(extra_credentials or {})}
        self.auto_callbacks = auto_callbacks
        self.callback_target = callback_target
        self.callback_delay = callback_delay
        self.accepted: list[TwilioMessage] = []
        self.messages: dict[str, dict[str, Any]] = {}
        #: Message sid -> its Media resources (the pictures of an inbound MMS).
        self.media: dict[str, list[dict[str, Any]]] = {}
        self.callbacks: list[CallbackSent] = []
        self._order: list[str] = []  # sids, oldest first
        self._callback_urls: dict[str, str] = {}

    # -- counters ---------------------------------------------------------------------------
    def accepted_to(self, to: str) -> list[TwilioMessage]:
        with self.lock:
            return [m for m in self.accepted if m.to == to]

    def accepted_count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def snapshot(self) -> list[TwilioMessage]:
        with self.lock:
            return list(self.accepted)

    # -- inbound messages (what reconciliation lists) ---------------------------------------
    def receive(
        self,
        from_: str,
        to: str,
        body: str,
        *,
        at: datetime | None = None,
        messaging_service_sid: str | None = None,
        media: list[str] | None = None,
    ) -> str:
        """A customer's message arrives at Twilio (`direction` inbound, status `received`,
        sent at `at`, default now): listed by `GET .../Messages.json` like any Message,
        and no webhook is posted (the server was down). `media`: the content types of its
        pictures (an MMS), listed by `GET .../Messages/SID/Media.json`. Returns its sid."""
        sid = "SM" + uuid.uuid4().hex
        stamp = _rfc2822(at or datetime.now(UTC))
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": stamp,
            "date_sent": stamp,
            "date_updated": stamp,
            "direction": "inbound",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": messaging_service_sid,
            "num_media": str(len(media or [])),
            "num_segments": "1",
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "received",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
        }
        with self.lock:
            self.messages[sid] = message
            self._order.append(sid)
            self.media[sid] = [self._picture(sid, kind, stamp) for kind in media or []]
        return sid

    def _picture(self, message_sid: str, content_type: str, stamp: str) -> dict[str, Any]:
        sid = "ME" + uuid.uuid4().hex
        return {
            "account_sid": self.account_sid,
            "content_type": content_type,
            "date_created": stamp,
            "date_updated": stamp,
            "parent_sid": message_sid,
            "sid": sid,
            "uri": f"{API}/Accounts/{self.account_sid}/Messages/{message_sid}/Media/{sid}.json",
        }

    # -- routing and handling ---------------------------------------------------------------
    def route(self, request: Request) -> tuple[str, str | None]:
        if _MEDIA.match(request.path):
            return "media", None
        match = _PATH.match(request.path)
        if match is None:
            return "other", None
        if match["sid"]:
            return "fetch", match["sid"]
        if request.method == "POST":
            return "create", first(request.form(), "To")
        return "list", None

    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        if not self._authorized(request):
            return _error(20003, 401)
        if op == "media":
            return self._media(request)
        match = _PATH.match(request.path)
        if match is None or match["account"] != self.account_sid:
            return _error(20404, 404)
        if op == "create":
            return self._create(request.form(), fault)
        if op == "fetch":
            found = self.messages.get(match["sid"])
            return Response.json(200, found) if found else _error(20404, 404)
        if request.method != "GET":
            return _error(20404, 405)
        return self._list(request)

    def _media(self, request: Request) -> Response:
        """A Message's Media list (one page: a message has at most 10)."""
        match = _MEDIA.match(request.path)
        assert match is not None
        if match["account"] != self.account_sid or match["sid"] not in self.messages:
            return _error(20404, 404)
        items = self.media.get(match["sid"], [])
        uri = request.path
        return Response.json(
            200,
            {
                "media_list": items,
                "end": max(len(items) - 1, 0),
                "first_page_uri": uri,
                "next_page_uri": None,
                "page": 0,
                "page_size": 50,
                "previous_page_uri": None,
                "start": 0,
                "uri": uri,
            },
        )

    def _authorized(self, request: Request) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return self.credentials.get(user) == password

    def _create(self, form: dict[str, list[str]], fault: Fault | None) -> Response:
        to, from_ = first(form, "To"), first(form, "From")
        service = first(form, "MessagingServiceSid")
        body = first(form, "Body") or ""
        callback = first(form, "StatusCallback")
        if not to:
            return _error(21604, 400)
        if not from_ and not service:
            return _error(21603, 400)
        if not body and not form.get("MediaUrl") and not first(form, "ContentSid"):
            return _error(21602, 400)
        if len(body) > 1600:
            return _error(21617, 400)
        if callback is not None and (len(callback) > 4000 or "_" in urlsplit(callback).netloc):
            return _error(21609, 400)
        sid = "SM" + uuid.uuid4().hex
        wall = datetime.now(UTC)
        uri = f"{API}/Accounts/{self.account_sid}/Messages/{sid}.json"
        message: dict[str, Any] = {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": body,
            "date_created": _rfc2822(wall),
            "date_sent": None,
            "date_updated": _rfc2822(wall),
            "direction": "outbound-api",
            "error_code": None,
            "error_message": None,
            "from": from_,
            "messaging_service_sid": service,
            "num_media": str(len(form.get("MediaUrl", []))),
            "num_segments": str(max(1, -(-len(body) // 160))),
            "price": None,
            "price_unit": "USD",
            "sid": sid,
            "status": "queued" if from_ else "accepted",
            "subresource_uris": {"media": uri.replace(".json", "/Media.json")},
            "to": to,
            "uri": uri,
        }
        self.messages[sid] = message
        self._order.append(sid)
        if callback:
            self._callback_urls[sid] = callback
        self.accepted.append(
            TwilioMessage(sid, to, from_, service, body, callback, form, time.monotonic(), wall)
        )
        answer = Response.json(201, dict(message))
        if fault is not None and fault.kind == "accept_then_fail":
            status = fault.label.split(":")[0] or "failed"
            self._set_status(sid, status, fault.code)
            if self.auto_callbacks:
                self._later(sid, [(status, fault.code)])
        elif self.auto_callbacks:
            self._later(sid, [("sent", None), ("delivered", None)])
        return answer

    def _list(self, request: Request) -> Response:
        query = request.query
        to, from_ = first(query, "To"), first(query, "From")
        on, before, after = (_day(first(query, k)) for k in ("DateSent", "DateSent<", "DateSent>"))
        size = min(max(int(first(query, "PageSize") or 50), 1), 1000)
        page = max(int(first(query, "Page") or 0), 0)
        found = []
        for sid in reversed(self._order):  # newest first
            message = self.messages[sid]
            day = _message_day(message)
            if (
                (to is None or message["to"] == to)
                and (from_ is None or message["from"] == from_)
                and (on is None or day == on)
                and (before is None or day <= before)
                and (after is None or day >= after)
            ):
                found.append(message)
        start = page * size
        chunk = found[start : start + size]
        base = f"{API}/Accounts/{self.account_sid}/Messages.json"
        filters = [
            (k, v[0]) for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")
        ]

        def page_uri(number: int, token: str | None = None) -> str:
            params = [*filters, ("PageSize", str(size)), ("Page", str(number))]
            if token:
                params.append(("PageToken", token))
            return f"{base}?{urlencode(params)}"

        more = start + size < len(found)
        return Response.json(
            200,
            {
                "messages": chunk,
                "end": start + max(len(chunk) - 1, 0),
                "first_page_uri": page_uri(0),
                "next_page_uri": page_uri(page + 1, "PA" + chunk[-1]["sid"]) if more else None,
                "page": page,
                "page_size": size,
                "previous_page_uri": page_uri(page - 1) if page > 0 else None,
                "start": start,
                "uri": page_uri(page),
            },
        )

    # -- statuses and callbacks -------------------------------------------------------------
    def _set_status(self, sid: str, status: str, error_code: int | None) -> dict[str, Any]:
        message = self.messages[sid]
        now = _rfc2822(datetime.now(UTC))
        message["status"] = status
        message["date_updated"] = now
        if status in _SENT_STATUSES and message["date_sent"] is None:
            message["date_sent"] = now
        if error_code is not None:
            message["error_code"] = error_code
            message["error_message"] = MESSAGES.get(error_code)
        return message

    def _later(self, sid: str, steps: list[tuple[str, int | None]]) -> None:
        async def run() -> None:
            for status, code in steps:
                await asyncio.sleep(self.callback_delay)
                await self._advance(sid, status, code)

        asyncio.get_running_loop().create_task(run())

    def advance(
        self, sid: str, status: str, error_code: int | None = None, *, callback: bool = True
    ) -> concurrent.futures.Future[int | None]:
        """Set a Message's status and (if `callback` and it has one) POST its status callback.

        Any order, any number of times (Twilio's callbacks can come late, twice, out of order).
        The future gives the callback's HTTP status, None if none was posted. From sync code
        `.result(5)`; from async code `await asyncio.wrap_future(...)`.
        """
        return self.run(self._advance(sid, status, error_code, callback=callback))

    async def _advance(
        self, sid: str, status: str, error_code: int | None, *, callback: bool = True
    ) -> int | None:
        with self.lock:
            message = dict(self._set_status(sid, status, error_code))
            url = self._callback_urls.get(sid)
        if not callback or not url:
            return None
        params = {
            "AccountSid": self.account_sid,
            "ApiVersion": "2010-04-01",
            "From": message["from"] or "",
            "MessageSid": sid,
            "MessageStatus": status,
            "SmsSid": sid,
            "SmsStatus": status,
            "To": message["to"],
        }
        if message["messaging_service_sid"]:
            params["MessagingServiceSid"] = message["messaging_service_sid"]
        if error_code is not None:
            params["ErrorCode"] = str(error_code)
        signature = RequestValidator(self.auth_token).compute_signature(url, params)
        target = _retarget(url, self.callback_target)
        record = CallbackSent(sid, status, error_code, target, None)
        if urlsplit(target).hostname not in _LOOPBACK:
            record = CallbackSent(sid, status, error_code, target, None, "not loopback: refused")
        else:
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    answer = await http.post(
                        target, data=params, headers={"X-Twilio-Signature": signature}
                    )
                record = CallbackSent(sid, status, error_code, target, answer.status_code)
            except httpx.HTTPError as exc:
                record = CallbackSent(sid, status, error_code, target, None, repr(exc))
        with self.lock:
            self.callbacks.append(record)
            self._changed.notify_all()
        return record.http_status


def _retarget(url: str, target: str | None) -> str:
    if not target:
        return url
    parts, base = urlsplit(url), urlsplit(target)
    return urlunsplit((base.scheme, base.netloc, parts.path, parts.query, ""))


def _day(value: str | None) -> date | None:
    return date.fromisoformat(value[:10]) if value else None


def _message_day(message: dict[str, Any]) -> date:
    stamp = message["date_sent"] or message["date_created"]
    return datetime.strptime(stamp, "%a, %d %b %Y %H:%M:%S %z").astimezone(UTC).date()
