"""The worker across `kill -9`, and its order (SPEC §8, §11).

`switchboard serve` runs as a subprocess with its worker; threads send signed SMS to many
conversations; the server is SIGKILLed again and again while the worker claims and commits.
After the last restart every acknowledged event is processed exactly once (one run) and the
outbox holds exactly one reply per event: a commit is all or nothing, and a claim that died
with its process is taken over when its lease expires.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.support import PUBLIC_URL, SECRETS, free_port, run_cli, server_process, wait_for

pytestmark = pytest.mark.integration

RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms}
    then:
      - reply: {text: "got {{ text }}"}
"""
OURS = "+15559870000"


def sms(customer: int, n: int) -> SignedRequest:
    params = {
        "MessageSid": f"SMC{customer:03d}N{n:04d}",
        "AccountSid": "AC" + "1" * 32,
        "From": f"+1555200{customer:04d}",
        "To": OURS,
        "Body": f"message {n}",
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def config(tmp_path: Path) -> dict[str, str]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "echo.yaml").write_text(RULES)
    # A short lease, so a claim that died with its process is taken over quickly.
    return {
        "extra": f'[rules]\npath = "{rules}"\n[worker]\nlease_seconds = 1\n'
        "batch_conversations = 8\nbatch_events = 4\n"
    }


def routed(db_path: Path) -> tuple[int, int]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        done = conn.execute("SELECT count(*) FROM events WHERE status = 'processed'").fetchone()
        total = conn.execute("SELECT count(*) FROM events").fetchone()
    return done[0], total[0]


def stored(config_path: Path) -> Counter[tuple[int, int]]:
    """The requests stored as events, `(customer, n)` read back from each event's sender and
    text (not its dedupe key), with how many events each became; through the CLI."""
    result = run_cli(config_path, "events", "list", "--json", "--limit", "100000")
    assert result.exit_code == 0, result.stderr
    return Counter(
        (int(event["contact"]["address"].removeprefix("+1555200")), int(event["text"].split()[1]))
        for event in result.json()
    )


def test_every_event_is_routed_once_across_repeated_kill_9(tmp_path: Path) -> None:
    port = free_port()
    options = config(tmp_path)
    customers, per_customer = 20, 15
    requests = [(c, n) for n in range(per_customer) for c in range(customers)]
    acked: set[tuple[int, int]] = set()
    refused: list[tuple[tuple[int, int], int]] = []  # answered, but not 200
    lock = threading.Lock()
    cursor = iter(requests)

    def send(base_url: str, stop: threading.Event) -> None:
        with httpx.Client(base_url=base_url, timeout=10) as client:
            while not stop.is_set():
                with lock:
                    item = next(cursor, None)
                if item is None:
                    return
                request = sms(*item)
                try:
                    response = client.post(
                        request.path, content=request.body, headers=request.headers
                    )
                except httpx.TransportError:
                    with lock:  # not acknowledged: the provider retries later
                        requeued.append(item)
                    continue
                with lock:
                    if response.status_code == 200:
                        acked.add(item)
                    else:
                        refused.append((item, response.status_code))

    requeued: list[tuple[int, int]] = []
    kills = 0
    config_path = tmp_path / "switchboard.toml"
    for round_ in range(6):
        if round_ == 5:  # between the last kill and the restart: what did kill -9 leave?
            survived = stored(config_path)
            assert set(survived.values()) == {1}, "a request was stored twice"
            lost = acked - set(survived)
            assert not lost, f"acknowledged, then lost to kill -9: {sorted(lost)}"
            # Stored but not acknowledged: only a request whose answer a kill cut off.
            unanswered = set(survived) - acked
            assert unanswered <= set(requeued), sorted(unanswered - set(requeued))
        with server_process(tmp_path, port=port, log_name=f"run{round_}.log", **options) as srv:
            if round_ == 5:  # the last run sends what was refused and lets everything settle
                cursor = iter(requeued + list(cursor))
                send(srv.base_url, threading.Event())
                wait_for(lambda: routed(srv.db_path)[0] == routed(srv.db_path)[1], timeout=60)
                break
            stop = threading.Event()
            with ThreadPoolExecutor(max_workers=4) as pool:
                senders = [pool.submit(send, srv.base_url, stop) for _ in range(4)]
                target = len(acked) + 40

                def enough(target: int = target, senders: list[Any] = senders) -> bool:
                    return len(acked) >= target or all(s.done() for s in senders)

                wait_for(enough, timeout=30)
                os.kill(srv.process.pid, signal.SIGKILL)  # mid-claim, mid-commit, anywhere
                srv.process.wait(timeout=10)
                kills += 1
                stop.set()
                for sender in senders:
                    sender.result(timeout=15)
    assert kills == 5
    assert refused == []
    # Every request was acknowledged at last (those cut off were sent again, as a provider
    # retries), and each is one event: none missing, none twice, none made up.
    assert acked == set(requests)
    assert stored(config_path) == Counter(requests)

    db_path = tmp_path / "var" / "switchboard.db"
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)) as conn:
        statuses = Counter(status for (status,) in conn.execute("SELECT status FROM events"))
        runs = Counter(eid for (eid,) in conn.execute("SELECT event_id FROM runs"))
        replies = conn.execute("SELECT id, event_id FROM outbox").fetchall()
        events = {eid for (eid,) in conn.execute("SELECT id FROM events")}
    assert statuses == {"processed": len(requests)}
    assert set(runs.values()) == {1}, "an event was routed twice"
    assert set(runs) == events
    assert sorted(eid for _, eid in replies) == sorted(events)  # one reply each
    assert all(row_id == f"{eid}:echo:0" for row_id, eid in replies)


def test_a_conversations_history_keeps_arrival_order_under_concurrency(tmp_path: Path) -> None:
    options = config(tmp_path)
    with server_process(tmp_path, **options) as srv:

        def ours() -> None:  # one customer writing 50 times, each after the previous answer
            with httpx.Client(base_url=srv.base_url, timeout=10) as client:
                for n in range(50):
                    request = sms(0, n)
                    response = client.post(
                        request.path, content=request.body, headers=request.headers
                    )
                    assert response.status_code == 200

        def others(customer: int) -> None:
            with httpx.Client(base_url=srv.base_url, timeout=10) as client:
                request = sms(customer, 0)
                assert (
                    client.post(
                        request.path, content=request.body, headers=request.headers
                    ).status_code
                    == 200
                )

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(ours)] + [pool.submit(others, c) for c in range(1, 51)]
            for future in futures:
                future.result(timeout=60)
        wait_for(lambda: routed(srv.db_path) == (100, 100), timeout=30)
        shown = run_cli(
            srv.config_path, "conversations", "show", f"sms:+15552000000:{OURS}", "--json"
        )
        assert shown.exit_code == 0, shown.stderr
        history = shown.json()["history"]
        inbound = [line["text"] for line in history if line["direction"] == "in"]
        # The history keeps the last 20 messages both ways: the last 10 inbound, in order.
        assert inbound == [f"message {n}" for n in range(40, 50)]
        replies = [line["text"] for line in history if line["direction"] == "out"]
        assert replies == [f"got message {n}" for n in range(40, 50)]
