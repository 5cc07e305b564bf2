"""Inbound email shared by Mailgun and SendGrid: form reading, MIME, addresses, the event.

The provider modules (`mailgun.py`, `sendgrid.py`) verify their requests and map their form
fields onto an `InboundEmail`; `email_parsed` turns that into the one normalised
`email.received` event, with attachments moved to content-addressed blobs.

Outbound email (SMTP) is `channels/email_send.py`.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import policy
from email.feedparser import BytesFeedParser
from email.header import decode_header, make_header
from email.message import EmailMessage
from email.parser import HeaderParser
from email.utils import getaddresses, parseaddr, parsedate_to_datetime
from typing import Any

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
from router.events import Attachment, Channel, Contact, Event, EventType
from router.ids import new_ulid
from router.keys import email_conversation

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
