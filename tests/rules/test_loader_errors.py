"""Load errors name file, line and column, say what was expected, and come all at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from router.rules import RuleError, RulesInvalid, load_ruleset
from tests.rules.support import WINDOWS, write_rules


def errors_of(folder: Path) -> list[RuleError]:
    with pytest.raises(RulesInvalid) as caught:
        load_ruleset(folder, windows=WINDOWS)
    assert str(caught.value) == "\n".join(str(error) for error in caught.value.errors)
    return caught.value.errors


def located(errors: list[RuleError]) -> list[tuple[str, int, int]]:
    return [(error.file, error.line, error.column) for error in errors]


BROKEN = """\
version: 1
rules:
  - id: one
    whn: {source: twilio}
    when:
      chanel: sms
      text: {contain: human}
    then:
      - escalat: {reason: x}
  - id: two
    when: {data.amount: {between: [5, 1]}, text: {matches: "(unclosed"}}
    then:
      - send: {channel: sms, text: "{{ data.x ", category: promo}
"""


def test_every_error_of_a_file_at_once(tmp_path: Path) -> None:
    errors = errors_of(write_rules(tmp_path, {"support.yaml": BROKEN}))
    assert located(errors) == [
        ("support.yaml", 4, 5),  # unknown key whn
        ("support.yaml", 6, 7),  # unknown field chanel
        ("support.yaml", 7, 14),  # unknown operator contain
        ("support.yaml", 9, 9),  # unknown action escalat
        ("support.yaml", 11, 35),  # between low > high
        ("support.yaml", 11, 60),  # bad regex
        ("support.yaml", 13, 9),  # send is missing `to`
        ("support.yaml", 13, 36),  # template syntax error
        ("support.yaml", 13, 60),  # unknown category
    ]
    messages = [error.message for error in errors]
    assert "unknown key 'whn' in a rule (did you mean 'when'?)" in messages[0]
    assert "expected one of:" in messages[1] and "'channel'" in messages[1]
    assert messages[2].startswith("unknown operator 'contain' (did you mean 'contains'?)")
    assert "unknown action 'escalat'" in messages[3] and "escalate" in messages[3]
    assert "low <= high" in messages[4]
    assert "invalid regular expression '(unclosed'" in messages[5]
    assert "'send' is missing to" in messages[6]
    assert messages[7].startswith("template syntax error")
    assert "unknown category 'promo', expected one of: transactional" in messages[8]
    assert str(errors[2]).startswith("support.yaml:7:14: unknown operator 'contain'")


def test_errors_of_all_files_and_duplicate_ids_across_files(tmp_path: Path) -> None:
    rule = "  - id: {id}\n    when: {{source: twilio}}\n    then: [drop: {{}}]\n"
    write_rules(
        tmp_path,
        {
            "a.yaml": "version: 1\nrules:\n" + rule.format(id="dup") + rule.format(id="dup"),
            "b.yaml": "version: 1\nrules:\n" + rule.format(id="dup"),
            "c.yaml": "version: 2\nrules: []\n",
        },
    )
    errors = errors_of(tmp_path)
    assert located(errors) == [("a.yaml", 6, 9), ("b.yaml", 3, 9), ("c.yaml", 1, 10)]
    assert "duplicate rule id 'dup', already used at a.yaml:3:9" in errors[0].message
    assert "already used at a.yaml:3:9" in errors[1].message
    assert errors[2].message == "unsupported version 2, expected 1"


@pytest.mark.parametrize(
    ("text", "where", "fragment"),
    [
        ("rules: []\n", (1, 1), "missing 'version: 1'"),
        ("version: 1\n", (1, 1), "missing 'rules:'"),
        ("version: 1\nrules: {}\n", (2, 8), "'rules' must be a list"),
        ("version: 1\nrulez: []\nrules: []\n", (2, 1), "unknown key 'rulez' in the file"),
        ("- a\n- b\n", (1, 1), "expected a mapping with 'version: 1'"),
        ("version: 1\nrules: [\n", (3, 1), "invalid YAML"),
        ("version: 1\nversion: 1\nrules: []\n", (2, 1), "invalid YAML"),
        ("version: 1\nrules:\n  - just text\n", (3, 5), "each rule must be a mapping"),
        ("version: 1\nrules:\n  - id: x\n", (3, 5), "rule is missing 'when'"),
        (
            "version: 1\nrules:\n  - {id: 'bad id', when: {}, then: [drop: {}]}\n",
            (3, 10),
            "bad rule id 'bad id'",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {text: null}, then: [drop: {}]}\n",
            (3, 26),
            "use {exists: false}",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {during: lunch}, then: [drop: {}]}\n",
            (3, 28),
            "unknown window 'lunch', expected one of: business, weekend",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {source.x: a}, then: [drop: {}]}\n",
            (3, 20),
            "field 'source' has no sub-fields",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {contact.adress: a}, then: [drop: {}]}\n",
            (3, 20),
            "did you mean 'address'?",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {text: {gt: ten}}, then: [drop: {}]}\n",
            (3, 31),
            "gt expects a number, got text",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {text: {matches: '(a+)+$'}}, then: [drop: {}]}\n",  # noqa: E501
            (3, 36),
            "repeats a repeated group",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {}, then: [reply: {text: '{{ dta.x }}'}]}\n",
            (3, 44),
            "unknown template variable 'dta'",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {}, then: [forward: {to: crm, x: 1}]}\n",
            (3, 49),
            "unknown parameter 'x' for 'forward', expected: to",
        ),
        (
            "version: 1\nrules:\n  - {id: x, when: {}, then: [set: {'1a': b}]}\n",
            (3, 36),
            "bad attribute name '1a'",
        ),
        ("version: 1\nrules:\n  - {id: x, when: {}, then: []}\n", (3, 29), "non-empty list"),
        (
            "version: 1\nrules:\n  - {id: x, when: {}, then: [drop: {}], stop: yes}\n",
            (3, 47),
            "'stop' must be true or false",
        ),
    ],
)
def test_single_error(tmp_path: Path, text: str, where: tuple[int, int], fragment: str) -> None:
    errors = errors_of(write_rules(tmp_path, {"x.yaml": text}))
    assert [(e.line, e.column) for e in errors][:1] == [where], errors
    assert fragment in errors[0].message


def test_invalid_window_spec_is_reported_where_it_is_used(tmp_path: Path) -> None:
    write_rules(
        tmp_path,
        {"w.yaml": "version: 1\nrules:\n  - {id: x, when: {during: bad}, then: [drop: {}]}\n"},
    )
    with pytest.raises(RulesInvalid) as caught:
        load_ruleset(tmp_path, windows={"bad": "Mon-Fry 09:00-17:00"})
    (error,) = caught.value.errors
    assert (error.line, error.column) == (3, 28)
    assert "window 'bad' in config [windows] is invalid: unknown day 'Fry'" in error.message


def test_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "x.yaml").write_bytes(b"version: 1\nrules: []\n# \xff\n")
    (error,) = errors_of(tmp_path)
    assert (error.line, error.message) == (3, "not UTF-8 text, expected a UTF-8 YAML file")


def test_missing_folder_and_empty_folder(tmp_path: Path) -> None:
    assert load_ruleset(tmp_path).rules == ()
    with pytest.raises(RulesInvalid, match="rules folder not found"):
        load_ruleset(tmp_path / "nope")


def test_yaml_aliases_are_refused(tmp_path: Path) -> None:
    text = (
        "version: 1\nrules:\n  - id: a\n    when: &w {source: twilio}\n    then: [drop: {}]\n"
        "  - id: b\n    when: *w\n    then: [drop: {}]\n"
    )
    (error,) = errors_of(write_rules(tmp_path, {"x.yaml": text}))
    assert (error.line, error.column) == (7, 11)
    assert "aliases (*name) are not supported" in error.message


def test_forward_destinations_are_checked_when_known(tmp_path: Path) -> None:
    text = "version: 1\nrules:\n  - {id: x, when: {}, then: [forward: {to: crmm}]}\n"
    write_rules(tmp_path, {"x.yaml": text})
    assert load_ruleset(tmp_path).rules[0].id == "x"  # no list of destinations: not checked
    with pytest.raises(RulesInvalid) as caught:
        load_ruleset(tmp_path, forwards=["crm", "warehouse"])
    (error,) = caught.value.errors
    assert (error.line, error.column) == (3, 44)
    assert "unknown forward destination 'crmm', expected one of: crm, warehouse" in error.message
    assert load_ruleset(tmp_path, forwards=["crmm"]).rules[0].id == "x"


def test_yaml_tags_are_refused_and_never_constructed(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = (
        "version: 1\nrules:\n  - id: a\n"
        f'    when: {{text: !!python/object/apply:os.system ["touch {marker}"]}}\n'
        "    then: [drop: {}]\n"
    )
    (error,) = errors_of(write_rules(tmp_path / "rules", {"x.yaml": text}))
    assert (error.line, error.column) == (4, 18)
    assert "YAML tags" in error.message and "not supported" in error.message
    assert not marker.exists()
