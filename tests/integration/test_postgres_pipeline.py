"""The whole pipeline on PostgreSQL: the real app on loopback, its worker and dispatcher, the
CLI, all on the session's database instead of a SQLite file."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.integration.test_admin_api_routing import CUSTOMER, get, hi_rules, send_sms
from tests.postgres import clean_schema, run_blocking
from tests.support import live_server, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.integration]


def test_messages_are_routed_and_sent_through_postgresql(tmp_path: Path, postgres_url: str) -> None:
    run_blocking(lambda: clean_schema(postgres_url))
    with live_server(
        tmp_path, routing=True, extra=hi_rules(tmp_path), storage_url=postgres_url
    ) as server:
        ready = httpx.get(server.base_url + "/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        event_id = send_sms(server, "PG1")

        def replied() -> bool:
            rows = get(server, "/api/outbox?channel=sms").json()
            return [row["status"] for row in rows] in (["sent"], ["delivered"])

        wait_for(replied, interval=0.05)
        [row] = get(server, "/api/outbox").json()
        assert (row["event_id"], row["to"], row["payload"]["text"]) == (
            event_id,
            CUSTOMER,
            "hi back",
        )
        shown = server.cli("events", "show", event_id, "--json")
        assert shown.exit_code == 0, shown.stderr
        assert shown.json()["runs"][0]["matched"] == ["hi"]
        conversation = get(server, f"/api/conversations/sms:{CUSTOMER}:+15559870000")
        assert conversation.status_code == 200, conversation.text
        assert httpx.get(server.base_url + "/api/outbox", timeout=10).status_code == 401
