"""Every condition operator: validate its argument once at load, return a fast checker.

Shared rules (documented in rules/README.md):
- A missing path or a JSON null matches nothing, except `exists: false` and `anything_but`
  (exactly "not" of its inner test: "anything but sms" matches an event with no channel).
- When the event holds a list, a test matches if any element matches.
- A number in the rule matches the same number in the event even when the event carries it as
  text (`500` matches "500" and 500.0); text in the rule matches the same text, or a number
  it spells (`"500"` matches 500, but "0500" does not match "500").
  `gt`/`gte`/`lt`/`lte`/`between` compare numbers only, parsing numeric text on the event side.
- `prefix`, `suffix`, `contains`, `wildcard` and equality are case-sensitive; `equals_ignore_case`
  and `contains_any` are not.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

from router.rules.match import MISSING, Checker
from router.rules.regexes import compile_pattern, search

Test = Callable[[Any], bool]
_NUMBER = re.compile(r"^\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*$")
_INTEGER = re.compile(r"^\s*[+-]?\d+\s*$")
_WORD = re.compile(r"\w+")


class OperatorError(ValueError):
    """A bad operator argument; the message says what was expected."""


def as_number(value: Any) -> int | float | None:
    """A finite number from a number or numeric text; None otherwise (booleans are not numbers)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, str) and len(value) < 100 and _NUMBER.match(value):
        number = int(value) if _INTEGER.match(value) else float(value)
        return number if math.isfinite(number) else None
    return None


def on_values(test: Test) -> Checker:
    """Lift a test on one present value to a checker on a resolved path value."""

    def check(value: Any) -> bool:
        if value is MISSING or value is None:
            return False
        if isinstance(value, list | tuple):
            return any(test(item) for item in value if item is not None)
        return test(value)

    return check


def equals(expected: Any) -> Test:
    """Equality as described in the module docstring."""
    if isinstance(expected, bool):
        return lambda value: isinstance(value, bool) and value == expected
    if isinstance(expected, int | float):
        return lambda value: as_number(value) == expected
    if isinstance(expected, str):
        number = as_number(expected)
        if number is None:
            return lambda value: value == expected
        return lambda value: (
            value == expected or (not isinstance(value, str) and as_number(value) == number)
        )
    raise OperatorError(f"expected a text, number or true/false value, got {_kind(expected)}")


def equals_text(expected: str) -> Checker:
    """Equality with a non-numeric text: the commonest condition, so checked without layers."""

    def check(value: Any) -> bool:
        if isinstance(value, str):
            return value == expected
        if isinstance(value, list | tuple):
            return expected in value
        return False

    return check


def _strings(arg: Any, name: str) -> tuple[str, ...]:
    items = arg if isinstance(arg, list) else [arg]
    if not items or not all(isinstance(item, str) and item for item in items):
        raise OperatorError(f"{name} expects a non-empty text or a list of texts")
    return tuple(items)


def _text_test(arg: Any, name: str, check: Callable[[str, str], bool]) -> Checker:
    options = _strings(arg, name)
    return on_values(lambda v: isinstance(v, str) and any(check(v, o) for o in options))


def op_prefix(arg: Any) -> Checker:
    return _text_test(arg, "prefix", str.startswith)


def op_suffix(arg: Any) -> Checker:
    return _text_test(arg, "suffix", str.endswith)


def op_contains(arg: Any) -> Checker:
    return _text_test(arg, "contains", lambda value, option: option in value)


def op_equals_ignore_case(arg: Any) -> Checker:
    options = frozenset(option.casefold() for option in _strings(arg, "equals_ignore_case"))
    return on_values(lambda value: isinstance(value, str) and value.casefold() in options)


def words(text: str) -> str:
    """Text as ` word word ` (casefolded, punctuation dropped) for whole-word phrase search.

    Cached, since every keyword rule and the word index ask for the same text; long texts
    (email bodies) get a small cache of their own so the cache's memory stays bounded.
    """
    return _words_short(text) if len(text) <= 2048 else _words_long(text)


def _words(text: str) -> str:
    return " " + " ".join(_WORD.findall(text.casefold())) + " "


_words_short = lru_cache(maxsize=4096)(_words)
_words_long = lru_cache(maxsize=8)(_words)


def op_contains_any(arg: Any) -> Checker:
    phrases = tuple(words(phrase) for phrase in _strings(arg, "contains_any"))
    if any(phrase == "  " for phrase in phrases):
        raise OperatorError(
            "contains_any expects words or phrases with at least one letter or digit"
        )

    def test(value: Any) -> bool:
        if not isinstance(value, str):
            return False
        text = words(value)
        return any(phrase in text for phrase in phrases)

    return on_values(test)


def op_matches(arg: Any) -> Checker:
    if not isinstance(arg, str) or not arg:
        raise OperatorError("matches expects a regular expression as text")
    try:
        pattern = compile_pattern(arg)
    except ValueError as exc:
        raise OperatorError(str(exc)) from exc
    return on_values(lambda value: isinstance(value, str) and search(pattern, value))


def glob(pattern: str) -> Test:
    """`*` matches any run of characters (linear time, no regex involved)."""
    parts = pattern.split("*")
    if len(parts) == 1:
        return lambda value: value == pattern
    first, last, middle = parts[0], parts[-1], tuple(part for part in parts[1:-1] if part)

    def test(value: Any) -> bool:
        if not isinstance(value, str) or len(value) < len(first) + len(last):
            return False
        if not (value.startswith(first) and value.endswith(last)):
            return False
        position, end = len(first), len(value) - len(last)
        for part in middle:
            found = value.find(part, position, end)
            if found < 0:
                return False
            position = found + len(part)
        return True

    return test


def op_wildcard(arg: Any) -> Checker:
    tests = tuple(glob(pattern) for pattern in _strings(arg, "wildcard"))
    return on_values(lambda value: any(test(value) for test in tests))


def op_exists(arg: Any) -> Checker:
    if not isinstance(arg, bool):
        raise OperatorError("exists expects true or false")
    return lambda value: (value is not MISSING and value is not None) is arg


def _bound(arg: Any, name: str) -> int | float:
    if isinstance(arg, bool) or not isinstance(arg, int | float) or not math.isfinite(arg):
        raise OperatorError(f"{name} expects a number, got {_kind(arg)}")
    return arg


def _compare(
    name: str, check: Callable[[int | float, int | float], bool]
) -> Callable[[Any], Checker]:
    def build(arg: Any) -> Checker:
        bound = _bound(arg, name)

        def test(value: Any) -> bool:
            number = as_number(value)
            return number is not None and check(number, bound)

        return on_values(test)

    return build


def op_between(arg: Any) -> Checker:
    if not isinstance(arg, list) or len(arg) != 2:
        raise OperatorError("between expects [low, high], two numbers")
    low, high = _bound(arg[0], "between"), _bound(arg[1], "between")
    if low > high:
        raise OperatorError(f"between expects [low, high] with low <= high, got [{low}, {high}]")

    def test(value: Any) -> bool:
        number = as_number(value)
        return number is not None and low <= number <= high

    return on_values(test)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "a mapping", list: "a list", bool: "true/false", str: "text"}.get(
        type(value), type(value).__name__
    )


#: Operators whose argument is a value test; `anything_but` is built in conditions.py on top.
OPERATORS: dict[str, Callable[[Any], Checker]] = {
    "prefix": op_prefix,
    "suffix": op_suffix,
    "contains": op_contains,
    "contains_any": op_contains_any,
    "matches": op_matches,
    "equals_ignore_case": op_equals_ignore_case,
    "wildcard": op_wildcard,
    "exists": op_exists,
    "gt": _compare("gt", lambda value, bound: value > bound),
    "gte": _compare("gte", lambda value, bound: value >= bound),
    "lt": _compare("lt", lambda value, bound: value < bound),
    "lte": _compare("lte", lambda value, bound: value <= bound),
    "between": op_between,
}
ALL_OPERATORS = (*OPERATORS, "anything_but")
