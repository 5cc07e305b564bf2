"""Builds the configured Store from `[storage] url`."""

from __future__ import annotations

from router.config import Settings
from router.store.sqlite import SQLiteStore, sqlite_path


def store_from_settings(settings: Settings) -> SQLiteStore:
    """The store named by `storage.url`; only `sqlite:///` is implemented on this box."""
    url = settings.storage.url
    if url.startswith("sqlite:///"):
        return SQLiteStore(sqlite_path(url), busy_timeout_ms=settings.storage.busy_timeout_ms)
    scheme = url.split(":", 1)[0]
    raise ValueError(f"storage.url: scheme {scheme!r} is not supported yet (use sqlite:///PATH)")
