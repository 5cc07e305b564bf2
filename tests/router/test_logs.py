"""Logs through the live server: structured JSON lines, and no secrets or personal data."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.logs import configure_logging, mask_address, mask_text, scrub
from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.support import ADMIN_TOKEN, PUBLIC_URL, SECRETS, WRONG_SECRETS, LiveServer, live_server

CUSTOMER = "+15551230001"
OURS = "+15559870000"
BODY = "my card number is in this very private message"
TOKEN = SECRETS["twilio"][0]


@pytest.fixture
def log_buffer() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    configure_logging("info", stream=buffer)
    yield buffer
    configure_logging("info")


@pytest.fixture
def debug_log_buffer() -> Iterator[io.BytesIO]:
    buffer = io.BytesIO()
    configure_logging("info", debug=True, stream=buffer)
    yield buffer
    configure_logging("info")


@pytest.fixture
def running(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(tmp_path, quiet=False) as server:
        yield server


def lines(buffer: io.BytesIO) -> list[dict[str, Any]]:
    """Every line must be one JSON object."""
    return [json.loads(line) for line in buffer.getvalue().splitlines()]


def message(sid: str, token: str = TOKEN, **extra: str) -> SignedRequest:
    params = {"MessageSid": sid, "From": CUSTOMER, "To": OURS, "Body": BODY, **extra}
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, token)


def post(server: LiveServer, request: SignedRequest, request_id: str = "") -> httpx.Response:
    headers = {**request.headers, **({"X-Request-ID": request_id} if request_id else {})}
    return httpx.post(server.base_url + request.path, content=request.body, headers=headers)


def test_ingested_webhook_is_one_structured_line(
    log_buffer: io.BytesIO, running: LiveServer
) -> None:
    response = post(running, message("SMlog1"), request_id="req-log-1")
    assert response.status_code == 200
    stored = running.cli("events", "list", "--json").json()
    ingested = [line for line in lines(log_buffer) if line.get("event") == "ingested"]
    assert len(ingested) == 1
    line = ingested[0]
    assert line["event_id"] == stored[0]["id"]
    assert line["source"] == "twilio"
    assert line["type"] == "message.received"
    assert line["stage"] == "ingest"
    assert line["outcome"] == "stored"
    assert line["correlation_id"] == "req-log-1"
    assert isinstance(line["duration_ms"], int | float) and line["duration_ms"] >= 0
    assert line["level"] == "info"
    assert line["timestamp"].endswith("Z")


def test_a_duplicate_is_logged_as_such(log_buffer: io.BytesIO, running: LiveServer) -> None:
    post(running, message("SMdup"))
    post(running, message("SMdup"))
    outcomes = [line["outcome"] for line in lines(log_buffer) if line.get("event") == "ingested"]
    assert outcomes == ["stored", "duplicate"]


def exercise_every_path(server: LiveServer) -> None:
    """Stored, duplicate, bad signature, malformed and a status callback with an error."""
    assert post(server, message("SMa")).status_code == 200
    assert post(server, message("SMa")).status_code == 200
    assert post(server, message("SMb", token=WRONG_SECRETS["twilio"])).status_code == 401
    assert post(server, message("SMc", NumMedia="lots")).status_code == 400
    status = {
        "MessageSid": "SMd",
        "MessageStatus": "undelivered",
        "ErrorCode": "30008",
        "From": OURS,
        "To": CUSTOMER,
    }
    callback = signed(PUBLIC_URL, "/webhooks/twilio/status", status, TOKEN)
    assert post(server, callback).status_code == 200


def test_logs_hold_no_secret_number_or_body(log_buffer: io.BytesIO, running: LiveServer) -> None:
    exercise_every_path(running)
    records = lines(log_buffer)
    assert {r["event"] for r in records} >= {"ingested", "rejected", "quarantined"}
    text = log_buffer.getvalue().decode()
    secrets = [s for values in SECRETS.values() for s in values]
    for secret in [*secrets, WRONG_SECRETS["twilio"], ADMIN_TOKEN]:
        assert secret not in text
    for number in (CUSTOMER, OURS):
        assert number not in text
        assert number.lstrip("+") not in text
    assert BODY not in text
    masked = mask_address(CUSTOMER)
    assert masked is not None and "*" in masked
    assert {r["contact"] for r in records if r.get("contact")} == {masked}


def test_debug_logs_may_show_full_numbers(
    debug_log_buffer: io.BytesIO, running: LiveServer
) -> None:
    assert post(running, message("SMdebug")).status_code == 200
    ingested = [r for r in lines(debug_log_buffer) if r.get("event") == "ingested"]
    assert ingested[0]["contact"] == CUSTOMER
    assert TOKEN not in debug_log_buffer.getvalue().decode()  # debug never shows secrets


def test_mask_helpers(log_buffer: io.BytesIO) -> None:
    assert mask_address(CUSTOMER) == "+1555*****01"
    assert mask_address("ann@example.com") == "a***@example.com"
    assert mask_address("U024BE7LH") == "U024BE7LH"  # a Slack user id is no personal data
    assert mask_text(BODY) == f"<{len(BODY)} chars>"
    assert CUSTOMER not in scrub(f"cannot send to {CUSTOMER} or ann@example.com")
    assert "ann@" not in scrub("cannot send to ann@example.com")


def test_mask_helpers_in_debug(debug_log_buffer: io.BytesIO) -> None:
    assert mask_address(CUSTOMER) == CUSTOMER
    assert mask_text(BODY) == BODY
