"""The HTTP server bounds what a client can hold (issue 7, item 4): header size, time to send
the headers, time to send the body, idle keep-alive, open connections.

Every attack is sent for real, on a raw socket, to the app served the way `serve` serves it
(tests/support.py `live_server` uses router.http.server). A refused client waits for its answer
and the close within a generous deadline; nothing here asserts a timing.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import select
import signal
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import message_params, signed
from tests.support import (
    PUBLIC_URL,
    SECRETS,
    LiveServer,
    ServerProcess,
    live_server,
    server_process,
    wait_for,
)

#: How long a client waits for an answer or a close: far above every timeout configured here.
DEADLINE = 20.0
MESSAGES = "/webhooks/twilio/messages"
#: A request line and headers that never end (the header block needs an empty line).
UNFINISHED = f"POST {MESSAGES} HTTP/1.1\r\nHost: t\r\nX-Slow: ".encode()
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"


class Hostile:
    """A client on a raw socket that sends what it likes, when it likes."""

    def __init__(self, server: LiveServer | ServerProcess) -> None:
        url = urlsplit(server.base_url)
        self.sock = socket.create_connection((url.hostname, url.port or 80), timeout=DEADLINE)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def answered(self, wait: float = 0.0) -> bool:
        """True once the server has written something or closed (a read would not block)."""
        readable, _, _ = select.select([self.sock], [], [], wait)
        return bool(readable)

    def send_until_answered(self, pieces: Iterator[bytes], pause: float = 0.0) -> None:
        """Send piece after piece, pausing between them, until the server answers or closes."""
        deadline = time.monotonic() + DEADLINE
        for piece in pieces:
            try:
                self.send(piece)
            except ConnectionError:  # it stopped reading: its answer is waiting
                return
            if self.answered(pause):
                return
            assert time.monotonic() < deadline, "the server never answered"

    def trickle(self, data: bytes, filler: bytes = b"a", pause: float = 0.05) -> None:
        """`data`, then `filler` forever, a byte at a time, until the server answers."""
        tail = itertools.repeat(filler)
        self.send_until_answered(itertools.chain((bytes([b]) for b in data), tail), pause)

    def until_closed(self) -> bytes:
        """Everything the server sends until it closes (fails past DEADLINE)."""
        received = b""
        while chunk := self.sock.recv(65536):
            received += chunk
        return received

    def one_response(self) -> bytes:
        """One response with a content-length, leaving the connection open."""
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed after {received!r}"
            received += chunk
        head, _, body = received.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += self.sock.recv(65536)
        return received

    def close(self) -> None:
        self.sock.close()


def status(response: bytes) -> int:
    assert response.startswith(b"HTTP/1.1 "), response[:100]
    return int(response.split(b" ", 2)[1])


def error_of(response: bytes) -> str:
    """The `{"error"}` of a refusal, the app's own shape."""
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json" in head.lower()
    error: str = json.loads(body)["error"]
    return error


def closes_connection(response: bytes) -> bool:
    head = response.partition(b"\r\n\r\n")[0].lower()
    return b"\r\nconnection: close" in head


@contextlib.contextmanager
def hostile(server: LiveServer) -> Iterator[Hostile]:
    client = Hostile(server)
    try:
        yield client
    finally:
        client.close()


def head_of(request: SignedRequest) -> bytes:
    """The request line and headers of `request`, as a client writes them."""
    fields = {"Host": "t", **request.headers, "Content-Length": str(len(request.body))}
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    return f"POST {request.path} HTTP/1.1\r\n{lines}\r\n".encode()


def inbound(unique: str = "") -> SignedRequest:
    params = message_params(unique or uuid.uuid4().hex)
    return signed(PUBLIC_URL, MESSAGES, params, SECRETS["twilio"][0])


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[LiveServer]:
    """Short timeouts, small header budget, keep-alive of a second."""
    options = (
        "max_header_bytes = 4096\nheader_timeout_seconds = 1\n"
        "body_timeout_seconds = 1\nkeepalive_seconds = 1"
    )
    with live_server(tmp_path, server_options=options) as running:
        yield running


def test_an_oversized_header_is_answered_431_and_closed(tmp_path: Path) -> None:
    # Timeouts far above DEADLINE: only the size limit can answer within it.
    options = "max_header_bytes = 4096\nheader_timeout_seconds = 600"
    with live_server(tmp_path, server_options=options) as server, hostile(server) as client:
        client.send_until_answered(itertools.chain([UNFINISHED], itertools.repeat(b"a" * 1024)))
        response = client.until_closed()
        assert status(response) == 431
        assert error_of(response) == "Request Header Fields Too Large"
        assert closes_connection(response)
        # The server itself is fine.
        assert server.post(inbound()).status_code == 200


def test_headers_just_under_the_limit_are_served(tmp_path: Path) -> None:
    options = "max_header_bytes = 4096"
    with live_server(tmp_path, server_options=options) as server:
        request = inbound()
        padding = 4096 - len(request.body) - 600  # room for the request line and other headers
        response = server.post(request, headers={**request.headers, "X-Pad": "p" * padding})
        assert response.status_code == 200
        assert len(server.events()) == 1


def test_a_header_sent_a_byte_at_a_time_is_answered_408_and_closed(
    strict_server: LiveServer,
) -> None:
    with hostile(strict_server) as client:
        client.trickle(UNFINISHED)
        response = client.until_closed()
        assert status(response) == 408
        assert error_of(response) == "Request Timeout"
        assert closes_connection(response)


def test_a_connection_that_sends_nothing_is_closed(strict_server: LiveServer) -> None:
    with hostile(strict_server) as client:
        assert client.until_closed() == b""


def test_an_idle_kept_alive_connection_is_closed(strict_server: LiveServer) -> None:
    with hostile(strict_server) as client:
        client.send(HEALTHZ)
        assert status(client.one_response()) == 200
        assert client.until_closed() == b""


def test_blank_lines_trickled_between_requests_do_not_hold_the_connection(
    strict_server: LiveServer,
) -> None:
    with hostile(strict_server) as client:
        client.send(HEALTHZ)
        assert status(client.one_response()) == 200
        client.send_until_answered(itertools.repeat(b"\r\n"), pause=0.05)
        assert status(client.until_closed()) == 408


def test_a_body_sent_a_byte_at_a_time_is_answered_408_and_not_stored(
    strict_server: LiveServer,
) -> None:
    request = inbound()
    with hostile(strict_server) as client:
        client.send(head_of(request))
        client.trickle(request.body[:-1])
        response = client.until_closed()
        assert status(response) == 408
        assert closes_connection(response)
    assert strict_server.events() == []
    # The same webhook, sent in one go, is served.
    assert strict_server.post(request).status_code == 200
    assert len(strict_server.events()) == 1


def test_a_body_still_trickling_after_its_answer_is_cut_off(strict_server: LiveServer) -> None:
    too_large = f"POST {MESSAGES} HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n"
    with hostile(strict_server) as client:
        client.send(too_large.encode())
        assert status(client.one_response()) == 413  # answered before the body was read
        client.trickle(b"")
        assert client.until_closed() == b""  # a second answer would be out of place


def test_connections_beyond_the_cap_are_answered_503(tmp_path: Path) -> None:
    options = "max_connections = 2\nkeepalive_seconds = 60"
    with live_server(tmp_path, server_options=options) as server:
        held = [Hostile(server), Hostile(server)]
        try:
            for client in held:  # each is served, then stays open
                client.send(HEALTHZ)
                assert status(client.one_response()) == 200
            with hostile(server) as third:
                third.send(HEALTHZ)
                response = third.until_closed()
                assert status(response) == 503
                assert error_of(response) == "Service Unavailable"
                assert closes_connection(response)
            held.pop().close()
            wait_for(lambda: httpx.get(server.base_url + "/healthz").status_code == 200)
        finally:
            for client in held:
                client.close()


def test_a_webhook_sent_while_attacks_hold_connections_is_served_and_stored(
    tmp_path: Path,
) -> None:
    # Timeouts above DEADLINE: the attacks hold their connections for the whole test.
    options = (
        "header_timeout_seconds = 600\nbody_timeout_seconds = 600\nkeepalive_seconds = 600\n"
        "max_header_bytes = 8192"
    )
    with live_server(tmp_path, server_options=options) as server, contextlib.ExitStack() as stack:
        attackers = [stack.enter_context(hostile(server)) for _ in range(4)]
        slow_header, slow_body, idle, too_big = attackers
        # Each holding attack follows a complete request in the same write: once that one is
        # answered, the server has read the unfinished request behind it.
        slow_header.send(HEALTHZ + UNFINISHED + b"aaaa")
        unfinished_body = inbound()
        slow_body.send(HEALTHZ + head_of(unfinished_body) + unfinished_body.body[:10])
        idle.send(HEALTHZ)
        for client in (slow_header, slow_body, idle):
            assert status(client.one_response()) == 200
        too_big.send_until_answered(itertools.chain([UNFINISHED], itertools.repeat(b"a" * 1024)))
        assert status(too_big.until_closed()) == 431

        unique = uuid.uuid4().hex
        response = server.post(inbound(unique))

        assert response.status_code == 200
        assert [event["dedupe_key"] for event in server.events()] == [f"twilio:SM{unique}"]
        # The attacks are still in progress: nothing answered, nothing closed.
        assert not any(client.answered() for client in (slow_header, slow_body, idle))


@pytest.mark.integration
def test_serve_applies_the_limits_and_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    options = "max_header_bytes = 4096\nheader_timeout_seconds = 600"
    with server_process(tmp_path, server_options=options) as server:
        client = Hostile(server)
        try:
            client.send_until_answered(itertools.chain([UNFINISHED], itertools.repeat(b"a" * 1024)))
            assert status(client.until_closed()) == 431
        finally:
            client.close()
        assert server.post(inbound()).status_code == 200
        server.process.send_signal(signal.SIGINT)
        assert server.process.wait(timeout=DEADLINE) == 0
    assert "Aborted" not in (tmp_path / "server.log").read_text()
