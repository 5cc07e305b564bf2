"""LiveRules.reload over real files: a valid folder goes live whole, else nothing changes."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import router.rules.live
from router.events import Channel, Event
from router.metrics import Metrics
from router.rules import RulesInvalid, Snapshot, evaluate, load_ruleset, rules_version
from router.rules.live import LiveRules

BASE = """\
version: 1
rules:
  - id: hours
    when: {channel: sms, text: {contains_any: [hours]}}
    then:
      - reply: {text: "Open 9 to 5."}
"""

#: Edits a marketer might make to a second file: some valid, most with a mistake.
EDITS = [
    "version: 1\nrules: []\n",
    "version: 1\nrules:\n  - id: hi\n    when: {text: {contains: hi}}\n    then: [{tag: hi}]\n",
    "version: 1\nrules:\n  - id: hours\n    when: {channel: sms}\n    then: [{tag: x}]\n",  # dup id
    "version: 1\nrules:\n  - id: x\n    when: {text: {contain: hi}}\n    then: [{tag: x}]\n",
    "version: 1\nrules:\n  - id: x\n    when: {text: hi}\n    then: [{shout: x}]\n",
    "version: 1\nrules:\n  - id: x\n    when: {text: {matches: '(x'}}\n    then: [{drop: }]\n",
    "version: 1\nrules:\n  - id: x\n    when: {text: hi}\n    then: [{reply: {text: '{{ oops'}}]\n",
    "version: 2\nrules: []\n",
    "rules: [\n",
    "",
]

EVENT = Event(
    id="01TEST",
    source="twilio",
    type="message.received",
    provider_type="message.received",
    dedupe_key="twilio:SM1",
    channel=Channel.SMS,
    text="what are your hours? hi",
    received_at=datetime(2026, 11, 23, 15, 0, tzinfo=UTC),
    correlation_id="c1",
)
NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
_counter = itertools.count()


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.sampled_from(EDITS), st.text(max_size=200)))
def test_reload_is_all_or_nothing(edit: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / f"rules{next(_counter)}"
        folder.mkdir()
        (folder / "a.yaml").write_text(BASE)
        metrics = Metrics()
        live = LiveRules(folder, metrics=metrics)
        assert live.reload() is True
        before = live.ruleset
        assert before is not None
        decision = evaluate(before, EVENT, Snapshot(), NOW)

        (folder / "b.yaml").write_text(edit, encoding="utf-8")
        try:
            load_ruleset(folder)
            valid = True
        except RulesInvalid:
            valid = False
        changed = live.reload()

        if valid:
            assert live.error is None
            assert live.version == rules_version(folder)
            assert changed is True
        else:
            assert changed is False
            assert live.ruleset is before  # the very same object is still live
            assert live.error is not None and live.error.startswith("b.yaml:")
            assert evaluate(live.ruleset, EVENT, Snapshot(), NOW) == decision
            assert b"\nswitchboard_rules_valid 0.0\n" in metrics.render()


def test_missing_folder_then_valid_folder(tmp_path: Path) -> None:
    folder = tmp_path / "rules"
    live = LiveRules(folder)
    assert live.reload() is False
    assert live.ruleset is None and live.version is None
    assert live.error == f"rules folder {folder} does not exist"
    folder.mkdir()
    assert live.reload() is True  # an empty folder is a valid, empty rule set
    assert live.ruleset is not None and live.ruleset.rules == ()
    assert live.error is None


def test_unchanged_reload_reports_no_change(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(BASE)
    live = LiveRules(tmp_path)
    assert live.reload() is True
    assert live.reload() is False
    assert live.error is None


def test_errors_are_summarised_after_ten(tmp_path: Path) -> None:
    bad = "version: 1\nrules:\n" + "".join(
        f"  - id: r{i}\n    when: {{text: {{contain: x}}}}\n    then: [{{tag: t}}]\n"
        for i in range(12)
    )
    (tmp_path / "a.yaml").write_text(bad)
    live = LiveRules(tmp_path)
    live.reload()
    assert len(live.errors) == 12
    assert live.error is not None and live.error.endswith("; and 2 more")
    assert live.error.count("a.yaml:") == 10


async def test_poll_catches_a_change_no_watcher_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The safety net: with no watcher running, edits still go live (and broken ones don't)."""

    monkeypatch.setattr(router.rules.live, "POLL_SECONDS", 0.01)
    (tmp_path / "a.yaml").write_text(BASE)
    live = LiveRules(tmp_path)
    live.reload()
    first = live.version
    poller = asyncio.create_task(live.poll())
    try:
        (tmp_path / "b.yaml").write_text(BASE.replace("id: hours", "id: hours-too"))
        await _until(lambda: live.version == rules_version(tmp_path))
        assert live.version != first and live.error is None
        good = live.version
        (tmp_path / "c.yaml").write_text("version: 1\nrules: [{id: x, nope: 1}]\n")
        await _until(lambda: live.error is not None)
        assert live.version == good
    finally:
        poller.cancel()


async def _until(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)
