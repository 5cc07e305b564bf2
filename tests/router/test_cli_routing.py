"""`events show`, `outbox list`, `conversations show|list` and `contacts show` as a user runs
them, against a real server whose routing worker handled signed Twilio messages with a rules
folder of this test's own (one rule: every SMS is answered "hi back")."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, ROOT, SECRETS, LiveServer, live_server, run_cli, wait_for

CUSTOMER = "+15551230001"
OURS = "+15559870000"
KEY = f"sms:{CUSTOMER}:{OURS}"
#: Sends STOP (a number of its own: an opt-out cancels the waiting rows of its contact).
QUITTER = "+15551230002"
#: Writes text that a terminal or rich would interpret.
TRICKY = "+15551230003"
TRICKY_TEXT = "[bold red]boss[/bold red] \x1b[2J\u202eevil"
#: Where a reply can be while the dispatcher (sandbox senders in tests) takes it out.
ON_ITS_WAY = {"pending", "sending", "sent", "delivered"}
HI_RULES = """version: 1
rules:
  - id: hi
    when: {channel: sms}
    then:
      - reply: {text: "hi back"}
"""


@dataclass
class Routed:
    server: LiveServer
    #: Event ids of the messages, by name.
    events: dict[str, str]


def rules_folder(root: Path) -> str:
    folder = root / "rules"
    folder.mkdir()
    (folder / "hi.yaml").write_text(HI_RULES)
    return f'[rules]\npath = "{folder}"\n'


def send_sms(server: LiveServer, unique: str, *, sender: str = CUSTOMER, body: str = "") -> str:
    """POST a signed Twilio SMS; the id of the event it became, once routed."""
    params = message_params(unique)
    params["From"] = sender
    if body:
        params["Body"] = body
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    assert server.post(request).status_code == 200
    [event] = [e for e in server.events() if e["dedupe_key"] == f"twilio:SM{unique}"]
    wait_for(lambda: show(server, event["id"])["status"] == "processed", interval=0.05)
    event_id: str = event["id"]
    return event_id


def show(server: LiveServer, event_id: str) -> dict[str, Any]:
    result = server.cli("events", "show", event_id, "--json")
    assert result.exit_code == 0, result.stderr
    shown: dict[str, Any] = result.json()
    return shown


def cli_json(server: LiveServer, *args: str) -> Any:
    result = server.cli(*args, "--json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # nothing but JSON on stdout


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Routed]:
    root = tmp_path_factory.mktemp("routing-cli")
    with live_server(root, routing=True, extra=rules_folder(root)) as server:
        events = {
            "hello": send_sms(server, "HELLO"),
            "stop": send_sms(server, "STOP1", sender=QUITTER, body="STOP"),
            "tricky": send_sms(server, "TRICKY", sender=TRICKY, body=TRICKY_TEXT),
        }
        yield Routed(server, events)


def test_events_show_gives_the_run_and_the_outbox_row(routed: Routed) -> None:
    event_id = routed.events["hello"]
    shown = show(routed.server, event_id)
    [run] = shown["runs"]
    assert run["matched"] == ["hi"]
    assert run["rules_version"] and run["error"] is None
    assert [(a["rule_id"], a["kind"]) for a in run["actions"]] == [("hi", "reply")]
    assert run["transition"] == {"trigger": "inbound", "source": "bot", "dest": "bot"}
    [row] = shown["outbox"]
    assert run["outbox_ids"] == [row["id"]]
    assert {key: row[key] for key in ("event_id", "conversation_key", "channel", "to")} == {
        "event_id": event_id,
        "conversation_key": KEY,
        "channel": "sms",
        "to": CUSTOMER,
    }
    assert row["kind"] == "reply" and row["status"] in ON_ITS_WAY
    assert row["payload"] == {"text": "hi back", "from": OURS}
    assert {
        "category",
        "not_before",
        "last_error",
        "provider_message_id",
    } <= row.keys()

    human = routed.server.cli("events", "show", event_id)
    assert human.exit_code == 0, human.stderr
    assert row["id"] in human.stdout and "hi:reply" in human.stdout
    assert "inbound: bot -> bot" in human.stdout


def test_a_stop_is_compliance_not_rules(routed: Routed) -> None:
    shown = show(routed.server, routed.events["stop"])
    [run] = shown["runs"]
    assert run["compliance"] == "opt_out"
    assert run["matched"] == []  # the rules never see STOP
    [row] = shown["outbox"]
    assert (row["kind"], row["to"], row["category"]) == (
        "opt_out_confirmation",
        QUITTER,
        "transactional",
    )


def test_outbox_list_filters(routed: Routed) -> None:
    server = routed.server
    reply_id = f"{routed.events['hello']}:hi:0"
    everything = cli_json(server, "outbox", "list")
    assert reply_id in [row["id"] for row in everything]
    assert [row["event_id"] for row in everything] == sorted(
        (row["event_id"] for row in everything), reverse=True
    )  # newest first

    def listed_under_its_status() -> bool:
        """The reply is among the rows of the status it has (it may move on meanwhile)."""
        [now] = [row for row in cli_json(server, "outbox", "list") if row["id"] == reply_id]
        rows = cli_json(server, "outbox", "list", "--status", now["status"])
        assert all(row["status"] == now["status"] for row in rows)
        return reply_id in [row["id"] for row in rows]

    wait_for(listed_under_its_status, interval=0.05)
    assert cli_json(server, "outbox", "list", "--status", "dead") == []
    assert cli_json(server, "outbox", "list", "--channel", "slack") == []
    for spelling in (CUSTOMER, "+1 555 123 0001", f"whatsapp:{CUSTOMER}"):
        [row] = cli_json(server, "outbox", "list", "--to", spelling)
        assert row["id"] == reply_id
    assert len(cli_json(server, "outbox", "list", "--limit", "1")) == 1

    human = server.cli("outbox", "list", "--to", CUSTOMER)
    assert human.exit_code == 0, human.stderr
    assert reply_id in human.stdout and CUSTOMER in human.stdout
    empty = server.cli("outbox", "list", "--status", "dead")
    assert (empty.exit_code, empty.stdout.strip()) == (0, "no outbox rows")


def test_outbox_list_refuses_a_bad_status(routed: Routed) -> None:
    result = routed.server.cli("outbox", "list", "--status", "lost")
    assert result.exit_code == 2
    assert "lost" in result.stderr and result.stdout == ""


def test_conversations_show_has_both_sides_of_the_history(routed: Routed) -> None:
    shown = cli_json(routed.server, "conversations", "show", KEY)
    assert {key: shown[key] for key in ("key", "channel", "contact", "state")} == {
        "key": KEY,
        "channel": "sms",
        "contact": CUSTOMER,
        "state": "bot",
    }
    inbound, reply = shown["history"]
    assert (inbound["direction"], inbound["event_id"]) == ("in", routed.events["hello"])
    assert inbound["text"].startswith("Hello HELLO") and inbound["at"]
    assert (reply["direction"], reply["text"], reply["author"]) == ("out", "hi back", "bot")
    assert (shown["tags"], shown["attributes"], shown["escalation"]) == ([], {}, None)

    human = routed.server.cli("conversations", "show", KEY)
    assert human.exit_code == 0, human.stderr
    assert "hi back" in human.stdout and "Hello HELLO" in human.stdout


def test_conversations_show_unknown_key_fails(routed: Routed) -> None:
    result = routed.server.cli("conversations", "show", "sms:+15550000000:+15559870000")
    assert result.exit_code == 1
    assert "no conversation sms:+15550000000:+15559870000" in result.stderr
    assert result.stdout == ""


def test_conversations_list_is_the_queue(routed: Routed) -> None:
    server = routed.server
    bot = cli_json(server, "conversations", "list", "--state", "bot")
    keys = [conversation["key"] for conversation in bot]
    assert KEY in keys and f"sms:{TRICKY}:{OURS}" in keys
    assert f"sms:{QUITTER}:{OURS}" not in keys  # a STOP opens no conversation
    assert cli_json(server, "conversations", "list", "--state", "escalated") == []
    assert len(cli_json(server, "conversations", "list", "--limit", "1")) == 1

    human = server.cli("conversations", "list", "--state", "bot")
    assert human.exit_code == 0, human.stderr
    assert KEY in human.stdout and "bot: hi back" in human.stdout
    queue = server.cli("conversations", "list", "--state", "escalated")
    assert (queue.exit_code, queue.stdout.strip()) == (0, "no escalated conversations")


def test_customer_text_cannot_drive_the_terminal(routed: Routed) -> None:
    """Markup and escape sequences a customer writes are shown, not obeyed."""
    server = routed.server
    key = f"sms:{TRICKY}:{OURS}"
    [inbound, _] = cli_json(server, "conversations", "show", key)["history"]
    assert inbound["text"] == TRICKY_TEXT  # JSON keeps it exactly
    for args in (("conversations", "show", key), ("events", "show", routed.events["tricky"])):
        human = server.cli(*args)
        assert human.exit_code == 0, human.stderr
        assert "\x1b" not in human.stdout and "\u202e" not in human.stdout
    shown = server.cli("conversations", "show", key).stdout
    assert "[bold red]boss[/bold red]" in shown


def test_contacts_show_after_stop(routed: Routed) -> None:
    server = routed.server
    for spelling in (QUITTER, "+1 555 123 0002", "whatsapp:+15551230002"):
        contact = cli_json(server, "contacts", "show", spelling)
        assert contact["address"] == QUITTER
        assert contact["consent"] == "opted_out" and contact["opted_out_at"]
        assert contact["recorded"] is True
        [entry] = contact["ledger"]
        assert entry == {
            "at": contact["opted_out_at"],
            "event_id": routed.events["stop"],
            "channel": "sms",
            "change": "opted_out",
            "reason": "STOP",
        }
    human = server.cli("contacts", "show", QUITTER)
    assert human.exit_code == 0, human.stderr
    assert "opted_out" in human.stdout and "STOP" in human.stdout


def test_contacts_show_someone_who_never_opted_out(routed: Routed) -> None:
    contact = cli_json(routed.server, "contacts", "show", CUSTOMER)
    assert contact == {
        "address": CUSTOMER,
        "consent": "subscribed",
        "opted_out_at": None,
        "timezone": None,
        "ledger": [],
        "recorded": False,
    }
    human = routed.server.cli("contacts", "show", CUSTOMER)
    assert human.exit_code == 0 and "no consent change recorded" in human.stdout


@pytest.mark.parametrize("address", ["+1 555 abc", " ", "5551230001", "+12", "sms:" + KEY])
def test_contacts_show_refuses_what_is_not_an_address(routed: Routed, address: str) -> None:
    result = routed.server.cli("contacts", "show", address)
    assert result.exit_code == 1
    assert "not a phone number" in result.stderr and result.stdout == ""


@pytest.mark.parametrize(
    "command",
    [
        ("events", "show"),
        ("outbox",),
        ("outbox", "list"),
        ("conversations",),
        ("conversations", "show"),
        ("conversations", "list"),
        ("contacts",),
        ("contacts", "show"),
    ],
)
def test_every_command_has_help(routed: Routed, command: tuple[str, ...]) -> None:
    result = routed.server.cli(*command, "--help")
    assert result.exit_code == 0, result.stderr
    assert "Usage: switchboard " + " ".join(command) in result.stdout


def test_a_locked_store_is_unavailable_not_a_crash(tmp_path: Path) -> None:
    """Another process holds the database past the busy timeout: exit 1, nothing on stdout.
    Run as a process of its own, as a user runs it, so a command that never exits shows."""
    config = tmp_path / "switchboard.toml"
    db = tmp_path / "switchboard.db"
    config.write_text(f'[storage]\nurl = "sqlite:///{db}"\nbusy_timeout_ms = 100\n')
    assert run_cli(config, "outbox", "list", "--json").json() == []  # creates the database
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")
        result = subprocess.run(
            [sys.executable, "-m", "router", "--config", str(config), "outbox", "list", "--json"],
            cwd=ROOT,
            capture_output=True,
            timeout=10,
        )
    finally:
        holder.close()
    assert (result.returncode, result.stdout) == (1, b"")
    assert b"store unavailable" in result.stderr
