"""The PostgreSQL URL and driver errors: what may be shown, and what every failure means."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from router.errors import StoreUnavailable

#: Driver failures: every one means "cannot commit right now" to the caller. InternalClientError
#: is the driver's protocol refusing a statement (`refused_unsent`), a subclass of neither.
DRIVER_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
    asyncio.TimeoutError,
)


def refused_unsent(exc: BaseException) -> bool:
    """True if the driver refused to send a statement because the connection's protocol was not
    idle, though no statement of ours ran on it: the server ended the connection while it sat
    in the pool (`pg_terminate_backend`, a restart), and its FATAL message was read before its
    close. asyncpg then leaves the protocol in its error-consuming state and the connection
    still looks open, so the pool hands it out and the first statement is refused at once,
    before anything is written ("cannot switch to state N; another operation (2) is in
    progress"). Nothing ran and the backend is gone: the work is safe to run again elsewhere."""
    return isinstance(exc, asyncpg.InternalClientError) and str(exc).startswith(
        "cannot switch to state"
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
