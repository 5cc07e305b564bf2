"""`switchboard worker` alone: `serve` with `[worker] in_serve = false` only ingests, and a
worker process of its own on the same store routes and sends (sandbox), woken by serve's
commits rather than its poll, then stops cleanly."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.support import PUBLIC_URL, ROOT, SECRETS, run_cli, server_process, wait_for

pytestmark = pytest.mark.integration

RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms, type: message.received}
    then:
      - reply: {text: "got it"}
"""


def test_a_worker_process_routes_what_serve_stored(tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "echo.yaml").write_text(RULES)
    # Polls far longer than the test may wait: only the store's watch can wake the worker.
    extra = (
        f'[rules]\npath = "{rules}"\n[worker]\nin_serve = false\npoll_seconds = 600\n'
        "[dispatch]\npoll_seconds = 600\n"
    )
    with server_process(tmp_path, extra=extra) as srv:
        assert srv.post(_inbound("SMWORKER1")).status_code == 200
        assert [e["status"] for e in srv.events()] == ["received"]  # serve only ingests

        log = (tmp_path / "worker.log").open("wb")
        worker = subprocess.Popen(
            [sys.executable, "-m", "router", "--config", str(srv.config_path), "worker"],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:

            def replied(count: int) -> bool:
                rows = run_cli(srv.config_path, "outbox", "list", "--json").json()
                return [(r["payload"]["text"], r["status"]) for r in rows] == [
                    ("got it", "delivered")
                ] * count

            wait_for(lambda: replied(1), timeout=20, interval=0.1)  # found at start
            assert [e["status"] for e in srv.events()] == ["processed"]
            # Ingested while the worker waits: serve's commit wakes it across processes.
            assert srv.post(_inbound("SMWORKER2")).status_code == 200
            wait_for(lambda: replied(2), timeout=20, interval=0.1)
            assert [e["status"] for e in srv.events()] == ["processed", "processed"]
            worker.send_signal(signal.SIGTERM)
            assert worker.wait(timeout=15) == 0
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=10)
            log.close()
        assert "Traceback" not in (tmp_path / "worker.log").read_text()


def _inbound(sid: str) -> SignedRequest:
    params = {
        "MessageSid": sid,
        "AccountSid": "AC" + "1" * 32,
        "From": "+15551230001",
        "To": "+15559870000",
        "Body": "hello",
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])
