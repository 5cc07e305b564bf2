"""No acknowledged event is lost across `kill -9` (SPEC §11).

`switchboard serve` runs as a subprocess; threads send distinct Twilio webhooks signed with
twilio's own `RequestValidator`; the server is SIGKILLed mid-load once some have been answered
200, restarted on the same database, and every acknowledged delivery must be there.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import message_params, signed
from tests.support import PUBLIC_URL, SECRETS, free_port, run_cli, server_process, wait_for

pytestmark = pytest.mark.integration

THREADS = 8
REQUESTS = 400
KILL_AFTER_ACKS = 120


def delivery(n: int) -> SignedRequest:
    params = message_params(f"CRASH{n:05d}")
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def dedupe_key(n: int) -> str:
    return f"twilio:SMCRASH{n:05d}"


@dataclass
class Load:
    """Shared by the sender threads: which deliveries were acknowledged, and when to stop."""

    acked: set[int] = field(default_factory=set)
    refused: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    killed: threading.Event = field(default_factory=threading.Event)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)


def send_all(base_url: str, numbers: list[int], load: Load) -> None:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        for n in numbers:
            if load.killed.is_set():
                return
            request = delivery(n)
            try:
                response = client.post(request.path, content=request.body, headers=request.headers)
            except httpx.TransportError:
                continue  # no answer: the provider would retry; not acknowledged
            with load.lock:
                if 200 <= response.status_code < 300:
                    load.acked.add(n)
                else:
                    load.refused.append(response.status_code)


def stored_keys(config_path: Path) -> list[str]:
    result = run_cli(config_path, "events", "list", "--json", "--limit", str(REQUESTS * 2))
    assert result.exit_code == 0, result.stderr
    return [event["dedupe_key"] for event in result.json()]


def test_every_acknowledged_delivery_survives_kill_9(tmp_path: Path) -> None:
    port = free_port()
    load = Load()
    with server_process(tmp_path, port=port, log_name="first.log") as first:
        shares = [list(range(i, REQUESTS, THREADS)) for i in range(THREADS)]
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            senders = [pool.submit(send_all, first.base_url, share, load) for share in shares]
            wait_for(lambda: load.acked_count() >= KILL_AFTER_ACKS, timeout=15)
            os.kill(first.process.pid, signal.SIGKILL)
            first.process.wait(timeout=10)
            load.killed.set()
            for sender in senders:
                sender.result(timeout=15)
    assert first.process.returncode == -signal.SIGKILL
    assert load.refused == [], "a 4xx/5xx under load means a bug, not a crash"
    acked = set(load.acked)
    assert KILL_AFTER_ACKS <= len(acked) < REQUESTS, "the kill did not land mid-load"

    with server_process(tmp_path, port=port, log_name="second.log") as second:
        keys = stored_keys(second.config_path)
        assert len(keys) == len(set(keys))
        missing = {dedupe_key(n) for n in acked} - set(keys)
        assert not missing, f"{len(missing)} acknowledged deliveries lost: {sorted(missing)[:5]}"
        with closing(sqlite3.connect(second.db_path)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

        # A provider retrying an acknowledged delivery after the restart: same 200, one event.
        again = delivery(min(acked))
        response = httpx.post(
            second.base_url + again.path, content=again.body, headers=again.headers, timeout=10
        )
        assert response.status_code == 200, response.text
        assert b"<Response/>" in response.content
        assert stored_keys(second.config_path).count(dedupe_key(min(acked))) == 1
        assert len(stored_keys(second.config_path)) == len(keys)
