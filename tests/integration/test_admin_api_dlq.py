"""The admin API's dead letters (SPEC §10) through real HTTP on loopback: `GET /api/dlq`,
`POST /api/dlq/{id}/retry` and `POST /api/dlq/{id}/discard`, with the server's own worker and
dispatcher sending replies to the fake Twilio API, which refuses the first send to each
customer with 21211 (invalid number: permanent, so the row is dead at once). The rules and the
SMS channel are those of the dispatcher's end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cases.twilio import message_params, signed
from tests.fakes.twilio_api import FakeTwilio, twilio_error
from tests.integration.test_dispatch_e2e import OURS, options
from tests.support import ADMIN_TOKEN, PUBLIC_URL, SECRETS, LiveServer, live_server, wait_for

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
CUSTOMERS = ["+15551230001", "+15551230002", "+15551230003"]


def get(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    return httpx.get(server.base_url + path, headers=headers, timeout=10, **kwargs)


def post(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    return httpx.post(server.base_url + path, headers=headers, timeout=10, **kwargs)


@pytest.fixture
def fake() -> Iterator[FakeTwilio]:
    with FakeTwilio(auth_token=SECRETS["twilio"][0]) as running:
        for number in CUSTOMERS:
            running.fail_for(number, twilio_error(21211), times=1)
        yield running


@pytest.fixture
def dead(tmp_path: Path, fake: FakeTwilio) -> Iterator[tuple[LiveServer, dict[str, str]]]:
    """A server whose replies to CUSTOMERS are dead letters: the server and each customer's
    dead row id, by number."""
    with live_server(tmp_path, routing=True, **options(tmp_path, fake)) as server:
        for n, number in enumerate(CUSTOMERS):
            params = {**message_params(f"DLQ{n}"), "From": number, "To": OURS}
            request = signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
            assert server.post(request).status_code == 200
        wait_for(lambda: len(get(server, "/api/dlq").json()) == len(CUSTOMERS))
        yield server, {row["to"]: row["id"] for row in get(server, "/api/dlq").json()}


def outbox_row(server: LiveServer, outbox_id: str) -> dict[str, Any]:
    rows = get(server, "/api/outbox", params={"limit": "200"}).json()
    [row] = [row for row in rows if row["id"] == outbox_id]
    return row


def test_dlq_lists_dead_rows_with_attempts_and_error_newest_first(
    dead: tuple[LiveServer, dict[str, str]],
) -> None:
    server, _ = dead
    response = get(server, "/api/dlq")
    assert response.status_code == 200, response.text
    rows = response.json()
    assert [row["to"] for row in rows] == CUSTOMERS[::-1]
    for row in rows:
        assert row["status"] == "dead"
        assert row["channel"] == "sms"
        assert row["attempts"] == 1
        assert row["error_code"] == "21211"
        assert "21211" in row["last_error"]
        [attempt] = row["attempts_made"]
        assert attempt["outcome"] == "dead"
        assert attempt["error_code"] == "21211"
    # The same objects as `switchboard dlq list --json`.
    assert server.cli("dlq", "list", "--json").json() == rows


def test_dlq_filters_and_pages_like_the_outbox(dead: tuple[LiveServer, dict[str, str]]) -> None:
    server, ids = dead

    def listed(**params: str) -> list[str]:
        response = get(server, "/api/dlq", params=params)
        assert response.status_code == 200, response.text
        return [row["to"] for row in response.json()]

    assert listed(to=CUSTOMERS[1]) == [CUSTOMERS[1]]
    assert listed(channel="email") == []
    assert listed(status="dead", channel="sms") == CUSTOMERS[::-1]
    seen: list[str] = []
    path: str | None = "/api/dlq?limit=2"
    while path is not None:
        response = get(server, path)
        assert response.status_code == 200, response.text
        seen += [row["id"] for row in response.json()]
        link = response.headers.get("link")
        path = link[link.index("/api/") : link.index(">")] if link else None
    assert seen == [ids[number] for number in CUSTOMERS[::-1]]
    for bad in ({"status": "sent"}, {"limit": "0"}, {"cursor": "nope"}, {"channel": "fax"}):
        response = get(server, "/api/dlq", params=bad)
        assert response.status_code == 400, bad
        assert response.json()["error"].startswith("bad query")


def test_retry_queues_the_row_and_the_dispatcher_sends_it_once(
    dead: tuple[LiveServer, dict[str, str]], fake: FakeTwilio
) -> None:
    server, ids = dead
    customer = CUSTOMERS[0]
    assert fake.accepted_to(customer) == []
    response = post(server, f"/api/dlq/{ids[customer]}/retry")
    assert response.status_code == 200, response.text
    row = response.json()
    assert row["id"] == ids[customer]
    assert row["attempts"] == 0
    assert row["status"] in {"pending", "sending", "sent"}  # the dispatcher is quick
    wait_for(lambda: outbox_row(server, ids[customer])["status"] == "sent")
    [message] = fake.accepted_to(customer)
    assert message.body.startswith("got Hello DLQ0")
    assert [r["to"] for r in get(server, "/api/dlq").json()] == CUSTOMERS[:0:-1]
    again = post(server, f"/api/dlq/{ids[customer]}/retry")
    assert again.status_code == 409
    assert again.json()["error"] == f"{ids[customer]} is sent, not dead"
    assert len(fake.accepted_to(customer)) == 1


def test_discard_cancels_with_the_reason_given_or_a_default(
    dead: tuple[LiveServer, dict[str, str]], fake: FakeTwilio
) -> None:
    server, ids = dead
    given, default = CUSTOMERS[1], CUSTOMERS[2]
    response = post(
        server, f"/api/dlq/{ids[given]}/discard", json={"reason": "number out of service"}
    )
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert response.json()["last_error"] == "number out of service"
    response = post(server, f"/api/dlq/{ids[default]}/discard")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    assert "admin API" in response.json()["last_error"]
    assert outbox_row(server, ids[given])["status"] == "cancelled"
    assert [r["to"] for r in get(server, "/api/dlq").json()] == [CUSTOMERS[0]]
    again = post(server, f"/api/dlq/{ids[given]}/discard")
    assert again.status_code == 409
    assert again.json()["error"] == f"{ids[given]} is cancelled, not dead"
    assert post(server, f"/api/dlq/{ids[given]}/retry").status_code == 409
    assert fake.accepted_to(given) == fake.accepted_to(default) == []


@pytest.mark.parametrize(
    "body",
    [b"not json", b'{"reason": 3}', b'{"why": "x"}', b'{"reason": ""}', b'{"reason": "a\\nb"}'],
)
def test_discard_refuses_a_malformed_body(
    dead: tuple[LiveServer, dict[str, str]], body: bytes
) -> None:
    server, ids = dead
    response = post(server, f"/api/dlq/{ids[CUSTOMERS[0]]}/discard", content=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("bad discard request")
    assert get(server, "/api/dlq").json()[-1]["status"] == "dead"


def test_unknown_ids_are_404_and_a_missing_or_wrong_token_401(
    dead: tuple[LiveServer, dict[str, str]],
) -> None:
    server, ids = dead
    known = ids[CUSTOMERS[0]]
    event_id = known.partition(":")[0]
    for unknown in (f"{event_id}:nope:0", "01ARZ3NDEKTSV4RRFFQ69G5FAV:hi:0", "garbage"):
        for action in ("retry", "discard"):
            response = post(server, f"/api/dlq/{unknown}/{action}")
            assert response.status_code == 404, (unknown, action)
            assert response.json()["error"] == f"no outbox row {unknown}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": ADMIN_TOKEN}):
        assert get(server, "/api/dlq", headers=headers).status_code == 401
        for action in ("retry", "discard"):
            response = post(server, f"/api/dlq/{known}/{action}", headers=headers)
            assert response.status_code == 401
    assert len(get(server, "/api/dlq").json()) == len(CUSTOMERS)
