"""The raw webhook endpoint's own duties: method, path, size, disconnects, query in the URL."""

from __future__ import annotations

import socket
from urllib.parse import urlencode, urlsplit

import httpx
from twilio.request_validator import RequestValidator

from tests.cases import twilio
from tests.support import PUBLIC_URL, SECRETS, LiveServer


def test_other_methods_are_405_with_allow(server: LiveServer) -> None:
    for method in ("GET", "PUT", "DELETE"):
        response = httpx.request(method, server.base_url + "/webhooks/twilio/messages", timeout=10)
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert response.json() == {"error": "Method Not Allowed"}


def test_the_bare_prefix_and_unknown_routes_are_404(server: LiveServer) -> None:
    for path in ("/webhooks", "/webhooks/", "/webhooks/twilio", "/webhooks/custom/nobody"):
        response = httpx.post(server.base_url + path, content=b"x", timeout=10)
        assert response.status_code == 404, path
        assert "no source is configured" in response.json()["error"]


def test_a_client_that_hangs_up_mid_body_changes_nothing(server: LiveServer) -> None:
    host, port = urlsplit(server.base_url).netloc.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /webhooks/twilio/messages HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\n"
            b"MessageSid=SMgone"
        )
    request = twilio.CASES[0].sign(SECRETS["twilio"][0], "after-hangup", 0)
    assert server.post(request).status_code == 200
    assert [e["dedupe_key"] for e in server.events()] == ["twilio:SMafter-hangup"]


def test_the_signed_url_includes_the_query_string(server: LiveServer) -> None:
    """Twilio signs the full URL it called: a query on the webhook URL is part of it."""
    params = twilio.message_params("withquery")
    path = "/webhooks/twilio/messages?tenant=acme"
    signature = RequestValidator(SECRETS["twilio"][0]).compute_signature(PUBLIC_URL + path, params)
    headers = {"Content-Type": "application/x-www-form-urlencoded", "X-Twilio-Signature": signature}
    body = urlencode(params).encode()
    assert httpx.post(server.base_url + path, content=body, headers=headers).status_code == 200
    unsigned_query = server.base_url + "/webhooks/twilio/messages?tenant=other"
    assert httpx.post(unsigned_query, content=body, headers=headers).status_code == 401
