"""The whole pipeline on PostgreSQL: the real app on loopback, its worker and dispatcher, the
CLI, all on the session's database instead of a SQLite file."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.integration.test_admin_api_routing import (
    CUSTOMER,
    get,
    hi_rules,
    message_params,
    send_sms,
)
from tests.postgres import clean_schema, run_blocking
from tests.router.test_store_postgres import Proxy
from tests.support import PUBLIC_URL, SECRETS, live_server, wait_for

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


class ThreadedProxy:
    """`tests.router.test_store_postgres.Proxy` on an event loop of its own, for a test whose
    server runs in another thread: `cut()` is the database gone, `restore()` back."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._proxy = Proxy(parts.hostname or "127.0.0.1", parts.port or 5432)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._run(self._proxy.start())
        self.url = urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{self.port}"))

    @property
    def port(self) -> int:
        return self._proxy.port

    def _run(self, work: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(work, self._loop).result(timeout=10)

    def cut(self) -> None:
        self._run(self._proxy.cut())

    def restore(self) -> None:
        self._run(self._proxy.start())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.cut()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


def test_while_the_database_is_unreachable_providers_get_503_and_nothing_is_lost(
    tmp_path: Path, postgres_url: str
) -> None:
    run_blocking(lambda: clean_schema(postgres_url))
    proxy = ThreadedProxy(postgres_url)
    try:
        with live_server(tmp_path, storage_url=proxy.url) as server:
            assert httpx.get(server.base_url + "/readyz", timeout=10).status_code == 200
            assert server.post(inbound("PGDOWN1")).status_code == 200

            proxy.cut()
            assert server.post(inbound("PGDOWN2")).status_code == 503  # Twilio retries
            ready = httpx.get(server.base_url + "/readyz", timeout=10)
            assert ready.status_code == 503, ready.text

            proxy.restore()
            wait_for(
                lambda: httpx.get(server.base_url + "/readyz", timeout=10).status_code == 200,
                timeout=20,
                interval=0.1,
            )
            assert server.post(inbound("PGDOWN2")).status_code == 200  # the retry lands
            keys = sorted(e["dedupe_key"] for e in get(server, "/api/events").json())
            assert keys == ["twilio:SMPGDOWN1", "twilio:SMPGDOWN2"]
    finally:
        proxy.close()


def inbound(unique: str) -> SignedRequest:
    params = {**message_params(unique), "From": CUSTOMER}
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
