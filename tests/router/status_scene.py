"""A store with known contents for `switchboard status`, written through the Store's own
verbs, and the figures status must read from it at NOW (five minutes after T0)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import msgspec
import msgspec.structs

from router.events import Event, EventStatus
from router.store.base import Store
from router.store.records import (
    BreakerNews,
    ConversationRecord,
    LaneCommit,
    OutboxStatus,
)
from statemachines.conversation import Conversation, ConversationState, Escalation
from tests.router.test_store import T0
from tests.router.test_store_routing import LEASE, done, message, put, row

NOW = T0 + timedelta(minutes=5)
#: `escalation.claim_timeout` is 10m: the first escalation is past its reminder, the second not.
ESCALATED_AT = {"sms:+1:A": NOW - timedelta(minutes=25), "sms:+1:B": NOW - timedelta(minutes=2)}

#: What `status --json` reads from the scene at NOW (the server and storage apart).
EXPECTED: dict[str, Any] = {
    "events": {"waiting": 2, "oldest_waiting_seconds": 300.0, "failed": 1},
    "outbox": {"due": 3, "oldest_due_seconds": 300.0, "deferred": 2, "sending": 1, "dead": 1},
    "escalations": {"open": 3, "unclaimed": 2, "oldest_unclaimed_seconds": 1500.0},
    "breakers": {"http:crm": "closed", "slack:C1": "half_open", "sms:+15559870000": "open"},
    "reconcile": {},
    "backup": {"last": None, "age_seconds": None},
}
#: The alerts of the scene, after the server's (none is running), in order.
ALERTS = [
    "2 events waiting to be routed, the oldest for 5m (is a worker running?)",
    "1 dead letter in the outbox: see `switchboard dlq list`",
    "circuit breaker half-open for slack:C1: sends to it are held",
    "circuit breaker open for sms:+15559870000: sends to it are held",
    "escalation unclaimed for 25m, past its reminder (escalation.claim_timeout 10m); "
    "2 unclaimed escalations in all",
]


def _conversation(event: Event, state: ConversationState) -> ConversationRecord:
    key = event.conversation_key
    assert key is not None
    escalation = None
    if state is not ConversationState.BOT:
        at = ESCALATED_AT.get(key, NOW - timedelta(hours=1))
        agent = "U_AGENT" if state is ConversationState.AGENT else None
        escalation = Escalation(at=at, slack_channel="C1", agent=agent)
    value = Conversation(key=key, state=state, channel="sms", escalation=escalation)
    return ConversationRecord(
        key=key,
        state=state.value,
        channel="sms",
        contact="+15551230001",
        body=msgspec.json.encode(value),
        updated_at=NOW - timedelta(minutes=1),
    )


def _rows(event: Event) -> list[Any]:
    later = NOW + timedelta(hours=1)
    return [
        row(event, "due-oldest", created_at=T0),
        row(event, "due", created_at=T0 + timedelta(minutes=2)),
        row(event, "later", not_before=NOW + timedelta(minutes=1)),
        row(event, "held", status=OutboxStatus.DEFERRED, not_before=later),
        row(event, "held-over", status=OutboxStatus.DEFERRED, not_before=T0 + timedelta(minutes=1)),
        row(event, "dead", status=OutboxStatus.DEAD, attempts=5),
        row(event, "sending", status=OutboxStatus.SENDING, attempts=1),
        row(event, "sent", status=OutboxStatus.SENT, attempts=1),
    ]


async def build_scene(store: Store) -> None:
    """Routed conversations (two unclaimed escalations, one claimed, one with the bot), a
    failed event, outbox rows in every live state, breakers; then two events left waiting."""
    states = {
        "sms:+1:A": ConversationState.ESCALATED,
        "sms:+1:B": ConversationState.ESCALATED,
        "sms:+1:C": ConversationState.AGENT,
        "sms:+1:D": ConversationState.BOT,
    }
    routed = {key: message(n, key, at_ms=1000 + n) for n, key in enumerate(states)}
    broken = message(9, None, at_ms=2000)
    await put(store, *routed.values(), broken)
    lanes = {lane.lease.lane: lane for lane in await store.claim("w1", T0, LEASE, 10, 10)}
    commits = [
        LaneCommit(
            lease=lanes[key].lease,
            results=[done(event)],
            conversation=_conversation(event, states[key]),
            outbox=_rows(event) if key == "sms:+1:D" else [],
        )
        for key, event in routed.items()
    ]
    failed = msgspec.structs.replace(done(broken), status=EventStatus.FAILED)
    commits.append(LaneCommit(lease=lanes[f"event:{broken.id}"].lease, results=[failed]))
    assert (await store.commit(commits, T0)).applied == [True] * len(commits)
    await store.save_breakers(
        {
            "sms:+15559870000": BreakerNews(state="open", changed_at=NOW - timedelta(seconds=10)),
            "slack:C1": BreakerNews(state="open", changed_at=NOW - timedelta(minutes=10)),
            "http:crm": BreakerNews(state="closed", changed_at=T0),
        }
    )
    await put(store, message(20, None, at_ms=0), message(21, None, at_ms=5))
