"""The rule engine's data: located load errors, what rules may see, actions and decisions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec


class RuleError(msgspec.Struct, frozen=True):
    """One located problem in a rules file (line and column are 1-based)."""

    #: Path relative to the rules folder, e.g. `billing.yaml`.
    file: str
    line: int
    column: int
    #: What is wrong, and what was expected.
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}: {self.message}"


class RulesInvalid(Exception):
    """A rules folder that cannot go live; `errors` holds every problem of every file."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = errors
        super().__init__("\n".join(str(error) for error in errors))


class ConversationView(msgspec.Struct, frozen=True, kw_only=True):
    """The conversation as rules see it (`conversation.state`, `conversation.attributes.x`)."""

    state: str
    attributes: dict[str, Any] = {}


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """Everything besides the event that a decision may depend on."""

    conversation: ConversationView | None = None
    #: IANA zone of the contact; else inferred from the phone number, else the default zone.
    contact_timezone: str | None = None


class Action(msgspec.Struct, frozen=True, kw_only=True):
    """One thing to do, as data: the engine never executes it."""

    rule_id: str
    #: Position in the rule's `then` list; outbox ids derive from event id + rule id + index.
    index: int
    #: reply | send | escalate | forward | tag | set | drop
    kind: str
    #: Parameters with templates already rendered.
    params: dict[str, Any]


class Decision(msgspec.Struct, frozen=True, kw_only=True):
    """What the rules decided for one event."""

    rules_version: str
    #: Rule ids in firing order.
    matched: list[str]
    actions: list[Action]
    #: Template and regex problems met while deciding: recorded, never raised.
    errors: list[str]


class ActionSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A compiled `then` entry: string params may hold compiled templates."""

    kind: str
    index: int
    params: dict[str, Any]


#: A compiled condition: takes the evaluation context (`match.Context`), answers yes or no.
Condition = Callable[[Any], bool]


class Rule(msgspec.Struct, frozen=True, kw_only=True):
    """One compiled rule."""

    id: str
    description: str = ""
    #: The file it came from (relative to the rules folder) and the line of its `id`.
    file: str
    line: int
    when: Condition
    then: tuple[ActionSpec, ...]
    stop: bool = False
    #: Index hint: the rule can only match when event[index_field] is one of index_values.
    index_field: str | None = None
    index_values: frozenset[str] = frozenset()
    #: The rule's templates as (line, column, template), for `rules check` to try each one.
    templates: tuple[tuple[int, int, Any], ...] = ()
    #: The rule's `matches` patterns as (line, column, pattern), for `rules check` to probe.
    patterns: tuple[tuple[int, int, str], ...] = ()
