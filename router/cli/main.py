"""The `switchboard` command (SPEC §9). Works whether or not the server runs.

`--json` prints JSON only on stdout; otherwise output is for people. Exit codes: 0 ok,
1 failure or invalid input, 2 usage.
"""

from __future__ import annotations

import base64
import sys
from typing import Any

import click
import msgspec

from router.cli.backup import backup_command, restore_command
from router.cli.common import Failure, print_json, settings_of, with_store
from router.cli.copy import copy_command
from router.cli.reconcile import reconcile_command
from router.cli.routing import contacts, conversations, outbox, print_event_detail
from router.cli.routing_commands import dlq, replay_command, worker
from router.cli.rules import require_rules, rules
from router.cli.status import status_command
from router.clock import SystemClock
from router.events import Event, EventStatus, event_to_builtins
from router.store.base import EventFilter, QuarantinedRequest, Store
from router.timeutil import parse_since
from router.views import event_detail


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config",
    type=click.Path(dir_okay=False),
    envvar="SWITCHBOARD_CONFIG",
    help="Path to switchboard.toml (default: $SWITCHBOARD_CONFIG).",
)
@click.pass_context
def cli(ctx: click.Context, config: str | None) -> None:
    """Switchboard: verified webhooks in, rules, consent, exactly-once outbox out."""
    ctx.ensure_object(dict)["config"] = config


@cli.command()
@click.option("--host", help="Override server.host.")
@click.option("--port", type=int, help="Override server.port.")
@click.pass_context
def serve(ctx: click.Context, host: str | None, port: int | None) -> None:
    """Run the HTTP server (webhooks, health, admin API)."""
    from router.http import server as http_server  # uvicorn: only `serve` needs it
    from router.http.app import create_app
    from router.logs import configure_logging

    settings = settings_of(ctx)
    configure_logging(settings.logging.level, debug=settings.logging.debug)
    try:
        app = create_app(settings)
    except ValueError as exc:
        raise Failure(str(exc)) from exc
    require_rules(app.state.ctx.rules)  # invalid rules: located errors on stderr, exit 1
    http_server.run(
        app,
        settings.server,
        host=host or settings.server.host,
        port=port if port is not None else settings.server.port,
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def migrate(ctx: click.Context, as_json: bool) -> None:
    """Apply pending schema migrations (run it before rolling out a new version)."""
    from router.store.factory import backend_of
    from router.store.queries import migrations

    settings = settings_of(ctx)
    backend = backend_of(settings.storage.url)  # valid: the config check passed

    async def run(store: Store) -> list[int]:
        return list(store.migrations_applied)  # opening the store applied them

    applied = with_store(ctx, run)
    version = migrations(backend)[-1][0]
    if as_json:
        print_json({"backend": backend, "applied": applied, "version": version})
    elif applied:
        listed = ", ".join(str(v) for v in applied)
        click.echo(f"Applied migrations {listed} ({backend}); the schema is at version {version}.")
    else:
        click.echo(f"Nothing to apply ({backend}): the schema is at version {version}.")


@cli.group()
def events() -> None:
    """Inspect stored events."""


@events.command("list")
@click.option("--source", help="Only this source (twilio, stripe, a custom name...).")
@click.option("--type", "type_", help="Only this event type (message.received, ...).")
@click.option(
    "--status", type=click.Choice([s.value for s in EventStatus]), help="Only this status."
)
@click.option("--since", help="Only events received since, e.g. 24h, 15m or an ISO time.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def events_list(
    ctx: click.Context,
    source: str | None,
    type_: str | None,
    status: str | None,
    since: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List events, newest first."""
    try:
        since_at = parse_since(since, SystemClock().now()) if since else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from exc
    where = EventFilter(
        source=source,
        type=type_,
        status=EventStatus(status) if status else None,
        since=since_at,
        limit=limit,
    )
    found = with_store(ctx, lambda store: store.list_events(where))
    if as_json:
        print_json([event_to_builtins(event) for event in found])
        return
    _print_table(found)


def _print_table(found: list[Event]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("ID", "RECEIVED", "SOURCE", "TYPE", "STATUS", "CHANNEL", "CONTACT"):
        table.add_column(column)
    for event in found:
        table.add_row(
            event.id,
            event.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            event.source,
            event.type,
            event.status.value,
            event.channel or "-",
            event.contact.address if event.contact else "-",
        )
    console = Console(width=None if sys.stdout.isatty() else 10_000)
    console.print(table if found else "no events")


@events.command("show")
@click.argument("event_id")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def events_show(ctx: click.Context, event_id: str, as_json: bool) -> None:
    """Show one event with its routing runs (what the rules and the conversation decided) and
    its outbox rows (what it sends), both oldest first. Exits 1 if there is no such event."""

    async def detail(store: Store) -> dict[str, Any] | None:
        event = await store.get_event(event_id)
        return await event_detail(store, event) if event is not None else None

    payload = with_store(ctx, detail)
    if payload is None:
        raise Failure(f"no event {event_id}")
    if as_json:
        print_json(payload)
        return
    print_event_detail(payload)


@cli.group()
def quarantine() -> None:
    """Inspect verified requests whose payload could not be understood (answered 400)."""


@quarantine.command("list")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def quarantine_list(ctx: click.Context, limit: int, as_json: bool) -> None:
    """List quarantined requests, newest first, with their raw bodies."""
    found = with_store(ctx, lambda store: store.list_quarantine(limit))
    rows = [_quarantined_to_builtins(request) for request in found]
    if as_json:
        print_json(rows)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold")
    for column in ("ID", "RECEIVED", "SOURCE", "CONTENT TYPE", "BYTES", "REASON"):
        table.add_column(column)
    for row, request in zip(rows, found, strict=True):
        table.add_row(
            row["id"],
            request.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            row["source"],
            row["content_type"],
            str(row["size"]) if row["size"] is not None else "blob",
            row["reason"],
        )
    console = Console(width=None if sys.stdout.isatty() else 10_000)
    console.print(table if found else "nothing quarantined")


def _quarantined_to_builtins(request: QuarantinedRequest) -> dict[str, Any]:
    """JSON form: the raw body as text when it is UTF-8 (`body`), always as `body_base64`."""
    raw = request.raw_body
    try:
        text = raw.decode("utf-8") if raw is not None else None
    except UnicodeDecodeError:
        text = None
    row: dict[str, Any] = msgspec.to_builtins(request)
    row.pop("raw_body")
    return {
        **row,
        "size": len(raw) if raw is not None else None,
        "body": text,
        "body_base64": base64.b64encode(raw).decode("ascii") if raw is not None else None,
    }


@cli.command()
@click.argument("provider", type=click.Choice(["twilio", "slack", "stripe", "mailgun", "sendgrid"]))
@click.option(
    "--text",
    default="Hello from the simulator",
    show_default=True,
    help="Message text (twilio, slack, email).",
)
@click.option("--from", "sender", help="Sender address (phone number, email).")
@click.option("--type", "type_", help="Provider event type (stripe).")
@click.option("--target", help="Base URL to send to (default: http://server.host:server.port).")
@click.pass_context
def simulate(
    ctx: click.Context,
    provider: str,
    text: str,
    sender: str | None,
    type_: str | None,
    target: str | None,
) -> None:
    """Send a correctly signed sample webhook to a running server."""
    import httpx

    from router.cli.simulate import build_sample

    settings = settings_of(ctx)
    try:
        sample = build_sample(provider, settings, text=text, sender=sender, event_type=type_)
    except LookupError as exc:
        raise Failure(str(exc)) from exc
    base = (target or f"http://{settings.server.host}:{settings.server.port}").rstrip("/")
    try:
        response = httpx.post(
            base + sample.path,
            content=sample.body,
            headers=sample.headers,
            auth=sample.auth,
            timeout=10,
        )
    except httpx.HTTPError as exc:
        raise Failure(f"cannot reach {base}: {exc} (is `switchboard serve` running?)") from exc
    click.echo(f"POST {sample.path} -> {response.status_code} {response.text[:200]}")
    if response.status_code >= 300:
        raise Failure(f"server answered {response.status_code}")


cli.add_command(rules)
cli.add_command(outbox)
cli.add_command(conversations)
cli.add_command(contacts)
cli.add_command(worker)
cli.add_command(replay_command)
cli.add_command(dlq)
cli.add_command(copy_command)
cli.add_command(status_command)
cli.add_command(backup_command)
cli.add_command(restore_command)
cli.add_command(reconcile_command)


def main() -> None:
    """Console entry point."""
    cli(prog_name="switchboard")
