"""The fleet (issue 10, Tests): three `switchboard serve` processes on one PostgreSQL.

Three servers, each with its worker and dispatcher, share a database of their own (dropped
after) and send through the fake Twilio API on loopback (`tests/fakes/twilio_api.FakeTwilio`,
through the official twilio client, `channels.sms` live). One echo rule answers every inbound
SMS with "got <its text>"; every text is unique, so each reply names the message it answers.

Threads post 1,200 signed SMS over 120 conversations, each post to one of the three servers at
random, a conversation's next message once its previous one was acknowledged. Meanwhile each
server in turn is SIGKILLed and restarted on its port: once while the webhooks arrive, twice
while the replies leave (the fake answers each create 0.2 s after making the Message, so a kill
leaves sends in doubt). A post refused or unanswered because its server died is posted again,
to any server, as a provider retries. Once everything has settled:

1. every acknowledged event was processed exactly once (one run each);
2. every reply was accepted by the fake exactly once (rows a kill left in doubt were looked up
   at the fake, not sent again) and each outbox row names its Message;
3. each conversation's runs and accepted replies follow the order its messages were
   acknowledged in;
4. per sender number, the fleet's sends stay within `rate_per_second`.

The fleet runs once per module (`fleet`); the rate check is a test of its own. The rate slots
are booked in the database with each claim, so three dispatchers keep one number's spacing.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.fakes.twilio_api import FakeTwilio, TwilioMessage
from tests.postgres import SERVER, run_blocking
from tests.support import (
    PUBLIC_URL,
    SECRETS,
    ServerProcess,
    free_port,
    run_cli,
    server_process,
    wait_for,
)

#: The fleet's run (in the first test to use it) takes ~30-40 s here, more on a busy machine.
pytestmark = [pytest.mark.integration, pytest.mark.postgres, pytest.mark.timeout(300)]

CONVERSATIONS, PER_CONVERSATION = 120, 10
SERVERS = 3
#: The numbers customers write to. A reply leaves from the number written to, and the rate
#: limit is per sender number: 30 conversations and 300 replies each.
OURS = ("+15559870001", "+15559870002", "+15559870003", "+15559870004")
#: Per sender number: 300 replies take 30 s at this rate, so replies queue up behind it while
#: the webhooks arrive (~100 a second here); three dispatchers that each kept the rate on their
#: own would send up to 3x as fast, and did (see the rate test).
RATE = 10.0
#: The rate check counts acceptances in every window of this many seconds; the fake stamps
#: them on arrival, so network and scheduling jitter can bunch a few: allowed, with a margin.
WINDOW_S, JITTER = 2.0, 1.25
RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms, type: message.received}
    then:
      - reply: {text: "got {{ text }}"}
"""


def customer(c: int) -> str:
    return f"+1555400{c:04d}"


def ours(c: int) -> str:
    return OURS[c % len(OURS)]


def text_of(c: int, n: int) -> str:
    return f"customer {c} message {n}"


def sid_of(c: int, n: int) -> str:
    return f"SMF{c:04d}N{n:04d}"


def message_of(dedupe_key: str) -> tuple[int, int]:
    """(customer, n) back from an event's dedupe key, `twilio:SMFccccNnnnn`."""
    c, n = dedupe_key.removeprefix("twilio:SMF").split("N")
    return int(c), int(n)


def inbound(c: int, n: int) -> SignedRequest:
    params = {
        "MessageSid": sid_of(c, n),
        "AccountSid": "AC" + "1" * 32,
        "From": customer(c),
        "To": ours(c),
        "Body": text_of(c, n),
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def options(root: Path, fake: FakeTwilio, url: str) -> dict[str, str]:
    rules = root / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "echo.yaml").write_text(RULES)
    # Short leases, so what a killed process held is taken over within seconds (a dispatcher's
    # lease also covers the wait for a rate slot booked up to 1 s ahead); no `from`: a reply
    # leaves from the number its customer wrote to.
    extra = f"""
[rules]
path = "{rules}"

[channels.sms]
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
mode = "live"
api_base = "{fake.url}"
rate_per_second = {RATE}

[worker]
lease_seconds = 2

[dispatch]
lease_seconds = 3
concurrency = 64
backoff_base_seconds = 0.05
backoff_cap_seconds = 0.5
"""
    return {"storage_url": url, "extra": extra}


# -- the parts ---------------------------------------------------------------------------------


class FleetPoster:
    """Signed inbound SMS from a thread pool, each post to one of the servers at random; a
    conversation's next message once its previous one was acknowledged. A post refused or
    unanswered (its server died) is posted again, to a random server, until acknowledged."""

    def __init__(self, ports: list[int], *, threads: int = 16) -> None:
        self.urls = [f"http://127.0.0.1:{port}" for port in ports]
        self.threads = threads
        self._local = threading.local()
        self._lock = threading.Lock()
        self._clients: list[httpx.Client] = []
        #: Set when the test gives up: every thread stops at its next post.
        self.stop = threading.Event()
        #: (customer, n), in the order acknowledged.
        self.acked: list[tuple[int, int]] = []
        self.reposts = 0

    def run(self, conversations: range, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                futures = [pool.submit(self._conversation, c, deadline) for c in conversations]
                for future in futures:
                    future.result()
        finally:
            for client in self._clients:
                client.close()

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _conversation(self, c: int, deadline: float) -> None:
        rng = random.Random(c)
        for n in range(PER_CONVERSATION):
            self._deliver(c, n, rng, deadline)

    def _deliver(self, c: int, n: int, rng: random.Random, deadline: float) -> None:
        request = inbound(c, n)
        while time.monotonic() < deadline and not self.stop.is_set():
            try:
                answer = self._client(rng.choice(self.urls)).post(
                    request.path, content=request.body, headers=request.headers
                )
                if answer.status_code == 200:
                    with self._lock:
                        self.acked.append((c, n))
                    return
            except httpx.TransportError:  # refused, reset, unanswered: the server died
                pass
            with self._lock:
                self.reposts += 1
        raise AssertionError(f"customer {c} message {n} never acknowledged")

    def _client(self, url: str) -> httpx.Client:
        clients: dict[str, httpx.Client] = self._local.__dict__.setdefault("clients", {})
        if url not in clients:
            clients[url] = httpx.Client(base_url=url, timeout=10)
            with self._lock:
                self._clients.append(clients[url])
        return clients[url]


class Fleet:
    """`switchboard serve` on each of SERVERS ports, one database; a slot can be killed with
    SIGKILL and restarted on its port."""

    def __init__(self, root: Path, config: dict[str, str]) -> None:
        self.root = root
        self.config = config
        self.ports = [free_port() for _ in range(SERVERS)]
        self.servers: list[ServerProcess | None] = [None] * SERVERS
        self._stacks = [ExitStack() for _ in range(SERVERS)]
        self._starts = [0] * SERVERS
        self.kills = 0

    def start(self, slot: int) -> None:
        directory = self.root / f"server{slot}"
        directory.mkdir(exist_ok=True)
        self._starts[slot] += 1
        self.servers[slot] = self._stacks[slot].enter_context(
            server_process(
                directory,
                port=self.ports[slot],
                log_name=f"run{self._starts[slot]}.log",
                **self.config,
            )
        )

    def kill_and_restart(self, slot: int) -> None:
        server = self.servers[slot]
        assert server is not None
        os.kill(server.process.pid, signal.SIGKILL)
        assert server.process.wait(timeout=10) == -signal.SIGKILL
        self.kills += 1
        self._stacks[slot].close()
        self.start(slot)

    @property
    def config_path(self) -> Path:
        return self.root / "server0" / "switchboard.toml"

    def close(self) -> None:
        for stack in self._stacks:
            stack.close()


def read(url: str, sql: str) -> list[asyncpg.Record]:
    """Rows of `sql` from a read-only session: the test looks, it never writes."""

    async def fetch() -> list[asyncpg.Record]:
        settings = {"default_transaction_read_only": "on"}
        conn = await asyncpg.connect(url, timeout=5, server_settings=settings)
        try:
            rows: list[asyncpg.Record] = await conn.fetch(sql)
            return rows
        finally:
            await conn.close()

    return run_blocking(fetch)


def progress(url: str) -> Counter[str]:
    """Events and outbox rows by status (`events.processed`, `outbox.sent`, ...)."""
    rows = read(
        url,
        "SELECT 'events.' || status, count(*) FROM events GROUP BY status UNION ALL "
        "SELECT 'outbox.' || status, count(*) FROM outbox GROUP BY status",
    )
    return Counter({name: count for name, count in rows})


def settled(url: str) -> bool:
    """Every message stored, no event left to route, no reply left to send."""
    now = progress(url)
    events = sum(n for name, n in now.items() if name.startswith("events."))
    unfinished = now["events.received"] + now["events.processing"]
    unsent = now["outbox.pending"] + now["outbox.deferred"] + now["outbox.sending"]
    return (events, unfinished, unsent) == (CONVERSATIONS * PER_CONVERSATION, 0, 0)


def wait_or_tell(
    condition: Callable[[], bool], what: str, url: str, fake: FakeTwilio, timeout: float
) -> None:
    """`wait_for`, and on timeout say where the fleet stands."""
    try:
        wait_for(condition, timeout=timeout, interval=0.05)
    except AssertionError:
        where = f"{dict(progress(url))}, {fake.accepted_count()} accepted by the fake"
        stuck = read(
            url,
            "SELECT id, status, attempts, next_attempt_at, lease_until, last_error FROM outbox"
            " WHERE status NOT IN ('sent', 'delivered') ORDER BY seq LIMIT 5",
        )
        where += f"; e.g. {[tuple(r) for r in stuck]}"
        raise AssertionError(f"{what}: not within {timeout}s; {where}") from None


def cli_json(config_path: Path, *args: str) -> list[dict[str, Any]]:
    listed = run_cli(config_path, *args, "--json", "--limit", "100000")
    assert listed.exit_code == 0, listed.stderr
    rows: list[dict[str, Any]] = listed.json()
    return rows


# -- one run of the fleet ----------------------------------------------------------------------


@dataclass
class FleetRun:
    sent: list[tuple[int, int]]
    acked: list[tuple[int, int]]  # in the order acknowledged
    events: list[dict[str, Any]]  # `events list --json`
    runs: list[tuple[str, int]]  # (event id, run seq), in commit order
    outbox: list[dict[str, Any]]  # `outbox list --json`
    accepted: list[TwilioMessage]  # what the fake accepted, in acceptance order
    kills: int
    reposts: int
    lookups: int  # in-doubt rows looked up at the fake (GET Messages.json)
    posted_s: float
    settled_s: float


def _kill_plan(poster: FleetPoster, fake: FakeTwilio) -> list[tuple[int, Callable[[], bool]]]:
    """Which slot to kill, when: one while webhooks arrive, two while replies leave."""
    total = CONVERSATIONS * PER_CONVERSATION
    return [
        (0, lambda: poster.acked_count() >= total // 4),
        (1, lambda: fake.accepted_count() >= total * 3 // 10),
        (2, lambda: fake.accepted_count() >= total * 65 // 100),
    ]


def run_fleet(root: Path, url: str) -> FleetRun:
    total = CONVERSATIONS * PER_CONVERSATION
    with FakeTwilio() as fake:
        fake.slow = 0.2  # the Message exists, its answer waits: a kill leaves it in doubt
        fake.slow_accept_first = True
        fleet = Fleet(root, options(root, fake, url))
        try:
            for slot in range(SERVERS):
                fleet.start(slot)
            poster = FleetPoster(fleet.ports)
            started = time.monotonic()
            with ThreadPoolExecutor(1) as background:
                posting = background.submit(poster.run, range(CONVERSATIONS), 60)
                try:
                    for slot, due in _kill_plan(poster, fake):
                        wait_or_tell(due, f"kill {fleet.kills + 1}", url, fake, timeout=60)
                        assert fake.accepted_count() < total, "the kill came after the work"
                        fleet.kill_and_restart(slot)
                    posting.result(timeout=60)
                finally:
                    poster.stop.set()
            posted = time.monotonic() - started
            wait_or_tell(lambda: settled(url), "settled", url, fake, timeout=90)
            settled_s = time.monotonic() - started
            runs = read(url, "SELECT event_id, seq FROM runs ORDER BY seq")
            run = FleetRun(
                sent=[(c, n) for c in range(CONVERSATIONS) for n in range(PER_CONVERSATION)],
                acked=list(poster.acked),
                events=cli_json(fleet.config_path, "events", "list"),
                runs=[(r["event_id"], r["seq"]) for r in runs],
                outbox=cli_json(fleet.config_path, "outbox", "list"),
                accepted=sorted(fake.snapshot(), key=lambda m: m.accepted_at),
                kills=fleet.kills,
                reposts=poster.reposts,
                lookups=fake.calls["list"],
                posted_s=posted,
                settled_s=settled_s,
            )
        finally:
            fleet.close()
    print(
        f"fleet: {total} messages to {SERVERS} servers, {run.kills} kills, {run.reposts} "
        f"re-posts, {run.lookups} in-doubt lookups; posted in {run.posted_s:.1f}s, "
        f"settled after {run.settled_s:.1f}s (drain {run.settled_s - run.posted_s:.1f}s)"
    )
    return run


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FleetRun]:
    with SERVER.own_database() as url:
        yield run_fleet(tmp_path_factory.mktemp("fleet"), url)


# -- the checks --------------------------------------------------------------------------------


def test_every_event_is_processed_once_and_every_reply_accepted_once_in_order(
    fleet: FleetRun,
) -> None:
    assert sorted(fleet.acked) == fleet.sent
    _assert_processed_once(fleet)
    _assert_replies_accepted_once(fleet)
    _assert_arrival_order(fleet)
    # And the run proved what it says: kills hit webhooks arriving and sends under way.
    assert fleet.kills == SERVERS
    assert fleet.reposts > 0, "no post was refused: no kill hit the webhooks"
    assert fleet.lookups > 0, "nothing looked up: no kill left a send in doubt, or none was asked"


def _assert_processed_once(fleet: FleetRun) -> None:
    by_message = {message_of(e["dedupe_key"]): e for e in fleet.events}
    assert sorted(by_message) == fleet.sent and len(fleet.events) == len(fleet.sent)
    assert Counter(e["status"] for e in fleet.events) == {"processed": len(fleet.sent)}
    runs = Counter(event_id for event_id, _ in fleet.runs)
    twice = sorted(event_id for event_id, count in runs.items() if count > 1)
    assert not twice, f"{len(twice)} events routed more than once, e.g. {twice[:5]}"
    assert set(runs) == {e["id"] for e in fleet.events}


def _assert_replies_accepted_once(fleet: FleetRun) -> None:
    expected = Counter((customer(c), ours(c), f"got {text_of(c, n)}") for c, n in fleet.sent)
    got = Counter((m.to, m.from_, m.body) for m in fleet.accepted)
    twice = sorted(key for key, count in got.items() if count > 1)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not twice, f"{len(twice)} replies accepted more than once, e.g. {twice[:5]}"
    assert not missing, f"{len(missing)} replies never accepted, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected messages, e.g. {unexpected[:5]}"
    by_sid = {m.sid: m for m in fleet.accepted}
    assert len(fleet.outbox) == len(fleet.sent)
    for row in fleet.outbox:
        assert row["status"] == "sent", row
        named = by_sid.get(row["provider_message_id"])
        assert named is not None, f"row {row['id']} names no accepted Message: {row}"
        assert (named.to, named.body) == (row["to"], row["payload"]["text"])


def _assert_arrival_order(fleet: FleetRun) -> None:
    """Per conversation: acknowledged, routed (runs in commit order) and accepted by the fake
    (replies by acceptance time) in one and the same order."""
    acked: dict[int, list[int]] = defaultdict(list)
    for c, n in fleet.acked:
        acked[c].append(n)
    message = {e["id"]: message_of(e["dedupe_key"]) for e in fleet.events}
    routed: dict[int, list[int]] = defaultdict(list)
    for event_id, _ in fleet.runs:
        c, n = message[event_id]
        routed[c].append(n)
    replied: dict[int, list[int]] = defaultdict(list)
    for m in fleet.accepted:
        c, n = (int(part) for part in m.body.removeprefix("got customer ").split(" message "))
        replied[c].append(n)
    for c in range(CONVERSATIONS):
        assert routed[c] == acked[c], f"conversation {c} routed out of order"
        assert replied[c] == acked[c], f"conversation {c} answered out of order"


def most_in_window(times: list[float], window: float) -> int:
    """The most of `times` (sorted) within any `window` seconds."""
    most, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] > window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_the_fleet_keeps_rate_per_second_per_sender_number(fleet: FleetRun) -> None:
    """Spacing, not bursts (router/pipeline/limits.py): any WINDOW_S holds at most
    RATE x WINDOW_S sends (+ 1 at its edge), plus jitter; the whole run keeps the mean."""
    allowed = RATE * WINDOW_S * JITTER + 1
    seen: dict[str, tuple[int, float]] = {}
    for number in OURS:
        times = [m.accepted_at for m in fleet.accepted if m.from_ == number]
        assert len(times) == len(fleet.sent) // len(OURS)
        seen[number] = (most_in_window(times, WINDOW_S), (len(times) - 1) / (times[-1] - times[0]))
    print(f"per sender: most in {WINDOW_S}s, mean rate/s: {seen}")
    for number, (most, mean) in seen.items():
        assert most <= allowed, f"{number}: {most} sends within {WINDOW_S}s at {RATE}/s"
        assert mean <= RATE * 1.05, f"{number}: {mean:.1f} sends/s on average at {RATE}/s"
