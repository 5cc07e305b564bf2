"""The PostgreSQL URL and driver errors: what may be shown, and what every failure means."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from router.errors import StoreUnavailable

#: Driver failures: every one means "cannot commit right now" to the caller.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
)


def is_postgres_url(url: str) -> bool:
    """True for the URLs this store takes: `postgresql://` and `postgres://`."""
    return url.startswith(("postgresql://", "postgres://"))


def redact_url(url: str) -> str:
    """The URL with its password replaced by `***`: safe for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


@contextlib.contextmanager
def wrap_exceptions() -> Iterator[None]:
    """Map driver errors to the core's: a lost connection, a restart, a deadlock, a full disk
    are all 'unavailable' (the caller answers 503 and the provider retries)."""
    try:
        yield
    except DRIVER_ERRORS as exc:
        raise StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}"[:500]) from exc
