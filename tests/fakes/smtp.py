"""A fake SMTP server (aiosmtpd's threaded `Controller`) on loopback, for aiosmtplib.

    with FakeSMTP() as smtp:
        await aiosmtplib.send(message, hostname="127.0.0.1", port=smtp.port)
        assert smtp.messages[0].message_id == "<...>"

What it reproduces (`../shared/notes/outbound-providers.md` §3):

- 2yz success, 4yz transient, 5yz permanent replies: `fail_next(n, code, phase=...)` answers
  the next `n` MAIL, RCPT or DATA commands with `code` (451 "4.3.0 ..." or 550 "5.1.1 ..." by
  default text) instead of accepting; `fail_for(address, code, times=None)` refuses one
  recipient at RCPT. A refused RCPT adds nothing; a refused DATA records nothing.
- The in-doubt drop: `drop_next(n, phase="DATA")` records the message as delivered, then
  resets the connection before the 250 (RFC 1047: a retry would duplicate it). With
  `phase="RCPT"` or `"MAIL"` the connection is reset before anything is accepted (safe).
- No way to ask afterwards whether a message arrived: the receipt is the 250 after DATA.
- `slow`: seconds to wait after recording a message and before its 250.

Counters: `messages` (`ReceivedMail`: envelope from/to, Message-ID, Subject, body text, raw
bytes, monotonic and wall times), `by_message_id(id)`, `refused` (phase, address, code) and
`dropped` (phase, count). Thread-safe (one lock); start/stop as a context manager.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import socket
import struct
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.message import EmailMessage
from types import TracebackType
from typing import Any, Literal, Self

from aiosmtpd.controller import Controller

Phase = Literal["MAIL", "RCPT", "DATA"]

DEFAULT_TEXT: dict[int, str] = {
    421: "4.3.2 Service not available, closing transmission channel",
    450: "4.2.1 Mailbox temporarily unavailable",
    451: "4.3.0 Requested action aborted: local error in processing",
    452: "4.3.1 Insufficient system storage",
    550: "5.1.1 Requested action not taken: mailbox unavailable",
    552: "5.3.4 Message size exceeds fixed maximum message size",
    553: "5.1.3 Requested action not taken: mailbox name not allowed",
    554: "5.7.1 Message rejected for policy reasons",
}


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message_id: str | None
    subject: str | None
    body: str
    raw: bytes
    received_at: float  # time.monotonic()
    received_wall: datetime


@dataclass
class _Rule:
    phase: Phase
    code: int | None  # None: drop the connection
    remaining: int | None
    address: str | None = None


class FakeSMTP:
    def __init__(self, *, hostname: str = "127.0.0.1", port: int = 0) -> None:
        self.hostname = hostname
        self._want_port = port
        self.port = 0
        self.lock = threading.RLock()
        self.slow = 0.0
        self.messages: list[ReceivedMail] = []
        self.refused: list[tuple[Phase, str, int]] = []
        self.dropped: list[Phase] = []
        self._rules: list[_Rule] = []
        self._controller: Controller | None = None

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> Self:
        for _ in range(20):
            port = self._want_port or _free_port(self.hostname)
            controller = Controller(_Handler(self), hostname=self.hostname, port=port)
            try:
                controller.start()
            except (OSError, RuntimeError):
                if self._want_port:
                    raise
                continue
            self._controller, self.port = controller, port
            return self
        raise RuntimeError("no free port for the fake SMTP server")

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, _t: type[BaseException] | None, _e: BaseException | None, _tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- scripting --------------------------------------------------------------------------
    def fail_next(self, n: int, code: int, *, phase: Phase = "RCPT") -> None:
        with self.lock:
            self._rules.append(_Rule(phase, code, n))

    def fail_for(self, address: str, code: int, *, times: int | None = None) -> None:
        with self.lock:
            self._rules.append(_Rule("RCPT", code, times, address.lower()))

    def drop_next(self, n: int = 1, *, phase: Phase = "DATA") -> None:
        with self.lock:
            self._rules.append(_Rule(phase, None, n))

    def clear_faults(self) -> None:
        with self.lock:
            self._rules.clear()

    def by_message_id(self, message_id: str) -> list[ReceivedMail]:
        with self.lock:
            return [m for m in self.messages if m.message_id == message_id]

    def snapshot(self) -> list[ReceivedMail]:
        with self.lock:
            return list(self.messages)

    def _take(self, phase: Phase, address: str | None) -> _Rule | None:
        with self.lock:
            candidates = [r for r in self._rules if r.phase == phase]
            rule = next((r for r in candidates if r.address and r.address == address), None)
            rule = rule or next((r for r in candidates if r.address is None), None)
            if rule is not None and rule.remaining is not None:
                rule.remaining -= 1
                if rule.remaining <= 0:
                    self._rules.remove(rule)
            return rule

    def _answer(self, server: Any, phase: Phase, address: str) -> str | None:
        """None to accept; else the reply (or "" after dropping the connection)."""
        rule = self._take(phase, address.lower() if address else None)
        if rule is None:
            return None
        if rule.code is None:
            with self.lock:
                self.dropped.append(phase)
            _reset(server)
            return ""
        with self.lock:
            self.refused.append((phase, address, rule.code))
        return f"{rule.code} {DEFAULT_TEXT.get(rule.code, 'scripted failure')}"


class _Handler:
    def __init__(self, fake: FakeSMTP) -> None:
        self.fake = fake

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refused = self.fake._answer(server, "MAIL", address)
        if refused is not None:
            return refused
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        refused = self.fake._answer(server, "RCPT", address)
        if refused is not None:
            return refused
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        fake = self.fake
        rule = fake._take("DATA", None)
        if rule is not None and rule.code is not None:
            with fake.lock:
                fake.refused.append(("DATA", envelope.mail_from, rule.code))
            return f"{rule.code} {DEFAULT_TEXT.get(rule.code, 'scripted failure')}"
        raw: bytes = envelope.original_content or b""
        parsed = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        part = parsed.get_body(preferencelist=("plain", "html"))
        body = part.get_content() if part is not None else ""
        mail = ReceivedMail(
            envelope.mail_from,
            tuple(envelope.rcpt_tos),
            parsed.get("Message-ID"),
            parsed.get("Subject"),
            body,
            raw,
            time.monotonic(),
            datetime.now(UTC),
        )
        with fake.lock:
            fake.messages.append(mail)
        if rule is not None:  # accepted, then the 250 never arrives: in doubt
            with fake.lock:
                fake.dropped.append("DATA")
            _reset(server)
            return ""
        if fake.slow > 0:
            await asyncio.sleep(fake.slow)
        return "250 2.0.0 OK: queued"


def _reset(server: Any) -> None:
    transport = server.transport
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def _free_port(hostname: str) -> int:
    with socket.socket() as sock:
        sock.bind((hostname, 0))
        port: int = sock.getsockname()[1]
        return port
