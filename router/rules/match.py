"""Pure matching: dotted-path lookup and the combinators. No I/O, no clock reads.

A condition is a closure over a `Context` (the event as JSON plus the conversation, the `now` the
caller passed, and the contact's zone, worked out only when a `during:` asks for it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from router.rules.model import Condition, Snapshot
from router.timewindows import contact_zone


class _Missing:
    """The value of a path that is not in the event (distinct from JSON null)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()

#: Takes the resolved value of a path (maybe MISSING, None, a list), answers yes or no.
Checker = Callable[[Any], bool]


class Context:
    """What a condition sees for one evaluation."""

    __slots__ = ("_zone", "default_zone", "doc", "now", "snapshot")

    def __init__(
        self, doc: dict[str, Any], snapshot: Snapshot, now: datetime, default_zone: ZoneInfo
    ) -> None:
        self.doc = doc
        self.snapshot = snapshot
        self.now = now if now.tzinfo else now.replace(tzinfo=UTC)
        self.default_zone = default_zone
        self._zone: ZoneInfo | None = None

    def local_now(self) -> datetime:
        """`now` in the contact's zone (snapshot zone, else the phone number's, else default)."""
        if self._zone is None:
            contact = self.doc.get("contact")
            address = contact.get("address") if isinstance(contact, dict) else None
            self._zone = contact_zone(
                self.snapshot.contact_timezone,
                address if isinstance(address, str) else None,
                self.default_zone,
            )
        return self.now.astimezone(self._zone)


def resolve(node: Any, path: Sequence[str]) -> Any:
    """The value at a dotted path; through a list it collects every element's value."""
    for position, segment in enumerate(path):
        if isinstance(node, dict):
            node = node.get(segment, MISSING)
            if node is MISSING:
                return MISSING
        elif isinstance(node, list | tuple):
            return _resolve_in_list(node, segment, path[position + 1 :])
        else:
            return MISSING
    return node


def _resolve_in_list(items: list[Any] | tuple[Any, ...], segment: str, rest: Sequence[str]) -> Any:
    if segment.isdigit():
        index = int(segment)
        return resolve(items[index], rest) if index < len(items) else MISSING
    found: list[Any] = []
    for item in items:
        value = resolve(item, (segment, *rest))
        if isinstance(value, list | tuple):
            found.extend(value)
        elif value is not MISSING:
            found.append(value)
    return found if found else MISSING


def leaf(path: tuple[str, ...], checker: Checker) -> Condition:
    """A condition on one path (short paths, the common case, skip the general walk)."""
    if len(path) == 1:
        (key,) = path
        return lambda ctx: checker(ctx.doc.get(key, MISSING))
    if len(path) == 2:
        first, second = path

        def two(ctx: Context) -> bool:
            node = ctx.doc.get(first)
            if isinstance(node, dict):
                return checker(node.get(second, MISSING))
            return checker(resolve(ctx.doc, path))

        return two
    return lambda ctx: checker(resolve(ctx.doc, path))


def all_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]
    if len(parts) == 2:
        first, second = parts
        return lambda ctx: first(ctx) and second(ctx)
    frozen = tuple(parts)

    def every(ctx: Context) -> bool:
        for part in frozen:  # noqa: SIM110 - a plain loop: no generator on the hot path
            if not part(ctx):
                return False
        return True

    return every


def any_of(parts: list[Condition]) -> Condition:
    if len(parts) == 1:
        return parts[0]
    frozen = tuple(parts)

    def some(ctx: Context) -> bool:
        for part in frozen:  # noqa: SIM110 - a plain loop: no generator on the hot path
            if part(ctx):
                return True
        return False

    return some


def negate(part: Condition) -> Condition:
    return lambda ctx: not part(ctx)


def always(ctx: Context) -> bool:
    """An empty `when:` matches every event."""
    return True
