"""`switchboard copy`: a populated SQLite store moved into a fresh PostgreSQL database reads
back the same through every read verb of the PostgresStore, and a second run writes nothing.

The SQLite store is filled through the store's own verbs (ingest, claim, commit, finish
attempts, quarantine, blobs); each test copies into a database of its own, dropped after.
The tests are synchronous: the command runs its own event loop, as it does for a user.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import msgspec
import pytest

from router.events import Contact, EscalationThread, EventStatus
from router.store.base import EventFilter, IngestItem, QuarantinedRequest, Store
from router.store.copy import COPIED, LEFT_OUT, copy_store
from router.store.postgres import PostgresStore
from router.store.queries import migrations
from router.store.records import (
    AttemptOutcome,
    BreakerNews,
    ContactRecord,
    ConversationRecord,
    LaneCommit,
    LedgerRecord,
    OutboxFilter,
    OutboxStatus,
    Receipt,
    TimerRecord,
)
from router.store.sqlite import SQLiteStore
from tests.postgres import SERVER, run_blocking, with_database
from tests.router.test_store import T0
from tests.router.test_store_dispatch import attempt, claim_all, routed
from tests.router.test_store_routing import LEASE, done, message, put, row
from tests.support import run_cli

CONVERSATION = "sms:+15551230001:+15559870000"
THREAD_TS = "1700000000.000100"
BIG = b"<big>" + bytes(range(256)) * 400 + b"\x00</big>"  # over the 64 KiB blob threshold
ATTACHMENT = b"%PDF-1.7 an attachment kept only in the blob store"


@pytest.fixture
def destination(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL database of this test's own, dropped after (skipped without a server)."""
    name = f"switchboard_copy_{secrets.token_hex(6)}"
    run_blocking(lambda: _admin(f'CREATE DATABASE "{name}"'))
    try:
        yield with_database(SERVER.base_url, name)
    finally:
        run_blocking(lambda: _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _admin(statement: str) -> None:
    conn = await asyncpg.connect(with_database(SERVER.base_url, "postgres"), timeout=5)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


def copy(tmp_path: Path, *args: str) -> Any:
    return run_cli(tmp_path / "unused.toml", "copy", *args)


def source_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/var/switchboard.db"


# -- populating the source through the store's verbs -----------------------------------------


async def populate(store: SQLiteStore) -> None:
    """Every table the copy moves gets rows, the way the product makes them."""
    await route_conversation(store)
    await dispatch(store)
    digest = store.blobs.put(BIG)
    store.blobs.put(ATTACHMENT)
    await store.ingest(
        IngestItem(
            event=message(90, None, at_ms=90),
            raw_body=BIG,
            content_type="application/x-www-form-urlencoded",
            raw_blob=digest,
        )
    )
    nul = msgspec.structs.replace(  # PostgreSQL text cannot hold NUL; the JSON body can
        message(91, None, at_ms=91),
        dedupe_key="twilio:SM\x0091",
        contact=Contact(address="+1555\x00nul"),
    )
    await store.ingest(IngestItem(event=nul, raw_body=b"a\x00b", content_type="text/plain"))
    mailgun = msgspec.structs.replace(message(92, None, at_ms=92), source="mailgun")
    await store.ingest(IngestItem(event=mailgun, raw_body=b"mg", content_type="x", nonce="tok"))
    await store.quarantine(
        QuarantinedRequest(
            id="q1",
            source="stripe",
            received_at=T0,
            reason="malformed JSON",
            content_type="application/json",
            raw_body=b"{\x00",
            correlation_id="c-q1",
        )
    )
    await store.delay_slot("sms:+15559870000", T0 + timedelta(seconds=1))
    await store.save_breakers({"slack:C1": BreakerNews(state="open", changed_at=T0)})
    await store.record_reconcile("twilio", T0, until=T0, recovered=3, error=None)
    await store.record_reconcile("stripe", T0, until=None, recovered=0, error="HTTP 500")
    await put(store, message(99, "sms:+1555000:+2", at_ms=99))
    await store.claim("w1", T0, LEASE, 10, 10)  # a lease the copy leaves behind


async def route_conversation(store: Store) -> None:
    first = message(1, CONVERSATION, at_ms=1)
    conversation = ConversationRecord(
        key=CONVERSATION,
        state="escalated",
        channel="sms",
        contact="+15551230001",
        body=b'{"state":"escalated","attributes":{"vip":true}}',
        updated_at=T0 + timedelta(microseconds=123457),
    )
    contact = ContactRecord(address="+15551230001", consent="opted_out", opted_out_at=T0)
    stop = LedgerRecord(at=T0, event_id=first.id, channel="sms", change="opted_out", reason="STOP")
    timer = TimerRecord(
        conversation_key=CONVERSATION, timer="remind", due_at=T0 + timedelta(minutes=10)
    )
    await routed(
        store,
        first,
        row(first, "reply"),
        row(first, "esc", channel="slack", to="C1", kind="escalation", contact_key=None),
        row(
            first,
            "promo",
            category="marketing",
            status=OutboxStatus.DEFERRED,
            not_before=T0 + timedelta(hours=10),
        ),
        conversation=conversation,
        contacts=[(contact, stop)],
        timers_set=[timer],
    )
    start = message(2, CONVERSATION, at_ms=2)
    again = LedgerRecord(
        at=T0, event_id=start.id, channel="sms", change="subscribed", reason="START"
    )
    await routed(store, start, contacts=[(ContactRecord(address="+15551230001"), again)])


async def dispatch(store: Store) -> None:
    claimed = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store)}
    results = [
        attempt(claimed["reply"], AttemptOutcome.SENT, provider_message_id="SM-sent"),
        attempt(
            claimed["esc"],
            AttemptOutcome.SENT,
            provider_message_id=THREAD_TS,
            thread=EscalationThread(channel="C1", ts=THREAD_TS, conversation_key=CONVERSATION),
        ),
    ]
    assert await store.finish_attempts(results) == [True, True]
    later = T0 + timedelta(minutes=1)
    event = message(3, None, at_ms=3)
    await routed(
        store,
        event,
        row(event, "retry", conversation_key=None),
        row(event, "dead", conversation_key=None, to="+15550000000"),
    )
    claimed = {c.row.id.rsplit(":", 1)[1]: c for c in await claim_all(store, later)}
    await store.finish_attempts(
        [
            attempt(
                claimed["retry"],
                AttemptOutcome.RETRY,
                error="HTTP 503",
                next_attempt_at=later + timedelta(seconds=30),
            ),
            attempt(claimed["dead"], AttemptOutcome.DEAD, error="invalid", error_code="21211"),
        ]
    )
    status = message(4, None, at_ms=4)  # a receipt faster than its row's send record
    early = Receipt(provider_message_id="SM-early", status="delivered", at=T0)
    await routed(store, status, receipts=[early])


# -- reading both sides through the same verbs -----------------------------------------------


async def snapshot(store: Store) -> dict[str, Any]:
    """What the store's read verbs answer, for everything `populate` made."""
    events = await store.list_events(EventFilter(limit=1000))
    outbox = await store.list_outbox(OutboxFilter(limit=1000))
    raws = {e.id: await store.get_raw(e.id) for e in events}
    blobs = {
        raw.blob: await asyncio.to_thread(store.blobs.get, raw.blob)
        for raw in raws.values()
        if raw is not None and raw.blob is not None
    }
    return {
        "events": events,
        "each": [await store.get_event(e.id) for e in events],
        "raw": raws,
        "blobs": blobs,
        "attachment": await asyncio.to_thread(store.blobs.get, _sha(ATTACHMENT)),
        "runs": {e.id: await store.runs(e.id) for e in events},
        "outbox": outbox,
        "attempts": {r.id: await store.attempts(r.id) for r in outbox},
        "conversation": await store.get_conversation(CONVERSATION),
        "conversations": await store.list_conversations(None),
        "contact": await store.get_contact("+15551230001"),
        "quarantine": await store.list_quarantine(),
        "timers": await store.timers(),
        "rate_slots": await store.rate_slots(),
        "breakers": await store.breakers(),
        "reconcile": await store.reconcile_state(),
        "nonce": await store.nonce_first_body("mailgun", "tok"),
        "thread": await store.escalation_thread(CONVERSATION),
        "counts": await store.outbox_counts(),
        "next_due": await store.next_due(T0),
    }


def _sha(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


async def read_sqlite(path: Path) -> dict[str, Any]:
    store = SQLiteStore(path)
    await store.open()
    try:
        return await snapshot(store)
    finally:
        await store.close()


async def analyzed_tables(url: str) -> set[str]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL"
        )
    finally:
        await conn.close()
    return {row[0] for row in rows}


async def read_postgres(url: str) -> dict[str, Any]:
    store = PostgresStore(url)
    await store.open()
    try:
        return await snapshot(store)
    finally:
        await store.close()


def make_source(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "switchboard.db"

    async def fill() -> None:
        store = SQLiteStore(path)
        await store.open()
        try:
            await populate(store)
        finally:
            await store.close()

    run_blocking(fill)
    return path


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.postgres
def test_copy_moves_everything_and_a_second_run_skips_it_all(
    tmp_path: Path, destination: str
) -> None:
    path = make_source(tmp_path)
    first = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination, "--json")
    assert first.exit_code == 0, first.stderr
    report = first.json()
    assert set(report) == {"tables", "blobs"}
    assert set(report["tables"]) == {*COPIED, "blobs"}
    assert report["blobs"] == 2  # the large raw body and the attachment
    for name, counts in report["tables"].items():
        assert counts["read"] > 0, name  # populate filled every copied table
        assert counts == {"read": counts["read"], "written": counts["read"], "skipped": 0}, name

    # The planner has statistics at once (not when autovacuum gets round to it).
    assert run_blocking(lambda: analyzed_tables(destination)) >= {"events", "outbox", "runs"}

    sqlite_side = run_blocking(lambda: read_sqlite(path))
    postgres_side = run_blocking(lambda: read_postgres(destination))
    for verb, answer in sqlite_side.items():
        assert postgres_side[verb] == answer, verb
    assert sqlite_side["blobs"] == {_sha(BIG): BIG}
    assert sqlite_side["contact"].ledger[1].change == "subscribed"

    again = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination, "--json")
    assert again.exit_code == 0, again.stderr
    second = again.json()
    assert second["blobs"] == 0
    for name, counts in second["tables"].items():
        assert counts == {"read": counts["read"], "written": 0, "skipped": counts["read"]}, name
    assert second["tables"] == {
        name: {**counts, "written": 0, "skipped": counts["read"]}
        for name, counts in report["tables"].items()
    }


@pytest.mark.postgres
def test_the_copied_store_goes_on_where_sqlite_stopped(tmp_path: Path, destination: str) -> None:
    """Rows made after the copy sort after copied ones (identity sequences moved past them);
    the Slack thread and the early receipt are known; the leftover lease is not there."""
    make_source(tmp_path)
    assert copy(tmp_path, "--from", source_url(tmp_path), "--to", destination).exit_code == 0

    async def go_on() -> None:
        store = PostgresStore(destination)
        await store.open()
        try:
            await check_going_on(store)
        finally:
            await store.close()

    run_blocking(go_on)


async def check_going_on(store: PostgresStore) -> None:
    # The lane leased on SQLite is free at once: leases are not copied.
    held = await store.claim("w2", T0, LEASE, 10, 10)
    assert "sms:+1555000:+2" in {lane.lease.lane for lane in held}
    finished = [
        LaneCommit(lease=lane.lease, results=[done(e) for e in lane.events]) for lane in held
    ]
    assert (await store.commit(finished, T0)).applied == [True] * len(held)
    # An agent's reply in the escalation thread is ordered with the conversation.
    reply = message(200, f"slack:C1:{THREAD_TS}", at_ms=200)
    await put(store, reply)
    [lane] = await store.claim("w2", T0, LEASE, 10, 10)
    assert lane.lease.lane == CONVERSATION
    new = row(reply, "new", conversation_key=None, to="+15551110000")
    entry = LedgerRecord(at=T0, event_id=reply.id, channel="sms", change="opted_out", reason="x")
    contact = ContactRecord(address="+15551230001", consent="opted_out", opted_out_at=T0)
    commit = LaneCommit(
        lease=lane.lease, results=[done(reply)], outbox=[new], contacts=[(contact, entry)]
    )
    assert (await store.commit([commit], T0)).applied == [True]
    assert (await store.list_outbox(OutboxFilter(limit=1)))[0].id == new.id  # newest by seq
    assert (await store.get_contact("+15551230001")).ledger[-1] == entry  # type: ignore[union-attr]
    assert [r.event_id for r in await store.runs(reply.id)] == [reply.id]
    # The receipt that came before its row's send record applies when the send is recorded.
    [claimed] = [c for c in await claim_all(store) if c.row.id == new.id]
    sent = attempt(claimed, AttemptOutcome.SENT, provider_message_id="SM-early")
    assert await store.finish_attempts([sent]) == [True]
    [found] = await store.list_outbox(OutboxFilter(event_id=reply.id))
    assert found.status is OutboxStatus.DELIVERED
    assert (await store.attempts(new.id))[-1].outcome == "sent"
    assert (await store.get_event(reply.id)).status is EventStatus.PROCESSED  # type: ignore[union-attr]


def test_copy_names_every_table_of_the_schema(tmp_path: Path) -> None:
    """A migration that adds a table must teach `copy` whether to move it."""
    with sqlite3.connect(make_empty_source(tmp_path)) as conn:
        found = conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        )
        tables = {row[0] for row in found}
    assert tables == set(COPIED) | set(LEFT_OUT)


@pytest.mark.parametrize(
    ("source", "target", "message"),
    [
        ("postgresql://x@h/db", "postgresql://x@h/db", "--from must be a sqlite:///PATH URL"),
        ("sqlite:///{tmp}/a.db", "sqlite:///{tmp}/b.db", "--to must be a postgresql://"),
        ("sqlite:///{tmp}/none.db", "postgres://x@127.0.0.1:1/db", "does not exist"),
    ],
)
def test_copy_refuses_what_it_cannot_move(
    tmp_path: Path, source: str, target: str, message: str
) -> None:
    (tmp_path / "a.db").write_bytes(b"")
    result = copy(
        tmp_path, "--from", source.format(tmp=tmp_path), "--to", target.format(tmp=tmp_path)
    )
    assert result.exit_code == 1
    assert message in result.stderr
    assert result.stdout == ""


def test_an_unreachable_destination_fails_without_its_password(tmp_path: Path) -> None:
    make_empty_source(tmp_path)
    target = "postgresql://sb:s3cr3t-pw@127.0.0.1:1/none"
    result = copy(tmp_path, "--from", source_url(tmp_path), "--to", target, "--json")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "destination unavailable" in result.stderr and "s3cr3t-pw" not in result.stderr


@pytest.mark.postgres
def test_copy_refuses_a_source_at_another_schema_version(tmp_path: Path, destination: str) -> None:
    path = make_empty_source(tmp_path)
    (previous, _), (latest, _) = migrations("sqlite")[-2:]  # numbers may skip (branches)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM schema_migrations WHERE version = ?", (latest,))
    result = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination)
    assert result.exit_code == 1
    expected = f"the source's schema is version {previous} and the destination's {latest}"
    assert expected in result.stderr


@pytest.mark.postgres
def test_copy_refuses_a_file_that_is_not_a_switchboard_store(
    tmp_path: Path, destination: str
) -> None:
    (tmp_path / "var").mkdir()
    with sqlite3.connect(tmp_path / "var" / "switchboard.db") as conn:
        conn.execute("CREATE TABLE other (x)")
    result = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination)
    assert result.exit_code == 1
    assert "the source is not a Switchboard database" in result.stderr


def make_empty_source(tmp_path: Path) -> Path:
    path = tmp_path / "var" / "switchboard.db"

    async def open_close() -> None:
        store = SQLiteStore(path)
        await store.open()
        await store.close()

    run_blocking(open_close)
    return path


@pytest.mark.postgres
def test_a_copy_cut_short_resumes_page_by_page(tmp_path: Path, destination: str) -> None:
    """Small pages: every table is read in several; rows lost from the destination (a run
    interrupted between pages) are written again by the next run, the rest skipped."""
    path = make_source(tmp_path)
    url = source_url(tmp_path)
    first = run_blocking(lambda: copy_store(url, destination, page_rows=2))
    assert all(c.written == c.read for c in first.tables.values())
    gone = run_blocking(lambda: forget_some(destination))
    resumed = run_blocking(lambda: copy_store(url, destination, page_rows=2))
    assert {name: c.written for name, c in resumed.tables.items() if c.written} == gone
    assert all(c.read == first.tables[name].read for name, c in resumed.tables.items())
    assert run_blocking(lambda: read_postgres(destination)) == run_blocking(
        lambda: read_sqlite(path)
    )


async def forget_some(url: str) -> dict[str, int]:
    """Delete the later half of a few tables, as if the copy had stopped part way."""
    conn = await asyncpg.connect(url)
    try:
        gone = {}
        for table, key in [("events", "id"), ("outbox", "seq"), ("runs", "seq")]:
            deleted = await conn.fetch(
                f"DELETE FROM {table} WHERE {key} > (SELECT {key} FROM {table} "  # noqa: S608
                f"ORDER BY {key} OFFSET 2 LIMIT 1) RETURNING 1"
            )
            gone[table] = len(deleted)
        gone["blobs"] = len(await conn.fetch("DELETE FROM blobs RETURNING 1"))
        return gone
    finally:
        await conn.close()


@pytest.mark.postgres
def test_copy_refuses_a_source_with_a_table_it_was_not_taught(
    tmp_path: Path, destination: str
) -> None:
    path = make_empty_source(tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE extra (x)")
    result = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination)
    assert result.exit_code == 1
    assert "the source has tables this copy does not know: ['extra']" in result.stderr


@pytest.mark.postgres
def test_copy_refuses_a_destination_already_in_use(tmp_path: Path, destination: str) -> None:
    """Runs made on PostgreSQL itself hold the `seq` numbers the source's runs have: skipping
    them as 'already copied' would lose the source's, so the copy stops and says so."""
    make_source(tmp_path)

    async def use_it() -> None:
        store = PostgresStore(destination)
        await store.open()
        try:
            await routed(store, message(500, None))
        finally:
            await store.close()

    run_blocking(use_it)
    result = copy(tmp_path, "--from", source_url(tmp_path), "--to", destination)
    assert result.exit_code == 1
    assert "the destination's runs row seq 1 is not the source's" in result.stderr
