"""Read one rules file's YAML into dicts and lists that remember where each value starts.

Why not ruamel.yaml's round-trip loader: it is pure Python (about 3 s for 1,000 rules, parsed
twice to refuse aliases first) and it recurses once per nesting level. Here libyaml's C parser
(PyYAML's `CParser`, shipped with uvicorn[standard]) streams parse events, and one loop builds
the values with an explicit stack, so:

- nesting deeper than MAX_DEPTH stops the parse at once, before the rest of the file is read;
- aliases (`*name`, a few can expand enormously), tags (`!!python/...`), duplicate keys and a
  second document are refused with their position, and nothing is ever constructed from a tag;
- plain scalars resolve as YAML 1.2 does (ruamel's default): `yes`/`on` stay text, `010` is 10.

Without libyaml, ruamel.yaml's pure parser supplies the same events (slower, same results).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

Pos = tuple[int, int]  # 0-based line and column

#: Deepest nesting of YAML mappings and lists accepted in a rules file. A real rule needs about
#: a dozen levels (file, rules, rule, when, all, any, a field, its operator, a list of values).
MAX_DEPTH = 32


class YamlProblem(Exception):
    """The file is not YAML we accept; `pos` is where, the message says what was expected."""

    def __init__(self, pos: Pos, message: str) -> None:
        super().__init__(message)
        self.pos = pos
        self.message = message


class YMap(dict[Any, Any]):
    """A YAML mapping, with where it, each key and each value start."""

    __slots__ = ("at", "key_at", "value_at")

    def __init__(self, at: Pos) -> None:
        super().__init__()
        self.at = at
        self.key_at: dict[Any, Pos] = {}
        self.value_at: dict[Any, Pos] = {}


class YList(list[Any]):
    """A YAML sequence, with where it and each item start."""

    __slots__ = ("at", "item_at")

    def __init__(self, at: Pos) -> None:
        super().__init__()
        self.at = at
        self.item_at: list[Pos] = []


_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False, "FALSE": False}
_INT = re.compile(r"^[-+]?(?:0b[0-1_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9_]+)$")
_FLOAT = re.compile(
    r"^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+"
    r"|[-+]?\.[0-9_]+(?:[eE][-+][0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)"
    r"|\.(?:nan|NaN|NAN))$"
)
_BASES = {"0b": 2, "0o": 8, "0x": 16}


def resolve(text: str) -> Any:
    """A plain (unquoted) scalar as YAML 1.2's core schema reads it."""
    if _NULL.match(text):
        return None
    if text in _BOOL:
        return _BOOL[text]
    if _INT.match(text):
        return _integer(text)
    if _FLOAT.match(text):
        return _float(text)
    return text


def _integer(text: str) -> Any:
    digits = text.replace("_", "")
    sign = -1 if digits[:1] == "-" else 1
    body = digits.lstrip("+-")
    base = _BASES.get(body[:2], 10)
    try:
        return sign * int(body if base == 10 else body[2:], base)
    except ValueError:  # e.g. a lone `_`: text, as nothing else reads it
        return text


def _float(text: str) -> float:
    lowered = text.replace("_", "").lower()
    if lowered.endswith((".inf", ".nan")):
        value = math.inf if "inf" in lowered else math.nan
        return -value if lowered.startswith("-") else value
    return float(lowered)


def load(text: str, *, max_depth: int = MAX_DEPTH) -> tuple[Any, list[YamlProblem]]:
    """The document's value and the problems met; a value is None when any problem was met.

    Aliases and tags are all reported at once; a parse error, a second document or nesting
    past `max_depth` end the reading at that point.
    """
    composer = _Composer(max_depth)
    try:
        composer.run(_events(text))
    except YamlProblem as problem:
        composer.problems.append(problem)
    except Exception as exc:  # a parser error (libyaml's or ruamel's)
        composer.problems.append(YamlProblem(_mark(exc, text), _explain(exc, max_depth)))
    if composer.problems:
        return None, sorted(composer.problems, key=lambda problem: problem.pos)
    return composer.root, []


def _events(text: str) -> Iterator[Any]:
    """libyaml's parse events; ruamel's pure-Python parser (same results, ~10x slower) where
    PyYAML was built without libyaml."""
    import yaml  # type: ignore[import-untyped]  # no stubs; only its parse events are used

    if yaml.__with_libyaml__:
        return iter(yaml.parse(text, Loader=yaml.CSafeLoader))
    from ruamel.yaml import YAML  # pragma: no cover

    return iter(YAML(typ="rt", pure=True).parse(text))  # pragma: no cover


class _Composer:
    """Builds values from parse events with an explicit stack (no recursion at any depth)."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.root: Any = None
        self.documents = 0
        self.problems: list[YamlProblem] = []
        #: Open collections; for a mapping, the key waiting for its value (or _NO_KEY).
        self.stack: list[tuple[YMap | YList, list[Any]]] = []

    def run(self, events: Iterator[Any]) -> None:
        for event in events:
            name = type(event).__name__
            if name == "ScalarEvent":
                self.scalar(event)
            elif name in ("MappingStartEvent", "SequenceStartEvent"):
                self.start(event, YMap if name == "MappingStartEvent" else YList)
            elif name in ("MappingEndEvent", "SequenceEndEvent"):
                node, _ = self.stack.pop()
                self.add(node, node.at)
            elif name == "AliasEvent":
                self.refuse(
                    event, "YAML aliases (*name) are not supported, expected the value written out"
                )
                self.add(None, _at(event))
            elif name == "DocumentStartEvent":
                self.document(event)

    def document(self, event: Any) -> None:
        self.documents += 1
        if self.documents > 1:
            raise YamlProblem(_at(event), "invalid YAML: expected a single document in the file")

    def scalar(self, event: Any) -> None:
        self.tagged(event)
        plain = not event.style and event.implicit[0]
        self.add(resolve(event.value) if plain else event.value, _at(event))

    def start(self, event: Any, kind: type[YMap] | type[YList]) -> None:
        self.tagged(event)
        at = _at(event)
        if len(self.stack) >= self.max_depth:
            raise YamlProblem(
                at,
                f"nested too deeply, expected at most {self.max_depth} levels of mappings "
                "and lists",
            )
        self.stack.append((kind(at), [_NO_KEY, at]))

    def tagged(self, event: Any) -> None:
        tag = getattr(event, "tag", None)
        if tag is not None and tag != "!":  # `!` only marks a quoted scalar as text
            self.refuse(event, f"YAML tags ({tag}) are not supported, expected a plain value")

    def refuse(self, event: Any, message: str) -> None:
        self.problems.append(YamlProblem(_at(event), message))

    def add(self, value: Any, at: Pos) -> None:
        if not self.stack:
            self.root = value
            return
        node, pending = self.stack[-1]
        if isinstance(node, YList):
            node.append(value)
            node.item_at.append(at)
        elif pending[0] is _NO_KEY:
            pending[0:2] = [self.key(value, at), at]
        else:
            self.store(node, pending, value, at)

    def key(self, value: Any, at: Pos) -> Any:
        if isinstance(value, YMap | YList):
            self.problems.append(
                YamlProblem(at, "a mapping or list cannot be a key, expected a plain key")
            )
            return _Unusable()
        return value

    def store(self, node: YMap, pending: list[Any], value: Any, at: Pos) -> None:
        key, key_at = pending[0], pending[1]
        pending[0] = _NO_KEY
        if key in node:
            line, column = node.key_at[key]
            self.problems.append(
                YamlProblem(
                    key_at,
                    f"invalid YAML: duplicate key {key!r} (first at line {line + 1}, "
                    f"column {column + 1}), expected each key once in a mapping",
                )
            )
            return
        node[key] = value
        node.key_at[key] = key_at
        node.value_at[key] = at


_NO_KEY: Any = object()


class _Unusable:
    """Stands in for a key that could not be used (the error is already reported)."""


def _at(event: Any) -> Pos:
    mark = event.start_mark
    return (int(mark.line), int(mark.column))


def _mark(exc: Exception, text: str) -> Pos:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        return (int(mark.line), int(mark.column))
    position = getattr(exc, "position", None)  # a reader error: an unacceptable character
    if isinstance(position, int):
        before = text[:position]
        return (before.count("\n"), position - (before.rfind("\n") + 1))
    return (0, 0)


def _explain(exc: Exception, max_depth: int) -> str:
    problem = _problem(exc)
    if "nesting depth" in problem:  # libyaml's own flow-nesting limit (1,000), met first
        return f"nested too deeply, expected at most {max_depth} levels of mappings and lists"
    return f"invalid YAML: {problem}"


def _problem(exc: Exception) -> str:
    parts = [getattr(exc, name, None) for name in ("context", "problem")]
    found = ", ".join(part for part in parts if part)
    if found:
        return found
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else (str(exc).splitlines() or [type(exc).__name__])[0]
