"""Regexes that cannot hang the router.

Two guards against catastrophic backtracking: at load, patterns with a quantifier nested inside
an unbounded one (`(a+)+`, `(\\w*)*`, `(x+y?)*`) are refused; at match time, the `regex` package
runs every search with a timeout; a timeout counts as no match and is recorded on the decision.
"""

from __future__ import annotations

import re._parser as sre_parse  # type: ignore[import-not-found]  # stdlib parser, for the static check
from typing import Any

import regex

#: Seconds one search may take before it counts as no match.
TIMEOUT_S = 0.05
_REPEATS = {sre_parse.MAX_REPEAT, sre_parse.MIN_REPEAT, sre_parse.POSSESSIVE_REPEAT}


class RegexTimeout(Exception):
    """A search ran past TIMEOUT_S."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        super().__init__(f"regular expression {pattern!r} timed out, counted as no match")


def compile_pattern(source: str) -> regex.Pattern[str]:
    """Compile once; ValueError saying what is wrong and what was expected."""
    try:
        compiled = regex.compile(source)
    except regex.error as exc:
        raise ValueError(f"invalid regular expression {source!r}: {exc}") from exc
    if _has_nested_quantifier(source):
        raise ValueError(
            f"regular expression {source!r} repeats a repeated group (like (a+)+), which can "
            "take forever on some texts; expected a pattern without nested repetition"
        )
    return compiled


def search(pattern: regex.Pattern[str], text: str) -> bool:
    """Does the pattern occur anywhere in `text`? Raises RegexTimeout on a runaway search."""
    try:
        return pattern.search(text, timeout=TIMEOUT_S) is not None
    except TimeoutError as exc:
        raise RegexTimeout(pattern.pattern) from exc


def _has_nested_quantifier(source: str) -> bool:
    try:
        parsed = sre_parse.parse(source)
    except Exception:  # `regex` syntax beyond `re`: the timeout still guards it
        return False
    return _scan(list(parsed), inside_unbounded=False)


def _scan(items: list[Any], *, inside_unbounded: bool) -> bool:
    for op, arg in items:
        if op in _REPEATS:
            low, high, body = arg
            if inside_unbounded and high != low:
                return True
            unbounded = high == sre_parse.MAXREPEAT or high > 100
            if _scan(list(body), inside_unbounded=inside_unbounded or unbounded):
                return True
        elif op is sre_parse.SUBPATTERN:
            if _scan(list(arg[-1]), inside_unbounded=inside_unbounded):
                return True
        elif op is sre_parse.BRANCH:
            if any(_scan(list(branch), inside_unbounded=inside_unbounded) for branch in arg[1]):
                return True
        elif op in (sre_parse.ASSERT, sre_parse.ASSERT_NOT) and _scan(
            list(arg[1]), inside_unbounded=inside_unbounded
        ):
            return True
    return False
