"""Compile a rule's `when:` (as loaded by ruamel.yaml) into a condition, reporting located errors.

Keys of a `when` mapping are ANDed. A key is a combinator (`all`, `any`, `not`, `during`) or a
dotted path into the event (§3 fields, `conversation.state`, `conversation.attributes.x`).
A value is a scalar (equality), a list (any of; items may be operator mappings) or an operator
mapping (every operator in it must hold).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from router.rules.located import Pos, Site, item_pos, key_pos, kind, plain, value_pos
from router.rules.match import Checker, all_of, always, any_of, leaf, negate
from router.rules.model import Condition
from router.rules.operators import (
    ALL_OPERATORS,
    OPERATORS,
    OperatorError,
    as_number,
    equals,
    equals_text,
    on_values,
    words,
)
from router.timewindows import Window, parse_window

_ANY = "*"
#: Top-level paths and, where they are fixed, their sub-fields.
FIELDS: dict[str, tuple[str, ...] | str] = {
    "id": (),
    "source": (),
    "type": (),
    "provider_type": (),
    "dedupe_key": (),
    "channel": (),
    "contact": ("address", "name"),
    "conversation_key": (),
    "text": (),
    "attachments": _ANY,
    "data": _ANY,
    "received_at": (),
    "occurred_at": (),
    "correlation_id": (),
    "status": (),
    "conversation": ("state", "attributes"),
}
COMBINATORS = ("all", "any", "not", "during")
#: Deepest nesting of `all`/`any`/`not` accepted (real rules rarely need more than three).
MAX_NESTING = 10
#: Index keys, most selective first (engine.py): equality on type, source and channel, and
#: `words`: the first word of each `text: {contains_any: ...}` phrase.
INDEXED = ("type", "words", "source", "channel")
Hints = dict[str, frozenset[str]]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def expected(word: str, options: tuple[str, ...] | list[str]) -> str:
    """`(did you mean 'x'?), expected one of: ...` for an unknown name."""
    close = difflib.get_close_matches(word, options, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}, expected one of: {', '.join(options)}"


class ConditionCompiler:
    """Compiles `when:` trees of one file; errors go to the file's Site."""

    def __init__(self, site: Site, windows: Mapping[str, str]) -> None:
        self.site = site
        self.windows = windows
        self._parsed: dict[str, Window | str] = {}
        self._nesting = 0
        #: Every `matches` pattern compiled, with where it is: `rules check` probes each one.
        self.patterns: list[tuple[Pos, str]] = []

    def when(self, node: Any, pos: Pos) -> tuple[Condition | None, Hints]:
        hints: Hints = {}
        if not isinstance(node, dict):
            self.site.error(pos, f"'when' must be a mapping of conditions, got {kind(node)}")
            return None, hints
        return self.mapping(node, hints), hints

    def mapping(self, node: dict[Any, Any], hints: Hints | None) -> Condition | None:
        if not node:
            return always
        parts = [self.entry(node, key, hints) for key in node]
        kept = [part for part in parts if part is not None]
        return all_of(kept) if len(kept) == len(parts) else None

    def entry(self, node: dict[Any, Any], key: Any, hints: Hints | None) -> Condition | None:
        kpos, vpos, value = key_pos(node, key), value_pos(node, key), node[key]
        if not isinstance(key, str):
            self.site.error(kpos, f"condition keys must be field paths, got {kind(key)}")
            return None
        if key in ("all", "any"):
            parts = self.condition_list(key, value, vpos, hints if key == "all" else None)
            if parts is None:
                return None
            return all_of(parts) if key == "all" else any_of(parts)
        if key == "not":
            inner = self.condition(value, vpos, None)
            return negate(inner) if inner is not None else None
        if key == "during":
            return self.during(value, vpos)
        return self.field(key, value, kpos, vpos, hints)

    def condition(self, value: Any, pos: Pos, hints: Hints | None) -> Condition | None:
        if self._nesting >= MAX_NESTING:
            self.site.error(
                pos,
                f"conditions nested too deeply, expected at most {MAX_NESTING} levels of "
                "all/any/not",
            )
            return None
        self._nesting += 1
        try:
            return self.nested(value, pos, hints)
        finally:
            self._nesting -= 1

    def nested(self, value: Any, pos: Pos, hints: Hints | None) -> Condition | None:
        if isinstance(value, list):
            parts = self.condition_list("not", value, pos, None)
            return all_of(parts) if parts is not None else None
        if not isinstance(value, dict):
            self.site.error(pos, f"expected a mapping of conditions, got {kind(value)}")
            return None
        return self.mapping(value, hints)

    def condition_list(
        self, name: str, value: Any, pos: Pos, hints: Hints | None
    ) -> list[Condition] | None:
        if not isinstance(value, list) or not value:
            got = "an empty list" if isinstance(value, list) else kind(value)
            self.site.error(pos, f"'{name}' expects a non-empty list of conditions, got {got}")
            return None
        parts = [self.condition(item, item_pos(value, i), hints) for i, item in enumerate(value)]
        kept = [part for part in parts if part is not None]
        return kept if len(kept) == len(parts) else None

    def during(self, value: Any, pos: Pos) -> Condition | None:
        names = value if isinstance(value, list) else [value]
        if not names or not all(isinstance(name, str) for name in names):
            self.site.error(pos, "'during' expects a window name or a list of window names")
            return None
        windows = [self.window(str(name), pos) for name in names]
        if any(window is None for window in windows):
            return None
        found = tuple(window for window in windows if window is not None)
        return lambda ctx: any(window.contains(ctx.local_now()) for window in found)

    def window(self, name: str, pos: Pos) -> Window | None:
        if name not in self.windows:
            known = sorted(self.windows)
            hint = expected(name, known) if known else ", but no windows are configured"
            self.site.error(pos, f"unknown window {name!r}{hint} (config [windows])")
            return None
        if name not in self._parsed:
            try:
                self._parsed[name] = parse_window(self.windows[name])
            except ValueError as exc:
                self._parsed[name] = str(exc)
        parsed = self._parsed[name]
        if isinstance(parsed, str):
            self.site.error(pos, f"window {name!r} in config [windows] is invalid: {parsed}")
            return None
        return parsed

    def field(
        self, key: str, value: Any, kpos: Pos, vpos: Pos, hints: Hints | None
    ) -> Condition | None:
        path = self.path(key, kpos)
        checker = self.value_checker(value, vpos)
        if path is None or checker is None:
            return None
        if hints is not None and key in INDEXED:
            self.hint(hints, key, plain(value))
        if hints is not None and key == "text" and isinstance(value, dict) and "words" not in hints:
            phrases = plain(value).get("contains_any")
            if (
                phrases is not None
            ):  # a necessary condition: some phrase's first word is in the text
                hints["words"] = frozenset(words(p).split()[0] for p in _as_list(phrases))
        return leaf(path, checker)

    @staticmethod
    def hint(hints: Hints, key: str, value: Any) -> None:
        values = value if isinstance(value, list) else [value]
        if values and all(isinstance(item, str) for item in values):
            found = frozenset(values)
            hints[key] = hints[key] & found if key in hints else found

    def path(self, key: str, pos: Pos) -> tuple[str, ...] | None:
        segments = tuple(key.split("."))
        if not all(segments):
            self.site.error(pos, f"bad field path {key!r}, expected names joined by dots")
            return None
        top, rest = segments[0], segments[1:]
        if top not in FIELDS:
            self.site.error(pos, f"unknown field {top!r}{expected(top, [*FIELDS, *COMBINATORS])}")
            return None
        allowed = FIELDS[top]
        if rest and allowed != _ANY and rest[0] not in allowed:
            if not allowed:
                self.site.error(pos, f"field {top!r} has no sub-fields, expected just {top!r}")
            else:
                self.site.error(pos, f"unknown field {key!r}{expected(rest[0], list(allowed))}")
            return None
        return segments

    def value_checker(self, value: Any, pos: Pos) -> Checker | None:
        if isinstance(value, dict):
            return self.operators(value, pos)
        if isinstance(value, list):
            return self.any_of_values(value, pos)
        return self.scalar(value, pos)

    def scalar(self, value: Any, pos: Pos) -> Checker | None:
        if value is None:
            self.site.error(
                pos, "no value to compare with; to match a missing field use {exists: false}"
            )
            return None
        if isinstance(value, str) and as_number(value) is None:
            return equals_text(str(value))
        try:
            return on_values(equals(plain(value)))
        except OperatorError as exc:
            self.site.error(pos, str(exc))
            return None

    def any_of_values(self, value: list[Any], pos: Pos) -> Checker | None:
        if not value:
            self.site.error(pos, "empty list matches nothing, expected at least one value")
            return None
        checkers: list[Checker | None] = []
        for index, item in enumerate(value):
            where = item_pos(value, index)
            if isinstance(item, list):
                self.site.error(where, "lists inside lists are not allowed, expected a value")
                checkers.append(None)
            else:
                checkers.append(self.value_checker(item, where))
        if any(checker is None for checker in checkers):
            return None
        found = tuple(checker for checker in checkers if checker is not None)
        return lambda v: any(checker(v) for checker in found)

    def operators(self, node: dict[Any, Any], pos: Pos) -> Checker | None:
        if not node:
            self.site.error(
                pos, f"empty operator mapping, expected one of: {', '.join(ALL_OPERATORS)}"
            )
            return None
        checkers = [self.operator(node, name) for name in node]
        if any(checker is None for checker in checkers):
            return None
        found = tuple(checker for checker in checkers if checker is not None)
        if len(found) == 1:
            return found[0]
        return lambda v: all(checker(v) for checker in found)

    def operator(self, node: dict[Any, Any], name: Any) -> Checker | None:
        kpos, vpos, arg = key_pos(node, name), value_pos(node, name), node[name]
        if name == "anything_but":
            inner = self.value_checker(arg, vpos)
            return (lambda v: not inner(v)) if inner is not None else None
        if not isinstance(name, str) or name not in OPERATORS:
            self.site.error(kpos, f"unknown operator {name!r}{expected(str(name), ALL_OPERATORS)}")
            return None
        try:
            checker = OPERATORS[name](plain(arg))
        except OperatorError as exc:
            self.site.error(vpos, str(exc))
            return None
        if name == "matches":
            self.patterns.append((vpos, str(arg)))
        return checker
