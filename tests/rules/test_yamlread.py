"""yamlread reads what ruamel.yaml's round-trip loader reads, at the same positions."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from router.rules.located import plain
from router.rules.yamlread import YList, YMap, load

SCALARS = [
    "yes",
    "no",
    "on",
    "off",
    "y",
    "n",
    "true",
    "False",
    "TRUE",
    "null",
    "~",
    "Null",
    "010",
    "0o17",
    "0x1F",
    "0b101",
    "1_000",
    "-5",
    "+7",
    "1.5",
    "1e3",
    "-.inf",
    ".NaN",
    ".5",
    "1.",
    "1:30",
    "0.1_5",
    "12:30:00",
    "<<x",
    "3e",
    "0x",
    "abc",
]


def _ruamel(text: str) -> Any:
    return YAML(typ="rt", pure=True).load(text)


def _same(theirs: Any, ours: Any, path: str = "") -> None:
    """Equal values, and every mapping, key, value and item at the same line and column."""
    if isinstance(theirs, dict):
        assert isinstance(ours, YMap) and list(theirs) == list(ours), path
        assert (theirs.lc.line, theirs.lc.col) == ours.at, path
        for key in theirs:
            assert tuple(theirs.lc.key(key)) == ours.key_at[key], f"{path}.{key} key"
            if theirs[key] is not None:  # an empty value: ruamel points at the next token
                assert tuple(theirs.lc.value(key)) == ours.value_at[key], f"{path}.{key} value"
            _same(theirs[key], ours[key], f"{path}.{key}")
    elif isinstance(theirs, list):
        assert isinstance(ours, YList) and len(theirs) == len(ours), path
        assert (theirs.lc.line, theirs.lc.col) == ours.at, path
        for index, item in enumerate(theirs):
            if item is not None:
                assert tuple(theirs.lc.item(index)) == ours.item_at[index], f"{path}[{index}]"
            _same(item, ours[index], f"{path}[{index}]")
    else:
        expected = plain(theirs)
        assert type(expected) is type(ours), (path, theirs, ours)
        assert expected == ours or (isinstance(ours, float) and math.isnan(ours)), path


@pytest.mark.parametrize("scalar", SCALARS)
def test_plain_scalars_resolve_as_yaml_1_2(scalar: str) -> None:
    text = f"a: {scalar}\nb: [{scalar}]\n"
    ours, problems = load(text)
    assert problems == []
    _same(_ruamel(text), ours)


KEYS = st.text(alphabet="abcxyz_é", min_size=1, max_size=6)
VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**6), 10**6)
    | st.floats(allow_nan=False, allow_infinity=False, width=32)
    # No ':': ruamel writes `:x` unquoted in flow style, which YAML 1.2 allows and libyaml (1.1)
    # refuses; an author meets that as a located "invalid YAML" and quotes the text.
    | st.text(alphabet="ab #-'\"{}[],é漢\n", max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(KEYS, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None)
@given(doc=st.dictionaries(KEYS, VALUES, min_size=1, max_size=4), flow=st.booleans())
def test_documents_read_the_same_as_ruamel(doc: dict[str, Any], flow: bool) -> None:
    writer = YAML(typ="rt", pure=True)
    writer.default_flow_style = flow
    buffer = io.StringIO()
    writer.dump(doc, buffer)
    text = buffer.getvalue()
    ours, problems = load(text)
    assert problems == [], text
    _same(_ruamel(text), ours)


def test_the_starter_rules_read_the_same_as_ruamel() -> None:
    starter = Path(__file__).resolve().parents[2] / "rules"
    for path in sorted(starter.glob("*.yaml")):
        text = path.read_text()
        _same(_ruamel(text), load(text)[0], path.name)


def test_aliases_and_tags_are_all_reported_and_nothing_is_built() -> None:
    text = "a: &x 1\nb: *x\nc: !!python/name:os.system x\nd: *x\n"
    value, problems = load(text)
    assert value is None
    assert [problem.pos for problem in problems] == [(1, 3), (2, 3), (3, 3)]
