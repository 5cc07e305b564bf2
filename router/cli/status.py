"""`switchboard status [--json]` (SPEC §12): the box on one screen, the alerts first.

The server's readiness comes from its `/readyz` at `server.host:port`; everything else from
the store, so status works (and says the server is down) when nothing listens.
"""

from __future__ import annotations

from datetime import datetime

import click
import httpx

from router.cli.common import console, plain, print_json, settings_of, with_store
from router.clock import SystemClock
from router.config import Settings
from router.status.alerts import duration, size
from router.status.model import ServerCheck, ServerStatus, Status
from router.status.read import read_status, server_url
from router.store.base import Store
from router.timeutil import parse_since

#: How long the server has to answer `/readyz`: it answers at once when it is well.
READY_TIMEOUT_SECONDS = 3.0


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print the status object.")
@click.option("--at", "at", hidden=True, help="Read the ages as at this ISO time (tests).")
@click.pass_context
def status_command(ctx: click.Context, as_json: bool, at: str | None) -> None:
    """How the box is doing: the server, events waiting, the outbox, escalations, breakers,
    storage, and what needs a person. Exits 1 when anything does."""
    settings = settings_of(ctx)
    try:
        now = parse_since(at, SystemClock().now()) if at else SystemClock().now()
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from exc
    server = check_server(settings)

    async def read(store: Store) -> Status:
        return await read_status(store, settings, server, now)

    status = with_store(ctx, read)
    if as_json:
        print_json(status)
    else:
        print_status(status)
    ctx.exit(1 if status.alerts else 0)


def check_server(settings: Settings) -> ServerCheck:
    """The running server's `/readyz`: ready, its live rules version and rules error; or why
    not (nothing answers, the store is unavailable to it)."""
    url = server_url(settings.server)
    try:
        response = httpx.get(url + "/readyz", timeout=READY_TIMEOUT_SECONDS)
        body = response.json()
    except (httpx.HTTPError, ValueError) as exc:
        return ServerCheck(
            status=ServerStatus(url=url, ready=False, rules_version=None, rules_error=None),
            problem=f"nothing answers at {url} ({type(exc).__name__})",
        )
    ready = response.status_code == 200
    return ServerCheck(
        status=ServerStatus(
            url=url,
            ready=ready,
            rules_version=body.get("rules_version"),
            rules_error=body.get("rules_error"),
        ),
        problem=None
        if ready
        else f"{url}/readyz answered {response.status_code}: "
        f"{body.get('error') or body.get('status')}",
    )


def print_status(status: Status) -> None:
    """One screen: the alerts, then a line per section."""
    from rich.table import Table
    from rich.text import Text

    out = console()
    if status.alerts:
        out.print(Text(f"{len(status.alerts)} need a person:", style="bold red"))
        for alert in status.alerts:
            out.print(Text("  ! ", style="bold red") + plain(alert))
    else:
        out.print(Text("All is well: nothing needs a person.", style="green"))
    out.print()
    table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
    table.add_column(style="bold")
    table.add_column()
    for name, line in _lines(status):
        table.add_row(name, plain(line))
    out.print(table)


def _lines(status: Status) -> list[tuple[str, str]]:
    server, events, outbox, escalations = (
        status.server,
        status.events,
        status.outbox,
        status.escalations,
    )
    rules = f"rules {server.rules_version or '-'}" + (
        " (invalid edit)" if server.rules_error else ""
    )
    storage = status.storage
    disk = f", disk free {size(storage.disk_free_bytes)}" if storage.disk_free_bytes else ""
    return [
        ("server", f"{server.url}  {'ready' if server.ready else 'DOWN'}  {rules}"),
        (
            "events",
            f"waiting {events.waiting}{_oldest(events.oldest_waiting_seconds)}"
            f"  failed {events.failed}",
        ),
        (
            "outbox",
            f"due {outbox.due}{_oldest(outbox.oldest_due_seconds)}  deferred "
            f"{outbox.deferred}  sending {outbox.sending}  dead {outbox.dead}",
        ),
        (
            "escalations",
            f"open {escalations.open}  unclaimed {escalations.unclaimed}"
            f"{_oldest(escalations.oldest_unclaimed_seconds)}",
        ),
        ("breakers", "  ".join(f"{k} {v}" for k, v in status.breakers.items()) or "none opened"),
        (
            "reconcile",
            "  ".join(
                f"{source} last ok {_when(item.last_success)}, recovered {item.recovered}"
                for source, item in status.reconcile.items()
            )
            or "-",
        ),
        (
            "backup",
            f"{_when(status.backup.last)}"
            + (
                f" ({duration(status.backup.age_seconds)} ago)"
                if status.backup.age_seconds is not None
                else ""
            ),
        ),
        ("storage", f"database {size(storage.bytes)}, blobs {size(storage.blobs_bytes)}{disk}"),
    ]


def _oldest(seconds: float | None) -> str:
    return "" if seconds is None else f" (oldest {duration(seconds)})"


def _when(moment: datetime | None) -> str:
    return "-" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")
