"""PostgreSQL faults under load: the database ends every connection of the server
(`pg_terminate_backend`, what a failover or an operator does) in rounds while signed webhooks
arrive and /readyz is polled, then refuses connections for a while. Providers and load
balancers hear only 2xx or 503 (never 500), /readyz says why while it answers 503, nothing
acknowledged is lost, and the server recovers without a restart.

The server is `switchboard serve` in a process of its own (its worker routes what it stores), on
a database of its own, so the terminations reach only its connections.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.cases.twilio import message_params, signed
from tests.postgres import SERVER, run_blocking, with_database
from tests.support import PUBLIC_URL, SECRETS, ServerProcess, server_process, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.integration]

#: Rounds of terminations while the load runs; each waits for the load to make progress again.
ROUNDS = 12
#: Acknowledgements between two rounds: the server recovered and works again.
ACKS_PER_ROUND = 60


class Load:
    """Signed SMS webhooks from `posters` threads and a /readyz poller, until `stop`."""

    def __init__(self, base_url: str, posters: int = 6) -> None:
        self.base_url = base_url
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.webhooks: Counter[int] = Counter()
        self.acked: set[str] = set()
        self.readyz: Counter[int] = Counter()
        #: The bodies of every /readyz answer other than 200 (what a load balancer reads).
        self.not_ready: list[dict[str, Any]] = []
        self.threads = [threading.Thread(target=self._post, args=(i,)) for i in range(posters)]
        self.threads.append(threading.Thread(target=self._poll_readyz))

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)

    def acked_count(self) -> int:
        with self.lock:
            return len(self.acked)

    def wait_for_acks(self, more: int) -> None:
        """Until `more` webhooks more than now were acknowledged: the server works (again)."""
        wanted = self.acked_count() + more
        wait_for(lambda: self.acked_count() >= wanted, timeout=15)

    def _post(self, poster: int) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                unique = f"P{poster}N{n}"
                params = {**message_params(unique), "From": f"+1555123{poster:04d}"}
                request = signed(
                    PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0]
                )
                status = client.post(request.path, content=request.body, headers=request.headers)
                with self.lock:
                    self.webhooks[status.status_code] += 1
                    if status.status_code == 200:
                        self.acked.add(f"twilio:SM{unique}")

    def _poll_readyz(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=30) as client:
            while not self.stop.is_set():
                answer = client.get("/readyz")
                with self.lock:
                    self.readyz[answer.status_code] += 1
                    if answer.status_code != 200:
                        self.not_ready.append({**answer.json(), "http": answer.status_code})


def admin(url: str, sql: str, *args: Any) -> list[asyncpg.Record]:
    """One statement in the server's `postgres` database (about the test database `url`)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(with_database(url, "postgres"), timeout=5)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql, *args)
            return rows
        finally:
            await conn.close()

    return run_blocking(run)


def terminate_all(url: str, database: str) -> int:
    """End every connection to `database`; how many there were."""
    rows = admin(
        url,
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = $1 AND pid <> pg_backend_pid()",
        database,
    )
    count: int = rows[0][0]
    return count


def statuses(url: str) -> dict[str, str]:
    """Every stored event's status by dedupe key."""

    async def run() -> dict[str, str]:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            return {r[0]: r[1] for r in await conn.fetch("SELECT dedupe_key, status FROM events")}
        finally:
            await conn.close()

    return run_blocking(run)


def readyz(server: ServerProcess) -> httpx.Response:
    return httpx.get(server.base_url + "/readyz", timeout=30)


@pytest.fixture
def database() -> Iterator[str]:
    with SERVER.own_database() as url:
        yield url


def test_terminations_under_load_answer_only_2xx_or_503_lose_nothing_and_recover(
    tmp_path: Path, database: str
) -> None:
    name = database.rsplit("/", 1)[1]
    # A lane whose routing commit failed is claimed again once its lease ends: soon, here.
    worker = "[worker]\nlease_seconds = 2\n"
    with server_process(tmp_path, storage_url=database, extra=worker) as server:
        with Load(server.base_url) as load:
            terminated = []
            for _ in range(ROUNDS):
                load.wait_for_acks(ACKS_PER_ROUND)
                terminated.append(terminate_all(database, name))

            # An outage: every connection ended and no new one accepted.
            admin(database, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
            try:
                terminate_all(database, name)
                wait_for(lambda: readyz(server).status_code == 503, timeout=15)
                down = readyz(server)
            finally:
                admin(database, f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
            wait_for(lambda: readyz(server).status_code == 200, timeout=15, interval=0.05)
            load.wait_for_acks(ACKS_PER_ROUND)

        # Idle: the first /readyz after a termination.
        first_calls: Counter[int] = Counter()
        for _ in range(10):
            terminate_all(database, name)
            first_calls[readyz(server).status_code] += 1
        wait_for(lambda: readyz(server).status_code == 200, timeout=15, interval=0.05)

        def routed() -> bool:
            now = statuses(database)
            return all(now.get(key) == "processed" for key in load.acked)

        wait_for(routed, timeout=20, interval=0.1)
        stored = statuses(database)
    log = (tmp_path / "server.log").read_text()

    assert all(n > 0 for n in terminated), terminated  # every round ended live connections
    assert set(load.webhooks) <= {200, 503}, load.webhooks
    assert set(load.readyz) <= {200, 503}, load.readyz
    assert set(first_calls) <= {200, 503}, first_calls
    unexplained = [a for a in load.not_ready if not (a["http"] == 503 and a.get("error"))]
    assert not unexplained, unexplained
    assert down.status_code == 503 and down.json()["error"].startswith("postgresql: "), down.text
    assert load.acked <= stored.keys()  # nothing acknowledged is lost, and all of it routed
    assert "another operation" not in log
    assert "InternalClientError" not in log
