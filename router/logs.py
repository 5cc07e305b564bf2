"""Structured JSON logs, one line per record, with personal data masked unless debug is on.

A small logger of our own rather than structlog: on the ingest path structlog's bound-logger
machinery cost ~10 us a line (measured here), a third of the framework's own per-request
budget, while a record here is one dict and one msgspec encode (~1.5 us). Lines are written
without a flush each; `flush_logs` runs every half second while the server runs, and warnings
and errors flush at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

_DEBUG = False
_PHONE = re.compile(r"\+?\d[\d\s().-]{6,}\d")
_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+)")


def mask_address(address: str | None) -> str | None:
    """`+15551230001` -> `+1555*****01`; `ann@example.com` -> `a***@example.com`."""
    if address is None or _DEBUG:
        return address
    if "@" in address:
        return _EMAIL.sub(r"\1***@\2", address)
    if len(address) > 6 and address.lstrip("+").isdigit():
        return address[:5] + "*" * (len(address) - 7) + address[-2:]
    return address


def mask_text(text: str | None) -> str | None:
    """Message bodies never reach the log: only their length, unless debug is on."""
    if text is None or _DEBUG:
        return text
    return f"<{len(text)} chars>"


def scrub(text: str) -> str:
    """Mask phone numbers and emails inside free text (error messages)."""
    if _DEBUG:
        return text
    return _EMAIL.sub(
        r"\1***@\2", _PHONE.sub(lambda m: mask_address(m[0].replace(" ", "")) or "", text)
    )


_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}
_FLUSH_AT = _LEVELS["warning"]
_encoder = msgspec.json.Encoder(enc_hook=str)


class _Output:
    """Where every logger writes; `configure_logging` changes it for all loggers at once."""

    level = _LEVELS["info"]
    stream: IO[bytes] | None = None
    configured = False

    @classmethod
    def target(cls) -> IO[bytes]:
        return cls.stream or sys.stdout.buffer


class Logger:
    """Writes one JSON object per line: timestamp, level, component, event, then the fields."""

    __slots__ = ("component",)

    def __init__(self, component: str) -> None:
        self.component = component

    def debug(self, event: str, **fields: Any) -> None:
        self._emit(10, "debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._emit(20, "info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._emit(30, "warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._emit(40, "error", event, fields)

    def _emit(self, level: int, name: str, event: str, fields: dict[str, Any]) -> None:
        if level < _Output.level:
            return
        record = {
            "timestamp": datetime.now(UTC),  # msgspec writes RFC 3339 with Z
            "level": name,
            "component": self.component,
            "event": event,
            **fields,
        }
        stream = _Output.target()
        stream.write(_encoder.encode(record) + b"\n")
        if level >= _FLUSH_AT:
            stream.flush()


def configure_logging(level: str = "info", *, debug: bool = False, stream: Any = None) -> None:
    """JSON lines on stdout (or the binary `stream`); every logger follows at once."""
    global _DEBUG
    _DEBUG = debug
    _Output.level = _LEVELS[level.lower()]
    _Output.stream = stream
    _Output.configured = True
    # watchfiles logs every change it sees at INFO, in the stdlib format litestar gives the
    # root logger: not JSON, and the rules reload logs the change itself.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)
    # apscheduler logs every job added, removed and run at INFO: one line per timer change.
    logging.getLogger("apscheduler").setLevel(logging.WARNING)


def log_to_stderr_unless_configured() -> None:
    """For commands whose stdout is their answer (`events list --json`): a store's warning
    goes to stderr instead of into the JSON. A process that configured its logging (`serve`,
    `worker`, a test running a server in-process) keeps what it chose."""
    if not _Output.configured:
        configure_logging("warning", stream=sys.stderr.buffer)


def flush_logs() -> None:
    """Push buffered lines out (stdout is block-buffered when it is a file or a pipe)."""
    with contextlib.suppress(OSError, ValueError):  # a closed stream must not stop the server
        _Output.target().flush()


async def flush_logs_forever(interval: float = 0.5) -> None:
    """Flush every `interval` seconds, so a quiet server's lines still show promptly."""
    while True:
        await asyncio.sleep(interval)
        flush_logs()


def get_logger(name: str) -> Logger:
    """A logger whose lines carry `component=name`."""
    return Logger(name)
