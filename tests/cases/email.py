"""Mailgun and SendGrid Inbound Parse cases.

Mailgun ships no Python signing helper: its documented HMAC (hex HMAC-SHA256 of timestamp +
token) is computed here with `hmac`. SendGrid signs nothing on Inbound Parse; the request
carries HTTP basic auth, set through httpx's own `auth=`. Multipart bodies are encoded by
httpx, MIME messages by the stdlib `email` package, as the providers' clients would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from dataclasses import replace
from email.message import EmailMessage
from typing import Any

import httpx

from tests.cases.base import ProviderCase, SignedRequest

SENDER = "Ann Example <Ann@Example.com>"
RECIPIENT = "support@example.com"
ATTACHMENT = b"%PDF-1.4\n% a tiny sample invoice\n" + bytes(range(256))
ATTACHMENT_SHA = hashlib.sha256(ATTACHMENT).hexdigest()
DATE = "Mon, 23 Nov 2026 14:59:00 +0000"


def text_of(unique: str) -> str:
    return f"Hello {unique} — ünïcödé ✓"


def message_id_of(unique: str) -> str:
    return f"{unique}@mail.example.com"


def multipart_request(
    path: str,
    fields: dict[str, str],
    files: dict[str, tuple[str | None, bytes, str]] | None = None,
    auth: tuple[str, str] | None = None,
) -> SignedRequest:
    """A multipart/form-data POST encoded by httpx."""
    request = httpx.Request("POST", "http://127.0.0.1" + path, data=fields, files=files or {})
    body = request.read()
    return SignedRequest(
        path=path, body=body, headers={"Content-Type": request.headers["content-type"]}, auth=auth
    )


# -- Mailgun --------------------------------------------------------------------------------


def mailgun_signature(key: str, timestamp: str, token: str) -> str:
    """Mailgun's documented scheme (no official Python helper exists)."""
    return hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()


def mailgun_fields(unique: str, key: str, timestamp: int) -> dict[str, str]:
    """What a Mailgun `forward()` route posts for one message, signed with `key`."""
    token = hashlib.sha256(f"{unique}:{timestamp}".encode()).hexdigest()[:50]
    headers = [
        ["Message-Id", f"<{message_id_of(unique)}>"],
        ["From", SENDER],
        ["To", f"Support <{RECIPIENT}>"],
        ["Subject", f"Order {unique}"],
        ["Date", DATE],
    ]
    return {
        "recipient": RECIPIENT,
        "sender": "ann@example.com",
        "from": SENDER,
        "subject": f"Order {unique}",
        "body-plain": f"{text_of(unique)}\n\n> earlier message\n",
        "stripped-text": text_of(unique),
        "body-html": f"<p>{text_of(unique)}</p>",
        "message-headers": json.dumps(headers),
        "Message-Id": f"<{message_id_of(unique)}>",
        "attachment-count": "1",
        "timestamp": str(timestamp),
        "token": token,
        "signature": mailgun_signature(key, str(timestamp), token),
    }


def mailgun_sign(secret: str, unique: str, timestamp: int) -> SignedRequest:
    return multipart_request(
        "/webhooks/email/mailgun",
        mailgun_fields(unique, secret, timestamp),
        {"attachment-1": ("invoice.pdf", ATTACHMENT, "application/pdf")},
    )


def mailgun_tamper(request: SignedRequest) -> SignedRequest:
    """Mailgun signs only timestamp + token: change one character of the token."""
    body = re.sub(
        rb'(name="token"\r\n\r\n)(.)',
        lambda m: m.group(1) + (b"0" if m.group(2) != b"0" else b"1"),
        request.body,
        count=1,
    )
    return replace(request, body=body)


def mailgun_strip(request: SignedRequest) -> SignedRequest:
    body = re.sub(rb'name="signature"\r\n\r\n[0-9a-f]+', b'name="signature"\r\n\r\n', request.body)
    return replace(request, body=body)


def expected_email(source: str, unique: str, *, with_attachment: bool = True) -> dict[str, Any]:
    attachments = [
        {
            "blob": ATTACHMENT_SHA,
            "filename": "invoice.pdf",
            "content_type": "application/pdf",
            "size": len(ATTACHMENT),
        }
    ]
    return {
        "source": source,
        "type": "email.received",
        "provider_type": "inbound",
        "channel": "email",
        "contact": {"address": "ann@example.com", "name": "Ann Example"},
        "conversation_key": f"email:ann@example.com:{RECIPIENT}",
        "text": text_of(unique),
        "status": "received",
        "attachments": attachments if with_attachment else [],
    }


# -- SendGrid -------------------------------------------------------------------------------


def credentials(secret: str) -> tuple[str, str]:
    user, _, password = secret.partition(":")
    return user, password


def sendgrid_headers(unique: str) -> str:
    return (
        f"Received: by mx.sendgrid.net with SMTP id {unique}\n"
        f"Message-ID: <{message_id_of(unique)}>\n"
        f"From: {SENDER}\n"
        f"To: Support <{RECIPIENT}>\n"
        f"Subject: Order {unique}\n"
        f"Date: {DATE}\n"
        "In-Reply-To: <previous@example.com>\n"
        "MIME-Version: 1.0\n"
    )


def sendgrid_parsed_sign(secret: str, unique: str, _timestamp: int) -> SignedRequest:
    """The default Inbound Parse post: parsed fields plus the attachment as a file part."""
    fields = {
        "headers": sendgrid_headers(unique),
        "from": SENDER,
        "to": f"Support <{RECIPIENT}>",
        "subject": f"Order {unique}",
        "text": text_of(unique),
        "html": f"<p>{text_of(unique)}</p>",
        "envelope": json.dumps({"to": [RECIPIENT], "from": "ann@example.com"}),
        "charsets": json.dumps({"to": "UTF-8", "subject": "UTF-8", "text": "utf-8"}),
        "attachments": "1",
        "attachment-info": json.dumps(
            {"attachment1": {"filename": "invoice.pdf", "type": "application/pdf"}}
        ),
        "sender_ip": "192.0.2.10",
        "spam_score": "0.1",
        "SPF": "pass",
    }
    files = {"attachment1": ("invoice.pdf", ATTACHMENT, "application/pdf")}
    return multipart_request("/webhooks/email/sendgrid", fields, files, credentials(secret))


def mime_message(unique: str) -> bytes:
    """A full MIME message with an attachment, built by the stdlib email package."""
    message = EmailMessage()
    message["Message-ID"] = f"<{message_id_of(unique)}>"
    message["From"] = SENDER
    message["To"] = f"Support <{RECIPIENT}>"
    message["Subject"] = f"Order {unique}"
    message["Date"] = DATE
    message.set_content(text_of(unique))
    message.add_alternative(f"<p>{text_of(unique)}</p>", subtype="html")
    message.add_attachment(
        ATTACHMENT, maintype="application", subtype="pdf", filename="invoice.pdf"
    )
    return message.as_bytes()


def sendgrid_raw_sign(secret: str, unique: str, _timestamp: int) -> SignedRequest:
    """Inbound Parse with "POST the raw, full MIME message" ticked: the message in `email`."""
    fields = {
        "from": SENDER,
        "to": RECIPIENT,
        "subject": f"Order {unique}",
        "envelope": json.dumps({"to": [RECIPIENT], "from": "ann@example.com"}),
        "charsets": json.dumps({"to": "UTF-8", "subject": "UTF-8"}),
    }
    # A part without filename, as SendGrid posts it (httpx only goes multipart with files=).
    files = {"email": (None, mime_message(unique), "text/plain")}
    return multipart_request("/webhooks/email/sendgrid", fields, files, credentials(secret))


def sendgrid_tamper(request: SignedRequest) -> SignedRequest:
    """Inbound Parse signs nothing, so altering the body proves nothing: the only thing that
    authenticates the request is the basic-auth password, and a wrong one must be refused."""
    user, password = request.auth or ("", "")
    return replace(request, auth=(user, password + "-tampered"))


def _sendgrid_case(case_id: str, sign: Any) -> ProviderCase:
    return ProviderCase(
        id=case_id,
        source="sendgrid",
        sign=sign,
        strip_signature=lambda req: replace(req, auth=None),
        tamper=sendgrid_tamper,
        expected=lambda unique: expected_email("sendgrid", unique),
        dedupe_key=lambda unique: f"sendgrid:{message_id_of(unique)}",
        signs_timestamp=False,
        ack_contains=b'"received":true',
    )


CASES = [
    ProviderCase(
        id="mailgun",
        source="mailgun",
        sign=mailgun_sign,
        strip_signature=mailgun_strip,
        tamper=mailgun_tamper,
        expected=lambda unique: expected_email("mailgun", unique),
        dedupe_key=lambda unique: f"mailgun:{message_id_of(unique)}",
        ack_contains=b'"received":true',
    ),
    _sendgrid_case("sendgrid", sendgrid_parsed_sign),
    _sendgrid_case("sendgrid-raw", sendgrid_raw_sign),
]
