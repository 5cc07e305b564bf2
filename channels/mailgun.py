"""Mailgun inbound routes (`forward()` to /webhooks/email/mailgun).

Mailgun signs only `timestamp + token` (hex HMAC-SHA256 with the webhook signing key), not the
body. So a request is refused when its timestamp is outside `tolerance_seconds` of our clock,
and `verify` returns its token: the ingest path refuses (401) a token that comes back with
another body before that body is parsed, and the store records the token with the event in the
same transaction (REPLAY, 401, for a race between two first uses); the identical redelivery
stays a plain duplicate. `verify` reads only the three signed fields, never the whole form.

The route may post the parsed message (`body-plain`, `stripped-text`, `message-headers`,
`attachment-N` files...) or, when the route URL ends in `mime`, the whole message in
`body-mime`; both are handled.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from channels.base import (
    InboundRequest,
    Parsed,
    PayloadError,
    SignatureError,
    constant_time_any,
    form_fields,
)
from channels.email import (
    Form,
    Headers,
    InboundEmail,
    RawAttachment,
    addresses,
    email_parsed,
    parse_mime,
    read_form,
)
from router.clock import Clock

_ATTACHMENT_FIELD = re.compile(r"attachment-\d+")
#: MIME headers Mailgun also posts as plain fields (used when `message-headers` is absent).
_HEADER_FIELDS = ("Message-Id", "In-Reply-To", "References", "Date", "To", "Cc", "Reply-To")
_SIGNED_FIELDS = frozenset({"timestamp", "token", "signature"})


def mailgun_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's documented signature: hex HMAC-SHA256(key, timestamp + token)."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


class MailgunAdapter:
    """POST /webhooks/email/mailgun: multipart or url-encoded, signed fields in the body."""

    source = "mailgun"
    content_types: ClassVar[frozenset[str]] = frozenset(
        {"multipart/form-data", "application/x-www-form-urlencoded"}
    )

    def __init__(self, signing_keys: Sequence[str], tolerance_seconds: int, clock: Clock) -> None:
        self._keys = list(signing_keys)
        self._tolerance = tolerance_seconds
        self._clock = clock

    def verify(self, request: InboundRequest) -> str:
        """Check the signed fields; return the token (one use only)."""
        fields = _signed_fields(request)
        timestamp, token = fields.get("timestamp"), fields.get("token")
        signature = fields.get("signature")
        if not (timestamp and token and signature):
            raise SignatureError("missing timestamp, token or signature")
        self._check_fresh(timestamp)
        expected = [mailgun_signature(key, timestamp, token) for key in self._keys]
        if not constant_time_any(expected, signature.strip().lower()):
            raise SignatureError("signature does not match")
        return token

    def _check_fresh(self, timestamp: str) -> None:
        try:
            signed_at = int(timestamp)
        except ValueError as exc:
            raise SignatureError("timestamp is not a number") from exc
        if abs(self._clock.now().timestamp() - signed_at) > self._tolerance:
            raise SignatureError("timestamp outside the tolerance window")

    def parse(self, request: InboundRequest) -> Parsed:
        form = read_form(request)
        mime = form.raw("body-mime")
        mail = _from_mime(form, mime) if mime is not None else _from_fields(form)
        return email_parsed(self.source, request, mail)


def _signed_fields(request: InboundRequest) -> dict[str, str]:
    """timestamp, token and signature; a url-encoded body is not decoded beyond them."""
    if request.content_type != "multipart/form-data":
        return form_fields(request.body, _SIGNED_FIELDS)
    try:
        form = read_form(request)
    except PayloadError as exc:
        raise SignatureError("cannot read the signature fields") from exc
    return {name: value for name in _SIGNED_FIELDS if (value := form.text(name)) is not None}


def _envelope(form: Form) -> dict[str, Any]:
    return {
        "envelope_from": form.text("sender"),
        "envelope_to": addresses(form.text("recipient")),
    }


def _from_mime(form: Form, mime: bytes) -> InboundEmail:
    mail = parse_mime(mime)
    return InboundEmail(
        headers=mail.headers,
        from_=mail.from_ or form.text("from"),
        to=mail.to,
        cc=mail.cc,
        subject=mail.subject if mail.subject is not None else form.text("subject"),
        text=mail.text,
        html=mail.html,
        attachments=mail.attachments,
        **_envelope(form),
    )


def _from_fields(form: Form) -> InboundEmail:
    headers = _headers(form)
    stripped = form.text("stripped-text")
    return InboundEmail(
        headers=headers,
        from_=form.text("from") or headers.get("from"),
        to=headers.get("to"),
        cc=headers.get("cc"),
        subject=form.text("subject"),
        text=stripped if stripped else form.text("body-plain"),
        html=form.text("body-html"),
        attachments=[
            RawAttachment(part.data, part.filename, part.content_type)
            for part in form.parts
            if part.filename is not None or _ATTACHMENT_FIELD.fullmatch(part.name)
        ],
        **_envelope(form),
    )


def _headers(form: Form) -> Headers:
    """`message-headers` (a JSON list of [name, value]) or, failing that, the header fields."""
    listed = form.json("message-headers")
    if listed is None:
        return Headers(
            (name, value) for name in _HEADER_FIELDS if (value := form.text_ci(name)) is not None
        )
    if not isinstance(listed, list) or not all(
        isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
        for pair in listed
    ):
        raise PayloadError("message-headers is not a list of [name, value] pairs")
    return Headers((name, value) for name, value in listed)
