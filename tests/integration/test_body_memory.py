"""Body bytes held at once are bounded (`server.max_body_memory_bytes`): many large uploads
together get 503 (providers retry) instead of growing the process without end, and what a
finished or abandoned upload held is given back."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, SECRETS, LiveServer, live_server, wait_for

MiB = 1024 * 1024
MAILGUN = "/webhooks/email/mailgun"


@pytest.fixture
def small_budget(tmp_path: Path) -> Iterator[LiveServer]:
    with live_server(
        tmp_path, max_body_bytes=MiB, server_options=f"max_body_memory_bytes = {2 * MiB}"
    ) as running:
        yield running


def upload_started(server: LiveServer, sent: int, declared: int = MiB) -> socket.socket:
    """A connection that has sent the headers and `sent` bytes of a `declared`-byte body."""
    port = int(server.base_url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port))
    head = (
        f"POST {MAILGUN} HTTP/1.1\r\nHost: t\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    conn.sendall(head.encode() + b"a" * sent)
    return conn


def answer_of(conn: socket.socket) -> bytes:
    conn.settimeout(10)
    return conn.recv(65536)


def twilio_ok(server: LiveServer, unique: str) -> int:
    params = message_params(unique)
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    return server.post(request).status_code


def test_uploads_past_the_memory_budget_get_503_and_the_budget_comes_back(
    small_budget: LiveServer,
) -> None:
    holding = upload_started(small_budget, sent=900 * 1024)  # 1.8 MiB held of 2 MiB
    wait_for(lambda: twilio_ok(small_budget, f"PROBE{id(holding)}") == 200)
    second = upload_started(small_budget, sent=300 * 1024, declared=300 * 1024)
    refused = answer_of(second)
    assert refused.startswith(b"HTTP/1.1 503"), refused[:200]
    assert b"retry-after: 1" in refused.lower()
    second.close()

    holding.close()  # the client gives up: what it held is given back
    third = upload_started(small_budget, sent=600 * 1024, declared=600 * 1024)
    assert answer_of(third).startswith(b"HTTP/1.1 401")  # taken in, then refused as unsigned
    third.close()
    assert twilio_ok(small_budget, "AFTER") == 200


def test_budget_below_the_body_limit_is_a_config_error(tmp_path: Path) -> None:
    from router.config import ConfigError, parse_settings

    with pytest.raises(ConfigError, match="max_body_memory_bytes"):
        parse_settings(f"[server]\nmax_body_bytes = {4 * MiB}\nmax_body_memory_bytes = {MiB}\n")
