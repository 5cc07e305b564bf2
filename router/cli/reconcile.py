"""`switchboard reconcile` (SPEC §9, §12): one reconciliation pass now."""

from __future__ import annotations

from datetime import datetime

import click
import msgspec

from router.cli.common import Failure, console, plain, print_json, settings_of, with_store
from router.clock import SystemClock
from router.metrics import Metrics
from router.pipeline.reconcile import SOURCES, SourceReport
from router.store.base import Store
from router.timeutil import parse_since


@click.command("reconcile")
@click.argument("source", required=False, type=click.Choice(SOURCES))
@click.option("--since", help="Ask from this moment (24h, 15m or an ISO time) instead of the "
              "last successful pass.")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="List what would be ingested; store nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array, one item a source.")
@click.pass_context
def reconcile_command(
    ctx: click.Context, source: str | None, since: str | None, dry_run: bool, as_json: bool
) -> None:
    """Ask the providers for what their webhooks never brought (an outage, a restart) and
    ingest it, once, as the webhook would have. Exit 1 when a source failed."""
    from router.http.providers import reconciler  # the provider SDKs: only this command

    settings = settings_of(ctx)
    try:
        since_at = parse_since(since, SystemClock().now()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc

    async def run(store: Store) -> list[SourceReport]:
        passes = reconciler(store, settings, SystemClock(), Metrics(), log_passes=False)
        try:
            return await passes.run(source, since=since_at, dry_run=dry_run)
        finally:
            await passes.close()

    reports = with_store(ctx, run)
    if as_json:
        print_json([_to_json(report, dry_run) for report in reports])
    else:
        _print(reports, dry_run)
    failed = [r.source for r in reports if r.error is not None]
    if failed:
        raise Failure(f"reconciliation failed for {', '.join(failed)}")


def _to_json(report: SourceReport, dry_run: bool) -> dict[str, object]:
    item: dict[str, object] = msgspec.to_builtins(report)
    if not dry_run:
        item.pop("new")
    return item


def _print(reports: list[SourceReport], dry_run: bool) -> None:
    from rich.table import Table

    table = Table(title="Would be recovered (dry run)" if dry_run else None)
    for column in ("source", "since", "until", "seen", "recovered", "receipts", "outcome"):
        table.add_column(column, justify="right" if column in ("seen", "recovered") else "left")
    for r in reports:
        outcome = f"skipped: {r.skipped}" if r.skipped else f"error: {r.error}" if r.error else "ok"
        table.add_row(
            r.source,
            _when(r.since),
            _when(r.until),
            str(r.seen),
            str(r.recovered),
            str(r.receipts),
            plain(outcome),
        )
    out = console()
    out.print(table)
    if dry_run:
        for r in reports:
            for key in r.new:
                out.print(plain(f"{r.source}: {key}"))


def _when(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else "-"
