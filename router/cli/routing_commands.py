"""`switchboard worker` (the routing worker alone) and `switchboard replay` (SPEC §9)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any

import click
import msgspec
import uvloop

from router.aio import cancel
from router.cli.common import Failure, print_json, settings_of, with_store
from router.cli.rules import require_rules
from router.cli.rules_tools import RulesFolderMissing, load_folder
from router.clock import SystemClock
from router.config import Settings
from router.errors import StoreUnavailable
from router.http.providers import reconciler, senders
from router.logs import configure_logging, flush_logs, get_logger
from router.metrics import Metrics
from router.pipeline.reconcile import reconcile_forever
from router.pipeline.replay import ReplayReport, replay, select
from router.pipeline.worker import routing
from router.rules import RuleSet
from router.rules.live import LiveRules
from router.store.base import EventFilter, Store
from router.store.factory import store_from_settings
from router.store.records import OutboxFilter
from router.timeutil import parse_since
from router.views import dead_letters

log = get_logger("switchboard.worker")


@click.command("worker")
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run the routing worker, its timers and the dispatcher alone, without HTTP (same config
    and store).

    `serve` runs one already unless `[worker] in_serve = false`. Commits made by another
    process (ingest in `serve`, `dlq retry`) wake it through the store's watch.
    SIGINT or SIGTERM stops it after the batch in hand.
    """
    settings = settings_of(ctx)
    configure_logging(settings.logging.level, debug=settings.logging.debug)
    rules = LiveRules.from_settings(settings, Metrics())
    require_rules(rules)  # invalid rules: located errors on stderr, exit 1
    try:
        # uvloop, as `serve` runs under uvicorn: the send path is mostly event-loop work.
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(_work(settings, rules))
    except StoreUnavailable as exc:
        raise Failure(f"store unavailable: {exc}") from exc
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    finally:
        flush_logs()


async def _work(settings: Settings, rules: LiveRules) -> None:
    store = store_from_settings(settings)
    await store.open()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    metrics = Metrics()
    pipeline = routing(
        store, settings, lambda: rules.ruleset, SystemClock(), metrics, senders(settings)
    )
    # Reconciliation passes run where ingest runs; here only when `serve` has no worker (one
    # pass at a time for the fleet either way: the store's lock).
    passes = reconciler(store, settings, SystemClock(), metrics, pipeline.wake)
    passing: asyncio.Task[None] | None = None
    try:
        await rules.start()
        await pipeline.start()
        if not settings.worker.in_serve:
            passing = asyncio.create_task(reconcile_forever(passes, settings.reconcile))
        log.info("worker.started", stage="route", owner=pipeline.worker.owner)
        await stop.wait()
    finally:
        await cancel(passing)
        await passes.close()
        await pipeline.stop()
        await rules.stop()
        await store.close()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError, RuntimeError):
                loop.remove_signal_handler(signum)
        log.info("worker.stopped", stage="route", routed=pipeline.worker.routed)


@click.command("replay")
@click.option("--source", help="Only events of this source.")
@click.option("--type", "type_", help="Only events of this type.")
@click.option("--since", help="Only events received since, e.g. 24h or an ISO time.")
@click.option("--until", help="Only events received before, e.g. 1h or an ISO time.")
@click.option(
    "--rules",
    "rules_path",
    type=click.Path(path_type=Path),
    help="Decide with this rules folder instead of the live one ([rules] path).",
)
@click.option("--dry-run", is_flag=True, help="Print the decisions and rows; write nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
@click.pass_context
def replay_command(
    ctx: click.Context,
    source: str | None,
    type_: str | None,
    since: str | None,
    until: str | None,
    rules_path: Path | None,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Route recorded events through the rules again, oldest first.

    Rows keep their ids, so a row made the first time is not made again; only new actions
    (a rule added or changed since) make rows. Consent and quiet hours apply as of now.
    `escalate`, `tag` and `set` are not performed again: the conversation has moved on.
    """
    settings = settings_of(ctx)
    now = SystemClock().now()
    try:
        where = EventFilter(
            source=source,
            type=type_,
            since=parse_since(since, now) if since else None,
            until=parse_since(until, now) if until else None,
        )
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    ruleset = _ruleset(rules_path or Path(settings.rules.path), settings)

    async def run(store: Store) -> ReplayReport:
        events = await select(store, where)
        progress = _progress(len(events), show=sys.stderr.isatty() and not as_json)
        with progress as bar:
            return await replay(
                store,
                settings,
                ruleset,
                events,
                SystemClock().now,
                dry_run=dry_run,
                advance=bar.advance,
            )

    report = with_store(ctx, run)
    if as_json:
        print_json(report)
        return
    for line in report_lines(report):
        click.echo(line)


def _ruleset(path: Path, settings: Settings) -> RuleSet:
    try:
        return load_folder(path, settings)
    except RulesFolderMissing as exc:
        raise Failure(str(exc)) from exc
    except Exception as exc:  # RulesInvalid: its located errors, one per line
        raise Failure(f"rules in {path} cannot be loaded:\n{exc}") from exc


def report_lines(report: ReplayReport) -> list[str]:
    """How a replay reads for people: each event that has new rows, then a summary."""
    lines: list[str] = []
    verb = "would make" if report.dry_run else "made"
    for item in report.replayed:
        if not item.new_rows and not item.errors:
            continue
        lines.append(f"{item.event_id}  {item.source} {item.type}  matched {item.matched}")
        for row in item.new_rows:
            lines.append(
                f"    {verb} {row['id']}  {row['channel']} -> {row['to']}  {row['status']}"
            )
        for error in item.errors:
            lines.append(f"    error: {error}")
    lines.append(
        f"{'dry run: ' if report.dry_run else ''}{report.events} events replayed with rules "
        f"{report.rules_version[:12]}: {report.rows_made} rows {verb}, "
        f"{report.rows_existing} already there"
    )
    return lines


class _NoBar:
    def __enter__(self) -> _NoBar:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def advance(self, count: int) -> None:
        del count


class _Bar:
    """A rich progress bar on stderr, advanced by batches."""

    def __init__(self, total: int) -> None:
        from rich.console import Console
        from rich.progress import Progress

        self._progress = Progress(console=Console(stderr=True), transient=True)
        self._task = self._progress.add_task("replaying", total=total)

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def advance(self, count: int) -> None:
        self._progress.advance(self._task, count)


def _progress(total: int, *, show: bool) -> _Bar | _NoBar:
    return _Bar(total) if show and total else _NoBar()


def replay_report_payload(report: ReplayReport) -> dict[str, Any]:
    """The report as JSON builtins (the API answers this)."""
    payload: dict[str, Any] = msgspec.to_builtins(report)
    return payload


@click.group("dlq")
def dlq() -> None:
    """Dead letters: outbox rows that will not be sent without a person."""


@dlq.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (each with attempts).")
@click.pass_context
def dlq_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """Dead rows, newest first, with why they died and every attempt."""

    async def run(store: Store) -> list[dict[str, Any]]:
        return await dead_letters(store, OutboxFilter(limit=limit))

    found = with_store(ctx, run)
    if as_json:
        print_json(found)
        return
    if not found:
        click.echo("no dead letters")
        return
    for row in found:
        click.echo(
            f"{row['id']}  {row['channel']} -> {row['to']}  {row['attempts']} attempts  "
            f"{row['last_error'] or ''}"
        )


@dlq.command("retry")
@click.argument("outbox_id")
@click.pass_context
def dlq_retry(ctx: click.Context, outbox_id: str) -> None:
    """Queue a dead row again: attempts start from zero, its attempt history is kept."""

    async def run(store: Store) -> bool:
        return await store.requeue_dead(outbox_id)

    if not with_store(ctx, run):
        raise Failure(f"no dead row {outbox_id} (see: switchboard dlq list)")
    click.echo(f"{outbox_id} queued again")


@dlq.command("discard")
@click.argument("outbox_id")
@click.pass_context
def dlq_discard(ctx: click.Context, outbox_id: str) -> None:
    """Give a dead row up for good: it becomes `cancelled`, and stays for the record."""

    async def run(store: Store) -> bool:
        return await store.discard_dead(outbox_id, "discarded by an operator (switchboard dlq)")

    if not with_store(ctx, run):
        raise Failure(f"no dead row {outbox_id} (see: switchboard dlq list)")
    click.echo(f"{outbox_id} discarded")
