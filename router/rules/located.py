"""Positions in a ruamel.yaml document and the per-file error collector."""

from __future__ import annotations

from typing import Any

from router.rules.model import RuleError

Pos = tuple[int, int]  # 0-based line and column, as ruamel.yaml keeps them


class Site:
    """Collects every error of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[RuleError] = []

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(RuleError(self.file, pos[0] + 1, pos[1] + 1, message))


def node_pos(node: Any, fallback: Pos = (0, 0)) -> Pos:
    lc = getattr(node, "lc", None)
    return (lc.line, lc.col) if lc is not None and lc.line is not None else fallback


def key_pos(mapping: Any, key: Any) -> Pos:
    try:
        line, col = mapping.lc.key(key)
        return (line, col)
    except (AttributeError, KeyError, TypeError):
        return node_pos(mapping)


def value_pos(mapping: Any, key: Any) -> Pos:
    try:
        line, col = mapping.lc.value(key)
        return (line, col)
    except (AttributeError, KeyError, TypeError):
        return key_pos(mapping, key)


def item_pos(sequence: Any, index: int) -> Pos:
    try:
        line, col = sequence.lc.item(index)
        return (line, col)
    except (AttributeError, KeyError, TypeError, IndexError):
        return node_pos(sequence)


def plain(value: Any) -> Any:
    """ruamel.yaml's round-trip scalars and containers as plain builtins."""
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, dict):
        return {plain(key): plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def kind(value: Any) -> str:
    """How a YAML value reads to a person."""
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__
