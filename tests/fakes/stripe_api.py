"""A fake Stripe Events list on loopback, for the official `stripe` library (16.x)::

    with FakeStripe() as fake:
        client = StripeClient(fake.api_key, base_addresses={"api": fake.url},
                              http_client=stripe.HTTPXClient(), max_network_retries=0)
        page = await client.v1.events.list_async({"created": {"gte": 0}, "limit": 100})

What it reproduces: `GET /v1/events` with `created[gte]`, `limit` (1-100, default 10) and
`starting_after` (an event id; the page holds the events after it in the list's order),
newest first, answered as Stripe's list object (`object`, `data`, `has_more`, `url`); auth by
`Authorization: Bearer <api key>` (else 401 with Stripe's error object); an unknown
`starting_after` is 400 `resource_missing`. Faults as for every fake (`FaultScript`, op
"list"): `server_error(500)`, `rate_limited()` (429 `rate_limit`).

`add(type_, obj, created=)` puts an event the webhook did not deliver (the server was down):
its JSON is what the webhook body would be, and `event_json(id)` gives it back.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from tests.fakes._http import FakeHTTPService, Fault, Request, Response, first, respond

__all__ = ["FakeStripe", "rate_limited", "server_error"]


def _error(status: int, type_: str, code: str | None, message: str) -> Response:
    error = {"type": type_, "code": code, "message": message}
    return Response.json(status, {"error": {k: v for k, v in error.items() if v is not None}})


def server_error(status: int = 500) -> Fault:
    return respond(_error(status, "api_error", None, "An unknown error occurred"))


def rate_limited() -> Fault:
    return respond(_error(429, "invalid_request_error", "rate_limit", "Too many requests"))


class FakeStripe(FakeHTTPService):
    default_op = "list"

    def __init__(self, api_key: str = "sk_test_fake") -> None:
        super().__init__()
        self.api_key = api_key
        self.events: list[dict[str, Any]] = []  # oldest first

    def add(self, type_: str, obj: dict[str, Any], *, created: datetime | None = None) -> str:
        """An event Stripe holds (newest last); returns its id."""
        event_id = "evt_" + uuid.uuid4().hex[:24]
        event = {
            "id": event_id,
            "object": "event",
            "api_version": "2024-06-20",
            "created": int((created or datetime.now(UTC)).timestamp()),
            "data": {"object": obj},
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None},
            "type": type_,
        }
        with self.lock:
            self.events.append(event)
        return event_id

    def event_json(self, event_id: str) -> bytes:
        """The body its webhook would post."""
        with self.lock:
            [event] = [e for e in self.events if e["id"] == event_id]
            return json.dumps(event).encode()

    def route(self, request: Request) -> tuple[str, str | None]:
        if request.path == "/v1/events" and request.method == "GET":
            return "list", None
        return "other", None

    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or key != self.api_key:
            return _error(401, "invalid_request_error", None, "Invalid API Key provided")
        if op != "list":
            return _error(404, "invalid_request_error", None, "Unrecognized request URL")
        return self._list(request)

    def _list(self, request: Request) -> Response:
        query = request.query
        since = int(first(query, "created[gte]") or 0)
        limit = min(max(int(first(query, "limit") or 10), 1), 100)
        listed = [e for e in reversed(self.events) if e["created"] >= since]  # newest first
        after = first(query, "starting_after")
        if after is not None:
            ids = [e["id"] for e in listed]
            if after not in ids:
                return _error(400, "invalid_request_error", "resource_missing", "No such event")
            listed = listed[ids.index(after) + 1 :]
        page = listed[:limit]
        body = {
            "object": "list",
            "data": page,
            "has_more": len(listed) > limit,
            "url": "/v1/events",
        }
        return Response.json(200, body)
