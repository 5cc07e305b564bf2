"""Blobs on PostgreSQL: content-addressed rows of the `blobs` table, behind the blocking
interface of the file-based `BlobStore` (router/store/blobs.py)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from router.errors import StoreUnavailable

if TYPE_CHECKING:
    from router.store.postgres.store import PostgresStore

T = TypeVar("T")


class PostgresBlobs:
    """The blob store of a PostgreSQL install: rows of a `blobs` table, content-addressed.

    Same blocking interface as the file-based `BlobStore` (callers run it in a thread): each call
    hands its query to the store's event loop and waits. Several boxes share the database, so a
    body one box stored is readable by every other.
    """

    def __init__(self, store: PostgresStore) -> None:
        self._store = store
        self.failing: str | None = None

    def put(self, content: bytes) -> str:
        digest = hashlib.sha256(content).hexdigest()
        try:
            self._wait(self._store.put_blob(digest, content))
        except StoreUnavailable as exc:
            self.failing = str(exc)
            raise
        self.failing = None
        return digest

    def get(self, digest: str) -> bytes:
        if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
            raise FileNotFoundError(digest)
        content = self._wait(self._store.get_blob(digest))
        if content is None:
            raise FileNotFoundError(digest)
        return content

    def probe(self) -> None:
        self._wait(self._store.get_blob("0" * 64))  # a round trip to the database
        self.failing = None

    def sweep_temp_files(self, now: float | None = None) -> int:
        """Nothing to sweep: a blob row is written in one transaction or not at all."""
        return 0

    def _wait(self, work: Coroutine[Any, Any, T]) -> T:
        loop = self._store.loop
        if loop is None or loop.is_closed():
            work.close()
            raise StoreUnavailable("store is not open")
        if _on_loop(loop):
            work.close()
            raise RuntimeError("blobs block: call them in a thread (asyncio.to_thread)")
        return asyncio.run_coroutine_threadsafe(work, loop).result()


def _on_loop(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False
