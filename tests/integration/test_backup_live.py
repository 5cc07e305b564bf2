"""Backups of a live `switchboard serve` (SPEC §12): taken while 1,000 signed Twilio webhooks
are being ingested, restored into a new install that serves them; a restore refused while the
server holds the store; scheduled backups with `keep`."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from router.store.backup import latest_backup
from tests.cases.base import SignedRequest
from tests.cases.twilio import message_params, signed
from tests.support import (
    ADMIN_TOKEN,
    PUBLIC_URL,
    SECRETS,
    config_text,
    run_cli,
    server_process,
    wait_for,
)

pytestmark = pytest.mark.integration

THREADS = 4
REQUESTS = 1000
BACKUP_AFTER_ACKS = 250


def delivery(n: int) -> SignedRequest:
    params = message_params(f"BACKUP{n:05d}")
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def dedupe_key(n: int) -> str:
    return f"twilio:SMBACKUP{n:05d}"


@dataclass
class Load:
    acked: set[int] = field(default_factory=set)
    refused: list[int] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def acked_now(self) -> set[int]:
        with self.lock:
            return set(self.acked)


def send_all(base_url: str, numbers: list[int], load: Load) -> None:
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for n in numbers:
            request = delivery(n)
            response = client.post(request.path, content=request.body, headers=request.headers)
            with load.lock:
                if response.status_code == 200:
                    load.acked.add(n)
                else:
                    load.refused.append(response.status_code)


def keys_in(db: Path) -> set[str]:
    with closing(sqlite3.connect(db)) as conn:
        return {row[0] for row in conn.execute("SELECT dedupe_key FROM events")}


def test_backup_under_load_holds_every_acknowledged_event_and_restores(tmp_path: Path) -> None:
    live, copy = tmp_path / "live", tmp_path / "copy"
    live.mkdir()
    load = Load()
    with server_process(live) as server:
        shares = [list(range(i, REQUESTS, THREADS)) for i in range(THREADS)]
        with ThreadPoolExecutor(max_workers=THREADS) as pool:
            senders = [pool.submit(send_all, server.base_url, s, load) for s in shares]
            wait_for(lambda: len(load.acked_now()) >= BACKUP_AFTER_ACKS, timeout=30)
            before = load.acked_now()
            taken = run_cli(server.config_path, "backup", str(copy), "--json")
            during = len(load.acked_now())
            refused = run_cli(server.config_path, "restore", str(copy), "--force")
            for sender in senders:
                sender.result(timeout=60)
        assert taken.exit_code == 0, taken.stderr
        assert during < REQUESTS, "the load ended before the backup did: it proves nothing"
        assert refused.exit_code == 1
        assert "in use" in refused.stderr
        assert not server.db_path.with_name("switchboard.db.pre-restore").exists()
    assert load.refused == []

    with closing(sqlite3.connect(copy / "switchboard.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    in_copy = keys_in(copy / "switchboard.db")
    missing = {dedupe_key(n) for n in before} - in_copy
    assert not missing, f"{len(missing)} acknowledged events missing: {sorted(missing)[:5]}"
    assert len(in_copy) < REQUESTS  # a snapshot taken mid-load, not after it
    assert taken.json()["counts"]["events"] == len(in_copy)

    _serves_the_restored_copy(tmp_path / "restored", copy, before, len(in_copy))


def _serves_the_restored_copy(root: Path, copy: Path, acked: set[int], count: int) -> None:
    root.mkdir()
    config = root / "switchboard.toml"
    config.write_text(config_text(root / "var" / "switchboard.db"))
    restored = run_cli(config, "restore", str(copy))
    assert restored.exit_code == 0, restored.stderr
    with server_process(root) as server:
        listed = server.events()
        assert len(listed) == count
        by_key = {event["dedupe_key"]: event["id"] for event in listed}
        sample = sorted(acked)[:: max(len(acked) // 20, 1)]
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        for n in sample:
            url = f"{server.base_url}/api/events/{by_key[dedupe_key(n)]}"
            answer = httpx.get(url, headers=auth)
            assert answer.status_code == 200, answer.text
            assert answer.json()["dedupe_key"] == dedupe_key(n)
        # The provider retrying an event the backup holds: a duplicate, still one event.
        again = server.post(delivery(min(acked)))
        assert again.status_code == 200
        assert len(server.events()) == count


def test_serve_takes_scheduled_backups_and_keeps_the_newest(tmp_path: Path) -> None:
    root = tmp_path / "backups"
    extra = f'\n[backup]\ndir = "{root}"\ninterval = "0.2s"\nkeep = 2\n'
    seen: set[str] = set()

    def rotated() -> bool:
        complete = sorted(p.name for p in root.glob("*/manifest.json")) if root.exists() else []
        current = [p.name for p in root.iterdir()] if root.exists() else []
        seen.update(current)
        return len(seen) >= 5 and len(complete) == len(current) == 2

    with server_process(tmp_path, extra=extra) as server:
        server.post(delivery(1))
        wait_for(rotated, timeout=30, interval=0.02)
    newest = latest_backup(root)
    assert newest is not None
    assert dedupe_key(1) in keys_in(newest[1] / "switchboard.db")
