"""Regexes that cannot hang the router.

Three guards against catastrophic backtracking:
- at load, patterns with a quantifier nested inside an unbounded one (`(a+)+`, `(\\w*)*`,
  `(x+y?)*`) are refused, and so are alternations under an unbounded repeat whose branches can
  start with the same character (`^(a|a)*$`, `(a|ab)*`, `(\\w|\\d)+`): both let the matcher try
  exponentially many ways to split a text;
- `rules check` also runs each pattern on pumped texts built from its own characters
  (`probe`), and refuses any that times out;
- at match time, the `regex` package runs every search with a timeout; a timeout counts as no
  match and is recorded on the decision.
"""

from __future__ import annotations

import re
import re._parser as sre_parse  # type: ignore[import-not-found]  # stdlib parser, for the static check
import string
from collections.abc import Iterator
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
    if _has_ambiguous_alternation(source):
        raise ValueError(
            f"regular expression {source!r} repeats alternatives that can start with the same "
            "character (like (a|ab)* or (\\w|\\d)+), which can take forever on some texts; "
            "expected alternatives that start differently (or one character class, like [\\w-])"
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


# --- ambiguous alternations -----------------------------------------------------------------
#
# Read from the source text, not from sre's tree: sre rewrites `(a|ab)` as `a(?:|b)` and
# `(\w|\d)` as `[\w\d]`, hiding that the branches, as written, start alike.

_GROUP_PREFIX = re.compile(r"^\?(?::|P<\w+>|<\w+>|[aiLmsux-]+:)")
_UNBOUNDED = re.compile(r"^(?:[*+]|\{\d*,\}|\{\d*,(\d+)\})")


class _Group:
    __slots__ = ("bars", "end", "start", "unbounded")

    def __init__(self, start: int) -> None:
        self.start, self.end, self.bars, self.unbounded = start, -1, [start], False


def _has_ambiguous_alternation(source: str) -> bool:
    try:
        flags = sre_parse.parse(source).state.flags
        groups = list(_groups(source))
    except Exception:  # `regex` syntax beyond `re`: the timeout still guards it
        return False
    repeated = [group for group in groups if group.unbounded]
    for group in groups:
        inside = any(outer.start <= group.start and group.end <= outer.end for outer in repeated)
        if inside and len(group.bars) > 1 and _overlap(_branches(source, group), flags):
            return True
    return False


def _groups(source: str) -> Iterator[_Group]:
    """Every parenthesised group: where it is, where its top-level `|` are, if repeated."""
    stack: list[_Group] = []
    position = 0
    while position < len(source):
        char = source[position]
        if char == "\\":
            position += 2
            continue
        if char == "[":
            position = _class_end(source, position)
        elif char == "(":
            stack.append(_Group(position + 1))
        elif char == "|" and stack:
            stack[-1].bars.append(position + 1)
        elif char == ")" and stack:
            group = stack.pop()
            group.end = position
            found = _UNBOUNDED.match(source[position + 1 :])
            group.unbounded = found is not None and int(found.group(1) or 101) > 100
            yield group
        position += 1


def _class_end(source: str, start: int) -> int:
    position = start + 1
    if source[position : position + 1] == "^":
        position += 1
    if source[position : position + 1] == "]":
        position += 1
    while position < len(source) and source[position] != "]":
        position += 2 if source[position] == "\\" else 1
    return position


def _branches(source: str, group: _Group) -> list[str]:
    ends = [bar - 1 for bar in group.bars[1:]] + [group.end]
    texts = [source[start:end] for start, end in zip(group.bars, ends, strict=True)]
    texts[0] = _GROUP_PREFIX.sub("", texts[0])
    return texts


def _overlap(branches: list[str], flags: int) -> bool:
    seen: set[str] = set()
    nullable = 0
    for branch in branches:
        try:
            first, empty = _first(list(sre_parse.parse(branch, flags)), flags)
        except Exception:  # a branch that only parses in context (a back-reference)
            return False
        if seen & first:
            return True
        seen |= first
        nullable += empty
    return nullable > 1


#: The characters first-sets are computed over: enough to tell classes apart.
_ALPHABET = frozenset(string.printable + "éÉß€\u00a0\u2003٣")


def _first(items: list[Any], flags: int) -> tuple[set[str], bool]:
    """The characters a sequence can start with, and whether it can match the empty text."""
    found: set[str] = set()
    for op, arg in items:
        first, empty = _first_item(op, arg, flags)
        found |= first
        if not empty:
            return found, False
    return found, True


def _first_item(op: Any, arg: Any, flags: int) -> tuple[set[str], bool]:
    if op is sre_parse.LITERAL:
        return _cased({chr(arg)}, flags), False
    if op is sre_parse.NOT_LITERAL:
        return set(_ALPHABET - {chr(arg)}), False
    if op is sre_parse.IN:
        return _cased(_charset(arg), flags), False
    if op is sre_parse.SUBPATTERN:
        return _first(list(arg[-1]), flags)
    if op is sre_parse.BRANCH:
        parts = [_first(list(branch), flags) for branch in arg[1]]
        return set().union(*(first for first, _ in parts)), any(empty for _, empty in parts)
    if op in _REPEATS:
        first, empty = _first(list(arg[2]), flags)
        return first, empty or arg[0] == 0
    if op in (sre_parse.AT, sre_parse.ASSERT, sre_parse.ASSERT_NOT):
        return set(), True
    return set(_ALPHABET), False  # ANY and anything else: assume it can start anywhere


def _charset(items: list[Any]) -> set[str]:
    found: set[str] = set()
    negate = False
    for op, arg in items:
        if op is sre_parse.NEGATE:
            negate = True
        elif op is sre_parse.LITERAL:
            found.add(chr(arg))
        elif op is sre_parse.RANGE:
            found |= {char for char in _ALPHABET if arg[0] <= ord(char) <= arg[1]}
        elif op is sre_parse.CATEGORY:
            found |= {char for char in _ALPHABET if _in_category(char, arg)}
    return set(_ALPHABET - found) if negate else found


_CATEGORIES = {"DIGIT": r"\d", "SPACE": r"\s", "WORD": r"\w", "LINEBREAK": r"\n"}


def _in_category(char: str, category: Any) -> bool:
    name = str(category).removeprefix("CATEGORY_").removeprefix("UNI_")
    negated = name.startswith("NOT_")
    pattern = _CATEGORIES.get(name.removeprefix("NOT_"), ".")
    return (re.fullmatch(pattern, char) is not None) != negated


def _cased(chars: set[str], flags: int) -> set[str]:
    if flags & sre_parse.SRE_FLAG_IGNORECASE:
        return chars | {char.swapcase() for char in chars}
    return chars


# --- probing (rules check) ------------------------------------------------------------------


def probe(source: str, *, length: int = 20_000) -> str | None:
    """Try the pattern on pumped texts built from its own characters; the first text it timed
    out on (shortened), or None. A pattern that passes may still be slow on other texts: the
    match-time timeout stays the last guard."""
    pattern = regex.compile(source)
    for text in _pumped(source, length):
        try:
            search(pattern, text)
        except RegexTimeout:
            return f"{text[:12]!r}... ({len(text)} characters)"
    return None


def _pumped(source: str, length: int) -> Iterator[str]:
    chars = sorted(_pattern_chars(source))[:24]
    runs = [*chars, "".join(chars)] + [a + b for a in chars[:6] for b in chars[:6] if a != b]
    for run in runs:
        for tail in ("\x00", "!", ""):
            yield run * (length // len(run)) + tail


def _pattern_chars(source: str) -> set[str]:
    try:
        items = list(sre_parse.parse(source))
    except Exception:
        return set(source) - set("\\()[]{}|*+?^$.")
    return _literals(items) or {"a"}


def _literals(items: list[Any]) -> set[str]:
    found: set[str] = set()
    for op, arg in items:
        if op is sre_parse.LITERAL:
            found.add(chr(arg))
        elif op is sre_parse.IN:
            found |= {min(_charset([item])) for item in arg if _charset([item])} - {"\x0b"}
        elif op is sre_parse.SUBPATTERN:
            found |= _literals(list(arg[-1]))
        elif op is sre_parse.BRANCH:
            found = found.union(*(_literals(list(branch)) for branch in arg[1]))
        elif op in _REPEATS:
            found |= _literals(list(arg[2]))
    return found
