"""What a rules file can cost is capped: nesting, files, bytes, rules; failures stay located."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from router.rules import RuleError, RulesInvalid, load_ruleset
from router.rules.conditions import MAX_NESTING
from router.rules.live import LiveRules
from router.rules.loader import MAX_FILE_BYTES, MAX_FILES, MAX_RULES, MAX_TOTAL_BYTES
from router.rules.yamlread import MAX_DEPTH
from tests.rules.support import write_rules

RULE = "  - {{id: r{n}, when: {{source: twilio}}, then: [drop: {{}}]}}\n"


def errors_of(folder: Path) -> list[RuleError]:
    with pytest.raises(RulesInvalid) as caught:
        load_ruleset(folder)
    return caught.value.errors


def nested_not(levels: int) -> str:
    """A rule whose `when` is `levels` nested `{not: ...}` (issue 7's attack with 500)."""
    when = "{not: " * levels + "{channel: sms}" + "}" * levels
    return f"version: 1\nrules:\n  - id: x\n    when: {when}\n    then: [drop: {{}}]\n"


@pytest.mark.parametrize(
    ("text", "where"),
    [
        (nested_not(500), (4, 11 + 6 * (MAX_DEPTH - 3))),  # the first mapping past the cap
        ("version: 1\nrules: " + "[" * 8000 + "]" * 8000 + "\n", None),
        ("version: 1\nrules: " + "[" * 200_000, None),  # unclosed: still stops early
        ("version: 1\nrules:\n" + "".join("  " * i + "- \n" for i in range(1, 60)), (34, 65)),
        ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 99)), (MAX_DEPTH + 1, MAX_DEPTH + 1)),
    ],
    ids=["nested-not", "flow", "unclosed-flow", "block-lists", "block-maps"],
)
def test_deep_yaml_is_a_located_error(tmp_path: Path, text: str, where: tuple[int, int]) -> None:
    (error,) = errors_of(write_rules(tmp_path, {"deep.yaml": text}))
    assert error.file == "deep.yaml"
    assert error.message.startswith(
        f"nested too deeply, expected at most {MAX_DEPTH} levels of mappings and lists"
    )
    if where is not None:
        assert (error.line, error.column) == where


def test_deep_conditions_are_a_located_error(tmp_path: Path) -> None:
    (error,) = errors_of(write_rules(tmp_path, {"x.yaml": nested_not(MAX_NESTING + 1)}))
    assert (error.line, error.column) == (4, 11 + 6 * (MAX_NESTING + 1))
    assert error.message == (
        f"conditions nested too deeply, expected at most {MAX_NESTING} levels of all/any/not"
    )
    write_rules(tmp_path, {"x.yaml": nested_not(MAX_NESTING)})
    assert load_ruleset(tmp_path).rules[0].id == "x"


def test_too_many_files(tmp_path: Path) -> None:
    write_rules(tmp_path, {f"{n:03d}.yaml": "version: 1\nrules: []\n" for n in range(MAX_FILES)})
    assert load_ruleset(tmp_path).files[-1] == f"{MAX_FILES - 1:03d}.yaml"
    write_rules(tmp_path, {"zzz.yaml": "version: 1\nrules: []\n"})
    (error,) = errors_of(tmp_path)
    assert (error.file, error.line, error.column) == ("zzz.yaml", 1, 1)
    assert f"too many rules files in {tmp_path}, expected at most {MAX_FILES}" in error.message


def test_too_many_bytes_in_one_file_and_in_all(tmp_path: Path) -> None:
    comment = "# " + "x" * 98 + "\n"
    big = "version: 1\nrules: []\n" + comment * ((MAX_FILE_BYTES - 100) // 100)
    write_rules(tmp_path, {"a.yaml": big + comment})
    (error,) = errors_of(tmp_path)
    assert str(error) == f"a.yaml:1:1: file too large, expected at most {MAX_FILE_BYTES} bytes"

    files = {f"{n}.yaml": big for n in range(MAX_TOTAL_BYTES // len(big) + 1)}
    write_rules(tmp_path, files)
    (error,) = errors_of(tmp_path)
    assert error.file == sorted(files)[-1] and (error.line, error.column) == (1, 1)
    assert f"expected at most {MAX_TOTAL_BYTES} bytes" in error.message


def test_too_many_rules_across_files(tmp_path: Path) -> None:
    half = MAX_RULES // 2
    first = "version: 1\nrules:\n" + "".join(RULE.format(n=n) for n in range(half))
    second = "version: 1\nrules:\n" + "".join(RULE.format(n=n) for n in range(half, MAX_RULES))
    write_rules(tmp_path, {"a.yaml": first, "b.yaml": second})
    assert len(load_ruleset(tmp_path).rules) == MAX_RULES
    write_rules(tmp_path, {"c.yaml": "version: 1\nrules:\n" + RULE.format(n="extra")})
    (error,) = errors_of(tmp_path)
    assert (error.file, error.line, error.column) == ("c.yaml", 3, 5)
    assert f"expected at most {MAX_RULES} rules in all files together" in error.message


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("version: 1\n---\nrules: []\n", (2, 1), "expected a single document"),
        ("version: 1\nrules: []\nversion: 1\n", (3, 1), "duplicate key 'version' (first at line 1"),
        ("version: 1\nrules: []\n{a: 1}: x\n", (3, 1), "a mapping or list cannot be a key"),
        ("version: 1\nrules: [\x07]\n", (2, 9), "invalid YAML"),
    ],
)
def test_yaml_shapes_refused(
    tmp_path: Path, text: str, where: tuple[int, int], message: str
) -> None:
    (error,) = errors_of(write_rules(tmp_path, {"x.yaml": text}))
    assert (error.line, error.column) == where
    assert message in error.message


@contextmanager
def shallow_stack(room: int) -> Iterator[None]:
    """Lower Python's recursion limit to `room` frames above the caller: a real RecursionError
    wherever loading recurses, as a deeper interpreter stack or a future bug would cause."""
    limit = sys.getrecursionlimit()
    depth = len(__import__("inspect").stack(0))
    sys.setrecursionlimit(depth + room)
    try:
        yield
    finally:
        sys.setrecursionlimit(limit)


def test_a_recursion_error_inside_loading_is_a_located_error(tmp_path: Path) -> None:
    write_rules(tmp_path, {"x.yaml": nested_not(MAX_NESTING)})
    with shallow_stack(40):
        try:
            load_ruleset(tmp_path)
        except RulesInvalid as exc:
            caught: RulesInvalid | None = exc
        else:
            caught = None
    assert caught is not None, "a recursion error must surface as RulesInvalid"
    (error,) = caught.errors
    assert (error.file, error.line, error.column) == ("x.yaml", 1, 1)
    assert error.message == "nested too deeply to read, expected a simpler file"


def test_live_rules_keep_the_previous_version_whatever_goes_wrong(tmp_path: Path) -> None:
    write_rules(tmp_path, {"a.yaml": "version: 1\nrules:\n" + RULE.format(n=1)})
    live = LiveRules(tmp_path)
    assert live.reload() is True
    before = live.ruleset
    write_rules(tmp_path, {"b.yaml": nested_not(MAX_NESTING)})
    with shallow_stack(30):
        changed = live.reload()
    assert changed is False and live.ruleset is before
    assert live.error is not None and ("nested too deeply" in live.error or "Error" in live.error)
