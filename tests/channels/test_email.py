"""Mailgun and SendGrid Inbound Parse: verification, normalisation, replay, blobs.

Adapters are driven directly with a frozen clock where time matters; user-visible outcomes
(status codes, `events list --json`, blob files) go through the live server on loopback.
Mailgun requests carry its documented HMAC; multipart bodies are encoded by httpx.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from channels.base import InboundRequest, Parsed, PayloadError, SignatureError
from channels.email import HTML_INLINE_MAX
from channels.mailgun import MailgunAdapter
from channels.sendgrid import SendgridAdapter
from router.clock import FrozenClock
from tests.cases.base import SignedRequest
from tests.cases.email import (
    ATTACHMENT,
    ATTACHMENT_SHA,
    credentials,
    mailgun_fields,
    mailgun_sign,
    mailgun_signature,
    multipart_request,
    sendgrid_parsed_sign,
    sendgrid_raw_sign,
)
from tests.support import SECRETS, WRONG_SECRETS, LiveServer, live_server

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
T = int(NOW.timestamp())
KEY, ROTATED_KEY = SECRETS["mailgun"]
FIXTURES = Path(__file__).parent.parent / "fixtures" / "email"
REPLY_EML = (FIXTURES / "reply_with_attachment.eml").read_bytes()


def inbound(request: SignedRequest, received_at: datetime = NOW) -> InboundRequest:
    headers = {name.lower(): value for name, value in request.headers.items()}
    if request.auth is not None:
        pair = ":".join(request.auth).encode()
        headers["authorization"] = "Basic " + base64.b64encode(pair).decode()
    return InboundRequest(
        body=request.body,
        headers=headers,
        url="https://switchboard.example.com" + request.path,
        content_type=headers["content-type"].split(";")[0].strip().lower(),
        received_at=received_at,
        correlation_id="test",
    )


def mailgun(tolerance: int = 300, at: datetime = NOW) -> MailgunAdapter:
    return MailgunAdapter(SECRETS["mailgun"], tolerance, FrozenClock(at))


def mailgun_form(fields: dict[str, str], path: str = "/webhooks/email/mailgun") -> SignedRequest:
    """A url-encoded Mailgun post (routes without attachments may send one)."""
    request = httpx.Request("POST", "http://127.0.0.1" + path, data=fields)
    body = request.read()
    return SignedRequest(path, body, {"Content-Type": request.headers["content-type"]})


def resigned(fields: dict[str, str], key: str = KEY, token: str | None = None) -> dict[str, str]:
    token = token or fields["token"]
    signature = mailgun_signature(key, fields["timestamp"], token)
    return {**fields, "token": token, "signature": signature}


def only(parsed: Parsed) -> dict[str, Any]:
    assert len(parsed.events) == 1
    return {**parsed.events[0].data, "_event": parsed.events[0]}


# --- Mailgun: verification ------------------------------------------------------------------


@pytest.mark.parametrize("key", [KEY, ROTATED_KEY])
def test_mailgun_accepts_every_configured_key_and_returns_the_token(key: str) -> None:
    token = mailgun().verify(inbound(mailgun_sign(key, "a", T)))
    assert token == mailgun_fields("a", key, T)["token"]


@pytest.mark.parametrize(
    ("offset", "accepted"), [(-300, True), (-301, False), (300, True), (301, False)]
)
def test_mailgun_refuses_timestamps_outside_the_tolerance(offset: int, accepted: bool) -> None:
    request = inbound(mailgun_sign(KEY, "a", T + offset))
    if accepted:
        mailgun().verify(request)
    else:
        with pytest.raises(SignatureError, match="tolerance"):
            mailgun().verify(request)


@pytest.mark.parametrize(
    "change",
    [
        {"signature": "0" * 64},
        {"token": "another-token"},
        {"timestamp": str(T + 1)},
        {"timestamp": "soon"},
        {"signature": ""},
    ],
)
def test_mailgun_refuses_altered_signed_fields(change: dict[str, str]) -> None:
    fields = {**mailgun_fields("a", KEY, T), **change}
    with pytest.raises(SignatureError):
        mailgun().verify(inbound(mailgun_form(fields)))


def test_mailgun_refuses_a_wrong_key_and_an_unreadable_body() -> None:
    with pytest.raises(SignatureError, match="does not match"):
        mailgun().verify(inbound(mailgun_sign(WRONG_SECRETS["mailgun"], "a", T)))
    broken = mailgun_sign(KEY, "a", T)
    with pytest.raises(SignatureError, match="cannot read"):
        mailgun().verify(inbound(replace(broken, body=broken.body[:-40])))


# --- Mailgun: normalisation -----------------------------------------------------------------


def test_mailgun_multipart_post_is_normalised() -> None:
    parsed = mailgun().parse(inbound(mailgun_sign(KEY, "a", T)))
    data = only(parsed)
    event = data.pop("_event")
    assert parsed.blobs == {ATTACHMENT_SHA: ATTACHMENT}
    assert event.occurred_at == datetime(2026, 11, 23, 14, 59, tzinfo=UTC)
    assert event.text.startswith("Hello a") and "earlier message" not in event.text
    assert data == {
        "from": "ann@example.com",
        "to": ["support@example.com"],
        "cc": [],
        "subject": "Order a",
        "message_id": "a@mail.example.com",
        "in_reply_to": None,
        "references": [],
        "headers": {"date": "Mon, 23 Nov 2026 14:59:00 +0000"},
        "envelope": {"from": "ann@example.com", "to": ["support@example.com"]},
        "html": "<p>Hello a — ünïcödé ✓</p>",
    }


def test_mailgun_url_encoded_post_reads_header_fields_and_falls_back_to_body_plain() -> None:
    fields = mailgun_fields("b", KEY, T)
    for name in ("message-headers", "stripped-text", "body-html", "attachment-count"):
        del fields[name]
    fields |= {
        "In-Reply-To": "<order-1@support.example.com>",
        "References": "<order-0@support.example.com> <order-1@support.example.com>",
        "To": "support@example.com, Other <other@example.com>",
        "Cc": "Boss <Boss@Example.com>",
    }
    parsed = mailgun().parse(inbound(mailgun_form(fields)))
    data = only(parsed)
    assert data["_event"].text == "Hello b — ünïcödé ✓\n\n> earlier message"
    assert data["in_reply_to"] == "order-1@support.example.com"
    assert data["references"] == ["order-0@support.example.com", "order-1@support.example.com"]
    assert data["to"] == ["support@example.com", "other@example.com"]
    assert data["cc"] == ["boss@example.com"]
    assert "html" not in data and parsed.blobs == {}


def test_mailgun_body_mime_route_is_parsed_with_the_email_package() -> None:
    fields = {
        "recipient": "support@example.com",
        "sender": "bounce@mail.example.org",
        "from": "Renée O'Brien <renee.obrien@example.org>",
        "subject": "Réponse: commande 1042",
        "timestamp": str(T),
        "token": "t" * 50,
    }
    signed = multipart_request(
        "/webhooks/email/mailgun",
        resigned(fields),
        {"body-mime": (None, REPLY_EML, "text/plain")},
    )
    data = only(mailgun().parse(inbound(signed)))
    event = data["_event"]
    assert event.contact.address == "renee.obrien@example.org"
    assert event.contact.name == "Renée O'Brien"
    assert event.text == "Bonjour, voici le reçu demandé.\n\nRenée"
    assert event.dedupe_key == "mailgun:CAF=reply.1042@mail.example.org"
    assert [(a.filename, a.content_type, a.size) for a in event.attachments] == [
        ("receipt-1042.csv", "text/csv", 24)
    ]
    assert data["subject"] == "Réponse: commande 1042"


def test_mailgun_without_message_id_is_deduped_on_the_body_hash() -> None:
    fields = mailgun_fields("c", KEY, T)
    del fields["Message-Id"]
    fields["message-headers"] = json.dumps([["From", "ann@example.com"]])
    request = mailgun_form(fields)
    event = mailgun().parse(inbound(request)).events[0]
    assert event.dedupe_key == "mailgun:" + hashlib.sha256(request.body).hexdigest()


def test_mailgun_large_html_becomes_a_blob() -> None:
    html = "<p>" + "x" * HTML_INLINE_MAX + "</p>"
    request = mailgun_form(mailgun_fields("d", KEY, T) | {"body-html": html})
    parsed = mailgun().parse(inbound(request))
    data = only(parsed)
    assert "html" not in data
    assert parsed.blobs[data["html_blob"]] == html.encode()


@pytest.mark.parametrize(
    "change",
    [
        {"from": "", "sender": "", "message-headers": "[]"},
        {"message-headers": "not json"},
        {"message-headers": '{"From": "x"}'},
        {"recipient": "", "message-headers": "[]"},
    ],
)
def test_mailgun_malformed_payload_raises_payload_error(change: dict[str, str]) -> None:
    request = mailgun_form(mailgun_fields("e", KEY, T) | change)
    with pytest.raises(PayloadError):
        mailgun().parse(inbound(request))


def test_mailgun_sender_name_with_encoded_comma_is_decoded() -> None:
    fields = mailgun_fields("f", KEY, T) | {"from": "=?utf-8?q?Doe,_J=C3=BCrgen?= <J@X.com>"}
    contact = mailgun().parse(inbound(mailgun_form(fields))).events[0].contact
    assert contact is not None
    assert (contact.address, contact.name) == ("j@x.com", "Doe, Jürgen")


# --- Mailgun: one-time tokens through the live server ---------------------------------------


def test_mailgun_token_reused_for_another_message_is_refused(server: LiveServer) -> None:
    now = int(datetime.now(UTC).timestamp())
    first = mailgun_fields("first", KEY, now)
    assert server.post(mailgun_form(first)).status_code == 200
    other = resigned(mailgun_fields("other", KEY, now), token=first["token"])
    response = server.post(mailgun_form(other))
    assert response.status_code == 401, response.text
    assert "token" in response.json()["error"]
    assert [e["dedupe_key"] for e in server.events()] == ["mailgun:first@mail.example.com"]


def test_mailgun_identical_redelivery_and_a_fresh_token_are_plain_duplicates(
    server: LiveServer,
) -> None:
    now = int(datetime.now(UTC).timestamp())
    fields = mailgun_fields("same", KEY, now)
    for request in (
        mailgun_form(fields),
        mailgun_form(fields),
        mailgun_form(resigned(fields, token="f" * 50)),
    ):
        assert server.post(request).status_code == 200
    assert len(server.events()) == 1


# --- SendGrid: basic auth -------------------------------------------------------------------


def sendgrid() -> SendgridAdapter:
    return SendgridAdapter(SECRETS["sendgrid"])


@pytest.mark.parametrize("secret", SECRETS["sendgrid"])
def test_sendgrid_accepts_every_configured_credential(secret: str) -> None:
    sendgrid().verify(inbound(sendgrid_parsed_sign(secret, "a", T)))


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer abc",
        "Basic",
        "Basic not base64!",
        "Basic " + base64.b64encode(b"\xff\xfe").decode(),
        "Basic " + base64.b64encode(WRONG_SECRETS["sendgrid"].encode()).decode(),
        "Basic " + base64.b64encode(b"other:sendgrid-current").decode(),
        "Basic " + base64.b64encode(b"parse:sendgrid-current ").decode(),
    ],
)
def test_sendgrid_refuses_missing_or_wrong_credentials(authorization: str | None) -> None:
    request = inbound(replace(sendgrid_parsed_sign(SECRETS["sendgrid"][0], "a", T), auth=None))
    if authorization is not None:
        request.headers["authorization"] = authorization  # type: ignore[index]
    with pytest.raises(SignatureError):
        sendgrid().verify(request)


# --- SendGrid: normalisation ----------------------------------------------------------------


def test_sendgrid_parsed_fields_are_normalised() -> None:
    data = only(sendgrid().parse(inbound(sendgrid_parsed_sign(SECRETS["sendgrid"][0], "a", T))))
    event = data.pop("_event")
    assert event.occurred_at == datetime(2026, 11, 23, 14, 59, tzinfo=UTC)
    assert data == {
        "from": "ann@example.com",
        "to": ["support@example.com"],
        "cc": [],
        "subject": "Order a",
        "message_id": "a@mail.example.com",
        "in_reply_to": "previous@example.com",
        "references": [],
        "headers": {"date": "Mon, 23 Nov 2026 14:59:00 +0000"},
        "envelope": {"from": "ann@example.com", "to": ["support@example.com"]},
        "html": "<p>Hello a — ünïcödé ✓</p>",
        "spam_score": "0.1",
        "spf": "pass",
    }


def test_sendgrid_fields_are_decoded_with_their_charsets() -> None:
    fields = {
        "headers": "Message-ID: <latin@example.org>\nFrom: Zoë <zoe@example.org>\n",
        "from": "Zoë <zoe@example.org>",
        "to": "support@example.com",
        "charsets": json.dumps({"subject": "iso-8859-1", "text": "windows-1252", "from": "UTF-8"}),
    }
    files = {
        "subject": (None, "Reçu n°3".encode("iso-8859-1"), "text/plain"),
        "text": (None, "Prix: 5 € — merci".encode("windows-1252"), "text/plain"),
    }
    request = multipart_request("/webhooks/email/sendgrid", fields, files, credentials("u:p"))
    data = only(sendgrid().parse(inbound(request)))
    assert data["subject"] == "Reçu n°3"
    assert data["_event"].text == "Prix: 5 € — merci"
    assert data["_event"].contact.name == "Zoë"


def test_sendgrid_raw_mode_parses_the_full_mime_message() -> None:
    fields = {"envelope": json.dumps({"to": ["support@example.com"], "from": "b@mail.org"})}
    files = {"email": (None, REPLY_EML, "text/plain")}
    request = multipart_request("/webhooks/email/sendgrid", fields, files, credentials("u:p"))
    parsed = sendgrid().parse(inbound(request))
    data = only(parsed)
    event = data.pop("_event")
    assert event.conversation_key == "email:renee.obrien@example.org:support@example.com"
    assert event.occurred_at == datetime(2026, 11, 23, 14, 58, tzinfo=UTC)
    assert data["cc"] == ["billing@example.com", "finance-eu@example.com"]
    assert data["in_reply_to"] == "order-1042@support.example.com"
    assert data["references"] == [
        "order-1040@support.example.com",
        "order-1042@support.example.com",
    ]
    assert data["headers"]["auto-submitted"] == "no"
    assert data["html"] == "<p>Bonjour, voici le reçu demandé.</p><p>Renée</p>"
    assert list(parsed.blobs.values()) == [b"order,amount\n1042,29.00\n"]


@pytest.mark.parametrize(
    "change",
    [
        {"envelope": "{not json"},
        {"envelope": '["support@example.com"]'},
        {"envelope": '{"to": "support@example.com"}'},
        {"charsets": '"utf-8"'},
        {"attachment-info": "[]"},
        {"from": "nobody", "headers": "", "envelope": "{}"},
    ],
)
def test_sendgrid_malformed_payload_raises_payload_error(change: dict[str, str]) -> None:
    good = sendgrid_parsed_sign(SECRETS["sendgrid"][0], "a", T)
    fields = {"from": "Ann <ann@example.com>", "to": "support@example.com", **change}
    request = multipart_request(good.path, fields, {"x": (None, b"", "text/plain")}, good.auth)
    with pytest.raises(PayloadError):
        sendgrid().parse(inbound(request))


def test_sendgrid_truncated_multipart_raises_payload_error() -> None:
    good = sendgrid_parsed_sign(SECRETS["sendgrid"][0], "a", T)
    with pytest.raises(PayloadError, match="multipart"):
        sendgrid().parse(inbound(replace(good, body=good.body[: len(good.body) // 2])))


# --- SendGrid through the live server -------------------------------------------------------


def blob_files(server: LiveServer) -> list[Path]:
    root = server.settings.storage.url.removeprefix("sqlite:///")
    return sorted(p for p in (Path(root).parent / "blobs").rglob("*") if p.is_file())


def test_same_attachment_in_two_emails_is_stored_once(server: LiveServer) -> None:
    secret = SECRETS["sendgrid"][0]
    assert server.post(sendgrid_parsed_sign(secret, "one", T)).status_code == 200
    assert server.post(sendgrid_raw_sign(secret, "two", T)).status_code == 200
    events = server.events()
    assert len(events) == 2
    assert {e["attachments"][0]["blob"] for e in events} == {ATTACHMENT_SHA}
    files = blob_files(server)
    assert [p.name for p in files] == [ATTACHMENT_SHA]
    assert files[0].read_bytes() == ATTACHMENT


def test_several_megabyte_email_is_stored_with_its_attachment(tmp_path: Path) -> None:
    big = hashlib.sha256(b"seed").digest() * (6 * 1024 * 1024 // 32)
    fields = {
        "headers": "Message-ID: <big@example.org>\n",
        "from": "Ann <ann@example.com>",
        "to": "support@example.com",
        "text": "see attached",
    }
    request = multipart_request(
        "/webhooks/email/sendgrid",
        fields,
        {"attachment1": ("scan.bin", big, "application/octet-stream")},
        credentials(SECRETS["sendgrid"][0]),
    )
    with live_server(tmp_path, max_body_bytes=16 * 1024 * 1024) as server:
        response = server.post(request)
        assert response.status_code == 200, response.text
        [event] = server.events()
        digest = hashlib.sha256(big).hexdigest()
        assert event["attachments"] == [
            {
                "blob": digest,
                "filename": "scan.bin",
                "content_type": "application/octet-stream",
                "size": len(big),
            }
        ]
        assert any(p.name == digest and p.stat().st_size == len(big) for p in blob_files(server))


def test_malformed_sendgrid_post_with_valid_auth_is_400_and_quarantined(
    server: LiveServer,
) -> None:
    good = sendgrid_parsed_sign(SECRETS["sendgrid"][0], "a", T)
    response = server.post(replace(good, body=good.body[:200]))
    assert response.status_code == 400, response.text
    assert server.events() == []
    quarantined = server.cli("quarantine", "list", "--json").json()
    assert [q["source"] for q in quarantined] == ["sendgrid"]
