"""Every refusal of SPEC §4 through real HTTP on loopback: 413, 415, 400, 503, 404, `ignored`.

Requests are signed with twilio's own `RequestValidator` (tests/cases/twilio.py); outcomes are
read back with `switchboard events list --json` and `switchboard quarantine list --json`.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.email import mailgun_signature
from tests.cases.twilio import message_params, signed, status_params
from tests.support import PUBLIC_URL, SECRETS, LiveServer, live_server

MESSAGES = "/webhooks/twilio/messages"
STATUS = "/webhooks/twilio/status"


def twilio(params: dict[str, str], path: str = MESSAGES) -> SignedRequest:
    return signed(PUBLIC_URL, path, params, SECRETS["twilio"][0])


def inbound(unique: str | None = None) -> SignedRequest:
    return twilio(message_params(unique or uuid.uuid4().hex))


def quarantined(server: LiveServer) -> list[dict[str, Any]]:
    result = server.cli("quarantine", "list", "--json")
    assert result.exit_code == 0, result.stderr
    rows: list[dict[str, Any]] = result.json()
    return rows


def db_path(server: LiveServer) -> Path:
    return Path(server.settings.storage.url.removeprefix("sqlite:///"))


def padded(size: int) -> SignedRequest:
    """A signed inbound SMS whose url-encoded body is exactly `size` bytes."""
    params = message_params(uuid.uuid4().hex)
    params["Body"] = ""
    params["Body"] = "x" * (size - len(urlencode(params).encode()))
    request = twilio(params)
    assert len(request.body) == size
    return request


def assert_json_error(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    payload: dict[str, Any] = response.json()
    assert isinstance(payload.get("error"), str) and payload["error"]
    return payload


# -- 413 ------------------------------------------------------------------------------------


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path, max_body_bytes=2048) as running:
        yield running


def test_body_at_the_limit_is_accepted(small_server: LiveServer) -> None:
    response = small_server.post(padded(2048))
    assert response.status_code == 200, response.text
    assert len(small_server.events()) == 1


def test_body_over_the_limit_with_content_length_is_413(small_server: LiveServer) -> None:
    request = padded(2049)
    response = small_server.post(request)
    assert response.request.headers["content-length"] == "2049"
    assert_json_error(response, 413)
    assert small_server.events() == []
    assert quarantined(small_server) == []


def test_body_over_the_limit_chunked_is_413(small_server: LiveServer) -> None:
    request = padded(8192)
    chunks = [request.body[i : i + 1000] for i in range(0, len(request.body), 1000)]
    response = small_server.post(request, content=iter(chunks))
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert_json_error(response, 413)
    assert small_server.events() == []
    assert quarantined(small_server) == []


# -- 415 ------------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", ["application/json", "text/plain", "multipart/form-data"])
def test_wrong_content_type_is_415(server: LiveServer, content_type: str) -> None:
    request = inbound().with_headers(Content_Type=content_type)
    assert_json_error(server.post(request), 415)
    assert server.events() == []


def test_missing_content_type_is_415(server: LiveServer) -> None:
    request = inbound().with_headers(Content_Type=None)
    response = httpx.post(
        server.base_url + request.path, content=request.body, headers=request.headers
    )
    assert "content-type" not in response.request.headers
    assert_json_error(response, 415)
    assert server.events() == []


def test_content_type_parameters_and_case_are_accepted(server: LiveServer) -> None:
    request = inbound().with_headers(
        Content_Type="Application/X-WWW-Form-Urlencoded; charset=utf-8"
    )
    assert server.post(request).status_code == 200
    assert len(server.events()) == 1


# -- 400: valid signature, malformed payload ------------------------------------------------


@pytest.mark.parametrize(
    ("path", "drop", "change", "reason"),
    [
        (MESSAGES, "MessageSid", {}, "MessageSid"),
        (MESSAGES, "From", {}, "From"),
        (MESSAGES, "", {"NumMedia": "three"}, "NumMedia"),
        (STATUS, "MessageStatus", {}, "MessageStatus"),
    ],
)
def test_signed_malformed_payload_is_400_and_kept_for_inspection(
    server: LiveServer, path: str, drop: str, change: dict[str, str], reason: str
) -> None:
    make = message_params if path == MESSAGES else status_params
    params = {k: v for k, v in make(uuid.uuid4().hex).items() if k != drop} | change
    request = twilio(params, path)
    payload = assert_json_error(server.post(request), 400)
    assert reason in payload["error"]
    assert server.events() == []
    [kept] = quarantined(server)
    assert kept["source"] == "twilio"
    assert reason in kept["reason"]
    assert kept["content_type"] == "application/x-www-form-urlencoded"
    assert kept["body"] == request.body.decode()
    assert kept["size"] == len(request.body)


def test_quarantine_list_for_people(server: LiveServer) -> None:
    params = {k: v for k, v in message_params("Q1").items() if k != "MessageSid"}
    assert server.post(twilio(params)).status_code == 400
    result = server.cli("quarantine", "list")
    assert result.exit_code == 0, result.stderr
    assert "twilio" in result.stdout
    assert "missing MessageSid" in result.stdout


def test_unsigned_malformed_payload_is_401_and_not_kept(server: LiveServer) -> None:
    params = {k: v for k, v in message_params("U1").items() if k != "MessageSid"}
    request = twilio(params).with_headers(X_Twilio_Signature="bm90IGEgc2lnbmF0dXJl")
    assert_json_error(server.post(request), 401)
    assert quarantined(server) == []


def mailgun_with_utf8_subject(subject: str) -> SignedRequest:
    """A signed Mailgun message whose raw MIME carries a raw UTF-8 Subject (RFC 6532).

    Found by tests/integration/test_fuzz.py: the stdlib parser left the bytes surrogate-escaped,
    no store could encode the event, and its whole group-commit batch was answered 503.
    """
    stamp, token = str(int(time.time())), uuid.uuid4().hex
    mime = f"From: ann@example.com\r\nTo: support@example.com\r\nSubject: {subject}\r\n\r\nhi"
    fields = {"from": "ann@example.com", "body-mime": mime, "timestamp": stamp, "token": token}
    fields["signature"] = mailgun_signature(SECRETS["mailgun"][0], stamp, token)
    return SignedRequest(
        path="/webhooks/email/mailgun",
        body=urlencode(fields).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )


def test_raw_utf8_email_header_is_stored_among_concurrent_deliveries(server: LiveServer) -> None:
    good = [inbound(f"BATCH{n}") for n in range(24)]
    requests = [*good[:12], mailgun_with_utf8_subject("Grüße ✓"), *good[12:]]
    with ThreadPoolExecutor(max_workers=len(requests)) as pool:
        statuses = list(pool.map(lambda r: server.post(r).status_code, requests))
    assert statuses == [200] * 25
    events = server.events()
    keys = {e["dedupe_key"] for e in events if e["source"] == "twilio"}
    assert keys == {f"twilio:SMBATCH{n}" for n in range(24)}
    [mail] = [e for e in events if e["source"] == "mailgun"]
    assert mail["data"]["subject"] == "Grüße ✓"


# -- 503 and /readyz ------------------------------------------------------------------------


@pytest.fixture
def impatient_server(tmp_path: Path) -> Iterator[LiveServer]:
    """A server whose writes give up after 100 ms on a lock held by another process."""
    with live_server(tmp_path, busy_timeout_ms=100) as running:
        yield running


def test_store_that_cannot_commit_is_503_then_the_retry_is_stored_once(
    impatient_server: LiveServer,
) -> None:
    server = impatient_server
    request = inbound("LOCKED1")
    with closing(sqlite3.connect(db_path(server), isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        payload = assert_json_error(server.post(request), 503)
        assert "unavailable" in payload["error"]
        ready = httpx.get(server.base_url + "/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "unavailable"
        other.execute("ROLLBACK")
    response = server.post(request)
    assert response.status_code == 200, response.text
    assert b"<Response/>" in response.content
    [event] = server.events()
    assert event["dedupe_key"] == "twilio:SMLOCKED1"
    assert httpx.get(server.base_url + "/readyz").status_code == 200


def test_readyz_is_200_with_rules_fields_when_the_store_answers(server: LiveServer) -> None:
    response = httpx.get(server.base_url + "/readyz")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["status"] == "ok"
    assert {"status", "rules_version", "rules_error"} <= body.keys()


def test_deleted_database_is_unready_and_takes_no_acknowledgement(server: LiveServer) -> None:
    assert server.post(inbound()).status_code == 200
    db_path(server).unlink()
    ready = httpx.get(server.base_url + "/readyz")
    assert ready.status_code == 503
    assert ready.json()["status"] == "unavailable"
    # SQLite would keep writing to the unlinked file: an ack there is an event lost.
    assert_json_error(server.post(inbound()), 503)


def test_healthz_is_200(server: LiveServer) -> None:
    response = httpx.get(server.base_url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- 404 and accept_types -------------------------------------------------------------------


@pytest.mark.parametrize(
    "path", ["/webhooks/nosuch", "/webhooks/custom/not-configured", "/webhooks/twilio/voice"]
)
def test_source_that_is_not_configured_is_404(server: LiveServer, path: str) -> None:
    request = inbound()
    response = httpx.post(server.base_url + path, content=request.body, headers=request.headers)
    assert_json_error(response, 404)
    assert server.events() == []


def test_event_type_outside_accept_types_is_200_and_ignored(tmp_path: Path) -> None:
    options = {"twilio": 'accept_types = ["message.received"]'}
    with live_server(tmp_path, source_options=options) as server:
        status = twilio(status_params("IGN1"), STATUS)
        response = server.post(status)
        assert response.status_code == 200, response.text
        assert b"<Response/>" in response.content
        assert server.post(inbound("ACC1")).status_code == 200
        by_key = {e["dedupe_key"]: e for e in server.events()}
    assert by_key["twilio:SMIGN1:delivered"]["status"] == "ignored"
    assert by_key["twilio:SMACC1"]["status"] == "received"
