"""The Store contract, run over every real backend, then what only SQLite promises.

`store` is parametrized over BACKENDS: SQLite (a file under tmp_path) and PostgreSQL (the
session's own database, emptied before each test; see tests/postgres.py). Every contract test
runs on both; SQLite-only promises (files, WAL, locks) use `sqlite_store`.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
import threading
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
import pytest
from twilio.request_validator import RequestValidator

from channels.base import InboundRequest
from channels.twilio import TwilioAdapter
from router.errors import StoreCorrupt, StoreUnavailable, UnstorableEvent
from router.events import Contact, Event, EventStatus
from router.ids import new_ulid
from router.metrics import Metrics
from router.pipeline.ingest import Ingestor
from router.store.base import (
    EventFilter,
    IngestItem,
    IngestOutcome,
    QuarantinedRequest,
    Store,
    StoredRaw,
)
from router.store.blobs import BlobStore
from router.store.postgres import PostgresStore
from router.store.queries import migrations
from router.store.sqlite import SQLiteStore
from tests.postgres import SERVER, clean_schema, run_blocking
from tests.support import wait_for

T0 = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
STORED, DUPLICATE, REPLAY = IngestOutcome.STORED, IngestOutcome.DUPLICATE, IngestOutcome.REPLAY
BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@asynccontextmanager
async def open_backend(kind: str, tmp_path: Path, **options: Any) -> AsyncIterator[Any]:
    """An opened store of `kind`: SQLite under `tmp_path`, or the session's PostgreSQL
    database (emptied by the `backend` fixture); closed on exit."""
    store: SQLiteStore | PostgresStore
    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "var" / "switchboard.db", **options)
    elif kind == "postgres" and SERVER.url is not None:
        store = PostgresStore(SERVER.url, **options)
    else:
        raise NotImplementedError(kind)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    if kind == "postgres":
        url = request.getfixturevalue("postgres_url")
        run_blocking(lambda: clean_schema(url))
    return kind


@pytest.fixture
async def store(backend: str, tmp_path: Path) -> AsyncIterator[Store]:
    async with open_backend(backend, tmp_path) as opened:
        yield opened


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    async with open_backend("sqlite", tmp_path) as opened:
        yield opened


def event(
    key: str,
    *,
    at: datetime = T0,
    source: str = "twilio",
    type: str = "message.received",
    status: EventStatus = EventStatus.RECEIVED,
    text: str = "hello",
    data: dict[str, Any] | None = None,
) -> Event:
    return Event(
        id=new_ulid(at),
        source=source,
        type=type,
        provider_type=type,
        dedupe_key=f"{source}:{key}",
        contact=Contact(address="+15551230001"),
        text=text,
        data=data or {"n": key},
        received_at=at,
        correlation_id=f"corr-{key}",
        status=status,
    )


def item(ev: Event, *, body: bytes | None = None, nonce: str | None = None) -> IngestItem:
    raw = body if body is not None else f"raw {ev.dedupe_key}".encode()
    return IngestItem(event=ev, raw_body=raw, content_type="application/json", nonce=nonce)


# -- ingest and dedupe -----------------------------------------------------------------------


async def test_ingest_stores_then_a_duplicate_changes_nothing(store: Store) -> None:
    first = event("SM1", text="first")
    assert await store.ingest(item(first, body=b"first body")) is STORED
    again = event("SM1", text="changed", at=T0 + timedelta(seconds=5))
    assert await store.ingest(item(again, body=b"second body")) is DUPLICATE
    assert await store.get_event(first.id) == first
    assert await store.get_event(again.id) is None
    assert await store.get_raw(first.id) == StoredRaw(
        content_type="application/json", body=b"first body", blob=None
    )
    assert [e.id for e in await store.list_events(EventFilter())] == [first.id]


async def test_concurrent_ingests_give_exactly_one_store_per_key(store: Store) -> None:
    unique = [event(f"K{i}") for i in range(400)]
    repeats = [event(f"K{i}") for i in range(100)]  # same keys, other ids
    items = [item(e) for e in unique + repeats]
    outcomes = await asyncio.gather(*(store.ingest(i) for i in items))
    assert Counter(outcomes) == {STORED: 400, DUPLICATE: 100}
    by_key: dict[str, list[IngestOutcome]] = {}
    for it, outcome in zip(items, outcomes, strict=True):
        by_key.setdefault(it.event.dedupe_key, []).append(outcome)
    assert all(found.count(STORED) == 1 for found in by_key.values())
    winners = {it.event.id for it, o in zip(items, outcomes, strict=True) if o is STORED}
    listed = await store.list_events(EventFilter(limit=1000))
    assert {e.id for e in listed} == winners


async def test_ingest_after_close_is_unavailable(backend: str, tmp_path: Path) -> None:
    async with open_backend(backend, tmp_path) as opened:
        pass
    with pytest.raises(StoreUnavailable):
        await opened.ingest(item(event("late")))
    with pytest.raises(StoreUnavailable):
        await opened.list_events(EventFilter())
    with pytest.raises(StoreUnavailable):
        await opened.quarantine(quarantined("Q1", T0))


# -- one-time tokens (Mailgun) ---------------------------------------------------------------


async def test_same_nonce_same_key_is_a_duplicate(store: Store) -> None:
    first = event("msg-1", source="mailgun")
    assert await store.ingest(item(first, nonce="tok-1")) is STORED
    assert await store.ingest(item(event("msg-1", source="mailgun"), nonce="tok-1")) is DUPLICATE


async def test_same_nonce_other_key_is_a_replay_and_stores_nothing(store: Store) -> None:
    assert await store.ingest(item(event("msg-1", source="mailgun"), nonce="tok-1")) is STORED
    forged = event("msg-2", source="mailgun")
    assert await store.ingest(item(forged, nonce="tok-1")) is REPLAY
    assert await store.get_event(forged.id) is None
    # The forged key stays free: its genuine delivery, with a fresh token, is stored.
    genuine = event("msg-2", source="mailgun")
    assert await store.ingest(item(genuine, nonce="tok-2")) is STORED


async def test_replay_in_the_same_batch_is_caught(store: Store) -> None:
    a, b = event("msg-a", source="mailgun"), event("msg-b", source="mailgun")
    outcomes = await asyncio.gather(
        store.ingest(item(a, nonce="tok")), store.ingest(item(b, nonce="tok"))
    )
    assert outcomes == [STORED, REPLAY]


async def test_nonces_are_per_source(store: Store) -> None:
    assert await store.ingest(item(event("m1", source="mailgun"), nonce="tok")) is STORED
    assert await store.ingest(item(event("m1", source="other"), nonce="tok")) is STORED


# -- reads -----------------------------------------------------------------------------------


@pytest.fixture
async def four_events(store: Store) -> dict[str, Event]:
    """Four events a minute apart, ingested out of time order."""
    events = {
        "e1": event("e1", at=T0),
        "e2": event("e2", at=T0 + timedelta(minutes=1), type="message.status"),
        "e3": event(
            "e3",
            at=T0 + timedelta(minutes=2),
            source="stripe",
            type="invoice.payment_failed",
            status=EventStatus.IGNORED,
        ),
        "e4": event("e4", at=T0 + timedelta(minutes=3), source="slack"),
    }
    for name in ("e3", "e1", "e4", "e2"):
        assert await store.ingest(item(events[name])) is STORED
    return events


FILTERS = [
    ({}, ["e4", "e3", "e2", "e1"]),
    ({"source": "twilio"}, ["e2", "e1"]),
    ({"type": "message.received"}, ["e4", "e1"]),
    ({"source": "twilio", "type": "message.status"}, ["e2"]),
    ({"status": EventStatus.IGNORED}, ["e3"]),
    ({"status": EventStatus.RECEIVED}, ["e4", "e2", "e1"]),
    ({"status": EventStatus.PROCESSED}, []),
    ({"since": T0 + timedelta(minutes=1)}, ["e4", "e3", "e2"]),
    ({"until": T0 + timedelta(minutes=2)}, ["e2", "e1"]),
    ({"since": T0 + timedelta(minutes=1), "until": T0 + timedelta(minutes=3)}, ["e3", "e2"]),
    (
        {"since": (T0 + timedelta(minutes=2)).astimezone(timezone(timedelta(hours=-5)))},
        ["e4", "e3"],
    ),
    ({"limit": 2}, ["e4", "e3"]),
    ({"source": "nobody"}, []),
]


@pytest.mark.parametrize(("where", "expected"), FILTERS, ids=[str(f[0]) for f in FILTERS])
async def test_list_events_filters_newest_first(
    store: Store, four_events: dict[str, Event], where: dict[str, Any], expected: list[str]
) -> None:
    listed = await store.list_events(EventFilter(**where))
    assert [e.id for e in listed] == [four_events[name].id for name in expected]


async def test_time_bounds_hold_to_the_microsecond(store: Store) -> None:
    """`since` and `until` are exact on `received_at`, also inside one millisecond: the id
    bounds that let the primary key serve them (an id keeps only the millisecond) are a
    superset, never the filter itself."""
    us = timedelta(microseconds=1)
    offsets = {"a": 0, "b": 400, "c": 900, "d": 1000}
    at = {name: T0 + offset * us for name, offset in offsets.items()}
    for name, moment in at.items():
        await store.ingest(item(event(name, at=moment)))

    async def listed(**where: datetime) -> list[str]:
        found = await store.list_events(EventFilter(**where))
        return sorted(e.dedupe_key.split(":")[1] for e in found)

    half = T0 + 500 * us
    assert await listed(since=half) == ["c", "d"]
    assert await listed(until=half) == ["a", "b"]
    assert await listed(since=at["b"], until=at["d"]) == ["b", "c"]
    assert await listed(since=at["d"]) == ["d"]
    assert await listed(until=at["a"]) == []
    assert await listed(since=at["a"], until=at["a"] + us) == ["a"]


async def test_get_event_round_trips_every_field(store: Store) -> None:
    original = event("full", data={"nested": {"a": [1, 2.5, None, "ü"]}}, text="ünïcödé ✓")
    original = msgspec.structs.replace(original, occurred_at=T0 - timedelta(seconds=3))
    await store.ingest(item(original))
    assert await store.get_event(original.id) == original
    assert await store.get_event("01NOTANID0000000000000000") is None
    assert await store.get_raw("01NOTANID0000000000000000") is None


async def test_raw_body_in_the_blob_store_is_a_reference(store: Store) -> None:
    body = os.urandom(100_000)
    digest = await asyncio.to_thread(store.blobs.put, body)  # blobs block: never on the loop
    ev = event("big")
    stored = IngestItem(event=ev, raw_body=body, raw_blob=digest, content_type="text/plain")
    await store.ingest(stored)
    raw = await store.get_raw(ev.id)
    assert raw == StoredRaw(content_type="text/plain", body=None, blob=digest)
    assert await asyncio.to_thread(store.blobs.get, digest) == body
    with pytest.raises(FileNotFoundError):
        await asyncio.to_thread(store.blobs.get, hashlib.sha256(b"absent").hexdigest())


def quarantined(qid: str, at: datetime, **fields: Any) -> QuarantinedRequest:
    base: dict[str, Any] = {
        "id": qid,
        "source": "twilio",
        "received_at": at,
        "reason": "missing MessageSid",
        "content_type": "application/x-www-form-urlencoded",
        "raw_body": b"From=%2B1555",
        "correlation_id": f"corr-{qid}",
    }
    return QuarantinedRequest(**{**base, **fields})


async def test_quarantine_round_trip_newest_first(store: Store) -> None:
    older = quarantined(new_ulid(T0), T0)
    newer = quarantined(
        new_ulid(T0 + timedelta(minutes=1)),
        T0 + timedelta(minutes=1),
        raw_body=None,
        raw_blob=hashlib.sha256(b"x").hexdigest(),
        source="stripe",
    )
    await store.quarantine(older)
    await store.quarantine(newer)
    assert await store.list_quarantine() == [newer, older]
    assert await store.list_quarantine(limit=1) == [newer]
    assert await store.list_events(EventFilter()) == []


# -- ingest's blob threshold -----------------------------------------------------------------


async def test_ingest_moves_large_bodies_to_the_blob_store(store: Store) -> None:
    ingestor = Ingestor(store, store.blobs, Metrics(), accept_types={}, blob_threshold_bytes=4096)
    adapter = TwilioAdapter(["tok"], "messages")
    small = await _twilio_through(store, ingestor, adapter, "SMsmall", "hi")
    large = await _twilio_through(store, ingestor, adapter, "SMlarge", "x" * 10_000)
    small_raw, large_raw = await store.get_raw(small[0]), await store.get_raw(large[0])
    assert small_raw is not None and small_raw.body == small[1] and small_raw.blob is None
    assert large_raw is not None and large_raw.body is None
    assert large_raw.blob == hashlib.sha256(large[1]).hexdigest()
    assert await asyncio.to_thread(store.blobs.get, large_raw.blob) == large[1]


async def _twilio_through(
    store: Store, ingestor: Ingestor, adapter: TwilioAdapter, sid: str, text: str
) -> tuple[str, bytes]:
    """Ingest one signed Twilio message; returns the stored event id and the raw body."""
    url = "https://sb.example.com/webhooks/twilio/messages"
    params = {"MessageSid": sid, "From": "+15551230001", "To": "+15559870000", "Body": text}
    signature = RequestValidator("tok").compute_signature(url, params)
    body = urlencode(params).encode()
    inbound = InboundRequest(
        body=body,
        headers={"x-twilio-signature": signature},
        url=url,
        content_type="application/x-www-form-urlencoded",
        received_at=T0,
        correlation_id=sid,
    )
    ack = await ingestor.handle(adapter, inbound)
    assert ack.status == 200, ack.body
    found = await store.list_events(EventFilter(limit=1000))
    return next(e.id for e in found if e.dedupe_key == f"twilio:{sid}"), body


# -- group commit ----------------------------------------------------------------------------


async def test_concurrent_ingests_are_group_committed(store: Any) -> None:
    before = store.batches_committed
    outcomes = await asyncio.gather(*(store.ingest(item(event(f"G{i}"))) for i in range(500)))
    assert outcomes == [STORED] * 500
    commits = store.batches_committed - before
    assert 1 <= commits <= 500 // 10, f"{commits} commits for 500 ingests"
    # One by one, each ingest is its own commit: the counter counts real transactions.
    for i in range(3):
        await store.ingest(item(event(f"S{i}")))
    assert store.batches_committed - before == commits + 3


async def test_a_write_that_raises_does_not_stop_the_writer(store: Store) -> None:
    unencodable = event("bad", data={"thing": object()})
    with pytest.raises(StoreUnavailable, match="write failed"):
        await store.ingest(item(unencodable))
    assert await store.ingest(item(event("good"))) is STORED


@pytest.mark.parametrize(
    ("text", "nonce"), [("caf\udce9", None), ("hello", "tok\udc80")], ids=["text", "nonce"]
)
async def test_unstorable_event_fails_alone(store: Store, text: str, nonce: str | None) -> None:
    """Found by the fuzzer: an event the store cannot encode (a lone surrogate from a raw
    UTF-8 email header) used to fail every request of its group-commit batch with 503."""
    good = [item(event(f"G{n}")) for n in range(30)]
    bad = item(event("BAD", text=text), nonce=nonce)
    results = await asyncio.gather(
        *(store.ingest(i) for i in [*good[:15], bad, *good[15:]]), return_exceptions=True
    )
    assert isinstance(results[15], UnstorableEvent)
    assert isinstance(results[15], StoreUnavailable)  # callers knowing only that still refuse
    assert results[:15] + results[16:] == [STORED] * 30
    listed = await store.list_events(EventFilter(limit=100))
    assert {e.dedupe_key for e in listed} == {i.event.dedupe_key for i in good}
    assert await store.ingest(item(event("AFTER"))) is STORED


async def test_nul_characters_are_stored_and_read_back_exactly(store: Store) -> None:
    """PostgreSQL text cannot hold NUL (SQLite's can): a verified delivery carrying one is
    still stored, deduplicated and read back as it came."""
    odd = msgspec.structs.replace(event("nul\x00key", text="a\x00b"), conversation_key="c\x00")
    assert await store.ingest(item(odd, nonce="tok\x00")) is STORED
    assert await store.ingest(item(event("nul\x00key"), nonce="tok\x00")) is DUPLICATE
    assert await store.get_event(odd.id) == odd
    assert [e.id for e in await store.list_events(EventFilter(source="twilio"))] == [odd.id]


async def test_ingests_racing_close_are_answered(backend: str, tmp_path: Path) -> None:
    """Every ingest issued while the store closes is either stored or told it is unavailable."""
    async with open_backend(backend, tmp_path) as opened:
        await opened.ingest(item(event("warm")))
        closing = asyncio.create_task(opened.close())
        racing: list[tuple[Event, asyncio.Task[IngestOutcome]]] = []
        while not closing.done():
            ev = event(f"R{len(racing)}")
            racing.append((ev, asyncio.create_task(opened.ingest(item(ev)))))
            await asyncio.sleep(0)  # a yield, not a wait: lets the writer and close() run
        _, pending = await asyncio.wait([t for _, t in racing], timeout=10)
        assert not pending, f"{len(pending)} ingests never answered"
    async with open_backend(backend, tmp_path) as reopened:
        for ev, task in racing:
            stored = await reopened.get_event(ev.id)
            if task.exception() is None:
                assert task.result() is STORED and stored == ev
            else:
                assert isinstance(task.exception(), StoreUnavailable) and stored is None


# -- SQLite: durability settings, migrations, locks --------------------------------------------


async def test_writer_uses_wal_and_synchronous_full(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path, busy_timeout_ms=1234) as opened:
        writer = opened._writer  # the connection every ingest commits through
        assert writer is not None

        async def pragma(name: str) -> Any:
            async with writer.execute(f"PRAGMA {name}") as cursor:
                row = await cursor.fetchone()
                assert row is not None
                return row[0]

        assert await pragma("journal_mode") == "wal"
        assert await pragma("synchronous") == 2  # FULL: the commit is on disk before the ack
        assert await pragma("busy_timeout") == 1234
        assert await pragma("foreign_keys") == 1
    with sqlite3.connect(opened.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # kept in the file


def migration_rows(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as conn:
        return conn.execute("SELECT version, applied_at FROM schema_migrations").fetchall()


async def test_migrations_are_versioned_and_run_once(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as first:
        await first.ingest(item(event("kept")))
    rows = migration_rows(first.path)
    assert [version for version, _ in rows] == [version for version, _ in migrations("sqlite")]
    async with open_backend("sqlite", tmp_path) as again:
        assert len(await again.list_events(EventFilter())) == 1
    assert migration_rows(first.path) == rows


async def test_newer_schema_is_refused_and_leaves_nothing_running(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path) as first:
        pass
    with sqlite3.connect(first.path) as conn:
        conn.execute("INSERT INTO schema_migrations VALUES (99, '2030-01-01T00:00:00+00:00')")
    workers_before = _sqlite_threads()
    newer = SQLiteStore(first.path)
    with pytest.raises(StoreCorrupt, match="99"):
        await newer.open()
    # A connection thread left behind would keep the process from exiting.
    wait_for(lambda: _sqlite_threads() <= workers_before, timeout=5)
    with pytest.raises(StoreUnavailable):
        await newer.ingest(item(event("never")))


def _sqlite_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_connection_worker_thread" in t.name}


async def test_locked_database_fails_the_batch_then_recovers(tmp_path: Path) -> None:
    async with open_backend("sqlite", tmp_path, busy_timeout_ms=50) as opened:
        blocker = sqlite3.connect(opened.path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")
        items = [item(event(f"L{i}")) for i in range(20)]
        try:
            results = await asyncio.gather(
                *(opened.ingest(i) for i in items), return_exceptions=True
            )
            assert all(isinstance(r, StoreUnavailable) for r in results), results
            assert await opened.list_events(EventFilter()) == []  # reads go on (WAL)
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # Nothing of the failed batch was kept: the providers' retries are stored, not duplicates.
        outcomes = await asyncio.gather(*(opened.ingest(i) for i in items))
        assert outcomes == [STORED] * 20


# -- blobs -----------------------------------------------------------------------------------


def all_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_blob_is_content_addressed_and_stored_once(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    content = b"attachment \x00\xff bytes"
    digest = blobs.put(content)
    assert digest == hashlib.sha256(content).hexdigest()
    assert blobs.put(content) == digest
    assert all_files(tmp_path / "blobs") == [tmp_path / "blobs" / digest[:2] / digest]
    assert blobs.get(digest) == content


def test_blob_file_and_folder_are_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    digest = BlobStore(tmp_path / "blobs").put(b"durable")
    folder = tmp_path / "blobs" / digest[:2]
    assert any(Path(p).parent == folder and digest in Path(p).name for p in synced), synced
    assert str(folder) in synced  # the rename itself is durable


def test_concurrent_puts_of_one_content_leave_one_whole_file(tmp_path: Path) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    content = os.urandom(256 * 1024)
    threads = [threading.Thread(target=blobs.put, args=(content,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    digest = hashlib.sha256(content).hexdigest()
    assert all_files(tmp_path / "blobs") == [blobs.path(digest)]
    assert blobs.get(digest) == content


@pytest.mark.parametrize(
    "digest",
    ["", "abc", "../../etc/passwd", "A" * 64, "g" * 64, hashlib.sha256(b"absent").hexdigest()],
)
def test_get_with_a_bad_or_unknown_digest_raises(tmp_path: Path, digest: str) -> None:
    blobs = BlobStore(tmp_path / "blobs")
    blobs.put(b"something")
    with pytest.raises(FileNotFoundError):
        blobs.get(digest)
