"""The regex reading of simple templates agrees with jinja's parser, and skips no check."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from router.rules.templates import ENV, _simple_parts, check_reach, quick_parts

NAMES = ("data", "text", "contact")
HEADS = st.sampled_from([*NAMES, "dta", "true", "none", "_x", "data_1"])
SEGMENTS = st.sampled_from([".a", ".b_2", "._x", ".if", "['c']", "['a b']", "['_x']", "[0]", "."])
FILTERS = st.sampled_from(
    ["", " | default('x')", '|d("y")', " | default(0)", " | default(-1)", " | d(x)", " | upper"]
)
SPACES = st.sampled_from(["", " ", "  ", "\t", "-", "- "])
TEXT = st.text(alphabet="ab {}%#'\"|\n\r", max_size=6)


@st.composite
def outputs(draw: st.DrawFn) -> str:
    path = draw(HEADS) + "".join(draw(st.lists(SEGMENTS, max_size=3)))
    return "{{" + draw(SPACES) + path + draw(FILTERS) + draw(SPACES).replace("-", "") + "}}"


SOURCES = st.lists(st.one_of(TEXT, outputs()), max_size=5).map("".join)


def _as_tuples(parts: Any) -> list[Any]:
    return [p if isinstance(p, str) else (p.path, repr(p.default)) for p in parts]


@settings(max_examples=500, deadline=None)
@given(source=SOURCES)
@example(source="Hi {{ contact.name | default('there') }}!")
@example(source="{{ data['a b'].c }}{{text}}")
def test_quick_parts_are_jinjas_parts(source: str) -> None:
    parts = quick_parts(source, NAMES)
    if parts is None:
        return
    tree = ENV.parse(source)  # what the regex accepts, jinja parses
    check_reach(tree)  # and it passes every load check
    assert _as_tuples(parts) == _as_tuples(_simple_parts(tree))
    names = {node.name for node in tree.find_all(__import__("jinja2").nodes.Name)}
    assert names <= set(NAMES)


def test_the_common_templates_take_the_quick_path() -> None:
    for source in (
        "Hi {{ contact.address }}, a person will answer soon.",
        "{{ data.customer_phone }}",
        "Invoice {{ data.invoice | default('?') }}: {{ data.amount }} cents",
    ):
        assert quick_parts(source, NAMES) is not None, source
