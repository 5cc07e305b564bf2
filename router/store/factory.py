"""Builds the configured Store from `[storage] url`."""

from __future__ import annotations

from router.config import Settings
from router.store.base import Store
from router.store.postgres import PostgresStore, is_postgres_url
from router.store.sqlite import SQLiteStore, sqlite_path


def store_from_settings(settings: Settings) -> Store:
    """The store named by `storage.url`: `sqlite:///PATH` for one box, `postgresql://…` (or
    `postgres://…`) for several router processes sharing one database."""
    storage = settings.storage
    if storage.url.startswith("sqlite:///"):
        return SQLiteStore(sqlite_path(storage.url), busy_timeout_ms=storage.busy_timeout_ms)
    if is_postgres_url(storage.url):
        return PostgresStore(
            storage.url, pool_min_size=storage.pool_min_size, pool_max_size=storage.pool_max_size
        )
    scheme = storage.url.split(":", 1)[0]
    raise ValueError(
        f"storage.url: scheme {scheme!r} is not supported (use sqlite:///PATH or postgresql://…)"
    )
