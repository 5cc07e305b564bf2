"""PostgreSQL implementation of the Store, on an asyncpg pool: several routers share one database.

`store.py` holds the store (its reads are router.store.common's), `rows.py` the parameters of
its writes, `blobs.py` the blobs kept in the database, `connection.py` the URL and the driver
errors.
"""

from __future__ import annotations

from router.store.postgres.blobs import PostgresBlobs
from router.store.postgres.connection import is_postgres_url, redact_url, wrap_exceptions
from router.store.postgres.store import PostgresStore

__all__ = ["PostgresBlobs", "PostgresStore", "is_postgres_url", "redact_url", "wrap_exceptions"]
