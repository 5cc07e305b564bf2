"""The `switchboard` command as a user runs it: simulate, events list/show, help and exit codes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path

import pytest

from router.store.sqlite import SQLiteStore
from tests.router.test_store import event, item
from tests.support import ROOT, LiveServer, config_text, free_port, run_cli

PROVIDERS = {
    "twilio": ("message.received", "sms"),
    "slack": ("message.received", "slack"),
    "stripe": ("invoice.payment_failed", None),
    "mailgun": ("email.received", "email"),
    "sendgrid": ("email.received", "email"),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_simulate_sends_a_signed_sample_that_is_stored(server: LiveServer, provider: str) -> None:
    result = server.cli("simulate", provider, "--text", "Can I talk to a human?")
    assert result.exit_code == 0, result.stderr
    assert "-> 200" in result.stdout
    events = server.cli("events", "list", "--json").json()
    assert len(events) == 1
    event_type, channel = PROVIDERS[provider]
    assert (events[0]["source"], events[0]["type"], events[0]["channel"]) == (
        provider,
        event_type,
        channel,
    )
    if channel is not None:
        assert "Can I talk to a human?" in events[0]["text"]


def test_simulate_without_a_running_server_says_so(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text(
        f'[sources.twilio]\nauth_tokens = ["t"]\n[storage]\nurl = "sqlite:///{tmp_path}/x.db"\n'
    )
    result = run_cli(config, "simulate", "twilio", "--target", f"http://127.0.0.1:{free_port()}")
    assert result.exit_code == 1
    assert "switchboard serve" in result.stderr


def test_simulate_an_unconfigured_source_fails_clearly(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text(f'[storage]\nurl = "sqlite:///{tmp_path}/x.db"\n')
    result = run_cli(config, "simulate", "stripe")
    assert result.exit_code == 1
    assert "[sources.stripe] is not configured" in result.stderr


def test_events_show_gives_one_event_with_runs_and_outbox(server: LiveServer) -> None:
    assert server.cli("simulate", "twilio").exit_code == 0
    listed = server.cli("events", "list", "--json").json()
    shown = server.cli("events", "show", listed[0]["id"], "--json").json()
    assert {key: shown[key] for key in listed[0]} == listed[0]
    assert shown["runs"] == [] and shown["outbox"] == []
    human = server.cli("events", "show", listed[0]["id"])
    assert human.exit_code == 0 and listed[0]["id"] in human.stdout


def test_events_show_unknown_id_fails(server: LiveServer) -> None:
    result = server.cli("events", "show", "01NOPE")
    assert result.exit_code == 1
    assert "no event 01NOPE" in result.stderr


def test_events_list_filters_and_table(server: LiveServer) -> None:
    assert server.cli("simulate", "twilio").exit_code == 0
    assert server.cli("simulate", "stripe").exit_code == 0
    only_stripe = server.cli("events", "list", "--source", "stripe", "--json").json()
    assert [e["source"] for e in only_stripe] == ["stripe"]
    assert (
        server.cli("events", "list", "--type", "message.received", "--json").json()[0]["source"]
        == "twilio"
    )
    assert server.cli("events", "list", "--since", "1h", "--json").json() != []
    assert server.cli("events", "list", "--status", "processed", "--json").json() == []
    table = server.cli("events", "list")
    assert table.exit_code == 0
    assert "SOURCE" in table.stdout and "stripe" in table.stdout and "twilio" in table.stdout


def test_usage_errors_exit_2(server: LiveServer) -> None:
    assert server.cli("events", "list", "--since", "yesterday-ish").exit_code == 2
    assert server.cli("events", "list", "--status", "nope").exit_code == 2
    assert server.cli("simulate", "fax").exit_code == 2


def test_a_bad_config_exits_1_naming_key_and_line(tmp_path: Path) -> None:
    config = tmp_path / "switchboard.toml"
    config.write_text('[server]\nport = "eighty"\n')
    result = run_cli(config, "events", "list")
    assert result.exit_code == 1
    assert f"{config}:2: server.port: " in result.stderr


COMMANDS = [
    [],
    ["serve"],
    ["events"],
    ["events", "list"],
    ["events", "show"],
    ["simulate"],
    ["quarantine", "list"],
    ["rules"],
    ["rules", "check"],
    ["rules", "test"],
    ["rules", "diff"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "switchboard")
def test_every_command_has_help(tmp_path: Path, command: list[str]) -> None:
    result = run_cli(tmp_path / "unused.toml", *command, "--help")
    assert result.exit_code == 0
    assert "Usage: switchboard" in result.stdout


def test_python_dash_m_router_is_the_same_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "router", "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0
    assert "events" in done.stdout and "simulate" in done.stdout


def test_json_output_stays_json_when_the_store_logs_a_warning(tmp_path: Path) -> None:
    """A command's stdout is its answer: the store's warning about an event it cannot read
    (left out of the listing) goes to stderr, in a real `switchboard` process."""
    db = tmp_path / "var" / "switchboard.db"
    config = tmp_path / "switchboard.toml"
    config.write_text(config_text(db))

    async def seed() -> list[str]:
        store = SQLiteStore(db)
        await store.open()
        try:
            stored = [event(f"J{n}") for n in range(2)]
            for ev in stored:
                await store.ingest(item(ev))
            return [ev.id for ev in stored]
        finally:
            await store.close()

    good, bad = asyncio.run(seed())
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE events SET body = ? WHERE id = ?", ('{"id": 1', bad))
    done = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), "events", "list", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert [e["id"] for e in json.loads(done.stdout)] == [good]
    [warning] = [json.loads(line) for line in done.stderr.splitlines()]
    assert warning["level"] == "warning" and bad in json.dumps(warning)
