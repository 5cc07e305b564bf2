"""The admin HTTP API (SPEC §10) through real HTTP on loopback: bearer auth, events, metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.cases.base import SignedRequest
from tests.cases.stripe import invoice, stripe_event
from tests.cases.stripe import signed as stripe_signed
from tests.cases.twilio import message_params, signed, status_params
from tests.support import ADMIN_TOKEN, PUBLIC_URL, SECRETS, LiveServer, live_server

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One server for the tests that only read (refusals, 404s, 400s)."""
    with live_server(tmp_path_factory.mktemp("admin")) as running:
        yield running


def twilio(unique: str, kind: str = "messages") -> SignedRequest:
    params = message_params(unique) if kind == "messages" else status_params(unique)
    return signed(PUBLIC_URL, f"/webhooks/twilio/{kind}", params, SECRETS["twilio"][0])


def get(server: LiveServer, path: str, **kwargs: Any) -> httpx.Response:
    headers = kwargs.pop("headers", AUTH)
    return httpx.get(server.base_url + path, headers=headers, timeout=10, **kwargs)


def webhook_counts(server: LiveServer) -> dict[tuple[str, str], float]:
    response = get(server, "/metrics")
    assert response.status_code == 200, response.text
    return {
        (sample.labels["source"], sample.labels["outcome"]): sample.value
        for family in text_string_to_metric_families(response.text)
        if family.name == "switchboard_webhooks"
        for sample in family.samples
        if sample.name == "switchboard_webhooks_total"
    }


@pytest.mark.parametrize("path", ["/metrics", "/api/events", "/api/events/01ANYTHING"])
@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        "Bearer",
        "Bearer wrong-token",
        f"Basic {ADMIN_TOKEN}",
        ADMIN_TOKEN,
        f"Bearer {ADMIN_TOKEN}x",
        f"Bearer {ADMIN_TOKEN[:-1]}",
    ],
)
def test_admin_endpoints_refuse_a_missing_or_wrong_token(
    shared: LiveServer, path: str, authorization: str | None
) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = get(shared, path, headers=headers)
    assert response.status_code == 401, response.text
    assert response.json()["error"]


@pytest.mark.parametrize("path", ["/metrics", "/api/events"])
def test_admin_endpoints_answer_the_right_token(shared: LiveServer, path: str) -> None:
    assert get(shared, path).status_code == 200
    assert get(shared, path, headers={"authorization": f"bearer {ADMIN_TOKEN}"}).status_code == 200


def test_api_events_lists_stored_events_newest_first(server: LiveServer) -> None:
    keys = [uuid.uuid4().hex for _ in range(3)]
    for key in keys:
        assert server.post(twilio(key)).status_code == 200
    assert server.post(twilio(keys[0], "status")).status_code == 200
    response = get(server, "/api/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    events = response.json()
    assert [e["dedupe_key"] for e in events] == [
        f"twilio:SM{keys[0]}:delivered",
        *(f"twilio:SM{key}" for key in reversed(keys)),
    ]
    first = events[-1]
    assert first["source"] == "twilio"
    assert first["type"] == "message.received"
    assert first["status"] == "received"
    assert first["contact"] == {"address": "+15551230001"}
    assert first["text"] == f"Hello {keys[0]} — ünïcödé ✓"


def test_api_events_filters(server: LiveServer) -> None:
    for key in ("F1", "F2"):
        assert server.post(twilio(key)).status_code == 200
    assert server.post(twilio("F1", "status")).status_code == 200

    def keys(**params: str) -> list[str]:
        response = get(server, "/api/events", params=params)
        assert response.status_code == 200, response.text
        return [e["dedupe_key"] for e in response.json()]

    assert keys(type="message.status") == ["twilio:SMF1:delivered"]
    assert keys(type="message.received", limit="1") == ["twilio:SMF2"]
    assert len(keys(source="twilio", status="received", since="1h")) == 3
    assert keys(source="stripe") == []
    assert keys(since="2999-01-01T00:00:00Z") == []


def test_api_events_pages_with_a_cursor_until_all_are_seen(server: LiveServer) -> None:
    sent = [f"PAGE{n:02d}" for n in range(7)]
    for key in sent:
        assert server.post(twilio(key)).status_code == 200
    seen: list[str] = []
    path = "/api/events?limit=3&source=twilio"
    pages = 0
    while path:
        response = get(server, path)
        assert response.status_code == 200, response.text
        seen += [e["dedupe_key"] for e in response.json()]
        pages += 1
        path = response.links.get("next", {}).get("url", "").removeprefix(server.base_url)
    assert pages == 3
    assert seen == [f"twilio:SM{key}" for key in reversed(sent)]


def test_api_events_page_stops_at_its_byte_budget(server: LiveServer) -> None:
    """A page holds at most about 1 MiB of events, whatever `limit` says; the rest follows."""
    for n in range(8):
        obj = {**invoice(str(n)), "description": "x" * 200_000}
        payload = stripe_event(f"evt_big{n}", "invoice.payment_failed", obj)
        assert (
            server.post(stripe_signed(payload, SECRETS["stripe"][0], int(time.time()))).status_code
            == 200
        )
    response = get(server, "/api/events?limit=200")
    first = response.json()
    assert len(response.content) <= 1024 * 1024 and len(first) == 5
    rest = get(server, response.links["next"]["url"].removeprefix(server.base_url)).json()
    assert [e["dedupe_key"] for e in first + rest] == [
        f"stripe:evt_big{n}" for n in reversed(range(8))
    ]


def test_api_event_by_id(server: LiveServer) -> None:
    assert server.post(twilio("ONE")).status_code == 200
    [listed] = get(server, "/api/events").json()
    response = get(server, f"/api/events/{listed['id']}")
    assert response.status_code == 200
    event = response.json()
    assert event["id"] == listed["id"]
    assert event["dedupe_key"] == "twilio:SMONE"
    assert {"runs", "outbox"} <= event.keys()


@pytest.mark.parametrize("event_id", ["01J00000000000000000000000", "nope", "%00", "..%2F.."])
def test_api_event_unknown_id_is_404(shared: LiveServer, event_id: str) -> None:
    response = get(shared, f"/api/events/{event_id}")
    assert response.status_code == 404, response.text
    assert response.json()["error"]


@pytest.mark.parametrize(
    "params",
    [
        {"limit": "abc"},
        {"limit": "0"},
        {"limit": "-1"},
        {"limit": "201"},
        {"limit": "9" * 5000},
        {"limit": "\uff11\uff10"},  # full-width digits: int() reads them, we do not
        {"limit": "1_0"},
        {"limit": " 10"},
        {"limit": "+10"},
        {"since": "\uff11\uff10m"},
        {"cursor": "not-an-id"},
        {"status": "bogus"},
        {"since": "yesterday"},
        {"since": "99999999w"},
        {"since": "0001-01-01T00:00:00+14:00"},
        {"since": "9999-12-31T23:59:59-14:00"},
    ],
)
def test_api_events_bad_query_is_400(shared: LiveServer, params: dict[str, str]) -> None:
    response = get(shared, "/api/events", params=params)
    assert response.status_code == 400, response.text
    assert response.json()["error"].startswith("bad query")


def test_metrics_count_webhooks_by_outcome(server: LiveServer) -> None:
    request = twilio("M1")
    assert server.post(request).status_code == 200
    assert server.post(request).status_code == 200
    assert server.post(twilio("M2")).status_code == 200
    forged = request.with_headers(X_Twilio_Signature="Zm9yZ2Vk")
    assert server.post(forged).status_code == 401
    counts = webhook_counts(server)
    assert counts[("twilio", "stored")] == 2
    assert counts[("twilio", "duplicate")] == 1
    assert counts[("twilio", "unauthorized")] == 1
    response = get(server, "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    assert "switchboard_ingest_seconds" in response.text
