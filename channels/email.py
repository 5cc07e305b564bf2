"""Inbound email shared by Mailgun and SendGrid: form reading, MIME, addresses, the event.

The provider modules (`mailgun.py`, `sendgrid.py`) verify their requests and map their form
fields onto an `InboundEmail`; `email_parsed` turns that into the one normalised
`email.received` event, with attachments moved to content-addressed blobs.

Outbound, `SmtpSender` (at the end) hands `email` outbox rows to an SMTP server.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import re
import socket
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.feedparser import BytesFeedParser
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import HeaderParser
from email.utils import formatdate, getaddresses, parseaddr, parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiosmtplib
import msgspec
import multipart

from channels.base import (
    MAX_FORM_FIELDS,
    Ack,
    InboundRequest,
    LimitExceeded,
    Parsed,
    PayloadError,
    sha256_hex,
)
from channels.outbound import FailureKind, NotCheckable, Outgoing, SendFailed, Sent
from router.events import Attachment, Channel, Contact, Event, EventType
from router.ids import new_ulid
from router.keys import email_conversation

if TYPE_CHECKING:
    from router.config import EmailChannelConfig

RECEIVED_ACK = Ack(body=b'{"received":true}')
#: HTML bodies up to this many characters stay in `data.html`; longer ones become a blob.
HTML_INLINE_MAX = 16 * 1024
#: Headers copied into `data.headers` (lower case): threading, auto-replies, mailing lists.
HEADERS_OF_INTEREST = (
    "date",
    "reply-to",
    "return-path",
    "delivered-to",
    "auto-submitted",
    "precedence",
    "list-id",
    "list-unsubscribe",
    "x-autoreply",
    "x-autorespond",
    "x-auto-response-suppress",
)
_ANGLE_ADDR = re.compile(r"<\s*([^<>\s@]+@[^<>\s]+)\s*>")
_MSG_ID = re.compile(r"<([^<>\s]+)>")
_FOLD = re.compile(r"\r?\n[ \t]")
#: Most parts a MIME message may have, and how deep multiparts may nest: the stdlib parser's
#: cost grows with the square of the depth (20,000 levels took 11 s), real mail nests a few.
MAX_MIME_PARTS = 500
MAX_MIME_DEPTH = 20
#: compat32 reads headers as plain text: the default policy parses Content-Type again on
#: every lookup (about 1 ms a part); values are decoded by `Headers` and `decode_words`.
_MIME_POLICY = policy.compat32.clone(linesep="\r\n")
#: The MIME parser is fed this many bytes at a time.
_MIME_CHUNK = 64 * 1024


# -- form bodies ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FormPart:
    """One form field or uploaded file, as raw bytes."""

    name: str
    data: bytes
    filename: str | None = None
    content_type: str | None = None
    charset: str | None = None


class Form:
    """The fields of a form body, in order; lookups return the first value of a name."""

    def __init__(self, parts: Sequence[FormPart]) -> None:
        self.parts = list(parts)
        self._first: dict[str, FormPart] = {}
        self._folded: dict[str, FormPart] = {}
        for part in self.parts:
            self._first.setdefault(part.name, part)
            self._folded.setdefault(part.name.lower(), part)

    def text(self, name: str, charset: str | None = None) -> str | None:
        """Field `name` decoded (given charset, else the part's, else UTF-8), or None."""
        part = self._first.get(name)
        return None if part is None else decode_bytes(part.data, charset or part.charset)

    def text_ci(self, name: str) -> str | None:
        """Like `text` but the name is matched case-insensitively (MIME header fields)."""
        part = self._folded.get(name.lower())
        return None if part is None else decode_bytes(part.data, part.charset)

    def raw(self, name: str) -> bytes | None:
        part = self._first.get(name)
        return None if part is None else part.data

    def json(self, name: str) -> Any:
        """Field `name` decoded as JSON, None if absent; PayloadError if it is not JSON."""
        raw = self.raw(name)
        if raw is None or not raw.strip():
            return None
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise PayloadError(f"field {name} is not valid JSON") from exc


def read_form(request: InboundRequest) -> Form:
    """The request body as a `Form` (multipart or url-encoded), read once per request;
    PayloadError if malformed, LimitExceeded past MAX_FORM_FIELDS fields."""
    form = request.memo.get("form")
    if not isinstance(form, Form):
        form = request.memo["form"] = _read_form(request)
    return form


def _read_form(request: InboundRequest) -> Form:
    if request.content_type != "multipart/form-data":
        return Form([FormPart(name, value.encode()) for name, value in request.form()])
    _, options = multipart.parse_options_header(request.headers.get("content-type", ""))
    boundary = options.get("boundary", "")
    if not boundary:
        raise PayloadError("multipart body without a boundary")
    try:
        return Form(_multipart_parts(request.body, boundary))
    except multipart.ParserLimitReached as exc:
        raise LimitExceeded(f"multipart body over a limit: {exc}") from exc
    except multipart.MultipartError as exc:
        raise PayloadError(f"malformed multipart body: {exc}") from exc


def _multipart_parts(body: bytes, boundary: str) -> list[FormPart]:
    """All parts of an in-memory multipart body (no spooling: the body is already in RAM)."""
    parts: list[FormPart] = []
    segment: Any = None
    chunks: list[bytes] = []
    with multipart.PushMultipartParser(boundary, max_segment_count=MAX_FORM_FIELDS) as parser:
        for event in parser.parse(body):
            if isinstance(event, multipart.MultipartSegment):
                segment, chunks = event, []
            elif event:
                chunks.append(event)
            else:
                parts.append(
                    FormPart(
                        name=segment.name or "",
                        data=b"".join(chunks),
                        filename=segment.filename or None,
                        content_type=segment.content_type,
                        charset=segment.charset,
                    )
                )
    return parts


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes to text in `charset` (UTF-8 if absent or unknown); bad bytes become U+FFFD."""
    try:
        codec = codecs.lookup(charset or "utf-8").name
    except LookupError:
        codec = "utf-8"
    return data.decode(codec, errors="replace")


# -- headers and addresses ------------------------------------------------------------------


class Headers:
    """Message headers with case-insensitive lookups; values unfolded, still RFC 2047 encoded."""

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._values: dict[str, list[str]] = {}
        for name, value in items:
            value = _FOLD.sub(" ", utf8_header(value)).strip()
            self._values.setdefault(name.strip().lower(), []).append(value)

    @classmethod
    def from_block(cls, block: str) -> Headers:
        """Parse a raw header block (SendGrid's `headers` field)."""
        message = HeaderParser(policy=policy.compat32).parsestr(block, headersonly=True)
        return cls((name, str(value)) for name, value in message.items())

    def get(self, name: str) -> str | None:
        values = self._values.get(name.lower())
        return values[0] if values else None

    def decoded(self, name: str) -> str | None:
        value = self.get(name)
        return None if value is None else decode_words(value)


def utf8_header(value: str) -> str:
    """A header value with raw 8-bit bytes (RFC 6532 UTF-8 headers), which the stdlib parser
    leaves surrogate-escaped, decoded: a lone surrogate can be neither stored nor logged."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return value.encode("utf-8", "replace").decode("utf-8")


def decode_words(value: str) -> str:
    """Decode RFC 2047 encoded words (`=?utf-8?q?...?=`); the input if it cannot be decoded."""
    if "=?" not in value:
        return value
    try:
        return str(make_header(decode_header(value)))
    except (LookupError, UnicodeError, ValueError):
        return value


def mailbox(value: str | None) -> tuple[str | None, str | None]:
    """`(display name, lower-case address)` of a From value; (None, None) if it has none."""
    if not value:
        return None, None
    matches = list(_ANGLE_ADDR.finditer(value))
    if matches:
        address = matches[-1].group(1)
        name = value[: matches[-1].start()].strip().strip('"').strip()
    else:
        name, address = parseaddr(value)
        if "@" not in address:
            return None, None
    return (decode_words(name) or None), address.strip().lower()


def addresses(*values: str | None) -> list[str]:
    """Every address in address-list header values, lower case, in order, without repeats."""
    found: list[str] = []
    for _, address in getaddresses([v for v in values if v]):
        address = address.strip().lower()
        if "@" in address and address not in found:
            found.append(address)
    return found


def message_id(value: str | None) -> str | None:
    """A Message-ID without the angle brackets, or None."""
    if not value:
        return None
    match = _MSG_ID.search(value)
    found = match.group(1) if match else value.strip().strip("<>").strip()
    return found or None


def message_ids(value: str | None) -> list[str]:
    """All ids of a References header, in order."""
    return _MSG_ID.findall(value or "")


def header_date(value: str | None) -> datetime | None:
    """The Date header as an aware datetime, None if absent or unparseable."""
    if not value:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- MIME -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawAttachment:
    content: bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass(frozen=True, kw_only=True)
class InboundEmail:
    """One inbound email, whatever provider brought it; values not yet normalised."""

    headers: Headers
    #: The From value (header or provider field).
    from_: str | None = None
    to: str | None = None
    cc: str | None = None
    subject: str | None = None
    text: str | None = None
    html: str | None = None
    envelope_from: str | None = None
    envelope_to: list[str] = field(default_factory=list)
    attachments: list[RawAttachment] = field(default_factory=list)
    #: Provider-specific fields added to `data` as they are.
    extra: dict[str, Any] = field(default_factory=dict)


def parse_mime(raw: bytes) -> InboundEmail:
    """A full MIME message (SendGrid raw mode, Mailgun `body-mime`) as an `InboundEmail`;
    PayloadError past MAX_MIME_PARTS parts or MAX_MIME_DEPTH levels of nesting."""
    message = _bounded_mime(raw)
    headers = Headers((name, str(value)) for name, value in message.raw_items())
    return InboundEmail(
        headers=headers,
        from_=headers.get("from"),
        to=headers.get("to"),
        cc=headers.get("cc"),
        subject=headers.decoded("subject"),
        text=_body_text(message, "plain"),
        html=_body_text(message, "html"),
        attachments=[_mime_attachment(part) for part in message.iter_attachments()],
    )


def _bounded_mime(raw: bytes) -> EmailMessage:
    """The stdlib parser, stopped as soon as a message has too many parts or levels.

    The parser calls its message factory for each new part, with the enclosing multiparts on
    its stack (no public API tells the depth, hence the private `_msgstack`).
    """
    created = 0
    parsers: list[BytesFeedParser] = []  # empty while the parser makes its root message

    def new_part(**kwargs: Any) -> EmailMessage:
        nonlocal created
        created += 1
        if created > MAX_MIME_PARTS:
            raise PayloadError(f"MIME message has more than {MAX_MIME_PARTS} parts")
        depth = len(getattr(parsers[0], "_msgstack", ())) if parsers else 0
        if depth >= MAX_MIME_DEPTH:
            raise PayloadError(f"MIME parts nest more than {MAX_MIME_DEPTH} levels deep")
        return EmailMessage(**kwargs)

    parser = BytesFeedParser(_factory=new_part, policy=_MIME_POLICY)
    parsers.append(parser)
    for start in range(0, len(raw), _MIME_CHUNK):
        parser.feed(raw[start : start + _MIME_CHUNK])
    message = parser.close()
    assert isinstance(message, EmailMessage)
    return message


def _body_text(message: EmailMessage, subtype: str) -> str | None:
    body = message.get_body(preferencelist=(subtype,))
    if body is None or body.get_content_subtype() != subtype:
        return None
    payload = body.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None
    return decode_bytes(payload, body.get_content_charset())


def _mime_attachment(part: EmailMessage) -> RawAttachment:
    payload = part.get_payload(decode=True)
    content = payload if isinstance(payload, bytes) else b""
    return RawAttachment(content, part.get_filename(), part.get_content_type())


# -- the event ------------------------------------------------------------------------------


def email_parsed(source: str, request: InboundRequest, mail: InboundEmail) -> Parsed:
    """The normalised `email.received` event of `mail`, its blobs and the JSON ack."""
    name, sender = mailbox(mail.from_)
    if sender is None:
        name, sender = mailbox(mail.envelope_from)
    if sender is None:
        raise PayloadError("no sender address in From or the envelope")
    to = addresses(mail.to)
    recipient = next(iter(addresses(*mail.envelope_to) or to), None)
    if recipient is None:
        raise PayloadError("no recipient address in To or the envelope")
    blobs: dict[str, bytes] = {}
    attachments = tuple(_attachment(item, blobs) for item in mail.attachments)
    msg_id = message_id(mail.headers.get("message-id"))
    event = Event(
        id=new_ulid(request.received_at),
        source=source,
        type=EventType.EMAIL_RECEIVED,
        provider_type="inbound",
        dedupe_key=f"{source}:{msg_id or sha256_hex(request.body)}",
        channel=Channel.EMAIL,
        contact=Contact(address=sender, name=name),
        conversation_key=email_conversation(sender, recipient),
        text=_clean_text(mail.text),
        attachments=attachments,
        data=_data(mail, to, sender, msg_id, blobs),
        received_at=request.received_at,
        occurred_at=header_date(mail.headers.get("date")),
        correlation_id=request.correlation_id,
    )
    return Parsed(events=[event], ack=RECEIVED_ACK, blobs=blobs)


def _clean_text(text: str | None) -> str | None:
    """Unix newlines, no surrounding blank lines (MIME bodies end with CRLF)."""
    return None if text is None else text.replace("\r\n", "\n").strip()


def _attachment(item: RawAttachment, blobs: dict[str, bytes]) -> Attachment:
    digest = sha256_hex(item.content)
    blobs[digest] = item.content
    return Attachment(
        blob=digest,
        filename=decode_words(item.filename) if item.filename else None,
        content_type=item.content_type,
        size=len(item.content),
    )


def _data(
    mail: InboundEmail, to: list[str], sender: str, msg_id: str | None, blobs: dict[str, bytes]
) -> dict[str, Any]:
    headers = mail.headers
    data: dict[str, Any] = {
        "from": sender,
        "to": to,
        "cc": addresses(mail.cc),
        "subject": mail.subject if mail.subject is not None else headers.decoded("subject"),
        "message_id": msg_id,
        "in_reply_to": message_id(headers.get("in-reply-to")),
        "references": message_ids(headers.get("references")),
        "headers": {
            name: value
            for name in HEADERS_OF_INTEREST
            if (value := headers.decoded(name)) is not None
        },
        "envelope": {"from": mail.envelope_from, "to": mail.envelope_to},
    }
    if mail.html is not None:
        if len(mail.html) <= HTML_INLINE_MAX:
            data["html"] = mail.html
        else:
            content = mail.html.encode("utf-8")
            data["html_blob"] = digest = sha256_hex(content)
            blobs[digest] = content
    data.update(mail.extra)
    return data


# -- outbound: the SMTP sender --------------------------------------------------------------

#: Subject of an email whose payload gives none.
DEFAULT_SUBJECT = "A message from Switchboard"
#: Characters an outbox id keeps in its Message-ID; any other is written `=XX` per UTF-8 byte
#: (so `:` becomes `=3A`): the result is a dot-atom, and distinct ids stay distinct.
_MSGID_KEEP = frozenset(string.ascii_letters + string.digits + "-_")
#: Bodies are built 7-bit clean (quoted-printable or base64 when not ASCII): the server need
#: not offer 8BITMIME. Serialised with CRLF; SMTPUTF8 only for a non-ASCII address.
_BUILD_POLICY = policy.SMTP.clone(cte_type="7bit")
_UTF8_POLICY = policy.SMTPUTF8.clone(cte_type="7bit")
_CONTROL = re.compile(r"[\x00-\x20\x7f<>]")


def outbox_message_id(outbox_id: str) -> str:
    """`<{id}@switchboard>`, the outbox id escaped into a valid msg-id: a resend carries the
    same Message-ID, so a duplicate is recognisable in the recipient's mailbox (RFC 5322
    §3.6.4)."""
    left = "".join(
        char if char in _MSGID_KEEP else "".join(f"={byte:02X}" for byte in char.encode())
        for char in outbox_id
    )
    return f"<{left}@switchboard>"


class _Mail:
    """One outgoing email: envelope addresses and the serialised message."""

    def __init__(self, message: Outgoing, configured_from: str | None) -> None:
        payload = message.payload
        from_ = configured_from or _text(payload.get("from"))
        if not from_:
            raise SendFailed(FailureKind.PERMANENT, "no From address: set channels.email.from")
        self.mail_from = _envelope_address(from_, "From")
        self.rcpt_to = _envelope_address(message.to, "recipient")
        self.utf8 = not (self.mail_from + self.rcpt_to).isascii()
        self.message_id = outbox_message_id(message.id)
        subject = _text(payload.get("subject")) or DEFAULT_SUBJECT
        mail = EmailMessage(policy=_BUILD_POLICY)
        try:
            mail["From"] = from_
            mail["To"] = message.to
            mail["Subject"] = " ".join(subject.split())  # no CR/LF: a header is one line
            mail["Date"] = formatdate(usegmt=True)
            mail["Message-ID"] = self.message_id
            mail.set_content(_text(payload.get("text")) or "")
            self.raw = mail.as_bytes(policy=_UTF8_POLICY if self.utf8 else _BUILD_POLICY)
        except (ValueError, UnicodeError) as exc:
            raise SendFailed(FailureKind.PERMANENT, f"the email cannot be built: {exc}") from exc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value.strip() else None


def _envelope_address(value: str, what: str) -> str:
    """The addr-spec of `Name <addr>` or `addr`; PERMANENT if it is not an email address."""
    _, address = parseaddr(value)
    if "@" not in address or _CONTROL.search(address) or "\n" in value or "\r" in value:
        raise SendFailed(FailureKind.PERMANENT, f"{what} {value!r} is not an email address")
    return address


class SmtpSender:
    """Emails through one SMTP server (aiosmtplib), a connection per message.

    The phases are driven one by one (connect, EHLO, STARTTLS and AUTH when configured, MAIL,
    RCPT, DATA) because where a failure happens decides what it means (notes §3): before DATA
    nothing was accepted (4xx and lost connections transient, 5xx permanent); a 4xx or 5xx
    answer to DATA is the same; but a connection lost or timed out inside DATA, before the
    final reply, may follow a delivery: in doubt. SMTP has no way to ask afterwards.
    """

    channels: tuple[str, ...] = ("email",)

    def __init__(
        self,
        *,
        host: str,
        port: int = 25,
        from_: str | None = None,
        username: str | None = None,
        password: str | None = None,
        starttls: bool = False,
        timeout_seconds: float = 30.0,
        local_hostname: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._from = from_
        self._username = username
        self._password = password
        self._starttls = starttls
        self._timeout = timeout_seconds
        self._local_hostname = local_hostname

    @classmethod
    def from_config(
        cls, config: EmailChannelConfig, *, timeout_seconds: float = 30.0
    ) -> SmtpSender:
        return cls(
            host=config.smtp_host,
            port=config.smtp_port,
            from_=config.from_,
            username=config.username,
            password=config.password,
            starttls=config.starttls,
            timeout_seconds=timeout_seconds,
        )

    def destination(self, message: Outgoing) -> str:
        return f"{self.host}:{self.port}"

    def units(self, message: Outgoing) -> int:
        return 1

    async def send(self, message: Outgoing) -> Sent:
        mail = _Mail(message, self._from)  # a message that cannot be built fails before I/O
        smtp = aiosmtplib.SMTP(
            hostname=self.host,
            port=self.port,
            timeout=self._timeout,
            start_tls=False,  # only when configured, in its own phase
            local_hostname=await self._hostname(),
        )
        try:
            await self._deliver(smtp, mail, self.destination(message))
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
                await smtp.quit(timeout=min(self._timeout, 5.0))  # accepted: only courtesy
        finally:
            smtp.close()  # also when cancelled
        return Sent(provider_message_id=mail.message_id.strip("<>"))

    async def _deliver(self, smtp: aiosmtplib.SMTP, mail: _Mail, where: str) -> None:
        """The SMTP conversation up to the 250 after DATA; SendFailed by the failed phase."""
        phase = "connect"
        try:
            async with asyncio.timeout(self._timeout):
                await smtp.connect()
                phase = "EHLO"
                await smtp.ehlo()
                if self._starttls:
                    phase = "STARTTLS"
                    await smtp.starttls()
                    await smtp.ehlo()
                if self._username:
                    phase = "AUTH"
                    await smtp.login(self._username, self._password or "")
                phase = "MAIL"
                await smtp.mail(mail.mail_from, **_utf8_options(smtp, mail))
                phase = "RCPT"
                await smtp.rcpt(mail.rcpt_to, encoding="utf-8" if mail.utf8 else "ascii")
                phase = "DATA"
                await smtp.data(mail.raw)
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise _smtp_failure(exc, phase, where) from exc

    async def find(self, message: Outgoing, since: datetime) -> Sent | None:
        raise NotCheckable("SMTP cannot be asked afterwards: the 250 after DATA is the receipt")

    async def start(self) -> None:
        return None  # nothing to build ahead

    async def close(self) -> None:
        return None  # no connection outlives a send

    async def _hostname(self) -> str:
        """The EHLO name, looked up once (aiosmtplib would call getfqdn on every connect)."""
        if self._local_hostname is None:
            self._local_hostname = await asyncio.to_thread(socket.getfqdn)
        return self._local_hostname


def _utf8_options(smtp: aiosmtplib.SMTP, mail: _Mail) -> dict[str, Any]:
    """MAIL options: SMTPUTF8 for a non-ASCII address, PERMANENT if the server lacks it."""
    if not mail.utf8:
        return {}
    if not smtp.supports_extension("smtputf8"):
        raise aiosmtplib.SMTPNotSupported("a non-ASCII address needs SMTPUTF8, not offered")
    return {"options": ["SMTPUTF8"], "encoding": "utf-8"}


def _smtp_failure(exc: BaseException, phase: str, where: str) -> SendFailed:
    """A failed phase, classified (notes §3)."""
    if isinstance(exc, aiosmtplib.SMTPResponseException) and 400 <= exc.code < 600:
        kind = FailureKind.PERMANENT if exc.code >= 500 else FailureKind.TRANSIENT
        reason = f"{where} answered {exc.code} at {phase}: {exc.message}"
        return SendFailed(kind, reason, code=str(exc.code))
    detail = str(exc) or type(exc).__name__
    if phase == "DATA":
        reason = f"{where} lost during DATA before its final reply, may be delivered: {detail}"
        return SendFailed(FailureKind.IN_DOUBT, reason)
    if type(exc) in (aiosmtplib.SMTPException, aiosmtplib.SMTPNotSupported):
        # STARTTLS or AUTH configured but not offered, SMTPUTF8 missing: retrying cannot help
        return SendFailed(FailureKind.PERMANENT, f"{where} at {phase}: {detail}")
    return SendFailed(FailureKind.TRANSIENT, f"{where} failed at {phase}: {detail}")
