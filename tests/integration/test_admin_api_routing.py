"""The admin API's routing side (SPEC §10) through real HTTP on loopback: an event with its runs
and outbox rows, `/api/outbox`, `/api/conversations/{key}`; bearer auth, 400, 404 and 503."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from router.store.sqlite import sqlite_path
from tests.cases.stripe import invoice, stripe_event
from tests.cases.stripe import signed as stripe_signed
from tests.cases.twilio import message_params, signed
from tests.support import (
    ADMIN_TOKEN,
    PUBLIC_URL,
    SECRETS,
    LiveServer,
    live_server,
    wait_for,
)

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMER = "+15551230001"
OTHER = "+15551230004"
OURS = "+15559870000"
KEY = f"sms:{CUSTOMER}:{OURS}"
HI_RULES = """version: 1
rules:
  - id: hi
    when: {channel: sms}
    then:
      - reply: {text: "hi back"}
"""
FORWARD_RULES = """version: 1
rules:
  - id: crm
    when: {source: stripe}
    then:
      - forward: {to: crm}
"""
#: Where a reply can be while the dispatcher (sandbox senders in tests) takes it out.
ON_ITS_WAY = {"pending", "sending", "sent", "delivered"}
NEW_PATHS = ["/api/outbox", f"/api/conversations/{KEY}", "/api/events/01ANYTHING"]


def get(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    return httpx.get(server.base_url + path, headers=headers, timeout=10, **kwargs)


def send_sms(server: LiveServer, unique: str, sender: str = CUSTOMER) -> str:
    """POST a signed Twilio SMS; the id of its event, once the worker has routed it."""
    params = {**message_params(unique), "From": sender}
    request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
    assert server.post(request).status_code == 200
    [event] = get(server, "/api/events?source=twilio").json()[:1]
    assert event["dedupe_key"] == f"twilio:SM{unique}"
    wait_for(
        lambda: get(server, f"/api/events/{event['id']}").json()["status"] == "processed",
        interval=0.05,
    )
    event_id: str = event["id"]
    return event_id


def settled(detail: dict[str, Any]) -> dict[str, Any]:
    """An event's detail without what the dispatcher changes as it sends."""
    moving = {"status", "attempts", "provider_message_id", "last_error", "not_before"}
    outbox = [{k: v for k, v in row.items() if k not in moving} for row in detail["outbox"]]
    return {**detail, "outbox": outbox}


def hi_rules(root: Path) -> str:
    folder = root / "rules"
    folder.mkdir()
    (folder / "hi.yaml").write_text(HI_RULES)
    return f'[rules]\npath = "{folder}"\n'


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, list[str]]]:
    """A server that has routed two messages from two customers (oldest first)."""
    root = tmp_path_factory.mktemp("admin-routing")
    with live_server(root, routing=True, extra=hi_rules(root)) as server:
        yield server, [send_sms(server, "API1"), send_sms(server, "API2", OTHER)]


def test_event_with_its_run_and_outbox_row(routed: tuple[LiveServer, list[str]]) -> None:
    server, (event_id, _) = routed
    response = get(server, f"/api/events/{event_id}")
    assert response.status_code == 200, response.text
    event = response.json()
    [run] = event["runs"]
    assert run["matched"] == ["hi"] and run["error"] is None
    [row] = event["outbox"]
    assert run["outbox_ids"] == [row["id"]]
    assert (row["to"], row["channel"], row["kind"]) == (CUSTOMER, "sms", "reply")
    assert row["status"] in ON_ITS_WAY
    assert row["payload"]["text"] == "hi back"
    # The CLI prints the very same object.
    cli = server.cli("events", "show", event_id, "--json")
    assert cli.exit_code == 0 and settled(cli.json()) == settled(event)


def test_outbox_lists_and_filters(routed: tuple[LiveServer, list[str]]) -> None:
    server, (first, second) = routed
    rows = get(server, "/api/outbox?channel=sms").json()
    assert [row["event_id"] for row in rows] == [second, first]  # newest first
    cli = server.cli("outbox", "list", "--channel", "sms", "--json").json()
    assert [row["id"] for row in rows] == [row["id"] for row in cli]
    for query in (f"to={quote(CUSTOMER)}", f"to={CUSTOMER}", "to=%2B1%20555%20123%200001"):
        [mine] = get(server, f"/api/outbox?{query}").json()  # a bare `+` arrives as a space
        assert mine["event_id"] == first, query
    assert get(server, "/api/outbox?channel=slack").json() == []
    assert get(server, "/api/outbox?status=dead").json() == []

    def listed_under_its_status() -> bool:
        """A row is among the rows of the status it has (it may move on meanwhile)."""
        status = get(server, f"/api/outbox?to={quote(CUSTOMER)}").json()[0]["status"]
        found = get(server, f"/api/outbox?status={status}").json()
        assert all(row["status"] == status for row in found)
        return first in [row["event_id"] for row in found]

    wait_for(listed_under_its_status, interval=0.05)


def test_outbox_pages_by_link(routed: tuple[LiveServer, list[str]]) -> None:
    server, (first, second) = routed
    page = get(server, "/api/outbox?limit=1&channel=sms")
    assert [row["event_id"] for row in page.json()] == [second]
    following = get(server, page.links["next"]["url"])
    assert [row["event_id"] for row in following.json()] == [first]
    assert "next" not in following.links


@pytest.mark.parametrize(
    "query",
    [
        "status=lost",
        "channel=fax",
        "limit=0",
        "limit=201",
        "limit=ten",
        "limit=%EF%BC%91",
        "cursor=garbage",
        "cursor=",
        "cursor=01J00000000000000000000000",  # an event id, not a row's
        "cursor=01J00000000000000000000000:hi:0%0A",
        "cursor=01J00000000000000000000000:" + "x" * 400,
    ],
)
def test_outbox_bad_query_is_400(routed: tuple[LiveServer, list[str]], query: str) -> None:
    response = get(routed[0], f"/api/outbox?{query}")
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("bad query")


def test_outbox_page_stops_at_its_byte_budget(tmp_path: Path) -> None:
    """Like /api/events: a page holds at most about 1 MiB of rows, whatever `limit` says, and
    the `Link` header gives the rest (a forward row carries its whole event, 200 kB here)."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "crm.yaml").write_text(FORWARD_RULES)
    with live_server(tmp_path, routing=True, extra=f'[rules]\npath = "{rules}"\n') as server:
        for n in range(8):
            obj = {**invoice(str(n)), "description": "x" * 200_000}
            payload = stripe_event(f"evt_big{n}", "invoice.payment_failed", obj)
            request = stripe_signed(payload, SECRETS["stripe"][0], int(time.time()))
            assert server.post(request).status_code == 200
        wait_for(
            lambda: sum(e["status"] == "processed" for e in server.events()) == 8, interval=0.05
        )
        response = get(server, "/api/outbox?limit=200&channel=http")
        assert response.status_code == 200, response.text
        first = response.json()
        assert len(response.content) <= 1024 * 1024 and len(first) == 5
        assert response.links["next"]["url"].startswith("/api/outbox?")
        rest = get(server, response.links["next"]["url"])
        assert "next" not in rest.links
        events = {e["id"]: e["dedupe_key"] for e in server.events()}
        assert [events[row["event_id"]] for row in first + rest.json()] == [
            f"stripe:evt_big{n}" for n in reversed(range(8))
        ]


@pytest.mark.parametrize(
    "path",
    [
        f"/api/conversations/{KEY}",
        f"/api/conversations/{quote(KEY, safe='')}",  # sms%3A%2B1555...
        f"/api/conversations/{quote(KEY, safe=':')}",
    ],
)
def test_conversation_by_key(routed: tuple[LiveServer, list[str]], path: str) -> None:
    server, (event_id, _) = routed
    response = get(server, path)
    assert response.status_code == 200, response.text
    shown = response.json()
    assert (shown["key"], shown["state"], shown["contact"]) == (KEY, "bot", CUSTOMER)
    inbound, reply = shown["history"]
    assert (inbound["direction"], inbound["event_id"]) == ("in", event_id)
    assert (reply["direction"], reply["text"]) == ("out", "hi back")
    assert shown == server.cli("conversations", "show", KEY, "--json").json()


@pytest.mark.parametrize(
    "key", ["sms:+15550000000:+15559870000", "nope", "%00", "sms%3A%2B15550000000"]
)
def test_unknown_conversation_is_404(routed: tuple[LiveServer, list[str]], key: str) -> None:
    response = get(routed[0], f"/api/conversations/{key}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]


@pytest.mark.parametrize("path", NEW_PATHS)
@pytest.mark.parametrize(
    "authorization", [None, "Bearer", "Bearer wrong-token", f"Basic {ADMIN_TOKEN}"]
)
def test_bearer_token_is_required(
    routed: tuple[LiveServer, list[str]], path: str, authorization: str | None
) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    response = get(routed[0], path, headers=headers)
    assert response.status_code == 401, response.text
    assert "history" not in response.text and "payload" not in response.text


@contextmanager
def moved_aside(db: Path, *tables: str) -> Iterator[None]:
    """Another connection renames `tables` until exit, then names them back; meanwhile the
    store's reads of them fail (`no such table`), which it reports as unavailable."""
    with closing(sqlite3.connect(db, isolation_level=None)) as other:
        rename = "".join(f"ALTER TABLE {name} RENAME TO {name}_aside;" for name in tables)
        other.executescript(f"BEGIN IMMEDIATE; {rename} COMMIT;")
        try:
            yield
        finally:
            back = "".join(f"ALTER TABLE {name}_aside RENAME TO {name};" for name in tables)
            other.executescript(f"BEGIN IMMEDIATE; {back} COMMIT;")


def test_store_unavailable_is_503_and_then_recovers(tmp_path: Path) -> None:
    """Reads that fail are a 503, and the answers come back once the reads work again.

    Not a lock: in WAL mode every open connection holds a shared lock on the file, so no other
    connection is granted the exclusive lock that would shut the store's reads out. A database
    changed underneath does fail them: the tables these routes read are moved aside."""
    with live_server(tmp_path, routing=True, extra=hi_rules(tmp_path)) as server:
        event_id = send_sms(server, "ASIDE")
        paths = [path.replace("01ANYTHING", event_id) for path in NEW_PATHS]
        with moved_aside(sqlite_path(server.settings.storage.url), "outbox", "conversations"):
            for path in paths:
                response = get(server, path)
                assert response.status_code == 503, response.text
                assert response.json() == {"error": "store unavailable"}
        assert [get(server, path).status_code for path in paths] == [200, 200, 200]
