"""Builds the configured Store from `[storage] url`."""

from __future__ import annotations

from router.config import Settings
from router.store.base import Store
from router.store.postgres import PostgresStore, is_postgres_url
from router.store.queries import Backend
from router.store.sqlite import SQLiteStore, sqlite_path


def backend_of(url: str) -> Backend:
    """Which backend a `storage.url` names (ValueError for any other scheme)."""
    if url.startswith("sqlite:///"):
        return "sqlite"
    if is_postgres_url(url):
        return "postgres"
    scheme = url.split(":", 1)[0]
    raise ValueError(
        f"storage.url: scheme {scheme!r} is not supported (use sqlite:///PATH or postgresql://…)"
    )


def store_from_settings(settings: Settings) -> Store:
    """The store named by `storage.url`: `sqlite:///PATH` for one box, `postgresql://…` (or
    `postgres://…`) for several router processes sharing one database."""
    storage = settings.storage
    if backend_of(storage.url) == "sqlite":
        return SQLiteStore(sqlite_path(storage.url), busy_timeout_ms=storage.busy_timeout_ms)
    return PostgresStore(
        storage.url, pool_min_size=storage.pool_min_size, pool_max_size=storage.pool_max_size
    )
