"""Structured JSON logs, one line per record, with personal data masked unless debug is on."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import msgspec
import structlog

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


class _Sink:
    """Where log lines go. Loggers are cached on first use (it halves the cost of a line), so
    they keep this object and `configure_logging` swaps its target instead."""

    def __init__(self) -> None:
        self.stream: Any = None

    def write(self, data: bytes) -> None:
        (self.stream or sys.stdout.buffer).write(data)

    def flush(self) -> None:
        (self.stream or sys.stdout.buffer).flush()


_SINK = _Sink()


def configure_logging(level: str = "info", *, debug: bool = False, stream: Any = None) -> None:
    """JSON lines on stdout (or the binary `stream`); call once at start-up.

    Calling it again redirects every logger and switches masking, but a logger already used
    keeps the level it was first used with.
    """
    global _DEBUG
    _DEBUG = debug
    _SINK.stream = stream
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(_SINK),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )


def _dumps(obj: Any, **_: Any) -> bytes:
    return msgspec.json.encode(obj, enc_hook=str)


def get_logger(name: str) -> Any:
    """A lazy structlog logger whose lines carry `component=name`."""
    return structlog.get_logger(component=name)
