"""An event the store cannot encode fails alone: never the group-commit batch it would join.

Found by tests/integration/test_fuzz.py: an email header with raw UTF-8 bytes became a lone
surrogate, the batch's encode raised inside the transaction, and every request committed with
it was answered 503. Real SQLite file, real store.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from router.errors import StoreUnavailable, UnstorableEvent
from router.events import Event
from router.ids import new_ulid
from router.store.base import EventFilter, IngestItem, IngestOutcome
from router.store.sqlite import SQLiteStore

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


def item(key: str, text: str = "hello", nonce: str | None = None) -> IngestItem:
    event = Event(
        id=new_ulid(NOW),
        source="test",
        type="message.received",
        provider_type="message",
        dedupe_key=f"test:{key}",
        text=text,
        received_at=NOW,
        correlation_id=key,
    )
    return IngestItem(event=event, raw_body=b"raw", content_type="text/plain", nonce=nonce)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    opened = SQLiteStore(tmp_path / "switchboard.db")
    await opened.open()
    yield opened
    await opened.close()


@pytest.mark.parametrize(
    "bad", [item("BAD", text="caf\udce9"), item("BAD", nonce="tok\udc80")], ids=["text", "nonce"]
)
async def test_unstorable_event_fails_alone(store: SQLiteStore, bad: IngestItem) -> None:
    good = [item(f"G{n}") for n in range(30)]
    results = await asyncio.gather(
        *(store.ingest(i) for i in [*good[:15], bad, *good[15:]]), return_exceptions=True
    )
    assert isinstance(results[15], UnstorableEvent)
    assert isinstance(results[15], StoreUnavailable)  # callers knowing only that still refuse
    assert results[:15] + results[16:] == [IngestOutcome.STORED] * 30
    listed = await store.list_events(EventFilter(limit=100))
    assert {e.dedupe_key for e in listed} == {i.event.dedupe_key for i in good}
    assert await store.ingest(item("AFTER")) is IngestOutcome.STORED
