"""`switchboard rules check|test|diff` (SPEC §9): try a rules change before it goes live.

Kept apart from `router/cli/main.py` so the rules commands stay light (no HTTP app) and the main
CLI module short. Exit codes: 0 ok, 1 invalid rules or input, 2 usage (click's own).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sized
from datetime import datetime
from pathlib import Path
from typing import Any, NoReturn

import click
import msgspec

from router.cli.common import print_json
from router.cli.rules_tools import (
    DiffReport,
    InputError,
    RulesFolderMissing,
    action_line,
    change_lines,
    compare,
    decision_payload,
    decode_test_input,
    deep_check,
    load_file,
    load_folder,
    read_by_server,
    routable,
    summary_line,
)
from router.clock import SystemClock
from router.config import ConfigError, Settings, load_settings
from router.errors import StoreUnavailable, SwitchboardError
from router.events import Event
from router.pipeline.replay import recorded_snapshot
from router.rules import FileCheck, RuleError, RuleSet, RulesInvalid, evaluate
from router.rules.live import LiveRules
from router.store.base import EventFilter
from router.store.records import RunRecord
from router.timeutil import parse_since


class RulesFailure(click.ClickException):
    """Invalid rules or input: message on stderr, exit code 1."""

    exit_code = 1


#: The settings used when no config is given: no time windows, forward destinations unchecked.
_NO_CONFIG = Settings()


def _settings(ctx: click.Context) -> Settings:
    """The config as other commands read it; with none given at all, the defaults.

    A marketer may run `switchboard rules check` without a config: then there are no named
    time windows, which a note on stderr says.
    """
    obj: dict[str, Any] = ctx.find_root().ensure_object(dict)
    if "settings" in obj:
        settings: Settings = obj["settings"]
        return settings
    if not obj.get("config") and not os.environ.get("SWITCHBOARD_CONFIG"):
        click.echo(
            "note: no config given (--config); using defaults: "
            "no time windows, forward names unchecked",
            err=True,
        )
        obj["settings"] = _NO_CONFIG
        return _NO_CONFIG
    try:
        obj["settings"] = load_settings(obj.get("config"))
    except ConfigError as exc:
        raise RulesFailure(str(exc)) from exc
    return obj["settings"]  # type: ignore[no-any-return]


def _load(folder: Path, settings: Settings) -> RuleSet:
    """The rule set of `folder`, or exit 1 after printing every located error."""
    try:
        return load_folder(folder, settings, check_forwards=settings is not _NO_CONFIG)
    except RulesFolderMissing as exc:
        raise RulesFailure(str(exc)) from exc
    except RulesInvalid as exc:
        _fail_with(folder, exc.errors)


def _fail_with(folder: Path, errors: list[RuleError], where: Path | None = None) -> NoReturn:
    """Print every located error and exit 1."""
    for error in errors:
        click.echo(f"{folder / error.file}:{error.line}:{error.column}: {error.message}")
    count = len(errors)
    raise RulesFailure(f"{count} error{'s' * (count != 1)} in {where or folder}")


def require_rules(live: LiveRules) -> None:
    """`serve` before it listens: load the rules, or print every located error and exit 1.

    At start-up there is no previous version to keep routing with, so a server without valid
    rules must not start (a supervisor then shows the failure instead of a silent, rule-less
    server).
    """
    errors = live.first_load()
    if not errors:
        return
    for line in errors:
        click.echo(line, err=True)
    raise RulesFailure(f"rules in {live.folder} cannot be loaded; the server did not start")


@click.group()
def rules() -> None:
    """Check, test and compare rules files before they go live."""


@rules.command("check")
@click.argument("path", required=False, type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print {valid, rules_version, errors}.")
@click.pass_context
def rules_check(ctx: click.Context, path: Path | None, as_json: bool) -> None:
    """Validate a rules folder (default: rules.path from the config) or one rules file.

    A file gets every check the folder would give it; its rule ids are also checked against
    the other files of its folder, whose own errors are only counted.
    """
    settings = _settings(ctx)
    target = path or Path(settings.rules.path)
    if target.suffix == ".yaml" and not target.exists():
        raise RulesFailure(f"rules file {target} does not exist")
    if target.is_file():
        _check_file(target, settings, as_json=as_json)
    elif as_json:
        _check_json(target, settings)
    else:
        ruleset = _load(target, settings)
        _deep_or_fail(ruleset, target)
        click.echo(
            f"OK: {_count(ruleset.rules, 'rule')} in {_count(ruleset.files, 'file')}, "
            f"version {ruleset.version}"
        )


def _count(items: Sized, noun: str) -> str:
    return f"{len(items)} {noun}{'s' * (len(items) != 1)}"


def _deep_or_fail(ruleset: RuleSet, folder: Path, where: Path | None = None) -> None:
    found = deep_check(ruleset)
    if found:
        _fail_with(folder, found, where)


def _check_file(path: Path, settings: Settings, *, as_json: bool) -> None:
    """`rules check FILE`: the file's own errors fail the check; the folder's are a note."""
    folder = path.parent
    try:
        checked = load_file(path, settings, check_forwards=settings is not _NO_CONFIG)
    except RulesInvalid as exc:
        if as_json:
            errors = [msgspec.to_builtins(error) for error in exc.errors]
            print_json({"valid": False, "rules_version": None, "errors": errors})
            raise SystemExit(1) from exc
        _fail_with(folder, exc.errors, path)
    _file_notes(path, checked)
    if as_json:
        found = [msgspec.to_builtins(error) for error in deep_check(checked.ruleset)]
        payload = {"valid": not found, "rules_version": checked.ruleset.version, "errors": found}
        print_json({**payload, "other_file_errors": checked.other_errors})
        if found:
            raise SystemExit(1)
        return
    _deep_or_fail(checked.ruleset, folder, path)
    click.echo(
        f"OK: {_count(checked.ruleset.rules, 'rule')} in {path}, ids unique in {folder}; "
        f"folder version {checked.ruleset.version}"
    )


def _file_notes(path: Path, checked: FileCheck) -> None:
    """What a file check cannot vouch for, on stderr: it is not read by the server, or the
    folder's other files have errors (their ids may be unchecked)."""
    if not read_by_server(path):
        click.echo(
            f"note: the server reads only *.yaml files not starting with '.'; "
            f"{path.name} was checked as if it were one",
            err=True,
        )
    if checked.other_errors:
        click.echo(
            f"note: {_count(range(checked.other_errors), 'error')} in other files of "
            f"{path.parent} (their rule ids may be unchecked); "
            f"run: switchboard rules check {path.parent}",
            err=True,
        )


def _check_json(folder: Path, settings: Settings) -> None:
    try:
        ruleset = load_folder(folder, settings, check_forwards=settings is not _NO_CONFIG)
    except RulesFolderMissing as exc:
        print_json({"valid": False, "rules_version": None, "errors": [], "error": str(exc)})
        raise SystemExit(1) from exc
    except RulesInvalid as exc:
        errors = [msgspec.to_builtins(error) for error in exc.errors]
        print_json({"valid": False, "rules_version": None, "errors": errors})
        raise SystemExit(1) from exc
    found = [msgspec.to_builtins(error) for error in deep_check(ruleset)]
    print_json({"valid": not found, "rules_version": ruleset.version, "errors": found})
    if found:
        raise SystemExit(1)


@rules.command("test")
@click.argument("event_file", metavar="EVENT.json", type=click.Path(exists=True, dir_okay=False))
@click.option("--rules", "rules_path", type=click.Path(path_type=Path), help="Rules folder.")
@click.option("--at", "at", help="Evaluate as at this ISO time (default: received_at, else now).")
@click.option("--json", "as_json", is_flag=True, help="Print {rules_version, matched, actions}.")
@click.pass_context
def rules_test(
    ctx: click.Context, event_file: str, rules_path: Path | None, at: str | None, as_json: bool
) -> None:
    """Dry run: which rules match EVENT.json and what they would do. Nothing is sent."""
    settings = _settings(ctx)
    ruleset = _load(rules_path or Path(settings.rules.path), settings)
    now = _moment(at) if at else SystemClock().now()
    try:
        event, snapshot = decode_test_input(Path(event_file).read_bytes(), now=now)
    except InputError as exc:
        raise RulesFailure(f"{event_file}: {exc}") from exc
    decision = evaluate(ruleset, event, snapshot, now if at else event.received_at)
    for error in decision.errors:
        click.echo(f"warning: {error}", err=True)
    payload = decision_payload(decision)
    if as_json:
        print_json(payload)
        return
    click.echo(f"rules version {decision.rules_version}")
    if not decision.matched:
        click.echo("no rule matches this event")
        return
    click.echo("matched: " + ", ".join(decision.matched))
    click.echo("actions:" if payload["actions"] else "actions: none")
    for action in payload["actions"]:
        click.echo("  " + action_line(action))


def _moment(text: str) -> datetime:
    try:
        return parse_since(text, SystemClock().now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from exc


@rules.command("diff")
@click.option(
    "--rules",
    "draft_path",
    required=True,
    type=click.Path(path_type=Path),
    help="The draft rules folder to compare with the live one (rules.path).",
)
@click.option("--since", default="24h", show_default=True, help="Recorded events since (24h, ISO).")
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=10_000, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def rules_diff(ctx: click.Context, draft_path: Path, since: str, limit: int, as_json: bool) -> None:
    """Run recorded events through the live rules and DRAFT; show what would change."""
    settings = _settings(ctx)
    try:
        since_at = parse_since(since, SystemClock().now())
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    live = _load(Path(settings.rules.path), settings)
    draft = _load(draft_path, settings)
    recorded = _recorded(settings, EventFilter(since=since_at, limit=limit))
    events = routable(event for event, _ in recorded.values())
    report = DiffReport(live_version=live.version, draft_version=draft.version)
    for event in _progress(events, show=sys.stderr.isatty()):
        snapshot = recorded_snapshot(recorded[event.id][1])
        change = compare(report, live, draft, event, snapshot)
        if change is not None and not as_json:
            click.echo("\n".join(change_lines(change)))
    if as_json:
        print_json(report)
        return
    click.echo(summary_line(report))


def _recorded(settings: Settings, where: EventFilter) -> dict[str, tuple[Event, list[RunRecord]]]:
    """The stored events `where` selects, each with its routing runs (the store may be in use
    by a running server)."""
    from router.store.factory import store_from_settings

    async def run() -> dict[str, tuple[Event, list[RunRecord]]]:
        store = store_from_settings(settings)
        await store.open()
        try:
            events = await store.list_events(where)
            return {event.id: (event, await store.runs(event.id)) for event in events}
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (StoreUnavailable, SwitchboardError, ValueError) as exc:
        raise RulesFailure(f"cannot read recorded events: {exc}") from exc


def _progress(events: list[Event], *, show: bool) -> Any:
    """A progress bar on a terminal (stderr), the plain list otherwise."""
    if not show or not events:
        return events
    from rich.console import Console
    from rich.progress import track

    return track(events, description="comparing", console=Console(stderr=True), transient=True)
