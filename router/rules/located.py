"""Positions in a document read by `yamlread` and the per-file error collector."""

from __future__ import annotations

from typing import Any

from router.rules.model import RuleError
from router.rules.yamlread import Pos as Pos
from router.rules.yamlread import YList, YMap


class Site:
    """Collects every error of one file."""

    def __init__(self, file: str) -> None:
        self.file = file
        self.errors: list[RuleError] = []

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(RuleError(self.file, pos[0] + 1, pos[1] + 1, message))


def node_pos(node: Any, fallback: Pos = (0, 0)) -> Pos:
    """Where a mapping or list starts (scalars do not know: `fallback`)."""
    return node.at if isinstance(node, YMap | YList) else fallback


def key_pos(mapping: Any, key: Any) -> Pos:
    """Where a mapping's key starts."""
    if isinstance(mapping, YMap) and key in mapping.key_at:
        return mapping.key_at[key]
    return node_pos(mapping)


def value_pos(mapping: Any, key: Any) -> Pos:
    """Where the value of a mapping's key starts."""
    if isinstance(mapping, YMap) and key in mapping.value_at:
        return mapping.value_at[key]
    return key_pos(mapping, key)


def item_pos(sequence: Any, index: int) -> Pos:
    """Where a list's item starts."""
    if isinstance(sequence, YList) and 0 <= index < len(sequence.item_at):
        return sequence.item_at[index]
    return node_pos(sequence)


def plain(value: Any) -> Any:
    """A read document's mappings and lists as plain dicts and lists."""
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
