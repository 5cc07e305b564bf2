"""The conversation machine, table-driven: every (state, trigger) pair and what it yields."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from statemachines.conversation import (
    Context,
    Conversation,
    ConversationState,
    Direction,
    Escalation,
    Message,
    Policy,
    add_tags,
    apply,
    record_message,
    set_attributes,
    with_thread,
)
from statemachines.definitions.conversation import STATES, TRANSITIONS
from statemachines.effects import (
    CancelTimer,
    PostEscalation,
    PostReminder,
    RelayToCustomer,
    RelayToThread,
    ScheduleTimer,
    Timer,
)

NOW = datetime(2026, 11, 23, 10, 0, tzinfo=UTC)
POLICY = Policy(
    claim_timeout=timedelta(minutes=10),
    inactivity_close=timedelta(hours=24),
    escalation_channel="C-SUPPORT",
    history_limit=3,
)
S = ConversationState
CUSTOMER = Message(direction=Direction.INBOUND, text="I want a human", at=NOW, event_id="e0")
AGENT_SAYS = Message(direction=Direction.OUTBOUND, text="Hi, Ana here", at=NOW, author="U-ANA")


def conversation(state: S, **changes: object) -> Conversation:
    escalation = None
    if state in (S.ESCALATED, S.AGENT):
        agent = "U-ANA" if state is S.AGENT else None
        escalation = Escalation(at=NOW, slack_channel="C-SUPPORT", thread_ts="171.1", agent=agent)
    base = Conversation(
        key="sms:+15551230001:+15559870000",
        state=state,
        channel="sms",
        contact="+15551230001",
        escalation=escalation,
        last_activity_at=NOW,
    )
    return msgspec.structs.replace(base, **changes)


def context(**fields: object) -> Context:
    return Context(**{"event_id": "e1", "now": NOW, **fields})  # type: ignore[arg-type]


INACTIVITY = ScheduleTimer(timer=Timer.INACTIVITY, due_at=NOW + timedelta(hours=24))
REMINDER = ScheduleTimer(timer=Timer.CLAIM_REMINDER, due_at=NOW + timedelta(minutes=10))
CANCEL_REMINDER = CancelTimer(timer=Timer.CLAIM_REMINDER)
CANCEL_INACTIVITY = CancelTimer(timer=Timer.INACTIVITY)
RELAY_IN = RelayToThread(slack_channel="C-SUPPORT", thread_ts="171.1", text="I want a human")
RELAY_OUT = RelayToCustomer(channel="sms", to="+15551230001", text="Hi, Ana here")
LATER = NOW + timedelta(hours=25)

# (state, trigger, context, expected state, expected effects); a refused case expects None.
LEGAL = [
    (S.BOT, "inbound", context(message=CUSTOMER), S.BOT, [INACTIVITY]),
    (S.CLOSED, "inbound", context(message=CUSTOMER), S.BOT, [INACTIVITY]),
    (S.ESCALATED, "inbound", context(message=CUSTOMER), S.ESCALATED, [INACTIVITY, RELAY_IN]),
    (S.AGENT, "inbound", context(message=CUSTOMER), S.AGENT, [INACTIVITY, RELAY_IN]),
    (S.ESCALATED, "claim", context(agent="U-ANA"), S.AGENT, [CANCEL_REMINDER]),
    (
        S.ESCALATED,
        "agent_reply",
        context(agent="U-ANA", message=AGENT_SAYS),
        S.AGENT,
        [CANCEL_REMINDER, RELAY_OUT, INACTIVITY],
    ),
    (S.AGENT, "agent_reply", context(agent="U-ANA", message=AGENT_SAYS), S.AGENT,
     [RELAY_OUT, INACTIVITY]),
    (S.ESCALATED, "resolve", context(), S.CLOSED, [CANCEL_REMINDER, CANCEL_INACTIVITY]),
    (S.AGENT, "resolve", context(), S.CLOSED, [CANCEL_REMINDER, CANCEL_INACTIVITY]),
    (S.ESCALATED, "back_to_bot", context(), S.BOT, [CANCEL_REMINDER]),
    (S.AGENT, "back_to_bot", context(), S.BOT, [CANCEL_REMINDER]),
    (
        S.ESCALATED,
        "remind",
        context(now=NOW + timedelta(minutes=10)),
        S.ESCALATED,
        [PostReminder(slack_channel="C-SUPPORT", thread_ts="171.1")],
    ),
    (S.BOT, "inactive", context(now=LATER), S.CLOSED, [CANCEL_INACTIVITY]),
    (S.AGENT, "inactive", context(now=LATER), S.CLOSED, [CANCEL_REMINDER, CANCEL_INACTIVITY]),
]  # fmt: skip

ILLEGAL = [
    (S.ESCALATED, "escalate", context(reason="again"), "not allowed in state 'escalated'"),
    (S.AGENT, "escalate", context(), "not allowed in state 'agent'"),
    (S.CLOSED, "escalate", context(), "not allowed in state 'closed'"),
    (S.BOT, "claim", context(agent="U-ANA"), "not allowed in state 'bot'"),
    (S.AGENT, "claim", context(agent="U-BOB"), "not allowed in state 'agent'"),
    (S.ESCALATED, "claim", context(), "guard not met (has_agent)"),
    (S.BOT, "agent_reply", context(agent="U-ANA", message=AGENT_SAYS), "not allowed"),
    (S.CLOSED, "agent_reply", context(agent="U-ANA", message=AGENT_SAYS), "not allowed"),
    (S.AGENT, "agent_reply", context(agent="U-ANA"), "guard not met (has_message)"),
    (S.BOT, "resolve", context(), "not allowed in state 'bot'"),
    (S.CLOSED, "resolve", context(), "not allowed in state 'closed'"),
    (S.BOT, "back_to_bot", context(), "not allowed in state 'bot'"),
    (S.BOT, "inbound", context(), "guard not met (has_message)"),
    (S.ESCALATED, "remind", context(now=NOW + timedelta(minutes=9)), "claim_overdue"),
    (S.AGENT, "remind", context(now=LATER), "not allowed in state 'agent'"),
    (S.BOT, "inactive", context(now=NOW + timedelta(hours=23)), "idle_long_enough"),
    (S.CLOSED, "inactive", context(now=LATER), "not allowed in state 'closed'"),
    (S.BOT, "to_agent", context(), "unknown trigger 'to_agent'"),
]


@pytest.mark.parametrize(("state", "trigger", "ctx", "expected", "effects"), LEGAL)
def test_legal_transitions(
    state: S, trigger: str, ctx: Context, expected: S, effects: list[object]
) -> None:
    outcome = apply(conversation(state), trigger, ctx, POLICY)

    assert outcome.refused is None
    assert outcome.state is expected
    assert list(outcome.effects) == effects
    assert outcome.transition is not None
    assert (outcome.transition.source, outcome.transition.dest) == (state, expected)


@pytest.mark.parametrize(("state", "trigger", "ctx", "reason"), ILLEGAL)
def test_illegal_transitions_change_nothing_and_say_why(
    state: S, trigger: str, ctx: Context, reason: str
) -> None:
    before = conversation(state)

    outcome = apply(before, trigger, ctx, POLICY)

    assert outcome.conversation == before
    assert outcome.effects == ()
    assert outcome.transition is None
    assert outcome.refused is not None and reason in outcome.refused


def test_escalate_records_the_context_and_posts_it_with_the_history() -> None:
    before = record_message(conversation(S.BOT), CUSTOMER, 3)
    ctx = context(reason="asked for a human", rule_id="human-please", slack_channel="C-BILLING")

    outcome = apply(before, "escalate", ctx, POLICY)

    assert outcome.state is S.ESCALATED
    post, timer = outcome.effects
    assert isinstance(post, PostEscalation)
    assert (post.slack_channel, post.contact, post.reason, post.rule_id) == (
        "C-BILLING",
        "+15551230001",
        "asked for a human",
        "human-please",
    )
    assert [line.text for line in post.history] == ["I want a human"]
    assert timer == REMINDER
    escalation = outcome.conversation.escalation
    assert escalation is not None and escalation.rule_id == "human-please"


def test_escalate_defaults_to_the_configured_escalation_channel() -> None:
    outcome = apply(conversation(S.BOT), "escalate", context(), POLICY)

    assert isinstance(outcome.effects[0], PostEscalation)
    assert outcome.effects[0].slack_channel == "C-SUPPORT"


def test_the_claim_reminder_fires_once() -> None:
    due = context(now=NOW + timedelta(minutes=11))
    first = apply(conversation(S.ESCALATED), "remind", due, POLICY)

    second = apply(first.conversation, "remind", due, POLICY)

    assert len(first.effects) == 1
    assert second.refused is not None and "already_reminded" in second.refused


def test_a_stale_inactivity_timer_does_not_close() -> None:
    """The timer set at 10:00 fires at 10:00 next day, but a message came at 20:00."""
    recent = conversation(S.BOT, last_activity_at=NOW + timedelta(hours=10))

    outcome = apply(recent, "inactive", context(now=NOW + timedelta(hours=24)), POLICY)

    assert outcome.state is S.BOT and outcome.refused is not None


def test_whole_journey_from_the_issue() -> None:
    """Human please -> escalated; thread reply -> agent with an SMS; resolve; next SMS -> bot."""
    conv = conversation(S.BOT)
    steps = [
        ("inbound", context(message=CUSTOMER), S.BOT),
        ("escalate", context(reason="asked for a human"), S.ESCALATED),
        ("agent_reply", context(agent="U-ANA", message=AGENT_SAYS), S.AGENT),
        ("resolve", context(), S.CLOSED),
        ("inbound", context(message=CUSTOMER), S.BOT),
    ]
    for trigger, ctx, expected in steps:
        conv = apply(conv, trigger, ctx, POLICY).conversation
        assert conv.state is expected
    assert [m.direction for m in conv.history] == ["in", "out", "in"]
    assert conv.escalation is None


def test_history_keeps_the_last_messages_both_ways() -> None:
    conv = conversation(S.AGENT)
    for i in range(5):
        message = msgspec.structs.replace(CUSTOMER, text=f"m{i}")
        conv = apply(conv, "inbound", context(message=message), POLICY).conversation

    assert [m.text for m in conv.history] == ["m2", "m3", "m4"]


def test_attributes_tags_and_thread_are_pure_updates() -> None:
    before = conversation(S.ESCALATED, tags=("vip",))

    after = with_thread(add_tags(set_attributes(before, {"plan": "pro"}), ["late", "vip"]), "9.9")

    assert after.attributes == {"plan": "pro"} and before.attributes == {}
    assert after.tags == ("late", "vip") and before.tags == ("vip",)
    assert after.escalation is not None and after.escalation.thread_ts == "9.9"


def test_the_definition_names_only_known_states() -> None:
    for row in TRANSITIONS:
        sources = row["source"] if isinstance(row["source"], list) else [row["source"]]
        assert set(sources) <= set(STATES)
        assert row["dest"] is None or row["dest"] in STATES


@settings(max_examples=200, deadline=None)
@given(
    state=st.sampled_from(list(S)),
    trigger=st.sampled_from(
        ["escalate", "claim", "agent_reply", "resolve", "back_to_bot", "inbound", "remind",
         "inactive", "bogus"]
    ),
    minutes=st.integers(min_value=0, max_value=3000),
    agent=st.none() | st.just("U-ANA"),
    with_message=st.booleans(),
)  # fmt: skip
def test_apply_never_raises_and_a_refusal_is_inert(
    state: S, trigger: str, minutes: int, agent: str | None, with_message: bool
) -> None:
    ctx = context(
        now=NOW + timedelta(minutes=minutes),
        agent=agent,
        message=CUSTOMER if with_message else None,
    )
    before = conversation(state)

    outcome = apply(before, trigger, ctx, POLICY)

    if outcome.refused is not None:
        assert outcome.conversation == before and outcome.effects == ()
    else:
        assert outcome.transition is not None
        assert len({effect.key for effect in outcome.effects}) == len(outcome.effects)
        encoded = msgspec.json.encode(outcome)
        assert msgspec.json.decode(encoded, type=type(outcome)) == outcome
