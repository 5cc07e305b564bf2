"""The shape every channel adapter shares: verify the raw bytes, then parse into Events.

Adapters know the event model and their provider, nothing else: no web framework, no store.
The HTTP edge builds an `InboundRequest`, calls `verify` then `parse`, commits the events and
only then sends the `Ack` the adapter chose.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import ClassVar, Protocol
from urllib.parse import unquote, unquote_to_bytes

import msgspec

from router.events import Event


class SignatureError(Exception):
    """Verification failed: the edge answers 401 and stores nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class PayloadError(Exception):
    """The request was authentic but its payload is malformed: 400, raw body quarantined."""


class LimitExceeded(Exception):
    """The request is over a size or count limit: 413 before verification, nothing parsed."""


#: Most fields a form body may have: counted before anything is decoded, so a body of a
#: million empty fields costs one `bytes.count`, not a million Python objects. (The HTTP edge
#: also counts them as the body arrives, to refuse such a body before reading all of it.)
MAX_FORM_FIELDS = 1000


class Ack(msgspec.Struct, frozen=True, kw_only=True):
    """What to answer the provider once the events are committed."""

    status: int = 200
    media_type: str = "application/json"
    body: bytes = b""


class Parsed(msgspec.Struct, frozen=True, kw_only=True):
    """The outcome of parsing one verified request."""

    events: list[Event]
    ack: Ack
    #: Content to put in the blob store before commit, keyed by sha256 hex (attachments).
    blobs: dict[str, bytes] = {}


class InboundRequest:
    """One webhook as the adapter sees it: raw bytes and the metadata signatures cover."""

    __slots__ = (
        "_form",
        "body",
        "content_type",
        "correlation_id",
        "headers",
        "memo",
        "received_at",
        "url",
    )

    def __init__(
        self,
        *,
        body: bytes,
        headers: Mapping[str, str],
        url: str,
        content_type: str,
        received_at: datetime,
        correlation_id: str,
    ) -> None:
        #: The raw body exactly as received.
        self.body = body
        #: Case-insensitive lookups with lower-case names (`x-twilio-signature`).
        self.headers = headers
        #: The public URL the provider called (`server.public_url` + path + query).
        self.url = url
        #: Media type without parameters, lower case (`application/json`).
        self.content_type = content_type
        self.received_at = received_at
        self.correlation_id = correlation_id
        self._form: list[tuple[str, str]] | None = None
        #: What an adapter's `verify` decoded and its `parse` may reuse (a multipart form).
        self.memo: dict[str, object] = {}

    def form(self) -> list[tuple[str, str]]:
        """The body as url-encoded pairs, parsed once; PayloadError if it is not UTF-8,
        LimitExceeded past MAX_FORM_FIELDS fields."""
        if self._form is None:
            check_field_count(self.body)
            try:
                text = self.body.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise PayloadError("form body is not UTF-8") from exc
            self._form = parse_form(text)
        return self._form


def check_field_count(body: bytes) -> None:
    """LimitExceeded if the url-encoded `body` has more than MAX_FORM_FIELDS fields."""
    if body.count(b"&") >= MAX_FORM_FIELDS:
        raise LimitExceeded(f"form has more than {MAX_FORM_FIELDS} fields")


def form_fields(body: bytes, names: frozenset[str], max_value: int = 1024) -> dict[str, str]:
    """The first value of each of `names` in a url-encoded body, without decoding the rest.

    For schemes that sign a few fields of a form (Mailgun): finding them costs a split of the
    body, whatever the other fields hold. Values longer than `max_value` bytes are left out.
    """
    check_field_count(body)
    longest = max(len(name.encode()) for name in names) * 3  # every byte %-escaped
    found: dict[str, str] = {}
    for field in body.split(b"&"):
        raw_name, _, raw_value = field.partition(b"=")
        if len(raw_name) > longest or len(raw_value) > max_value * 3:
            continue
        name = _unquote_plus(raw_name.decode("utf-8", "replace"))
        if name in names and name not in found:
            found[name] = _unquote_plus(raw_value.decode("utf-8", "replace"))
    return found


def parse_form(text: str) -> list[tuple[str, str]]:
    """Exactly `urllib.parse.parse_qsl(text, keep_blank_values=True)`, about twice as fast
    (the ingest hot path): only names and values with an escape go through `unquote_plus`."""
    pairs = []
    for field in text.split("&"):
        if not field:
            continue
        name, _, value = field.partition("=")
        if "%" in name or "+" in name:
            name = _unquote_plus(name)
        if "%" in value or "+" in value:
            value = _unquote_plus(value)
        pairs.append((name, value))
    return pairs


def _unquote_plus(text: str) -> str:
    """`unquote_plus(text)`, with a short path for the usual all-ASCII text: `unquote` decodes
    each run of ASCII characters alone, and here that run is the whole text."""
    text = text.replace("+", " ")
    if "%" not in text:
        return text
    if text.isascii():
        return unquote_to_bytes(text).decode("utf-8", "replace")
    return unquote(text)


class InboundAdapter(Protocol):
    """An inbound endpoint: a provider (and for Twilio, a kind of callback)."""

    #: The event `source` this adapter produces (`twilio`, or a custom source's name).
    source: str
    #: Media types accepted; anything else is answered 415 before verification.
    content_types: ClassVar[frozenset[str]]

    def verify(self, request: InboundRequest) -> str | None:
        """Raise SignatureError unless the request is authentic and fresh.

        Returns the one-time token the signature covers, for schemes that have one (Mailgun):
        the caller refuses a token that comes back with another body before parsing it.
        May raise LimitExceeded for a body over a count limit. Pure; may run in a thread.
        """
        ...

    def parse(self, request: InboundRequest) -> Parsed:
        """Normalise a verified request; raise PayloadError if it is malformed. Pure; may run
        in a thread (large bodies are parsed off the event loop)."""
        ...


def constant_time_any(expected: Sequence[bytes | str], given: bytes | str) -> bool:
    """True if `given` equals one of `expected`; every candidate is compared in constant time."""
    given_b = given.encode() if isinstance(given, str) else given
    found = False
    for candidate in expected:
        candidate_b = candidate.encode() if isinstance(candidate, str) else candidate
        found |= hmac.compare_digest(candidate_b, given_b)
    return found


def sha256_hex(content: bytes) -> str:
    """The content address used for blobs and for body-derived dedupe keys."""
    return hashlib.sha256(content).hexdigest()


def first(pairs: Sequence[tuple[str, str]], name: str) -> str | None:
    """The first value of `name` in form pairs, or None."""
    for key, value in pairs:
        if key == name:
            return value
    return None
