"""Every operator, table-driven, through real rules files and the real loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from router.events import Channel, Contact
from router.rules import ConversationView, RulesInvalid, Snapshot
from tests.rules.support import decide, make_event, one_rule

DATA = {
    "amount": 1250,
    "amount_text": "1250",
    "price": "12.50",
    "zero": 0,
    "flag": True,
    "nothing": None,
    "code": "ORDER-77",
    "email": "ana@Example.com",
    "tags": ["vip", "beta"],
    "nested": {"deep": {"value": "x"}},
    "items": [{"sku": "A-1", "qty": 2}, {"sku": "B-2", "qty": 5}],
    "city": "Zürich",
}

# (when, event overrides, expected)
CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    # equality
    ("eq text", {"source": "twilio"}, {}, True),
    ("eq text other", {"source": "stripe"}, {}, False),
    ("eq case-sensitive", {"text": "HELLO"}, {}, False),
    ("eq enum", {"channel": "sms"}, {}, True),
    ("eq number", {"data.amount": 1250}, {}, True),
    ("eq number vs numeric text", {"data.amount_text": 1250}, {}, True),
    ("eq float vs numeric text", {"data.price": 12.5}, {}, True),
    ("eq numeric text vs number", {"data.amount": "1250"}, {}, True),
    ("eq numeric text vs text", {"data.amount_text": "1250.0"}, {}, False),
    ("eq zero", {"data.zero": 0}, {}, True),
    ("eq bool", {"data.flag": True}, {}, True),
    ("eq bool is not 1", {"data.flag": 1}, {}, False),
    ("eq 1 is not bool", {"data.zero": False}, {}, False),
    ("eq nested path", {"data.nested.deep.value": "x"}, {}, True),
    ("eq missing path", {"data.absent": "x"}, {}, False),
    ("eq null value", {"data.nothing": "x"}, {}, False),
    ("eq through scalar", {"data.amount.x": 1}, {}, False),
    ("eq list element", {"data.tags": "beta"}, {}, True),
    ("eq through list", {"data.items.sku": "B-2"}, {}, True),
    ("eq list index", {"data.items.1.sku": "B-2"}, {}, True),
    ("eq list index out of range", {"data.items.7.sku": "B-2"}, {}, False),
    ("eq unicode", {"data.city": "Zürich"}, {}, True),
    ("eq contact", {"contact.address": "+15551230001"}, {}, True),
    ("eq missing contact", {"contact.address": "+15551230001"}, {"contact": None}, False),
    ("eq missing channel", {"channel": "sms"}, {"channel": None}, False),
    # list = any of
    ("any of", {"source": ["stripe", "twilio"]}, {}, True),
    ("any of none", {"source": ["stripe", "slack"]}, {}, False),
    ("any of mixed", {"data.code": ["x", {"prefix": "ORDER-"}]}, {}, True),
    ("any of numbers", {"data.amount": [1, 1250]}, {}, True),
    # prefix / suffix / contains
    ("prefix", {"data.code": {"prefix": "ORDER-"}}, {}, True),
    ("prefix case", {"data.code": {"prefix": "order-"}}, {}, False),
    ("prefix list", {"data.code": {"prefix": ["X", "ORD"]}}, {}, True),
    ("prefix on number", {"data.amount": {"prefix": "12"}}, {}, False),
    ("prefix missing", {"data.absent": {"prefix": "x"}}, {}, False),
    ("suffix", {"data.email": {"suffix": "@Example.com"}}, {}, True),
    ("suffix miss", {"data.email": {"suffix": "@example.com"}}, {}, False),
    ("contains", {"text": {"contains": "ell"}}, {}, True),
    ("contains miss", {"text": {"contains": "ELL"}}, {}, False),
    ("contains null text", {"text": {"contains": "x"}}, {"text": None}, False),
    ("contains in list", {"data.tags": {"contains": "et"}}, {}, True),
    # contains_any
    ("words", {"text": {"contains_any": ["human"]}}, {"text": "Can I talk to a HUMAN?!"}, True),
    (
        "words phrase",
        {"text": {"contains_any": ["real person"]}},
        {"text": "a REAL   person, pls"},
        True,
    ),
    (
        "words phrase apart",
        {"text": {"contains_any": ["real person"]}},
        {"text": "real nice person"},
        False,
    ),
    ("words whole only", {"text": {"contains_any": ["human"]}}, {"text": "inhumane"}, False),
    ("words unicode", {"text": {"contains_any": ["straße"]}}, {"text": "Welche STRASSE?"}, True),
    ("words accent", {"text": {"contains_any": ["café"]}}, {"text": "Le CAFÉ!"}, True),
    ("words apostrophe", {"text": {"contains_any": ["don't"]}}, {"text": "I DON'T know"}, True),
    ("words single text", {"text": {"contains_any": "agent"}}, {"text": "agent."}, True),
    ("words missing", {"text": {"contains_any": ["agent"]}}, {"text": None}, False),
    # matches
    ("regex", {"text": {"matches": r"^order\s+#?\d+$"}}, {"text": "order #123"}, True),
    ("regex search", {"text": {"matches": r"\d{3}"}}, {"text": "ab 123 cd"}, True),
    ("regex miss", {"text": {"matches": r"^\d+$"}}, {"text": "12a"}, False),
    ("regex flags", {"text": {"matches": "(?i)^stop$"}}, {"text": "Stop"}, True),
    ("regex on number", {"data.amount": {"matches": "12"}}, {}, False),
    # anything_but
    ("but value", {"source": {"anything_but": "stripe"}}, {}, True),
    ("but same", {"source": {"anything_but": "twilio"}}, {}, False),
    ("but list", {"source": {"anything_but": ["stripe", "twilio"]}}, {}, False),
    ("but prefix", {"data.code": {"anything_but": {"prefix": "INV-"}}}, {}, True),
    ("but prefix hit", {"data.code": {"anything_but": {"prefix": "ORDER"}}}, {}, False),
    ("but missing matches", {"channel": {"anything_but": "sms"}}, {"channel": None}, True),
    ("but null matches", {"data.nothing": {"anything_but": "x"}}, {}, True),
    ("but number", {"data.amount": {"anything_but": 1250}}, {}, False),
    ("but in list", {"data.tags": {"anything_but": "vip"}}, {}, False),
    # equals_ignore_case
    ("ignore case", {"data.email": {"equals_ignore_case": "ANA@example.COM"}}, {}, True),
    ("ignore case unicode", {"data.city": {"equals_ignore_case": "ZÜRICH"}}, {}, True),
    ("ignore case miss", {"data.email": {"equals_ignore_case": "ana"}}, {}, False),
    # wildcard
    ("glob", {"data.code": {"wildcard": "ORDER-*"}}, {}, True),
    ("glob middle", {"data.email": {"wildcard": "*@*.com"}}, {}, True),
    ("glob exact", {"data.code": {"wildcard": "ORDER-77"}}, {}, True),
    ("glob miss", {"data.code": {"wildcard": "order-*"}}, {}, False),
    ("glob overlap", {"data.code": {"wildcard": "ORDER-7*77"}}, {}, False),
    ("glob many", {"data.code": {"wildcard": "*R*E*7"}}, {}, True),
    ("glob star", {"data.code": {"wildcard": "*"}}, {}, True),
    ("glob star missing", {"data.absent": {"wildcard": "*"}}, {}, False),
    # exists
    ("exists", {"data.amount": {"exists": True}}, {}, True),
    ("exists zero", {"data.zero": {"exists": True}}, {}, True),
    ("exists missing", {"data.absent": {"exists": True}}, {}, False),
    ("exists null", {"data.nothing": {"exists": True}}, {}, False),
    ("not exists missing", {"data.absent": {"exists": False}}, {}, True),
    ("not exists null", {"data.nothing": {"exists": False}}, {}, True),
    ("not exists present", {"data.amount": {"exists": False}}, {}, False),
    ("not exists no text", {"text": {"exists": False}}, {"text": None}, True),
    # comparisons
    ("gt", {"data.amount": {"gt": 1000}}, {}, True),
    ("gt equal", {"data.amount": {"gt": 1250}}, {}, False),
    ("gte equal", {"data.amount": {"gte": 1250}}, {}, True),
    ("lt", {"data.amount": {"lt": 1250}}, {}, False),
    ("lte", {"data.amount": {"lte": 1250}}, {}, True),
    ("gt numeric text", {"data.amount_text": {"gt": 999}}, {}, True),
    ("gt decimal text", {"data.price": {"gt": 12.49}}, {}, True),
    ("gt text", {"data.code": {"gt": 1}}, {}, False),
    ("gt bool", {"data.flag": {"gt": 0}}, {}, False),
    ("gt missing", {"data.absent": {"gt": 0}}, {}, False),
    ("lt null", {"data.nothing": {"lt": 10}}, {}, False),
    ("range and", {"data.amount": {"gte": 1000, "lt": 2000}}, {}, True),
    ("range and miss", {"data.amount": {"gte": 1000, "lt": 1200}}, {}, False),
    ("between", {"data.amount": {"between": [1250, 1300]}}, {}, True),
    ("between high", {"data.amount": {"between": [0, 1250]}}, {}, True),
    ("between out", {"data.amount": {"between": [0, 1249.5]}}, {}, False),
    ("between list", {"data.items.qty": {"between": [4, 6]}}, {}, True),
    ("between text", {"data.price": {"between": [12, 13]}}, {}, True),
    # combinators
    ("all", {"all": [{"source": "twilio"}, {"channel": "sms"}]}, {}, True),
    ("all miss", {"all": [{"source": "twilio"}, {"channel": "email"}]}, {}, False),
    ("any", {"any": [{"source": "stripe"}, {"channel": "sms"}]}, {}, True),
    ("any miss", {"any": [{"source": "stripe"}, {"channel": "email"}]}, {}, False),
    ("not", {"not": {"source": "stripe"}}, {}, True),
    ("not hit", {"not": {"source": "twilio"}}, {}, False),
    ("not missing", {"not": {"data.absent": "x"}}, {}, True),
    (
        "nested",
        {"any": [{"all": [{"source": "twilio"}, {"not": {"text": {"contains": "bye"}}}]}]},
        {},
        True,
    ),
    ("implicit and", {"source": "twilio", "data.amount": {"gt": 5000}}, {}, False),
    ("empty when", {}, {}, True),
]


@pytest.mark.parametrize(
    ("name", "when", "overrides", "expected"), CASES, ids=[c[0] for c in CASES]
)
def test_operator(
    tmp_path: Path, name: str, when: dict[str, Any], overrides: dict[str, Any], expected: bool
) -> None:
    ruleset = one_rule(tmp_path, when)
    event = make_event(data=DATA, **overrides)
    assert (decide(ruleset, event).matched == ["r"]) is expected


CONVERSATION_CASES = [
    ({"conversation.state": "escalated"}, True),
    ({"conversation.state": {"anything_but": ["open", "closed"]}}, True),
    ({"conversation.attributes.plan": "gold"}, True),
    ({"conversation.attributes.visits": {"gte": 3}}, True),
    ({"conversation.attributes.absent": {"exists": False}}, True),
    ({"conversation.state": "open"}, False),
]


@pytest.mark.parametrize(("when", "expected"), CONVERSATION_CASES)
def test_conversation_paths(tmp_path: Path, when: dict[str, Any], expected: bool) -> None:
    ruleset = one_rule(tmp_path, when)
    view = ConversationView(state="escalated", attributes={"plan": "gold", "visits": "3"})
    decision = decide(ruleset, snapshot=Snapshot(conversation=view))
    assert (decision.matched == ["r"]) is expected


def test_conversation_paths_without_a_conversation(tmp_path: Path) -> None:
    ruleset = one_rule(tmp_path, {"conversation.state": {"exists": False}})
    assert decide(ruleset).matched == ["r"]
    ruleset = one_rule(tmp_path, {"conversation.state": "open"})
    assert decide(ruleset).matched == []


def test_attachments_path(tmp_path: Path) -> None:
    from router.events import Attachment

    ruleset = one_rule(tmp_path, {"attachments.content_type": {"prefix": "image/"}})
    with_image = make_event(attachments=(Attachment(url="u", content_type="image/png"),))
    assert decide(ruleset, with_image).matched == ["r"]
    assert decide(ruleset, make_event()).matched == []


def test_whatsapp_channel_and_contact(tmp_path: Path) -> None:
    ruleset = one_rule(tmp_path, {"channel": "whatsapp", "contact.name": {"exists": True}})
    event = make_event(channel=Channel.WHATSAPP, contact=Contact(address="+1555", name="Ana"))
    assert decide(ruleset, event).matched == ["r"]


def test_regex_timeout_is_recorded_not_raised(tmp_path: Path) -> None:
    # Polynomial backtracking (no nesting, no alternation) escapes the static checks; the
    # timeout catches it (and `rules check` would have, by probing).
    ruleset = one_rule(tmp_path, {"text": {"matches": r"\s*\s*\s*\s*$"}})
    decision = decide(ruleset, make_event(text=" " * 20_000 + "x"))
    assert decision.matched == []
    assert decision.errors and "timed out" in decision.errors[0]


@pytest.mark.parametrize(
    "pattern",
    ["^(a|a)*$", "(a|ab)*", r"(\w|\d)+", "((a|a)b)*", "(?i)(a|A)+", "(x|xy){2,}", "(?:ab|a)+$"],
)
def test_ambiguous_repeated_alternations_are_load_errors(tmp_path: Path, pattern: str) -> None:
    with pytest.raises(RulesInvalid, match="repeats alternatives that can start with the same"):
        one_rule(tmp_path, {"text": {"matches": pattern}})


@pytest.mark.parametrize(
    "pattern",
    [
        "(a|b)*",
        "(foo|bar)+",
        r"(https?://|www\.)\S+",
        r"(?:[a-z]|-)+",
        r"(?:\s|,)+",
        r"(x|xy){2,5}",
        r"(\.\d|,\d)*",
        r"(?i)\border\s*#?\d{3,}",
        r"^(a|a)$",
    ],
)
def test_unambiguous_or_bounded_alternations_load(tmp_path: Path, pattern: str) -> None:
    assert one_rule(tmp_path, {"text": {"matches": pattern}}).rules[0].patterns[0][2] == pattern
