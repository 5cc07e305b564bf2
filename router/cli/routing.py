"""`switchboard outbox|conversations|contacts` and the people's view of `events show` (SPEC §9):
what the routing worker decided and what it will send.

JSON shapes come from `router.views`, shared with the admin API. Output for people shows
addresses and message texts as stored (the operator owns the data); none of it is logged.
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

import click

from router.cli.common import Failure, console, plain, print_json, when, with_store
from router.store.records import ContactRecord, OutboxFilter, OutboxStatus
from router.views import (
    OUTBOX_CHANNELS,
    PHONE_PATTERN,
    contact_to_builtins,
    conversation_to_builtins,
    outbox_recipient,
    outbox_to_builtins,
)
from statemachines.consent import contact_key
from statemachines.conversation import ConversationState

# -- events show (people) -------------------------------------------------------------------


def print_event_detail(detail: dict[str, Any]) -> None:
    """The event's fields, then its routing runs and its outbox rows as tables."""
    from rich.pretty import Pretty
    from rich.table import Table

    out = console()
    event = {key: value for key, value in detail.items() if key not in ("runs", "outbox")}
    out.print(Pretty(event, expand_all=True))
    runs: list[dict[str, Any]] = detail["runs"]
    out.print()
    if runs:
        table = Table(box=None, header_style="bold", title="runs", title_justify="left")
        for column in ("AT", "RULES", "MATCHED", "ACTIONS", "TRANSITION", "OUTBOX", "ERROR"):
            table.add_column(column)
        for run in runs:
            table.add_row(
                when(run["at"]),
                plain((run["rules_version"] or "-")[:12]),
                plain(", ".join(run["matched"]) or "-"),
                plain(", ".join(_action_names(run["actions"])) or "-"),
                plain(_transition(run["transition"], run.get("compliance"))),
                plain(len(run["outbox_ids"])),
                plain(run["error"]),
            )
        out.print(table)
    else:
        out.print("runs: not routed yet")
    out.print()
    _outbox_table(detail["outbox"], title="outbox", empty="outbox: no rows")


def _action_names(actions: list[dict[str, Any]]) -> list[str]:
    """`rule:kind` of each action the rules decided."""
    return [f"{action.get('rule_id', '?')}:{action.get('kind', '?')}" for action in actions]


def _transition(transition: dict[str, Any] | None, compliance: str | None) -> str:
    parts = [f"compliance {compliance}"] if compliance else []
    if transition:
        if "refused" in transition:
            parts.append(f"{transition.get('trigger')} refused: {transition['refused']}")
        else:
            parts.append(
                f"{transition.get('trigger')}: {transition.get('source')} -> "
                f"{transition.get('dest')}"
            )
    return "; ".join(parts) or "-"


# -- outbox -----------------------------------------------------------------------------------


@click.group()
def outbox() -> None:
    """Inspect the outbox: what is sent, waiting or failed."""


@outbox.command("list")
@click.option(
    "--status", type=click.Choice([s.value for s in OutboxStatus]), help="Only this status."
)
@click.option("--channel", type=click.Choice(OUTBOX_CHANNELS), help="Only this channel.")
@click.option(
    "--to",
    "to",
    help="Only rows to this recipient, as stored; phone numbers in any form with the country "
    "code (`+1 555 123 0001`, `whatsapp:+15551230001`).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Show at most this many.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array.")
@click.pass_context
def outbox_list(
    ctx: click.Context,
    status: str | None,
    channel: str | None,
    to: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List outbox rows, newest first."""
    if to is not None:
        to = outbox_recipient(to)
    where = OutboxFilter(
        status=OutboxStatus(status) if status else None, channel=channel, to=to, limit=limit
    )
    rows = [outbox_to_builtins(row) for row in with_store(ctx, lambda s: s.list_outbox(where))]
    if as_json:
        print_json(rows)
        return
    _outbox_table(rows, empty="no outbox rows")


def _outbox_table(rows: list[dict[str, Any]], *, empty: str, title: str | None = None) -> None:
    from rich.table import Table

    out = console()
    if not rows:
        out.print(empty)
        return
    table = Table(box=None, header_style="bold", title=title, title_justify="left")
    columns = ("ID", "CREATED", "STATUS", "CHANNEL", "TO", "KIND", "CATEGORY", "TRIES")
    for column in (*columns, "NOT BEFORE", "LAST ERROR"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            plain(row["id"]),
            when(row["created_at"]),
            row["status"],
            plain(row["channel"]),
            plain(row["to"]),
            plain(row["kind"]),
            plain(row["category"]),
            str(row["attempts"]),
            when(row["not_before"]),
            plain(row["last_error"], 80),
        )
    out.print(table)


# -- conversations ----------------------------------------------------------------------------


@click.group()
def conversations() -> None:
    """Inspect conversations: state and message history."""


@conversations.command("show")
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def conversations_show(ctx: click.Context, key: str, as_json: bool) -> None:
    """Show one conversation by KEY, e.g. `sms:+15551230001:+15559870000` (channel, the
    customer's address, the number they wrote to): state, history, tags, attributes and any
    open escalation. Exits 1 if there is no such conversation."""
    record = with_store(ctx, lambda store: store.get_conversation(key))
    if record is None:
        raise Failure(f"no conversation {key} (see `switchboard conversations list`)")
    shown = conversation_to_builtins(record)
    if as_json:
        print_json(shown)
        return
    _print_conversation(shown)


def _print_conversation(shown: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    escalation = shown["escalation"]
    for name, value in (
        ("key", shown["key"]),
        ("state", shown["state"]),
        ("channel", shown["channel"]),
        ("contact", shown["contact"]),
        ("tags", ", ".join(shown["tags"]) or None),
        ("attributes", ", ".join(f"{k}={v}" for k, v in shown["attributes"].items()) or None),
        ("escalation", _escalation(escalation) if escalation else None),
        ("updated", when(shown["updated_at"])),
    ):
        facts.add_row(name, plain(value))
    out.print(facts)
    if shown.get("error"):
        out.print(plain(shown["error"]))
    out.print()
    history = shown["history"]
    if not history:
        out.print("no messages")
        return
    table = Table(box=None, header_style="bold", title="history", title_justify="left")
    for column in ("AT", "", "FROM", "TEXT"):
        table.add_column(column)
    for message in history:
        inbound = message["direction"] == "in"
        table.add_row(
            when(message["at"]),
            "<-" if inbound else "->",
            plain("customer" if inbound else message.get("author", "-")),
            plain(message["text"]),
        )
    out.print(table)


def _escalation(escalation: dict[str, Any]) -> str:
    parts = [f"to {escalation.get('slack_channel')} at {when(escalation.get('at'))}"]
    if escalation.get("reason"):
        parts.append(f"reason: {escalation['reason']}")
    if escalation.get("agent"):
        parts.append(f"claimed by {escalation['agent']}")
    return "; ".join(parts)


@conversations.command("list")
@click.option(
    "--state",
    type=click.Choice([s.value for s in ConversationState]),
    help="Only this state; `escalated` is support's queue (waiting for a person).",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=50,
    show_default=True,
    help="Show at most this many.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of conversations.")
@click.pass_context
def conversations_list(ctx: click.Context, state: str | None, limit: int, as_json: bool) -> None:
    """List conversations, most recently updated first, with their last message."""
    records = with_store(ctx, lambda store: store.list_conversations(state, limit))
    shown = [conversation_to_builtins(record) for record in records]
    if as_json:
        print_json(shown)
        return
    from rich.table import Table

    out = console()
    if not shown:
        out.print(f"no {state} conversations" if state else "no conversations")
        return
    table = Table(box=None, header_style="bold")
    for column in ("KEY", "STATE", "CONTACT", "UPDATED", "LAST MESSAGE"):
        table.add_column(column)
    for conversation in shown:
        table.add_row(
            plain(conversation["key"]),
            plain(conversation["state"]),
            plain(conversation["contact"]),
            when(conversation["updated_at"]),
            _preview(conversation["history"]),
        )
    out.print(table)


def _preview(history: list[dict[str, Any]]) -> Any:
    if not history:
        return plain(None)
    last = history[-1]
    who = "customer" if last["direction"] == "in" else last.get("author", "us")
    return plain(f"{who}: {last['text']}", 60)


# -- contacts ---------------------------------------------------------------------------------


@click.group()
def contacts() -> None:
    """Inspect contacts: consent and its ledger of changes."""


@contacts.command("show")
@click.argument("address")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON object.")
@click.pass_context
def contacts_show(ctx: click.Context, address: str, as_json: bool) -> None:
    """Show the consent of one contact and its ledger of consent changes (oldest first).

    ADDRESS is a phone number in any form with its country code (`+1 555 123 0001`,
    `whatsapp:+15551230001`: one person on every channel) or an email address.

    A contact that never changed consent (no STOP, START or provider opt-out recorded) is
    subscribed: it is shown as `subscribed` with an empty ledger and `"recorded": false` in
    the JSON, and the exit code is 0. Exits 1 only if ADDRESS is not an address.
    """
    key = _contact_address(address)
    record = with_store(ctx, lambda store: store.get_contact(key))
    shown = contact_to_builtins(record or ContactRecord(address=key), recorded=record is not None)
    if as_json:
        print_json(shown)
        return
    _print_contact(shown)


def _contact_address(address: str) -> str:
    """The contact key of a phone number (+ and country code; digits, spaces and `()-./`) or an
    email address; anything else is refused rather than looked up as a typo."""
    import phonenumbers

    bare = address.strip().removeprefix("whatsapp:").removeprefix("sms:").strip()
    key = contact_key(address)
    if _EMAIL.fullmatch(bare):
        return key
    if PHONE_PATTERN.fullmatch(bare) and key[1:].isdigit():
        with contextlib.suppress(phonenumbers.NumberParseException):
            if phonenumbers.is_possible_number(phonenumbers.parse(key)):
                return key
    raise Failure(f"{address!r} is not a phone number (+ and country code) or email address")


_EMAIL = re.compile(r"[^@\s]+@[^@\s]+")


def _print_contact(shown: dict[str, Any]) -> None:
    from rich.table import Table

    out = console()
    consent = shown["consent"]
    if not shown["recorded"]:
        consent += " (no consent change recorded)"
    elif shown["opted_out_at"]:
        consent += f" since {when(shown['opted_out_at'])}"
    elif shown["consent"] == "review":
        consent += " (a possible opt-out: marketing held until a person decides)"
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("address", plain(shown["address"]))
    facts.add_row("consent", plain(consent))
    facts.add_row("timezone", plain(shown["timezone"]))
    out.print(facts)
    out.print()
    if not shown["ledger"]:
        out.print("ledger: no consent changes")
        return
    table = Table(box=None, header_style="bold", title="ledger", title_justify="left")
    for column in ("AT", "CHANGE", "REASON", "CHANNEL", "EVENT"):
        table.add_column(column)
    for entry in shown["ledger"]:
        table.add_row(
            when(entry["at"]),
            plain(entry["change"]),
            plain(entry["reason"]),
            plain(entry["channel"]),
            plain(entry["event_id"]),
        )
    out.print(table)
