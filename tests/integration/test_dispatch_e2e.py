"""The dispatcher end to end (SPEC §8): signed webhooks in, the fake Twilio API out.

`switchboard serve` runs as a subprocess (worker, timers and dispatcher inside it) with
`channels.sms` live against `tests/fakes/twilio_api.FakeTwilio` on loopback, through the real
twilio client. A rule answers every inbound SMS; what a user would see is read back: the
messages the fake accepted (to, body), `switchboard outbox list --json`, `switchboard dlq list
--json`, and read-only sqlite for bulk counts. The fake signs its status callbacks with the
auth token our `sources.twilio` trusts and posts them to the server, so rows end `delivered`.

- Exactly once under transient failures: 30% of creates fail (503, 500, 429 with
  Retry-After 0.1, connection reset); every reply is accepted exactly once.
- Crash: the fake answers 0.3 s after creating the Message (the in-doubt window); the server
  is SIGKILLed repeatedly with sends in flight and restarted on the same port and database;
  rows left `sending` are looked up at the fake before any resend, so nothing is accepted twice
  and nothing is lost.
- Sandbox: the same flow with `mode = "sandbox"`: rows `delivered`, the fake never called.
"""

from __future__ import annotations

import functools
import os
import signal
import sqlite3
import ssl
import threading
import time
import types
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cases.base import SignedRequest
from tests.cases.twilio import signed
from tests.fakes import twilio_api
from tests.fakes.twilio_api import FakeTwilio, rate_limited, reset, server_error
from tests.support import PUBLIC_URL, SECRETS, free_port, run_cli, server_process, wait_for

pytestmark = pytest.mark.integration

OURS = "+15559870000"
RULES = """version: 1
rules:
  - id: echo
    when: {channel: sms, type: message.received}
    then:
      - reply: {text: "got {{ text }}"}
"""
#: Rows that will not change any more (a row `sent` may still become `delivered`).
SETTLED = ("sent", "delivered", "undelivered", "failed", "dead", "cancelled")


@pytest.fixture(autouse=True)
def _cheap_status_callbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """FakeTwilio posts each status callback with a new `httpx.AsyncClient`, and building its
    TLS context costs ~20 ms of CPU on the fake's event loop, the loop that also answers the
    creates: 2,000 callbacks stalled the fake for ~40 s. One shared context (never used: the
    callbacks go to loopback over plain HTTP) makes a client ~0.5 ms."""
    context = ssl.create_default_context()
    shim = types.SimpleNamespace(
        AsyncClient=functools.partial(httpx.AsyncClient, verify=context),
        HTTPError=httpx.HTTPError,
    )
    monkeypatch.setattr(twilio_api, "httpx", shim)


# -- helpers -----------------------------------------------------------------------------------


def customer(c: int) -> str:
    return f"+1555300{c:04d}"


def text_of(c: int, n: int) -> str:
    # Unique per message: the in-doubt lookup matches a Message by to, from and body.
    return f"customer {c} message {n}"


def inbound(c: int, n: int) -> SignedRequest:
    params = {
        "MessageSid": f"SMD{c:04d}N{n:04d}",
        "AccountSid": "AC" + "1" * 32,
        "From": customer(c),
        "To": OURS,
        "Body": text_of(c, n),
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


def fake_twilio(port: int) -> FakeTwilio:
    """The fake with our auth token, so its signed status callbacks verify at
    /webhooks/twilio/status, posted to the server on `port`."""
    return FakeTwilio(
        auth_token=SECRETS["twilio"][0],
        auto_callbacks=True,
        callback_target=f"http://127.0.0.1:{port}",
    )


def options(
    tmp_path: Path, fake: FakeTwilio, *, mode: str = "live", dispatch: str = "", worker: str = ""
) -> dict[str, str]:
    rules = tmp_path / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "echo.yaml").write_text(RULES)
    # All replies come from one number, and rate limits are per sender number: a rate high
    # enough that pacing is not what this file measures (the limiter's tests do that), even
    # once 429s have slowed the number down to an eighth of it for a minute.
    return {
        "extra": f"""
[rules]
path = "{rules}"

[channels.sms]
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
from = "{OURS}"
mode = "{mode}"
api_base = "{fake.url}"
rate_per_second = 10000

[worker]
{worker}

[dispatch]
{dispatch}
"""
    }


class Poster:
    """Signed inbound SMS from a thread pool, one keep-alive client per thread; each
    conversation's messages in order (the next after the previous one's 200)."""

    def __init__(self, base_url: str, threads: int = 8) -> None:
        self.base_url = base_url
        self.threads = threads
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self.acked: set[tuple[int, int]] = set()
        self.refused: list[tuple[int, int]] = []

    def _client(self) -> httpx.Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.base_url, timeout=10)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _conversation(self, items: list[tuple[int, int]], stop: threading.Event) -> None:
        for position, item in enumerate(items):
            if stop.is_set():
                with self._lock:
                    self.refused.extend(items[position:])
                return
            request = inbound(*item)
            try:
                answer = self._client().post(
                    request.path, content=request.body, headers=request.headers
                )
            except httpx.TransportError:  # no answer: Twilio would post it again later
                with self._lock:
                    self.refused.extend(items[position:])
                return
            if answer.status_code != 200:
                with self._lock:
                    self.refused.extend(items[position:])
                return
            with self._lock:
                self.acked.add(item)

    def post(self, items: list[tuple[int, int]], stop: threading.Event | None = None) -> None:
        """Post `items` ((customer, n) pairs), grouped by customer, order kept."""
        by_customer: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for item in items:
            by_customer[item[0]].append(item)
        halt = stop or threading.Event()
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for future in [
                pool.submit(self._conversation, group, halt) for group in by_customer.values()
            ]:
                future.result(timeout=120)

    def close(self) -> None:
        for client in self._clients:
            client.close()


@contextmanager
def poster(base_url: str, threads: int = 8) -> Iterator[Poster]:
    made = Poster(base_url, threads)
    try:
        yield made
    finally:
        made.close()


def outbox_counts(db_path: Path) -> Counter[str]:
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as conn:
        return Counter(
            {
                status: n
                for status, n in conn.execute("SELECT status, count(*) FROM outbox GROUP BY status")
            }
        )


def settled(db_path: Path, expected: int, *, final: tuple[str, ...] = SETTLED) -> bool:
    try:
        counts = outbox_counts(db_path)
    except sqlite3.OperationalError:  # the table is not there yet, or locked a moment
        return False
    return sum(counts.values()) == expected and sum(counts[s] for s in final) == expected


def recorded_sids(db_path: Path) -> set[str]:
    """The provider message ids the outbox knows (read-only, from another process)."""
    with closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)) as conn:
        query = "SELECT provider_message_id FROM outbox WHERE provider_message_id IS NOT NULL"
        return {sid for (sid,) in conn.execute(query)}


def outbox_rows(config_path: Path) -> list[dict[str, Any]]:
    listed = run_cli(config_path, "outbox", "list", "--json", "--limit", "100000")
    assert listed.exit_code == 0, listed.stderr
    rows: list[dict[str, Any]] = listed.json()
    return rows


def dead_letters(config_path: Path) -> list[dict[str, Any]]:
    listed = run_cli(config_path, "dlq", "list", "--json", "--limit", "100000")
    assert listed.exit_code == 0, listed.stderr
    rows: list[dict[str, Any]] = listed.json()
    return rows


def assert_exactly_once(
    fake: FakeTwilio, sent: list[tuple[int, int]], rows: list[dict[str, Any]]
) -> None:
    """One accepted Message per inbound, `got <text>` to its sender from our number, none
    twice; each conversation's replies in the order its messages came; and every outbox row
    names the Message the fake holds for it."""
    accepted = fake.snapshot()
    expected = Counter((customer(c), f"got {text_of(c, n)}") for c, n in sent)
    got = Counter((m.to, m.body) for m in accepted)
    twice = sorted(key for key, count in got.items() if count > 1)
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    assert not twice, f"{len(twice)} replies accepted more than once, e.g. {twice[:5]}"
    assert not missing, f"{len(missing)} replies never accepted, e.g. {missing[:5]}"
    assert not unexpected, f"{len(unexpected)} unexpected messages, e.g. {unexpected[:5]}"
    assert len(accepted) == len(sent)
    assert {m.from_ for m in accepted} == {OURS}
    order: dict[str, list[str]] = defaultdict(list)
    for message in sorted(accepted, key=lambda m: m.accepted_at):
        order[message.to].append(message.body)
    for c in {c for c, _ in sent}:
        wanted = [f"got {text_of(c, n)}" for cc, n in sorted(sent) if cc == c]
        assert order[customer(c)] == wanted, f"replies to customer {c} out of order"
    by_sid = {m.sid: m for m in accepted}
    assert len(rows) == len(sent)
    for row in rows:
        named = by_sid.get(row["provider_message_id"])
        assert named is not None, f"row {row['id']} names no accepted Message: {row}"
        assert (named.to, named.body) == (row["to"], row["payload"]["text"])


# -- tests -------------------------------------------------------------------------------------

#: Inbound messages in the exactly-once test (the issue's figure), over CUSTOMERS conversations.
#: Measured on 2 cores: posted in ~2 s, all delivered after ~20-28 s. About 9 s of that is the
#: ~90 429s: each pauses the one sender number for its Retry-After (0.1 s), as it should.
MESSAGES, CUSTOMERS = 1000, 100


def test_every_reply_is_accepted_exactly_once_under_transient_failures(tmp_path: Path) -> None:
    port = free_port()
    sent = [(c, n) for n in range(MESSAGES // CUSTOMERS) for c in range(CUSTOMERS)]
    with fake_twilio(port) as fake:
        # 30% of creates fail where Twilio did not act: 5xx (which our sender takes as in
        # doubt, and looks up with a list before sending again), 429 with Retry-After, and a
        # connection reset without an answer.
        faults = (server_error(503), server_error(500), rate_limited(0.1), reset())
        fake.fail_randomly(0.3, faults, seed=9)
        dispatch = (
            "lease_seconds = 2\nmax_attempts = 20\nbackoff_base_seconds = 0.02\n"
            "backoff_cap_seconds = 0.3\n"
            # An open breaker is fine, but 30 s of it would outlast the test.
            "breaker_open_seconds = 0.2\n"
        )
        with server_process(
            tmp_path, port=port, **options(tmp_path, fake, dispatch=dispatch)
        ) as srv:
            started = time.monotonic()
            with poster(srv.base_url, threads=8) as post:
                post.post(sent)
            assert post.acked == set(sent) and not post.refused
            posted = time.monotonic() - started
            wait_for(lambda: settled(srv.db_path, len(sent), final=("delivered",)), timeout=90)
            drained = time.monotonic() - started
            rows = outbox_rows(srv.config_path)
            dlq = dead_letters(srv.config_path)
        applied = Counter(fault.label for fault in fake.applied)
    print(f"posted {len(sent)} in {posted:.1f}s, all delivered after {drained:.1f}s; {applied}")
    assert dlq == []
    assert {row["status"] for row in rows} == {"delivered"}
    assert_exactly_once(fake, sent, rows)
    # The faults really happened, every kind of them.
    assert set(applied) == {"503", "500", "429", "reset"}
    assert sum(applied.values()) >= 0.2 * len(sent)


def test_no_reply_is_lost_or_doubled_across_repeated_kill_9(tmp_path: Path) -> None:
    port = free_port()
    customers, per_customer, kills = 30, 10, 5
    sent = [(c, n) for n in range(per_customer) for c in range(customers)]
    step = per_customer // kills  # each run, the next messages of every customer
    chunks = [[(c, n) for c, n in sent if r * step <= n < (r + 1) * step] for r in range(kills)]
    db_path = tmp_path / "var" / "switchboard.db"
    in_doubt: list[int] = []  # per kill: Messages created whose row did not learn it
    with fake_twilio(port) as fake:
        fake.slow = 0.3  # the Message is created, then the answer waits: the in-doubt window
        fake.slow_accept_first = True
        dispatch = "lease_seconds = 2\nbackoff_base_seconds = 0.02\nbackoff_cap_seconds = 0.3\n"
        # A short routing lease too, so the conversations a killed worker held are taken over.
        config = options(tmp_path, fake, dispatch=dispatch, worker="lease_seconds = 1")
        refused: list[tuple[int, int]] = []
        for run in range(kills + 1):
            log_name = f"run{run}.log"
            with (
                server_process(tmp_path, port=port, log_name=log_name, **config) as srv,
                poster(srv.base_url) as post,
            ):
                if run == kills:  # the last run: what was refused, then let it settle
                    post.post(refused)
                    assert not post.refused
                    wait_for(lambda: settled(db_path, len(sent)), timeout=40)
                    rows = outbox_rows(srv.config_path)
                    dlq = dead_letters(srv.config_path)
                    break
                target = fake.accepted_count() + 15
                stop = threading.Event()
                posting = threading.Thread(target=post.post, args=(refused + chunks[run], stop))
                posting.start()
                # Kill right after a Message is created: its answer is still 0.3 s away, and
                # other sends are in flight behind it.
                wait_for(lambda: fake.accepted_count() >= target, timeout=30)  # noqa: B023
                os.kill(srv.process.pid, signal.SIGKILL)
                srv.process.wait(timeout=10)
                stop.set()
                posting.join(timeout=30)
                assert not posting.is_alive()
                # Not acknowledged: Twilio would post them again (deduplicated if stored).
                refused = sorted(post.refused)
                in_doubt.append(len({m.sid for m in fake.snapshot()} - recorded_sids(db_path)))
    print(f"Messages created but not recorded at each kill (in doubt): {in_doubt}")
    assert all(in_doubt), "a kill missed the in-doubt window: the test proves less than it says"
    assert dlq == []
    assert {row["status"] for row in rows} <= {"sent", "delivered"}
    assert_exactly_once(fake, sent, rows)


#: Lives of the server killed in the stalling-provider test, half mid-send, half mid-look
#: (the suite's share; bench/crash_soak.py runs the long soak).
CHAOS_KILLS = 12


def test_kills_mid_send_and_mid_look_with_a_stalling_provider_lose_and_double_nothing(
    tmp_path: Path,
) -> None:
    """Every answer of the fake stalls 0.2-0.7 s after Twilio acted (the Message exists, the
    look sees it), a quarter of the looks fail (503), and the server is SIGKILLed CHAOS_KILLS
    times: alternately while a created Message's answer is on its way (mid-send), and while a
    look for a row left in doubt is (mid-look, which leaves that row claimed again without an
    outcome). Nothing is lost, and no reply reaches the fake twice. The long soak of this is
    bench/crash_soak.py."""
    port = free_port()
    customers, per_customer = 24, 8
    sent = [(c, n) for n in range(per_customer) for c in range(customers)]
    db_path = tmp_path / "var" / "switchboard.db"
    kills: Counter[str] = Counter()
    with fake_twilio(port) as fake:
        fake.slow, fake.slow_jitter = 0.2, 0.5
        fake.fail_randomly(0.25, (server_error(503),), op="list", seed=3)  # failed looks too
        dispatch = (
            "lease_seconds = 1\ntimeout_seconds = 3\nconcurrency = 16\n"
            "backoff_base_seconds = 0.02\nbackoff_cap_seconds = 0.3\n"
        )
        config = options(tmp_path, fake, dispatch=dispatch, worker="lease_seconds = 1")
        for run in range(CHAOS_KILLS + 1):
            with (
                server_process(tmp_path, port=port, log_name=f"chaos{run}.log", **config) as srv,
                poster(srv.base_url) as post,
            ):
                if run == 0:  # every inbound is stored before the first kill
                    post.post(sent)
                    assert post.acked == set(sent) and not post.refused
                if run == CHAOS_KILLS:
                    wait_for(lambda: settled(db_path, len(sent)), timeout=60)
                    rows = outbox_rows(srv.config_path)
                    dlq = dead_letters(srv.config_path)
                    break
                op = "create" if run % 2 == 0 else "list"
                created = fake.accepted_count()

                def caught(op: str = op, created: int = created) -> bool:
                    if op == "create":  # a Message made in this life, its answer pending
                        return fake.in_flight_ops[op] > 0 and len(fake.accepted) > created
                    return fake.in_flight_ops[op] > 0

                if fake.wait_until(caught, timeout=10):
                    kills[op] += 1
                os.kill(srv.process.pid, signal.SIGKILL)
                srv.process.wait(timeout=10)
    print(f"killed mid-send {kills['create']}, mid-look {kills['list']} times")
    assert kills["create"] >= CHAOS_KILLS // 2 - 2 and kills["list"] >= CHAOS_KILLS // 2 - 2
    assert dlq == []
    assert {row["status"] for row in rows} <= {"sent", "delivered"}
    assert_exactly_once(fake, sent, rows)


def test_sandbox_mode_marks_rows_delivered_and_calls_nobody(tmp_path: Path) -> None:
    port = free_port()
    sent = [(c, n) for n in range(5) for c in range(20)]
    with fake_twilio(port) as fake:
        with server_process(tmp_path, port=port, **options(tmp_path, fake, mode="sandbox")) as srv:
            with poster(srv.base_url) as post:
                post.post(sent)
            assert post.acked == set(sent)
            wait_for(lambda: settled(srv.db_path, len(sent), final=("delivered",)), timeout=30)
            rows = outbox_rows(srv.config_path)
        assert {row["status"] for row in rows} == {"delivered"}
        assert sorted((row["to"], row["payload"]["text"]) for row in rows) == sorted(
            (customer(c), f"got {text_of(c, n)}") for c, n in sent
        )
        assert fake.accepted_count() == 0
        assert sum(fake.calls.values()) == 0
