"""`switchboard replay` and POST /api/replay: recorded events through the rules again; rows that
exist are not made again, new actions are; a dry run writes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cases import twilio
from tests.support import ADMIN_TOKEN, LiveServer, live_server, wait_for

CUSTOMER = "+15551230001"
LIVE = """version: 1
rules:
  - id: hours
    when: {channel: sms, text: {contains_any: [hours]}}
    then:
      - reply: {text: "We are open 9 to 5."}
"""
DRAFT = (
    LIVE
    + """  - id: hours-follow-up
    when: {channel: sms, text: {contains_any: [hours]}}
    then:
      - tag: follow-up
      - send: {channel: sms, to: "{{ contact.address }}", category: transactional,
               text: "Also open Saturdays."}
"""
)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[LiveServer]:
    live = tmp_path / "rules"
    live.mkdir()
    (live / "support.yaml").write_text(LIVE)
    draft = tmp_path / "draft"
    draft.mkdir()
    (draft / "support.yaml").write_text(DRAFT)
    extra = f'[rules]\npath = "{live}"\n'
    with live_server(tmp_path, routing=True, extra=extra) as running:
        texted(running, "SMHOURS1", "what are your hours?")
        yield running


def texted(server: LiveServer, sid: str, body: str) -> None:
    """The customer's SMS, signed as Twilio sends it, routed before this returns."""
    request = twilio.sms(sid, body, CUSTOMER)
    before = len(server.events())
    assert server.post(request).status_code == 200
    wait_for(lambda: [e["status"] for e in server.events()] == ["processed"] * (before + 1))


def outbox(server: LiveServer) -> list[dict[str, Any]]:
    result = server.cli("outbox", "list", "--json")
    assert result.exit_code == 0, result.stderr
    rows: list[dict[str, Any]] = result.json()
    return rows


def replay(server: LiveServer, *args: str) -> dict[str, Any]:
    result = server.cli("replay", "--json", *args)
    assert result.exit_code == 0, result.stderr
    report: dict[str, Any] = result.json()
    return report


def test_replaying_with_the_same_rules_makes_no_row_twice(server: LiveServer) -> None:
    [before] = outbox(server)
    report = replay(server)
    assert (report["events"], report["rows_made"], report["rows_existing"]) == (1, 0, 1)
    assert [row["id"] for row in outbox(server)] == [before["id"]]
    [event] = server.events()
    runs = server.cli("events", "show", event["id"], "--json").json()["runs"]
    assert [run["matched"] for run in runs] == [["hours"], ["hours"]]


def test_a_draft_makes_only_its_new_rows_and_a_dry_run_writes_nothing(
    server: LiveServer, tmp_path: Path
) -> None:
    draft = str(tmp_path / "draft")
    preview = replay(server, "--rules", draft, "--dry-run")
    assert (preview["rows_made"], preview["rows_existing"]) == (1, 1)
    [shown] = preview["replayed"]
    assert [row["id"] for row in shown["new_rows"]] == [f"{shown['event_id']}:hours-follow-up:1"]
    assert shown["skipped"] == ["hours-follow-up:0 tag"]
    assert len(outbox(server)) == 1  # nothing written

    done = replay(server, "--rules", draft)
    assert (done["rows_made"], done["rows_existing"]) == (1, 1)
    texts = sorted(row["payload"]["text"] for row in outbox(server))
    assert texts == ["Also open Saturdays.", "We are open 9 to 5."]
    again = replay(server, "--rules", draft)  # the new row exists now
    assert (again["rows_made"], again["rows_existing"]) == (0, 2)


def test_people_read_a_summary(server: LiveServer, tmp_path: Path) -> None:
    result = server.cli("replay", "--rules", str(tmp_path / "draft"), "--dry-run")
    assert result.exit_code == 0, result.stderr
    assert "would make" in result.stdout
    assert "1 events replayed" in result.stdout


def test_the_admin_api_replays_with_the_live_rules(server: LiveServer) -> None:
    headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    url = server.base_url + "/api/replay"
    assert httpx.post(url, json={}).status_code == 401
    response = httpx.post(url, json={"dry_run": True, "source": "twilio"}, headers=headers)
    assert response.status_code == 200, response.text
    report = response.json()
    assert (report["events"], report["rows_made"], report["dry_run"]) == (1, 0, True)
    bad = httpx.post(url, content=json.dumps({"since": "soon"}), headers=headers)
    assert bad.status_code == 400
    unknown = httpx.post(url, json={"rules": "/etc"}, headers=headers)
    assert unknown.status_code == 400  # no rules path over HTTP: the live rules only


def test_a_replay_never_sends_to_a_contact_who_opted_out_since(
    server: LiveServer, tmp_path: Path
) -> None:
    texted(server, "SMSTOP1", "STOP")
    shown = server.cli("contacts", "show", CUSTOMER, "--json")
    assert shown.exit_code == 0 and shown.json()["consent"] == "opted_out"
    before = {row["id"] for row in outbox(server)}

    draft = str(tmp_path / "draft")
    preview = replay(server, "--rules", draft, "--dry-run")
    [would] = [row for event in preview["replayed"] for row in event["new_rows"]]
    assert (would["status"], would["last_error"]) == ("cancelled", "contact opted out")

    done = replay(server, "--rules", draft)
    [made] = [row for event in done["replayed"] for row in event["new_rows"]]
    assert made["id"] == would["id"]
    [row] = [row for row in outbox(server) if row["id"] not in before]
    assert (row["id"], row["payload"]["text"]) == (made["id"], "Also open Saturdays.")
    # Cancelled as it was committed: no attempt, so never offered to a sender.
    assert (row["status"], row["attempts"], row["last_error"]) == (
        "cancelled",
        0,
        "contact opted out",
    )
