"""What only PostgreSQL promises: several processes on one database. Two stores on separate
pools stand for two router processes; a TCP proxy on loopback stands for the network."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from router.config import parse_settings
from router.errors import StoreCorrupt, StoreUnavailable
from router.store.base import EventFilter, IngestOutcome
from router.store.factory import store_from_settings
from router.store.postgres import PostgresStore, redact_url
from router.store.queries import migrations
from router.store.records import (
    AttemptOutcome,
    AttemptResult,
    ClaimedLane,
    LaneCommit,
    OutboxFilter,
    OutboxStatus,
)
from tests.postgres import clean_schema, drop_schema
from tests.router.test_store import T0, event, item
from tests.router.test_store_routing import done, message, put, row

pytestmark = pytest.mark.postgres
LEASE = 30.0


@pytest.fixture
async def url(postgres_url: str) -> str:
    await clean_schema(postgres_url)
    return postgres_url


@contextlib.asynccontextmanager
async def opened(url: str, **options: Any) -> AsyncIterator[PostgresStore]:
    store = PostgresStore(url, **options)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_processes_starting_together_migrate_once(postgres_url: str) -> None:
    await drop_schema(postgres_url)
    stores = [PostgresStore(postgres_url, pool_min_size=1) for _ in range(3)]
    await asyncio.gather(*(store.open() for store in stores))
    try:
        applied = sorted(v for store in stores for v in store.migrations_applied)
        known = [version for version, _ in migrations("postgres")]
        assert applied == known  # each version by exactly one of them
        conn = await asyncpg.connect(postgres_url)
        try:
            rows = await conn.fetch("SELECT version FROM schema_migrations ORDER BY version")
        finally:
            await conn.close()
        assert [r[0] for r in rows] == known
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_two_processes_never_hold_the_same_lane(url: str) -> None:
    conversations = [f"sms:+1555000{n:04d}:+15559870000" for n in range(40)]
    events = [message(i, conversations[i % 40], at_ms=i) for i in range(400)]
    async with opened(url) as first, opened(url) as second:
        await put(first, *events)
        processed: list[str] = []
        for _ in range(100):
            a, b = await asyncio.gather(
                first.claim("p1", T0, LEASE, max_lanes=8, max_events=3),
                second.claim("p2", T0, LEASE, max_lanes=8, max_events=3),
            )
            if not a and not b:
                break
            assert not {lane.lease.lane for lane in a} & {lane.lease.lane for lane in b}
            processed += await _finish(first, a) + await _finish(second, b)
        # Every event once, each conversation's in arrival order.
        assert Counter(processed) == Counter(e.id for e in events)
        for key in conversations:
            mine = [
                i for i in processed if i in {e.id for e in events if e.conversation_key == key}
            ]
            assert mine == sorted(mine)


async def _finish(store: PostgresStore, lanes: list[ClaimedLane]) -> list[str]:
    commits = [
        LaneCommit(
            lease=lane.lease,
            results=[done(e) for e in lane.events],
            outbox=[row(e, "reply") for e in lane.events],
        )
        for lane in lanes
    ]
    outcome = await store.commit(commits, T0)
    assert all(outcome.applied)
    return [e.id for lane in lanes for e in lane.events]


async def test_two_dispatchers_never_claim_the_same_row(url: str) -> None:
    async with opened(url) as first, opened(url) as second:
        events = [message(i, f"sms:+1555000{i % 10:04d}:+15559870000", at_ms=i) for i in range(60)]
        await put(first, *events)
        lanes = await first.claim("p1", T0, LEASE, max_lanes=100, max_events=100)
        await _finish(first, lanes)
        seen: list[str] = []
        for _ in range(50):
            due_a, due_b = await asyncio.gather(first.due_rows(T0, 20), second.due_rows(T0, 20))
            if not due_a and not due_b:
                break
            claims_a, claims_b = await asyncio.gather(
                first.claim_rows(due_a, "d1", T0, LEASE), second.claim_rows(due_b, "d2", T0, LEASE)
            )
            got_a, got_b = claims_a.claimed, claims_b.claimed
            ids_a, ids_b = {c.row.id for c in got_a}, {c.row.id for c in got_b}
            assert not ids_a & ids_b
            lanes_in_flight = [c.row.lane for c in got_a + got_b]
            assert len(lanes_in_flight) == len(set(lanes_in_flight))  # one per lane at a time
            seen += ids_a | ids_b
            await _sent(first, got_a)
            await _sent(second, got_b)
        assert Counter(seen) == Counter(f"{e.id}:reply" for e in events)


async def _sent(store: PostgresStore, claimed: list[Any]) -> None:
    results = [
        AttemptResult(
            id=c.row.id,
            token=c.token,
            outcome=AttemptOutcome.SENT,
            at=T0,
            duration_ms=1.0,
            provider_message_id=f"SM{c.row.id[-12:]}",
        )
        for c in claimed
    ]
    assert await store.finish_attempts(results) == [True] * len(results)


async def test_a_stale_holder_in_another_process_is_refused_after_takeover(url: str) -> None:
    first_event = message(1, "sms:+1:+2")
    async with opened(url) as stale_process, opened(url) as fresh_process:
        await put(stale_process, first_event)
        [stale] = await stale_process.claim("p1", T0, LEASE, 10, 10)
        later = T0 + timedelta(seconds=LEASE + 1)
        [fresh] = await fresh_process.claim("p2", later, LEASE, 10, 10)
        assert fresh.lease.token != stale.lease.token
        late = LaneCommit(lease=stale.lease, results=[done(first_event)], outbox=[])
        assert (await stale_process.commit([late], later)).applied == [False]
        ok = LaneCommit(
            lease=fresh.lease, results=[done(first_event)], outbox=[row(first_event, "r")]
        )
        assert (await fresh_process.commit([ok], later)).applied == [True]
        assert len(await stale_process.runs(first_event.id)) == 1
        [made] = await stale_process.list_outbox(OutboxFilter())
        assert made.status is OutboxStatus.PENDING


async def test_a_stale_dispatcher_in_another_process_is_refused_after_takeover(url: str) -> None:
    ev = message(1, "sms:+1:+2")
    async with opened(url) as stale_process, opened(url) as fresh_process:
        await put(stale_process, ev)
        await _finish(stale_process, await stale_process.claim("p1", T0, LEASE, 10, 10))
        due = await stale_process.due_rows(T0, 10)
        [stale] = (await stale_process.claim_rows(due, "d1", T0, LEASE)).claimed
        later = T0 + timedelta(seconds=LEASE + 1)
        [taken] = await fresh_process.due_rows(later, 10)
        assert taken.in_doubt  # the stale attempt may have sent: whoever takes it looks first
        [fresh] = (await fresh_process.claim_rows([taken], "d2", later, LEASE)).claimed
        assert fresh.in_doubt and fresh.token != stale.token

        def sent(claimed: Any, sid: str) -> AttemptResult:
            return AttemptResult(
                id=claimed.row.id,
                token=claimed.token,
                outcome=AttemptOutcome.SENT,
                at=later,
                duration_ms=1.0,
                provider_message_id=sid,
            )

        assert await stale_process.finish_attempts([sent(stale, "SMstale")]) == [False]
        assert await fresh_process.finish_attempts([sent(fresh, "SMfresh")]) == [True]
        [made] = await stale_process.list_outbox(OutboxFilter())
        assert (made.status, made.provider_message_id) == (OutboxStatus.SENT, "SMfresh")
        assert [a.outcome for a in await stale_process.attempts(made.id)] == ["sent"]


async def test_a_lease_row_locked_by_another_claim_is_skipped_not_waited_for(url: str) -> None:
    held_event, free_event = message(1, "sms:+1:+2"), message(2, "sms:+3:+2", at_ms=1)
    async with opened(url) as store:
        await put(store, held_event, free_event)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute(
                "INSERT INTO leases (lane, token, owner, until) VALUES ($1, NULL, NULL, $2)",
                "sms:+1:+2",
                T0 - timedelta(seconds=1),
            )
            async with conn.transaction():  # another process in the middle of its claim
                await conn.execute("SELECT 1 FROM leases WHERE lane = 'sms:+1:+2' FOR UPDATE")
                started = time.monotonic()
                lanes = await asyncio.wait_for(store.claim("p1", T0, LEASE, 10, 10), 5)
                assert time.monotonic() - started < 2
                assert [lane.lease.lane for lane in lanes] == ["sms:+3:+2"]
            [later] = await store.claim("p1", T0, LEASE, 10, 10)  # the lock is gone
            assert later.lease.lane == "sms:+1:+2"
        finally:
            await conn.close()


class Proxy:
    """A TCP proxy on loopback to the PostgreSQL server: `cut()` drops every connection and
    refuses new ones (the network or the server gone), `restore()` listens again.
    `hold_close`: when the server ends a connection, what it sent last is passed on but the
    close is not (a close that comes late); `ended` counts the connections the server ended."""

    def __init__(self, host: str, port: int, *, hold_close: bool = False) -> None:
        self.target = (host, port)
        self.port = 0
        self.hold_close = hold_close
        self.ended = 0
        #: The client side's port of each connection, for `unread_by_clients`.
        self.client_ports: set[int] = set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await self._server.wait_closed()

    def unread_by_clients(self) -> int:
        """Bytes passed on to the clients that they have not read yet (the kernel's count)."""
        unread = 0
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
            if local in self.client_ports and remote == self.port:
                unread += int(fields[4].split(":")[1], 16)
        return unread

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.client_ports.add(writer.get_extra_info("peername")[1])
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self._writers |= {writer, up_writer}
        await asyncio.gather(_pipe(reader, up_writer), self._from_server(up_reader, writer))
        self._writers -= {writer, up_writer}

    async def _from_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await _pipe(reader, writer, hold_close=self.hold_close)
        self.ended += 1


async def _pipe(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, hold_close: bool = False
) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    if not hold_close:
        writer.transport.abort()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait, letting the loop run, until `condition` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"condition not met within {timeout}s"
        await asyncio.sleep(0.01)


async def test_a_lost_connection_is_unavailable_then_the_store_recovers(url: str) -> None:
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    async with opened(via_proxy, pool_min_size=1, pool_max_size=2, connect_timeout=2) as store:
        assert await store.ingest(item(event("before"))) is IngestOutcome.STORED
        await proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.ingest(item(event("during")))
        with pytest.raises(StoreUnavailable):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.list_events(EventFilter())
        await proxy.start()  # the same port: the database is back
        assert await store.ingest(item(event("after"))) is IngestOutcome.STORED
        await store.ping()
        keys = {e.dedupe_key for e in await store.list_events(EventFilter())}
        assert keys == {"twilio:before", "twilio:after"}
        await proxy.cut()


async def test_connections_the_server_ended_are_dropped_though_their_close_is_late(
    url: str,
) -> None:
    """The server ends every pooled connection (pg_terminate_backend: a failover, an operator)
    and its last message, FATAL, is read; their close has not come yet, so they still look
    open, and the driver refuses any statement on them ("another operation is in progress").
    The store does not give the caller that error, nor a 503: it drops each such connection
    and runs the work on a live one, though here the close never comes."""
    parts = urlsplit(url)
    proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432, hold_close=True)
    await proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}"))
    async with opened(via_proxy, pool_min_size=2, pool_max_size=2) as store:
        assert await store.ingest(item(event("before"))) is IngestOutcome.STORED
        admin = await asyncpg.connect(url, timeout=5)
        try:
            ended = await admin.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'switchboard'"
            )
        finally:
            await admin.close()
        assert ended == 2
        await until(lambda: proxy.ended == 2 and proxy.unread_by_clients() == 0)

        await store.ping()
        assert await store.ingest(item(event("after"))) is IngestOutcome.STORED
        keys = {e.dedupe_key for e in await store.list_events(EventFilter())}
        assert keys == {"twilio:before", "twilio:after"}
        await proxy.cut()  # the late closes come: the pool closes at once


async def test_the_url_password_never_shows() -> None:
    url = "postgresql://sb:hunter2@db.internal:5432/switchboard"
    assert redact_url(url) == "postgresql://sb:***@db.internal:5432/switchboard"
    store = PostgresStore("postgresql://sb:hunter2@127.0.0.1:1/none", connect_timeout=1)
    assert "hunter2" not in repr(store)
    with pytest.raises(StoreUnavailable) as caught:
        await store.open()
    assert "hunter2" not in str(caught.value)


async def test_an_unreadable_event_is_failed_and_its_lane_goes_on(url: str) -> None:
    bad, good = message(1, "sms:+1:+2"), message(2, "sms:+1:+2", at_ms=1)
    async with opened(url) as store:
        await put(store, bad, good)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("UPDATE events SET body = $1 WHERE id = $2", b"{not json", bad.id)
        finally:
            await conn.close()
        [lane] = await store.claim("w1", T0, LEASE, 10, 10)
        assert [e.id for e in lane.events] == [good.id]
        [run] = await store.runs(bad.id)
        assert run.error is not None and run.error.startswith("stored event cannot be read")
        with pytest.raises(StoreCorrupt):
            await store.get_event(bad.id)
        assert [e.id for e in await store.list_events(EventFilter())] == [good.id]


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_the_factory_builds_a_postgres_store_sized_from_config(scheme: str) -> None:
    settings = parse_settings(
        f'[storage]\nurl = "{scheme}://sb@db.internal/switchboard"\n'
        "pool_min_size = 1\npool_max_size = 3\n"
    )
    store = store_from_settings(settings)
    assert isinstance(store, PostgresStore)
    assert (store._pool_min_size, store._pool_max_size) == (1, 3)
