"""SendGrid Inbound Parse (POST /webhooks/email/sendgrid, multipart/form-data).

SendGrid signs nothing on Inbound Parse: the Parse URL carries `user:password@`, which arrives
as HTTP basic auth and is compared in constant time with every configured pair (rotation).
Both posting modes are handled: the default parsed fields (`headers`, `from`, `to`, `text`,
`html`, `envelope`, `charsets`, `attachment-info`, `attachmentN` files) and "raw" mode, where
the whole MIME message arrives in the `email` field and the stdlib email package parses it.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Any, ClassVar

from channels.base import InboundRequest, Parsed, PayloadError, SignatureError, constant_time_any
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

_ATTACHMENT_FIELD = re.compile(r"attachment\d+")
#: Parse fields kept in `data` as they are (SendGrid's own checks on the message).
_EXTRA_FIELDS = {"spam_score": "spam_score", "SPF": "spf", "dkim": "dkim"}


def basic_credentials(authorization: str | None) -> str:
    """`user:password` from an `Authorization: Basic ...` header; SignatureError if none."""
    scheme, _, value = (authorization or "").strip().partition(" ")
    if scheme.lower() != "basic" or not value.strip():
        raise SignatureError("missing basic auth")
    try:
        return base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise SignatureError("malformed basic auth") from exc


class SendgridAdapter:
    """Inbound Parse webhook, authenticated by basic auth from `[sources.sendgrid] basic_auth`."""

    source = "sendgrid"
    content_types: ClassVar[frozenset[str]] = frozenset({"multipart/form-data"})

    def __init__(self, credentials: Sequence[str]) -> None:
        self._credentials = list(credentials)

    def verify(self, request: InboundRequest) -> None:
        given = basic_credentials(request.headers.get("authorization"))
        if not constant_time_any(self._credentials, given):
            raise SignatureError("basic auth credentials do not match")

    def parse(self, request: InboundRequest) -> Parsed:
        form = read_form(request)
        envelope = _envelope(form)
        raw = form.raw("email")
        mail = _from_mime(raw, envelope) if raw is not None else _from_fields(form, envelope)
        return email_parsed(self.source, request, mail)


def _envelope(form: Form) -> dict[str, Any]:
    envelope = form.json("envelope")
    if envelope is None:
        return {"extra": _extra(form)}
    if not isinstance(envelope, dict):
        raise PayloadError("envelope is not a JSON object")
    to = envelope.get("to") or []
    sender = envelope.get("from")
    if not isinstance(to, list) or not all(isinstance(a, str) for a in to):
        raise PayloadError("envelope.to is not a list of addresses")
    if sender is not None and not isinstance(sender, str):
        raise PayloadError("envelope.from is not an address")
    return {"envelope_from": sender, "envelope_to": addresses(*to), "extra": _extra(form)}


def _extra(form: Form) -> dict[str, Any]:
    return {key: value for name, key in _EXTRA_FIELDS.items() if (value := form.text(name))}


def _from_mime(raw: bytes, envelope: dict[str, Any]) -> InboundEmail:
    mail = parse_mime(raw)
    return InboundEmail(
        headers=mail.headers,
        from_=mail.from_,
        to=mail.to,
        cc=mail.cc,
        subject=mail.subject,
        text=mail.text,
        html=mail.html,
        attachments=mail.attachments,
        **envelope,
    )


def _from_fields(form: Form, envelope: dict[str, Any]) -> InboundEmail:
    charsets = _charsets(form)
    headers = Headers.from_block(form.text("headers") or "")

    def text(name: str) -> str | None:
        return form.text(name, charsets.get(name))

    return InboundEmail(
        headers=headers,
        from_=text("from") or headers.get("from"),
        to=text("to") or headers.get("to"),
        cc=text("cc") or headers.get("cc"),
        subject=text("subject"),
        text=text("text"),
        html=text("html"),
        attachments=_attachments(form),
        **envelope,
    )


def _charsets(form: Form) -> dict[str, str]:
    charsets = form.json("charsets")
    if charsets is None:
        return {}
    if not isinstance(charsets, dict) or not all(isinstance(v, str) for v in charsets.values()):
        raise PayloadError("charsets is not a JSON object of field -> charset")
    return charsets


def _attachments(form: Form) -> list[RawAttachment]:
    info = form.json("attachment-info")
    info = {} if info is None else info
    if not isinstance(info, dict):
        raise PayloadError("attachment-info is not a JSON object")
    found = []
    for part in form.parts:
        if part.filename is None and not _ATTACHMENT_FIELD.fullmatch(part.name):
            continue
        meta = info.get(part.name)
        meta = meta if isinstance(meta, dict) else {}
        filename, content_type = meta.get("filename"), meta.get("type")
        found.append(
            RawAttachment(
                part.data,
                filename if isinstance(filename, str) and filename else part.filename,
                content_type
                if isinstance(content_type, str) and content_type
                else part.content_type,
            )
        )
    return found
