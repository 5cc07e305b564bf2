"""What `switchboard rules check|test|diff` do, apart from printing (SPEC §9, issue 4 §5).

Pure helpers over the engine (`router.rules`): load a folder as the server would, decode the
partial event a marketer writes for `rules test`, and compare live and draft decisions for
`rules diff`. No HTTP app, no store: the CLI stays light and testable. Only `router/cli/`
imports it; what the pipeline needs too (`recorded_snapshot`) lives in `router.pipeline.replay`.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from router.config import Settings
from router.events import Attachment, Channel, Contact, Event, EventStatus
from router.rules import (
    ConversationView,
    Decision,
    FileCheck,
    Rule,
    RuleError,
    RuleSet,
    Snapshot,
    evaluate,
    load_rules_file,
    load_ruleset,
)
from router.rules.engine import template_context
from router.rules.regexes import probe
from router.rules.templates import describe

#: Keys of an EVENT.json besides the event's own fields (SPEC §3).
_SNAPSHOT_KEYS = ("conversation", "contact_timezone")
_EVENT_KEYS = frozenset(Event.__struct_fields__) - {"status"}


class InputError(ValueError):
    """An EVENT.json the command cannot use; the message says what to fix."""


class RulesFolderMissing(FileNotFoundError):
    """The rules folder (or file, for `rules check`) does not exist."""


def load_folder(folder: Path, settings: Settings, *, check_forwards: bool = True) -> RuleSet:
    """The rule set of `folder`, validated as the server would; raises RulesInvalid.

    `check_forwards=False` accepts any `forward` destination (no config to check against).
    """
    if not folder.is_dir():
        raise RulesFolderMissing(f"rules folder {folder} does not exist")
    return load_ruleset(folder, **_loader_options(settings, check_forwards))


def load_file(path: Path, settings: Settings, *, check_forwards: bool = True) -> FileCheck:
    """One rules file checked as part of its folder (`rules check FILE`); raises RulesInvalid.

    Every check a folder load makes of the file, its rule ids against the folder's other files.
    """
    if not path.is_file():
        raise RulesFolderMissing(f"rules file {path} does not exist")
    return load_rules_file(path, **_loader_options(settings, check_forwards))


def _loader_options(settings: Settings, check_forwards: bool) -> dict[str, Any]:
    """What the loader takes from config: windows, default zone, forward names to check."""
    return {
        "windows": settings.windows,
        "default_timezone": settings.compliance.default_timezone,
        "forwards": settings.channels.http.forwards.keys() if check_forwards else None,
    }


def read_by_server(path: Path) -> bool:
    """Whether the server would read `path` as a rules file of its folder (`*.yaml`, not hidden)."""
    return path.suffix == ".yaml" and not path.name.startswith(".")


#: Channel of each built-in source's events, for the sample event `rules check` renders with.
_SOURCE_CHANNELS = {"twilio": "sms", "slack": "slack", "mailgun": "email", "sendgrid": "email"}
_ADDRESSES = {"email": "sam@example.com", "slack": "U0SAMPLE"}
_SAMPLE_AT = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)
_SAMPLE_ATTACHMENT = Attachment(
    url="https://example.com/sample.jpg", filename="sample.jpg", content_type="image/jpeg", size=1
)


def deep_check(ruleset: RuleSet) -> list[RuleError]:
    """What loading cannot tell: every template rendered on a sample event of the rule's
    source/channel (a missing optional value is fine, any other failure is an error), and every
    `matches` pattern probed with pumped texts (a timeout is an error). Slower than loading,
    so `rules check` does it and the server does not."""
    errors: list[RuleError] = []
    for rule in ruleset.rules:
        errors += _render_errors(rule)
        errors += [
            RuleError(
                rule.file,
                line,
                column,
                f"regular expression {pattern!r} timed out on "
                f"the text {slow}; expected a pattern that cannot backtrack for long",
            )
            for line, column, pattern in rule.patterns
            if (slow := probe(pattern)) is not None
        ]
    return errors


def _render_errors(rule: Rule) -> list[RuleError]:
    import jinja2

    if not rule.templates:
        return []
    event = sample_event(rule)
    context = template_context(
        event, Snapshot(conversation=ConversationView(state="bot", attributes={}))
    )
    errors = []
    for line, column, template in rule.templates:
        try:
            template.render(context)
        except jinja2.UndefinedError:  # a value this sample does not carry: fine
            continue
        except Exception as exc:
            message = f"template fails on a sample {event.source} event: {describe(exc)}"
            errors.append(RuleError(rule.file, line, column, message))
    return errors


def sample_event(rule: Rule) -> Event:
    """A representative event for the rule (every §3 field filled), of the source, type or
    channel its index says it needs."""
    hint = next(iter(sorted(rule.index_values)), None) if rule.index_field else None
    source = hint if rule.index_field == "source" and hint else "twilio"
    channel = (
        hint if rule.index_field == "channel" and hint else _SOURCE_CHANNELS.get(source, "sms")
    )
    kind = hint if rule.index_field == "type" and hint else "message.received"
    if channel not in set(Channel):
        channel = "sms"
    address = _ADDRESSES.get(channel, "+15551230001")
    return Event(
        id="01SAMPLE",
        source=source,
        type=kind,
        provider_type=kind,
        dedupe_key=f"{source}:sample",
        channel=Channel(channel),
        contact=Contact(address=address, name="Sam Sample"),
        conversation_key=f"{channel}:{address}",
        text="Hello, a sample message",
        attachments=(_SAMPLE_ATTACHMENT,),
        data={},
        received_at=_SAMPLE_AT,
        occurred_at=_SAMPLE_AT,
        correlation_id="01SAMPLE",
    )


def decode_test_input(raw: bytes, *, now: datetime) -> tuple[Event, Snapshot]:
    """A partial event (only the fields the rules use) and the optional conversation snapshot.

    Missing required fields get neutral defaults: id `rules-test`, empty source and type,
    `received_at` = `now`. `contact` may be given as a bare address string.
    """
    try:
        doc = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise InputError(f"not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise InputError("expected a JSON object with event fields (source, type, text, ...)")
    unknown = sorted(set(doc) - _EVENT_KEYS - set(_SNAPSHOT_KEYS))
    if unknown:
        known = ", ".join(sorted(_EVENT_KEYS | set(_SNAPSHOT_KEYS)))
        raise InputError(f"unknown field {unknown[0]!r}; expected some of: {known}")
    snapshot_doc = {key: doc.pop(key) for key in _SNAPSHOT_KEYS if key in doc}
    event = _decode(msgspec.json.encode(_with_defaults(doc, now)), Event, "event")
    snapshot = _decode(msgspec.json.encode(snapshot_doc), Snapshot, "conversation")
    return event, snapshot


def _with_defaults(doc: dict[str, Any], now: datetime) -> dict[str, Any]:
    if isinstance(doc.get("contact"), str):
        doc["contact"] = {"address": doc["contact"]}
    doc.setdefault("id", "rules-test")
    doc.setdefault("source", "")
    doc.setdefault("type", "")
    doc.setdefault("provider_type", doc["type"])
    doc.setdefault("dedupe_key", f"{doc['source']}:{doc['id']}")
    doc.setdefault("received_at", now.isoformat())
    doc.setdefault("correlation_id", doc["id"])
    return doc


def _decode(raw: bytes, kind: type[Any], what: str) -> Any:
    try:
        return msgspec.json.decode(raw, type=kind)
    except msgspec.ValidationError as exc:
        raise InputError(f"bad {what} field: {exc}") from exc


def decision_payload(decision: Decision) -> dict[str, Any]:
    """Exactly what `rules test --json` prints: `{rules_version, matched, actions}`."""
    return {
        "rules_version": decision.rules_version,
        "matched": list(decision.matched),
        "actions": [msgspec.to_builtins(action) for action in decision.actions],
    }


def action_line(action: dict[str, Any]) -> str:
    """`human-please #0 escalate reason="asked for a human"` (params as compact JSON values)."""
    params = " ".join(
        f"{key}={msgspec.json.encode(value).decode()}" for key, value in action["params"].items()
    )
    return f"{action['rule_id']} #{action['index']} {action['kind']} {params}".rstrip()


class Outcome(msgspec.Struct, frozen=True, kw_only=True):
    """What one rule set decides for one event, in comparable form."""

    matched: list[str]
    actions: list[dict[str, Any]]
    errors: list[str]

    @classmethod
    def of(cls, decision: Decision) -> Outcome:
        return cls(
            matched=list(decision.matched),
            actions=[msgspec.to_builtins(action) for action in decision.actions],
            errors=list(decision.errors),
        )


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One recorded event whose decision differs between live and draft."""

    event_id: str
    source: str
    type: str
    received_at: datetime
    live: Outcome
    draft: Outcome

    @property
    def added(self) -> list[dict[str, Any]]:
        """Actions the draft takes that live does not."""
        return [action for action in self.draft.actions if action not in self.live.actions]

    @property
    def removed(self) -> list[dict[str, Any]]:
        """Actions live takes that the draft does not."""
        return [action for action in self.live.actions if action not in self.draft.actions]


class DiffReport(msgspec.Struct, kw_only=True):
    """`rules diff` as data; `--json` prints it as one object."""

    live_version: str
    draft_version: str
    events_checked: int = 0
    changed: int = 0
    unchanged: int = 0
    changes: list[Change] = msgspec.field(default_factory=list)


def routable(events: Iterable[Event]) -> list[Event]:
    """The events the router would run rules on (not `ignored`), oldest first."""
    kept = [event for event in events if event.status is not EventStatus.IGNORED]
    return sorted(kept, key=lambda event: (event.received_at, event.id))


def compare(
    report: DiffReport,
    live: RuleSet,
    draft: RuleSet,
    event: Event,
    snapshot: Snapshot | None = None,
) -> Change | None:
    """Run one event through both rule sets as at its arrival, with the conversation as the
    router saw it then (`snapshot`); record it in `report`."""
    snapshot = snapshot or Snapshot()
    before = Outcome.of(evaluate(live, event, snapshot, event.received_at))
    after = Outcome.of(evaluate(draft, event, snapshot, event.received_at))
    report.events_checked += 1
    if before == after:
        report.unchanged += 1
        return None
    change = Change(
        event_id=event.id,
        source=event.source,
        type=event.type,
        received_at=event.received_at,
        live=before,
        draft=after,
    )
    report.changed += 1
    report.changes.append(change)
    return change


def change_lines(change: Change) -> list[str]:
    """How `rules diff` shows one changed event to a person."""
    when = f"{change.received_at:%Y-%m-%d %H:%M:%S}"
    lines = [f"{change.event_id}  {change.source} {change.type}  {when}"]
    if change.live.matched != change.draft.matched:
        before = ", ".join(change.live.matched) or "(none)"
        after = ", ".join(change.draft.matched) or "(none)"
        lines.append(f"  matched: {before} -> {after}")
    lines += [f"  - {action_line(action)}" for action in change.removed]
    lines += [f"  + {action_line(action)}" for action in change.added]
    if change.live.errors != change.draft.errors:
        lines += [f"  ! draft: {error}" for error in change.draft.errors]
    return lines


def summary_line(report: DiffReport) -> str:
    """The closing count of `rules diff`."""
    return (
        f"{report.changed} of {report.events_checked} events would change, "
        f"{report.unchanged} unchanged (live {report.live_version}, draft {report.draft_version})"
    )
