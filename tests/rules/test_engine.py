"""Evaluation semantics, the index, purity (hypothesis) and the rules version."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from router.events import Channel, Event, decode_event, encode_event
from router.rules import RuleSet, RulesInvalid, Snapshot, evaluate, load_ruleset, rules_version
from router.rules.engine import evaluate_naive
from tests.rules.support import WINDOWS, decide, make_event, write_rules


def rule(rule_id: str, when: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "when": when, "then": [{"tag": rule_id}], **extra}


def test_every_match_fires_in_file_then_rule_order(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        {
            "20-b.yaml": {
                "version": 1,
                "rules": [rule("b1", {}), rule("b2", {"source": "stripe"})],
            },
            "10-a.yaml": {"version": 1, "rules": [rule("a1", {"channel": "sms"}), rule("a2", {})]},
            "README.md": "not a rules file",
            "notes.yml": "not read either",
            ".#10-a.yaml": "an editor's lock file: [",
        },
    )
    ruleset = load_ruleset(tmp_path)
    assert ruleset.files == ("10-a.yaml", "20-b.yaml")
    decision = decide(ruleset)
    assert decision.matched == ["a1", "a2", "b1"]
    assert [(a.rule_id, a.params["tags"]) for a in decision.actions] == [
        ("a1", ["a1"]),
        ("a2", ["a2"]),
        ("b1", ["b1"]),
    ]
    assert decision.rules_version == ruleset.version == rules_version(tmp_path)


def test_stop_ends_evaluation_only_when_its_rule_fires(tmp_path: Path) -> None:
    rules = [
        rule("no-stop-miss", {"source": "stripe"}, stop=True),
        rule("first", {"channel": "sms"}),
        rule("stopper", {"text": {"exists": True}}, stop=True),
        rule("never", {}),
    ]
    write_rules(tmp_path, {"r.yaml": {"version": 1, "rules": rules}})
    ruleset = load_ruleset(tmp_path)
    assert decide(ruleset).matched == ["first", "stopper"]
    assert decide(ruleset, make_event(text=None)).matched == ["first", "never"]


def test_index_skips_rules_that_cannot_match(tmp_path: Path) -> None:
    rules = [
        rule("by-type", {"type": ["invoice.paid", "invoice.payment_failed"], "data.x": 1}),
        rule("by-source", {"source": "stripe"}),
        rule("by-channel-in-all", {"all": [{"channel": "email"}, {"text": "x"}]}),
        rule("in-any-is-not-indexed", {"any": [{"type": "a"}, {"source": "twilio"}]}),
        rule("by-number-is-not-indexed", {"type": 5}),
    ]
    write_rules(tmp_path, {"r.yaml": {"version": 1, "rules": rules}})
    ruleset = load_ruleset(tmp_path)
    indexed = {r.id: (r.index_field, sorted(r.index_values)) for r in ruleset.rules}
    assert indexed == {
        "by-type": ("type", ["invoice.paid", "invoice.payment_failed"]),
        "by-source": ("source", ["stripe"]),
        "by-channel-in-all": ("channel", ["email"]),
        "in-any-is-not-indexed": (None, []),
        "by-number-is-not-indexed": (None, []),
    }
    sms = make_event()
    assert [r.id for r in ruleset.candidates(sms)] == [
        "in-any-is-not-indexed",
        "by-number-is-not-indexed",
    ]


def test_invalid_reload_leaves_the_loaded_set_deciding_as_before(tmp_path: Path) -> None:
    write_rules(tmp_path, {"r.yaml": {"version": 1, "rules": [rule("a", {"channel": "sms"})]}})
    live = load_ruleset(tmp_path)
    before = decide(live)
    write_rules(tmp_path, {"r.yaml": "version: 1\nrules:\n  - id: a\n    when: {chanel: sms}\n"})
    with pytest.raises(RulesInvalid):
        load_ruleset(tmp_path)
    assert decide(live) == before


def test_rules_version_is_stable_and_content_sensitive(tmp_path: Path) -> None:
    content = {"a.yaml": "version: 1\nrules: []\n", "b.yaml": "version: 1\nrules: []\n"}
    one, two = write_rules(tmp_path / "one", content), write_rules(tmp_path / "two", content)
    assert rules_version(one) == rules_version(two) == load_ruleset(one).version
    assert len(rules_version(one)) == 64
    (two / "README.md").write_text("guide")
    assert rules_version(two) == rules_version(one)
    (two / "b.yaml").write_text("version: 1\nrules: [] \n")
    assert rules_version(two) != rules_version(one)
    (two / "b.yaml").write_text(content["b.yaml"])
    (two / "b.yaml").rename(two / "c.yaml")
    assert rules_version(two) != rules_version(one)
    # Name and content boundaries cannot be confused.
    three = write_rules(tmp_path / "three", {"a.yaml": "x", "b.yaml": ""})
    four = write_rules(tmp_path / "four", {"a.yaml": "", "b.yaml": "x"})
    assert rules_version(three) != rules_version(four)
    assert (
        rules_version(write_rules(tmp_path / "empty", {}))
        == load_ruleset(tmp_path / "empty").version
    )


# --- property tests -------------------------------------------------------------------------

SOURCES = ["twilio", "stripe", "slack", "mailgun"]
TYPES = ["message.received", "invoice.payment_failed", "email.received", "customer.deleted"]
CHANNELS = ["sms", "email", "slack", "whatsapp"]
WORDS = ["human", "agent", "hours", "order", "stop", "hello"]


def _one_or_list(values: list[str]) -> st.SearchStrategy[Any]:
    return st.sampled_from(values) | st.lists(st.sampled_from(values), min_size=1, max_size=3)


LEAVES: st.SearchStrategy[tuple[str, Any]] = st.one_of(
    st.tuples(st.just("source"), _one_or_list(SOURCES)),
    st.tuples(st.just("type"), _one_or_list(TYPES)),
    st.tuples(st.just("channel"), _one_or_list(CHANNELS)),
    st.tuples(st.just("channel"), st.builds(lambda b: {"exists": b}, st.booleans())),
    st.tuples(
        st.just("source"), st.builds(lambda s: {"anything_but": s}, st.sampled_from(SOURCES))
    ),
    st.tuples(st.just("text"), st.builds(lambda w: {"contains_any": [w]}, st.sampled_from(WORDS))),
    st.tuples(
        st.just("text"),
        st.builds(lambda w: {"contains_any": ["real person", w]}, st.sampled_from(WORDS)),
    ),
    st.tuples(
        st.just("text"),
        st.builds(lambda w: {"contains_any": w, "anything_but": "stop"}, st.sampled_from(WORDS)),
    ),
    st.tuples(st.just("text"), st.builds(lambda w: {"matches": f"^{w}"}, st.sampled_from(WORDS))),
    st.tuples(st.just("data.amount"), st.builds(lambda n: {"gt": n}, st.integers(-5, 5))),
    st.tuples(st.just("data.amount"), st.integers(-5, 5)),
    st.tuples(st.just("during"), st.sampled_from(["business", "weekend"])),
)
WHENS: st.SearchStrategy[dict[str, Any]] = st.recursive(
    st.lists(LEAVES, max_size=3).map(dict),
    lambda inner: st.one_of(
        st.builds(lambda a, b: {"all": [a, b]}, inner, inner),
        st.builds(lambda a, b: {"any": [a, b]}, inner, inner),
        st.builds(lambda a: {"not": a}, inner),
        st.builds(lambda a, b: {**a, "all": [b]}, inner, inner),
    ),
    max_leaves=6,
)
RULES = st.lists(st.tuples(WHENS, st.booleans()), min_size=1, max_size=12)
EVENTS = st.builds(
    lambda source, type_, channel, words, amount: make_event(
        source=source,
        type=type_,
        channel=Channel(channel) if channel else None,
        text=" ".join(words) if words else None,
        data={} if amount is None else {"amount": amount},
    ),
    st.sampled_from(SOURCES),
    st.sampled_from(TYPES),
    st.none() | st.sampled_from(CHANNELS),
    st.lists(st.sampled_from([*WORDS, "HUMAN?!", "Order:", "Real", "person."]), max_size=5),
    st.none() | st.integers(-6, 6) | st.integers(-6, 6).map(str),
)
NOWS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 1, 1), timezones=st.just(UTC)
)


def build(specs: list[tuple[dict[str, Any], bool]]) -> RuleSet:
    rules = [rule(f"r{i}", when, stop=stop) for i, (when, stop) in enumerate(specs)]
    half = len(rules) // 2
    with tempfile.TemporaryDirectory() as folder:
        write_rules(
            Path(folder),
            {
                "a.yaml": {"version": 1, "rules": rules[:half]},
                "b.yaml": {"version": 1, "rules": rules[half:]},
            },
        )
        return load_ruleset(Path(folder), windows=WINDOWS)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(specs=RULES, events=st.lists(EVENTS, min_size=1, max_size=8), now=NOWS)
def test_indexed_equals_naive_and_decisions_are_pure(
    specs: list[tuple[dict[str, Any], bool]], events: list[Event], now: datetime
) -> None:
    ruleset = build(specs)
    snapshot = Snapshot(contact_timezone="Europe/Paris")
    first = [evaluate(ruleset, event, snapshot, now) for event in events]
    assert first == [evaluate_naive(ruleset, event, snapshot, now) for event in events]
    # Same inputs (even a decoded copy of the event), in another order: the same decisions.
    again = [evaluate(ruleset, decode_event(encode_event(e)), snapshot, now) for e in events[::-1]]
    assert again[::-1] == first
    # A rebuilt rule set from the same text decides the same, with the same version.
    rebuilt = build(specs)
    assert [evaluate(rebuilt, event, snapshot, now) for event in events] == first


@settings(max_examples=60, deadline=None)
@given(event=EVENTS, now=NOWS)
def test_only_now_and_snapshot_change_time_dependent_decisions(event: Event, now: datetime) -> None:
    ruleset = build([({"during": "business"}, False), ({"not": {"during": "business"}}, False)])
    decision = evaluate(ruleset, event, Snapshot(), now)
    assert len(decision.matched) == 1
    later = evaluate(ruleset, event, Snapshot(), now + timedelta(days=7))
    assert later == decision  # a week later, same weekday and time: same answer
