"""The compiled rule set, its index, and `evaluate` (all-match: every matching rule fires in file
order, then rule order, until a rule with `stop: true` fires).

The index: a rule whose top-level conditions require `type` to equal one of some texts is filed
under those values; else a rule with a top-level `text: {contains_any: ...}` is filed under the
first word of each phrase; else under `source`, else under `channel` values. Every other rule is
always a candidate. For an event, the candidates are the rules filed under its type, the words
of its text, its source and its channel, plus the unfiled ones, in rule order; each candidate is
still evaluated in full, so the index only skips rules that could not match: decisions are
identical to trying every rule (a property test checks it).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import msgspec

from router.events import Event, event_to_builtins
from router.rules.match import Context
from router.rules.model import Action, ActionSpec, Decision, Rule, Snapshot
from router.rules.operators import words
from router.rules.regexes import RegexTimeout
from router.rules.templates import describe, render

_CACHE_LIMIT = 4096


class RuleSet:
    """An immutable, compiled rule set. Build it with `load_ruleset`."""

    __slots__ = (
        "_always",
        "_by_words",
        "_cache",
        "_index",
        "default_zone",
        "files",
        "rules",
        "version",
    )

    def __init__(
        self,
        *,
        version: str,
        rules: tuple[Rule, ...],
        files: tuple[str, ...],
        default_zone: ZoneInfo | None = None,
    ) -> None:
        self.version = version
        self.rules = rules
        self.files = files
        self.default_zone = default_zone or ZoneInfo("UTC")
        self._index: dict[tuple[str, str], list[int]] = {}
        self._always: list[int] = []
        for position, rule in enumerate(rules):
            if rule.index_field is None:
                self._always.append(position)
            for value in rule.index_values:
                self._index.setdefault((rule.index_field or "", value), []).append(position)
        self._by_words = any(rule.index_field == "words" for rule in rules)
        self._cache: dict[
            tuple[str, str, str | None], tuple[tuple[int, ...], tuple[Rule, ...]]
        ] = {}

    def candidates(self, event: Event) -> tuple[Rule, ...]:
        """Rules that may match this event, in evaluation order."""
        positions, rules = self._base(event)
        hits = self._word_hits(event.text) if self._by_words and event.text else None
        if not hits:
            return rules
        return tuple(self.rules[position] for position in sorted(hits.union(positions)))

    def _base(self, event: Event) -> tuple[tuple[int, ...], tuple[Rule, ...]]:
        channel = event.channel.value if event.channel is not None else None
        key = (event.source, event.type, channel)
        found = self._cache.get(key)
        if found is None:
            positions = set(self._always)
            for field, value in (
                ("type", event.type),
                ("source", event.source),
                ("channel", channel),
            ):
                if value is not None:
                    positions.update(self._index.get((field, value), ()))
            ordered = tuple(sorted(positions))
            found = (ordered, tuple(self.rules[position] for position in ordered))
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = found
        return found

    def _word_hits(self, text: str) -> set[int]:
        hits: set[int] = set()
        for word in set(words(text).split()):
            found = self._index.get(("words", word))
            if found:
                hits.update(found)
        return hits

    def __repr__(self) -> str:
        return (
            f"RuleSet(version={self.version[:12]!r}, rules={len(self.rules)}, files={self.files!r})"
        )


def evaluate(ruleset: RuleSet, event: Event, snapshot: Snapshot, now: datetime) -> Decision:
    """The decision for one event: a pure function of its arguments."""
    return _decide(ruleset, ruleset.candidates(event), event, snapshot, now)


def evaluate_naive(ruleset: RuleSet, event: Event, snapshot: Snapshot, now: datetime) -> Decision:
    """`evaluate` without the index (tests compare the two)."""
    return _decide(ruleset, ruleset.rules, event, snapshot, now)


def template_context(event: Event, snapshot: Snapshot) -> dict[str, Any]:
    """The event as JSON plus `conversation`: what conditions and templates see."""
    doc = event_to_builtins(event)
    doc["conversation"] = (
        msgspec.to_builtins(snapshot.conversation) if snapshot.conversation is not None else None
    )
    return doc


def _decide(
    ruleset: RuleSet, rules: Iterable[Rule], event: Event, snapshot: Snapshot, now: datetime
) -> Decision:
    doc = template_context(event, snapshot)
    ctx = Context(doc, snapshot, now, ruleset.default_zone)
    matched: list[str] = []
    actions: list[Action] = []
    errors: list[str] = []
    for rule in rules:
        try:
            if not rule.when(ctx):
                continue
        except RegexTimeout as exc:
            errors.append(f"rule {rule.id}: {exc}")
            continue
        matched.append(rule.id)
        actions.extend(_actions(rule, doc, errors))
        if rule.stop:
            break
    return Decision(rules_version=ruleset.version, matched=matched, actions=actions, errors=errors)


def _actions(rule: Rule, doc: dict[str, Any], errors: list[str]) -> list[Action]:
    result: list[Action] = []
    for spec in rule.then:
        try:
            params = render(spec.params, doc, slack=_posted_to_slack(spec, doc))
        except Exception as exc:  # any template failure is recorded, never raised
            errors.append(f"rule {rule.id}, action {spec.index} ({spec.kind}): {describe(exc)}")
            continue
        result.append(Action(rule_id=rule.id, index=spec.index, kind=spec.kind, params=params))
    return result


def _posted_to_slack(spec: ActionSpec, doc: dict[str, Any]) -> bool:
    """Whether the action's text becomes a Slack message: a `send` to channel slack, or a
    `reply` to a message that came from Slack. Its templates then escape what they interpolate.
    (An `escalate` reason is escaped whole where the escalation post is made.)"""
    if spec.kind == "send":
        return spec.params.get("channel") == "slack"
    return spec.kind == "reply" and doc.get("channel") == "slack"
