"""Hostile bodies (issue 7): each attack is sent for real, in a loop, against a server process,
while correctly signed webhooks keep arriving.

What a user sees is checked: the attacker gets a clear 4xx, and every signed webhook sent
meanwhile is answered 200 within Slack's 3 s (past it Slack retries, then disables the app) and
stored. Before the fixes, a 10 MiB form of empty fields stalled the event loop 4 s, and a
replayed Mailgun signature with 20,000 nested MIME parts 11 s, before their 401.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.email import (
    credentials,
    mailgun_fields,
    mailgun_sign,
    multipart_request,
    sendgrid_raw_sign,
)
from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, SECRETS, ServerProcess, server_process, wait_for

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
#: Slack's limit for an answer; Twilio's default timeout is longer.
SLACK_DEADLINE_S = 3.0
MESSAGES = "/webhooks/twilio/messages"
MAILGUN = "/webhooks/email/mailgun"
SENDGRID = "/webhooks/email/sendgrid"
#: ~1.29 million empty fields, 10 MiB: the form that stalled the loop 4.1 s.
FIELD_BOMB = b"&".join(b"f%d=" % i for i in range(1_290_000))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Twilio's body limit raised to 16 MiB so the field cap, not the size, must hold."""
    with server_process(
        tmp_path_factory.mktemp("hostile"),
        max_body_bytes=48 * MiB,
        source_options={"twilio": f"max_body_bytes = {16 * MiB}"},
    ) as running:
        yield running


@dataclass
class Attack:
    """Attacker threads posting one request in a loop; their answers are kept."""

    statuses: list[int] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answered(self) -> int:
        with self.lock:
            return len(self.statuses)


@contextmanager
def under_attack(
    server: ServerProcess, send: Callable[[httpx.Client], httpx.Response], clients: int = 2
) -> Iterator[Attack]:
    """Run `clients` attackers until the block ends; at least one answer before it starts."""
    attack = Attack()

    def loop() -> None:
        with httpx.Client(base_url=server.base_url, timeout=60) as client:
            while not attack.stop.is_set():
                status = send(client).status_code
                with attack.lock:
                    attack.statuses.append(status)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: attack.answered() >= 1, timeout=30)
        yield attack
    finally:
        attack.stop.set()
        for thread in threads:
            thread.join(timeout=60)


def twilio_message(unique: str) -> SignedRequest:
    return signed(PUBLIC_URL, MESSAGES, message_params(unique), SECRETS["twilio"][0])


def assert_signed_webhooks_flow(server: ServerProcess, attack: Attack, prefix: str) -> None:
    """16 signed webhooks, one after another during the attack: each answered 200 within
    Slack's deadline and stored; the attack went on meanwhile (its answers interleave)."""
    before = attack.answered()
    for n in range(16):
        response = server.post(twilio_message(f"{prefix}{n:02d}"), timeout=SLACK_DEADLINE_S)
        assert response.status_code == 200, response.text
    wait_for(lambda: attack.answered() > before, timeout=30)
    stored = {event["dedupe_key"] for event in server.events("--source", "twilio")}
    assert {f"twilio:SM{prefix}{n:02d}" for n in range(16)} <= stored


def test_form_of_a_million_fields_is_refused_413_and_stalls_nothing(
    server: ServerProcess,
) -> None:
    def bomb(client: httpx.Client) -> httpx.Response:
        return client.post(
            MESSAGES,
            content=FIELD_BOMB,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-Twilio-Signature": "forged",
            },
        )

    with under_attack(server, bomb) as attack:
        assert_signed_webhooks_flow(server, attack, "FIELDS")
    assert set(attack.statuses) == {413}


def test_default_twilio_limit_refuses_a_large_form_before_reading_it(tmp_path: Path) -> None:
    """At the default per-source limits an SMS webhook may be 64 KiB, an email 40 MiB."""
    with server_process(tmp_path, max_body_bytes=48 * MiB) as running:
        response = running.post(
            SignedRequest(MESSAGES, b"f=" + b"a" * (64 * 1024), twilio_message("X").headers)
        )
        assert response.status_code == 413
        assert "65536 bytes" in response.json()["error"]
        big_email = mailgun_sign(SECRETS["mailgun"][0], "big", int(time.time()))
        padded = multipart_request(
            MAILGUN,
            mailgun_fields("padded", SECRETS["mailgun"][0], int(time.time())),
            {"attachment-1": ("big.bin", b"x" * (2 * MiB), "application/octet-stream")},
        )
        assert running.post(big_email).status_code == 200
        assert running.post(padded).status_code == 200


def nested_mime(levels: int) -> bytes:
    """A message of `levels` nested multipart/mixed parts (20,000 levels: 1.4 MB)."""
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))
    head = b"From: ann@example.com\r\nTo: support@example.com\r\nSubject: bomb\r\n"
    return head + opening + b"Content-Type: text/plain\r\n\r\nhi\r\n" + closing


def mailgun_with_mime(fields: dict[str, str], mime: bytes) -> SignedRequest:
    """A Mailgun `mime` route post: the signed fields and the message in `body-mime`."""
    signed_fields = {name: fields[name] for name in ("timestamp", "token", "signature")}
    signed_fields["recipient"] = fields["recipient"]
    return multipart_request(MAILGUN, signed_fields, {"body-mime": (None, mime, "text/plain")})


def test_replayed_mailgun_signature_with_a_mime_bomb_is_refused_before_parsing(
    server: ServerProcess,
) -> None:
    """Mailgun signs only timestamp + token: a captured signature is replayed with a bomb."""
    key = SECRETS["mailgun"][0]
    at = int(time.time())
    captured = mailgun_fields("captured", key, at)
    original = mailgun_sign(key, "captured", at)
    assert server.post(original).status_code == 200
    bomb = mailgun_with_mime(captured, nested_mime(20_000))

    with under_attack(server, lambda client: _post(client, bomb)) as attack:
        assert_signed_webhooks_flow(server, attack, "REPLAY")
    assert set(attack.statuses) == {401}
    again = server.post(bomb)
    assert again.json() == {"error": "signature check failed: token already used"}
    assert server.post(original).status_code == 200  # the identical redelivery: a duplicate


def test_freshly_signed_mime_bomb_is_quarantined_not_parsed_to_the_end(
    server: ServerProcess,
) -> None:
    key = SECRETS["mailgun"][0]

    def bomb(client: httpx.Client) -> httpx.Response:
        unique = f"bomb{time.monotonic_ns()}"
        fields = mailgun_fields(unique, key, int(time.time()))
        return _post(client, mailgun_with_mime(fields, nested_mime(20_000)))

    with under_attack(server, bomb) as attack:
        assert_signed_webhooks_flow(server, attack, "FRESH")
    assert set(attack.statuses) == {400}
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        response = bomb(client)
    assert "nest more than 20 levels" in response.json()["error"]


def test_sendgrid_raw_mime_bomb_is_quarantined(server: ServerProcess) -> None:
    secret = SECRETS["sendgrid"][0]
    genuine = sendgrid_raw_sign(secret, "raw-bomb", 0)
    bomb = multipart_request(
        SENDGRID,
        {"to": "support@example.com"},
        {"email": (None, nested_mime(20_000), "text/plain")},
        credentials(secret),
    )
    with under_attack(server, lambda client: _post(client, bomb)) as attack:
        assert_signed_webhooks_flow(server, attack, "SGRAW")
    assert set(attack.statuses) == {400}
    assert server.post(genuine).status_code == 200


def test_unsigned_mailgun_bodies_cost_only_their_signed_fields(server: ServerProcess) -> None:
    """A url-encoded body of 30 MiB of escapes, and a multipart of 2,000 parts, unsigned."""
    escapes = b"body-plain=" + b"%41" * (10 * MiB)
    many_parts = multipart_request(MAILGUN, {f"f{i}": "x" for i in range(2000)})

    def attack(client: httpx.Client) -> httpx.Response:
        return client.post(
            MAILGUN,
            content=escapes,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )

    with under_attack(server, attack) as flood:
        assert_signed_webhooks_flow(server, flood, "ESCAPES")
    assert set(flood.statuses) == {401}
    response = server.post(many_parts)
    assert response.status_code == 413, response.text


def test_a_mailgun_token_is_checked_against_the_body_it_came_with(
    server: ServerProcess,
) -> None:
    """Same token, same (large, blob-stored) body: a duplicate; another body: refused."""
    key = SECRETS["mailgun"][0]
    at = int(time.time())
    fields = mailgun_fields("blobbed", key, at)
    large = multipart_request(
        MAILGUN, fields, {"attachment-1": ("a.bin", b"y" * (3 * MiB), "application/octet-stream")}
    )
    assert server.post(large).status_code == 200
    assert server.post(large).status_code == 200
    other = multipart_request(
        MAILGUN, fields, {"attachment-1": ("a.bin", b"z" * (3 * MiB), "application/octet-stream")}
    )
    assert server.post(other).status_code == 401
    assert [e["dedupe_key"] for e in server.events("--source", "mailgun")].count(
        "mailgun:blobbed@mail.example.com"
    ) == 1


def _post(client: httpx.Client, request: SignedRequest) -> httpx.Response:
    return client.post(
        request.path, content=request.body, headers=request.headers, auth=request.auth
    )
