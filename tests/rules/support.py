"""Builders shared by the rule engine tests: real files in a temp folder, real loader."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from router.events import Channel, Contact, Event
from router.rules import Decision, RuleSet, Snapshot, evaluate, load_ruleset

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)  # a Monday
WINDOWS = {"business": "Mon-Fri 09:00-17:00", "weekend": "Sat,Sun 10:00-14:00"}


def make_event(**fields: Any) -> Event:
    """An inbound SMS unless told otherwise; `contact` may be given as an address string."""
    base: dict[str, Any] = {
        "id": "01JEVENT",
        "source": "twilio",
        "type": "message.received",
        "provider_type": "sms",
        "dedupe_key": "twilio:SM1",
        "channel": Channel.SMS,
        "contact": Contact(address="+15551230001"),
        "text": "hello",
        "received_at": NOW,
        "correlation_id": "corr-1",
    }
    base.update(fields)
    if isinstance(base["contact"], str):
        base["contact"] = Contact(address=base["contact"])
    return Event(**base)


def write_rules(folder: Path, files: dict[str, str | dict[str, Any]]) -> Path:
    """Write rules files (text as is, or a mapping dumped as JSON, which is YAML too)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        (folder / name).write_text(text, encoding="utf-8")
    return folder


def one_rule(folder: Path, when: Any, then: list[Any] | None = None, **extra: Any) -> RuleSet:
    """A rule set holding a single rule `r` with this `when`."""
    rule = {"id": "r", "when": when, "then": then or [{"tag": "hit"}], **extra}
    write_rules(folder, {"rules.yaml": {"version": 1, "rules": [rule]}})
    return load_ruleset(folder, windows=WINDOWS)


def decide(
    ruleset: RuleSet,
    event: Event | None = None,
    snapshot: Snapshot | None = None,
    now: datetime = NOW,
) -> Decision:
    return evaluate(ruleset, event or make_event(), snapshot or Snapshot(), now)
