"""`switchboard copy --from sqlite:///… --to postgresql://…` (SPEC §9): moving up to PostgreSQL."""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import click
import msgspec

from router.cli.common import Failure, console, print_json
from router.errors import StoreCorrupt, StoreUnavailable
from router.store.copy import COPIED, LEFT_OUT, CopyRefused, CopyReport, copy_store

_LEFT_OUT = "\n".join(f"  {table}: {why}" for table, why in LEFT_OUT.items())
_HELP = f"""Copy a single-box SQLite install into PostgreSQL.

Stop `switchboard serve` and `switchboard worker` first: the source is read read-only from
one snapshot, and whatever they write after it is not copied.

The destination is migrated first. Rows already there (same key) are skipped and counted,
so the copy is safe to run twice and resumes where an interrupted run stopped; rows changed
in the source after they were copied are not updated.

Copied: {", ".join(COPIED)}; and the blob files (blobs/ beside the database) into
the blobs table.

\b
Not copied:
{_LEFT_OUT}
"""


@click.command("copy", help=_HELP)
@click.option("--from", "source", required=True, help="The source: sqlite:///PATH.")
@click.option("--to", "destination", required=True, help="The destination: postgresql://…")
@click.option("--json", "as_json", is_flag=True, help="Print {tables, blobs} as JSON only.")
def copy_command(source: str, destination: str, as_json: bool) -> None:
    bars = _Bars() if sys.stderr.isatty() and not as_json else None
    try:
        report = asyncio.run(copy_store(source, destination, listener=bars))
    except CopyRefused as exc:
        raise Failure(str(exc)) from exc
    except (StoreUnavailable, StoreCorrupt) as exc:
        raise Failure(f"destination unavailable: {exc}") from exc
    finally:
        if bars is not None:
            bars.stop()
    payload: dict[str, Any] = msgspec.to_builtins(report)
    if as_json:
        print_json(payload)
    else:
        _print_report(report)


class _Bars:
    """A rich progress bar per table on stderr, with counts."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import MofNCompleteColumn, Progress

        columns = (*Progress.get_default_columns(), MofNCompleteColumn())
        self._progress = Progress(*columns, console=Console(stderr=True))
        self._tasks: dict[str, Any] = {}
        self._progress.start()

    def begin(self, table: str, total: int) -> None:
        self._tasks[table] = self._progress.add_task(table, total=total)

    def advance(self, table: str, rows: int) -> None:
        self._progress.advance(self._tasks[table], rows)

    def stop(self) -> None:
        self._progress.stop()


def _print_report(report: CopyReport) -> None:
    from rich.table import Table

    table = Table("table", "read", "written", "skipped", box=None)
    for name, counts in report.tables.items():
        table.add_row(name, str(counts.read), str(counts.written), str(counts.skipped))
    out = console()
    out.print(table)
    out.print(
        f"Copied {report.blobs} new blob(s). Safe to run again: copied rows are skipped.",
        highlight=False,
    )
