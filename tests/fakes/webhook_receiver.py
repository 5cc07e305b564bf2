"""An HTTP endpoint on loopback that receives Standard Webhooks, as a customer's would.

    with WebhookReceiver("whsec_...") as hook:
        httpx.post(hook.url + "/hooks/a", content=body, headers=signed_headers)
        assert hook.unique_count() == 1

What it reproduces (`../shared/notes/outbound-providers.md` §4):

- Verification with the reference library, `standardwebhooks.Webhook(secret).verify` (v1
  HMAC over `{id}.{timestamp}.{body}`, several signatures allowed, ±5 min on the timestamp):
  a request that fails is answered 401 and kept in `rejected` with the reason.
- Dedupe on `webhook-id`: the first delivery of an id is kept in `received`; later ones (a
  resend after a lost answer) are answered 2xx too and counted in `duplicates[id]`.
- Scripted answers (`FakeHTTPService` faults, op "deliver", key = the request path):
  `status(500)`, `throttled(retry_after)` (429 with Retry-After), `gone()` (410: disable the
  endpoint), and the generic `timeout`, `reset`, `accept_then_drop` (recorded, answer lost).

Counters: `received` (`Delivery`: id, timestamp header, path, body, parsed JSON or None,
monotonic and wall times), `unique_count()`, `duplicates`, `rejected`, `attempts` (every
verified request, duplicates included), plus `calls` and `applied`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from tests.fakes._http import (
    FakeHTTPService,
    Fault,
    Request,
    Response,
    accept_then_drop,
    reset,
    respond,
    timeout,
)

__all__ = [
    "Delivery",
    "WebhookReceiver",
    "accept_then_drop",
    "gone",
    "reset",
    "status",
    "throttled",
    "timeout",
]


def status(code: int) -> Fault:
    return respond(Response(code, b"scripted failure"), label=str(code))


def throttled(retry_after: int = 1) -> Fault:
    return respond(Response(429, b"slow down", (("Retry-After", str(retry_after)),)), label="429")


def gone() -> Fault:
    return respond(Response(410, b"endpoint disabled"), label="410")


@dataclass(frozen=True)
class Delivery:
    webhook_id: str
    timestamp: str
    path: str
    body: bytes
    payload: Any
    received_at: float  # time.monotonic()
    received_wall: datetime


class WebhookReceiver(FakeHTTPService):
    default_op = "deliver"

    def __init__(self, secret: str, *, answer_status: int = 204) -> None:
        super().__init__()
        self.secret = secret
        self.webhook = Webhook(secret)
        self.answer_status = answer_status
        self.received: list[Delivery] = []
        self.attempts: list[tuple[str, float]] = []
        self.duplicates: Counter[str] = Counter()
        self.rejected: list[tuple[str, str]] = []  # (path, reason)
        self._seen: set[str] = set()

    def unique_count(self) -> int:
        with self.lock:
            return len(self.received)

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.received)

    def route(self, request: Request) -> tuple[str, str | None]:
        return "deliver", request.path

    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        headers = dict(request.headers)
        try:
            self.webhook.verify(request.body, headers, json_parse=False)
        except (WebhookVerificationError, ValueError) as exc:
            self.rejected.append((request.path, str(exc)))
            return Response(401, b"invalid signature")
        webhook_id = headers["webhook-id"]
        now = time.monotonic()
        self.attempts.append((webhook_id, now))
        if webhook_id in self._seen:
            self.duplicates[webhook_id] += 1
        else:
            self._seen.add(webhook_id)
            try:
                payload: Any = json.loads(request.body)
            except ValueError:
                payload = None
            self.received.append(
                Delivery(
                    webhook_id,
                    headers["webhook-timestamp"],
                    request.path,
                    request.body,
                    payload,
                    now,
                    datetime.now(UTC),
                )
            )
        return Response(self.answer_status)
