# ruff: noqa: F811  (the `store` fixture is imported, then named by the tests)
"""Slack reconciliation (SPEC §12) against a real store, on every backend, with slack_sdk's
AsyncWebClient pointed at the loopback FakeSlack: a person's reply in an open escalation
thread that the Events API never brought is ingested once, as the Events API would have made
it (`agent.reply`, key `slack:CHANNEL:TS`); bots, our own posts and the parent are not; a
500 or 429 fails or slows the pass and the next recovers; a message stored under the old key
(`slack:EVENT_ID`) is re-keyed by migration 0011, so reading it back makes no second event."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import msgspec
import pytest

from channels.base import InboundRequest
from channels.slack import SlackEventsAdapter
from channels.slack_history import SlackHistory
from channels.slack_send import SlackSender
from router.clock import FrozenClock
from router.config import ReconcileConfig
from router.events import EscalationThread, Event, EventStatus, Via
from router.metrics import Metrics
from router.pipeline.reconcile import Reconciler, SourceReport
from router.store.base import EventFilter, Store
from router.store.records import AttemptOutcome, ConversationRecord
from tests.cases import slack
from tests.fakes.slack_api import FakeSlack, ratelimited, server_error
from tests.postgres import SERVER
from tests.router.test_store import T0, backend, open_backend, store  # noqa: F401  (fixtures)
from tests.router.test_store_dispatch import attempt, claim_all, routed
from tests.router.test_store_routing import message, row

SUPPORT = "C0ESCALATE"
CONVERSATION = "sms:+15551230001:+15559870000"
URL = "https://switchboard.example.com/webhooks/slack/events"


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack(channels=[SUPPORT]) as running:
        yield running


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock(datetime.now(UTC) + timedelta(seconds=1))


def history(fake: FakeSlack, **options: float) -> SlackHistory:
    sender = SlackSender(bot_token=fake.token, api_base=fake.base_url)
    return SlackHistory(sender, events_url=URL, **options)  # type: ignore[arg-type]


@pytest.fixture
async def reconciler(
    store: Store, fake: FakeSlack, clock: FrozenClock
) -> AsyncIterator[Reconciler]:
    found = Reconciler(
        store, {"slack": history(fake, page_size=2)}, ReconcileConfig(), clock, Metrics()
    )
    yield found
    await found.close()


async def escalate(store: Store, fake: FakeSlack, state: str = "escalated") -> str:
    """A conversation in `state` whose escalation post (our bot's, in SUPPORT) was sent: the
    thread's ts, mapped to the conversation as the dispatcher maps it."""
    parent = fake.say(SUPPORT, "Escalation: asked for a human", user=fake.bot_user_id, bot=True)
    ev = message(1, CONVERSATION)
    post = row(ev, "esc", channel="slack", to=SUPPORT, kind="escalation", contact_key=None)
    conversation = ConversationRecord(
        key=CONVERSATION, state=state, channel="sms", contact="+1", body=b"{}", updated_at=T0
    )
    await routed(store, ev, post, conversation=conversation)
    [claimed] = await claim_all(store)
    await store.finish_attempts([attempt(claimed, AttemptOutcome.SENT, provider_message_id=parent)])
    return parent


async def slack_pass(reconciler: Reconciler) -> SourceReport:
    [report] = await reconciler.run("slack")
    return report


async def replies(store: Store) -> list[Event]:
    return await store.list_events(EventFilter(source="slack"))


async def test_open_threads_are_those_of_conversations_with_people(
    store: Store, fake: FakeSlack
) -> None:
    parent = await escalate(store, fake)
    assert await store.open_threads() == [
        EscalationThread(channel=SUPPORT, ts=parent, conversation_key=CONVERSATION)
    ]


async def test_a_closed_conversations_thread_is_not_read(store: Store, fake: FakeSlack) -> None:
    await escalate(store, fake, state="closed")
    assert await store.open_threads() == []


async def test_a_persons_reply_is_recovered_once_as_the_events_api_would_bring_it(
    store: Store, fake: FakeSlack, clock: FrozenClock, reconciler: Reconciler
) -> None:
    parent = await escalate(store, fake)
    fake.say(SUPPORT, "Status from another app", user="U0OTHERAPP", thread_ts=parent, bot=True)
    texts = [f"On it {i}" for i in range(3)]
    tss = [fake.say(SUPPORT, t, user=slack.AGENT, thread_ts=parent) for t in texts]
    clock.set(datetime.now(UTC) + timedelta(seconds=1))

    first = await slack_pass(reconciler)

    assert first.error is None and (first.seen, first.recovered) == (3, 3)  # not bot, parent
    assert fake.calls["conversations.replies"] == 3  # 5 messages, 2 a page: every page read
    events = sorted(await replies(store), key=lambda e: e.dedupe_key)
    assert [e.dedupe_key for e in events] == [f"slack:{SUPPORT}:{ts}" for ts in tss]
    assert [e.text for e in events] == texts
    webhook = events_api(parent, tss[0], texts[0])
    for field in ("type", "provider_type", "dedupe_key", "contact", "conversation_key", "text"):
        assert getattr(events[0], field) == getattr(webhook, field), field
    assert events[0].type == "agent.reply" and events[0].via is Via.RECONCILE
    assert events[0].status is EventStatus.RECEIVED  # the worker relays it like any other

    clock.advance(timedelta(minutes=10))
    second = await slack_pass(reconciler)
    assert (second.seen, second.recovered, second.error) == (3, 0, None)
    assert len(await replies(store)) == 3


def events_api(parent: str, ts: str, text: str, event_id: str = "Ev0LATE") -> Event:
    """The event of the Events API delivery of an agent's thread reply."""
    inner = {
        "type": "message",
        "channel": SUPPORT,
        "channel_type": "channel",
        "user": slack.AGENT,
        "text": text,
        "ts": ts,
        "thread_ts": parent,
        "event_ts": ts,
    }
    request = InboundRequest(
        body=slack.callback(event_id, inner),
        headers={},
        url=URL,
        content_type="application/json",
        received_at=datetime.now(UTC),
        correlation_id="c1",
    )
    adapter = SlackEventsAdapter(["secret"], 300, FrozenClock(datetime.now(UTC)))
    [event] = adapter.parse(request).events
    return event


@pytest.mark.parametrize("fault", [server_error(500), ratelimited(120)], ids=["500", "429"])
async def test_an_error_fails_the_pass_and_the_next_recovers(
    store: Store, fake: FakeSlack, clock: FrozenClock, reconciler: Reconciler, fault: object
) -> None:
    """A 429 asking for longer than `max_wait` (60 s) fails the pass too."""
    parent = await escalate(store, fake)
    fake.say(SUPPORT, "On it", user=slack.AGENT, thread_ts=parent)
    fake.fail_next(1, fault, op="conversations.replies")  # type: ignore[arg-type]

    failed = await slack_pass(reconciler)
    assert failed.error is not None and failed.recovered == 0
    assert (await store.reconcile_state())["slack"].last_success is None

    clock.advance(timedelta(minutes=10))
    again = await slack_pass(reconciler)
    assert again.error is None and again.recovered == 1
    assert again.since == failed.since + timedelta(minutes=10)  # still the first window


async def test_a_429_slows_the_pass_down_as_retry_after_asks(
    store: Store, fake: FakeSlack, clock: FrozenClock, reconciler: Reconciler
) -> None:
    parent = await escalate(store, fake)
    fake.say(SUPPORT, "On it", user=slack.AGENT, thread_ts=parent)
    clock.set(datetime.now(UTC) + timedelta(seconds=1))
    fake.fail_next(2, ratelimited(1), op="conversations.replies")

    report = await slack_pass(reconciler)

    assert report.error is None and report.recovered == 1
    assert fake.calls["conversations.replies"] == 3  # asked again after each Retry-After


async def test_a_reply_stored_under_its_old_key_is_rekeyed_and_not_recovered_again(
    backend: str, tmp_path: Path, store: Store, fake: FakeSlack, clock: FrozenClock
) -> None:
    """Before 0011 the Events API delivery was stored as `slack:EVENT_ID`; the migration
    re-keys it, so the same reply read back by a pass is a duplicate."""
    parent = await escalate(store, fake)
    ts = fake.say(SUPPORT, "On it", user=slack.AGENT, thread_ts=parent)
    delivered = events_api(parent, ts, "On it", event_id="Ev0OLD")
    old = msgspec.structs.replace(delivered, dedupe_key="slack:Ev0OLD")
    from tests.router.test_store_routing import put

    await put(store, old)
    await store.close()
    await forget_migration(backend, tmp_path, 11)

    async with open_backend(backend, tmp_path) as upgraded:
        assert 11 in upgraded.migrations_applied
        [stored] = await replies(upgraded)
        assert stored.dedupe_key == f"slack:{SUPPORT}:{ts}" and stored.id == old.id
        clock.set(datetime.now(UTC) + timedelta(seconds=1))
        reconciler = Reconciler(
            upgraded, {"slack": history(fake)}, ReconcileConfig(), clock, Metrics()
        )
        try:
            report = await slack_pass(reconciler)
        finally:
            await reconciler.close()
        assert (report.seen, report.recovered, report.error) == (1, 0, None)
        assert [e.id for e in await replies(upgraded)] == [old.id]


async def forget_migration(backend: str, tmp_path: Path, version: int) -> None:
    """The store as it was before `version`: its next open applies it (again)."""
    if backend == "sqlite":
        with sqlite3.connect(tmp_path / "var" / "switchboard.db") as conn:
            conn.execute("DELETE FROM schema_migrations WHERE version = ?", (version,))
        return
    assert SERVER.url is not None
    conn = await asyncpg.connect(SERVER.url)
    try:
        await conn.execute("DELETE FROM schema_migrations WHERE version = $1", version)
    finally:
        await conn.close()
