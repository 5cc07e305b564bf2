"""Escalation timers end to end: an unclaimed escalation gets one reminder in its thread after
`escalation.claim_timeout`, also when the timer fell due while the server was down."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.cases.twilio import signed
from tests.support import PUBLIC_URL, SECRETS, free_port, run_cli, server_process, wait_for

pytestmark = pytest.mark.integration

RULES = """version: 1
rules:
  - id: human-please
    when: {channel: sms, text: {contains_any: [human]}}
    then:
      - escalate: {reason: "asked for a human"}
"""


def options(tmp_path: Path, claim_timeout: str) -> dict[str, str]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "support.yaml").write_text(RULES)
    return {
        "extra": f'[rules]\npath = "{rules}"\n[channels.slack]\nescalation_channel = "C0SUP"\n'
        f'[escalation]\nclaim_timeout = "{claim_timeout}"\n'
    }


def ask_for_a_human(base_url: str) -> None:
    import httpx

    params = {
        "MessageSid": "SMHUMAN1",
        "AccountSid": "AC" + "1" * 32,
        "From": "+15551230001",
        "To": "+15559870000",
        "Body": "a human please",
    }
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    response = httpx.post(base_url + request.path, content=request.body, headers=request.headers)
    assert response.status_code == 200


def slack_rows(config_path: Path) -> list[dict[str, Any]]:
    result = run_cli(config_path, "outbox", "list", "--channel", "slack", "--json")
    assert result.exit_code == 0, result.stderr
    rows: list[dict[str, Any]] = result.json()
    return rows


def kinds(config_path: Path) -> list[str]:
    return sorted(row["kind"] for row in slack_rows(config_path))


def all_routed(config_path: Path) -> bool:
    result = run_cli(config_path, "events", "list", "--json")
    return all(event["status"] == "processed" for event in result.json())


def test_an_unclaimed_escalation_gets_one_reminder(tmp_path: Path) -> None:
    with server_process(tmp_path, **options(tmp_path, "1s")) as srv:
        ask_for_a_human(srv.base_url)
        wait_for(lambda: kinds(srv.config_path) == ["escalation", "reminder"], timeout=15)
        wait_for(lambda: all_routed(srv.config_path), timeout=10)
        [timer_event] = srv.events("--type", "timer.claim_reminder")
        assert timer_event["conversation_key"] == "sms:+15551230001:+15559870000"
        assert kinds(srv.config_path) == ["escalation", "reminder"]


def test_a_reminder_due_while_the_server_was_down_fires_once_after_restart(
    tmp_path: Path,
) -> None:
    port = free_port()
    config = options(tmp_path, "2s")
    with server_process(tmp_path, port=port, log_name="first.log", **config) as srv:
        asked = time.monotonic()
        ask_for_a_human(srv.base_url)
        wait_for(lambda: kinds(srv.config_path) == ["escalation"], timeout=10)
    # Stopped (killed) before the timer was due; wait until it is overdue.
    assert time.monotonic() - asked < 2, "the server lived past the timer"
    wait_for(lambda: time.monotonic() - asked > 2.5, timeout=5)
    for restart in range(2):
        with server_process(tmp_path, port=port, log_name=f"again{restart}.log", **config) as srv:
            wait_for(lambda: kinds(srv.config_path) == ["escalation", "reminder"], timeout=15)
            wait_for(lambda: all_routed(srv.config_path), timeout=10)
            assert len(srv.events("--type", "timer.claim_reminder")) == 1
