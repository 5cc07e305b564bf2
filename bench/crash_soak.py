"""Crash soak (issue 17.1): kill -9 of `serve`, hundreds of times, with a stalling Twilio.

The long form of tests/integration/test_dispatch_e2e.py::test_kills_mid_send_and_mid_look_...
It measures whether a reply can be lost or sent twice when the server dies while sends and
looks (the in-doubt checks) are in flight, and how often each kind of kill really happened.

One real `python -m router serve` (worker and dispatcher in it, as shipped) on one store
(SQLite file, or a fresh PostgreSQL database created for the run and dropped at the end), with
one rule that answers every inbound SMS `got <text>`, and `channels.sms` live against
`tests.fakes.twilio_api.FakeTwilio` on loopback (a thread of this process), through the real
twilio client. The fake acts at once, then stalls its answer 1-3 s (`--stall 1-3`): the Message
exists, the sender does not know it yet. A share of the looks (list requests) fail with a 503
(`--look-failures 0.25`). Status callbacks (sent, delivered) are posted back to the server.

`--customers` x `--messages` signed inbound SMS are posted over the lives of the server, a slice
per life, each conversation in order (the next after the previous one's 200). Every life is
ended by SIGKILL at a moment chosen by `--mix` (weights, seeded):

- send:   a Message created in this life whose create is still being answered (mid-send);
- look:   a list request of this life in flight (mid-look: the row it looks for stays in doubt);
- random: at a random time.

Each life first runs for a random 0 to `--delay` s after the server is ready (so lives also get
answers and record outcomes, and the kills come at varied points of the work), then the kill
waits for its moment. A moment that does not come within `--wait` s is a miss: the server is
killed anyway, counted apart. The next life starts on the same port and store; webhooks that
were not acknowledged (200) are posted again (Twilio would), deduplicated by MessageSid if they
were stored. After the last kill a final life gets every webhook acknowledged and runs until
every outbox row is settled. Then it checks: every reply accepted by the fake exactly once
(none lost, none twice, none unexpected), each conversation's replies in the order of its
messages, every row `sent` or `delivered` and naming a Message the fake holds, no dead letters.

Prints kills by kind, Messages in doubt at each kill (created at the fake, not recorded in the
store), looks made and failed, replies, doubled, lost, wall time and per-life times. Exit 1 on
any lost, doubled, unexpected or out-of-order reply, dead letter, or a store that never settles;
the temp folder (store, config, one log per life, at `info`) is then kept and the log lines of
the rows concerned printed.

Run: .venv/bin/python bench/crash_soak.py                      (SQLite, 200 kills, ~8 min)
     .venv/bin/python bench/crash_soak.py --backend postgres   (PostgreSQL on --admin-url)
     .venv/bin/python bench/crash_soak.py --kills 10 --customers 8 --messages 5   (a smoke run)
     .venv/bin/python bench/crash_soak.py --help
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import platform
import random
import shlex
import shutil
import signal
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # tests.fakes, tests.support

import httpx  # noqa: E402
import pg_admin  # noqa: E402
import proc_stats  # noqa: E402

from tests.cases.base import SignedRequest  # noqa: E402
from tests.cases.twilio import signed  # noqa: E402
from tests.fakes import twilio_api  # noqa: E402
from tests.fakes._http import Drop, Fault, Request, Response  # noqa: E402
from tests.fakes.twilio_api import FakeTwilio, TwilioMessage, server_error  # noqa: E402
from tests.support import (  # noqa: E402
    PUBLIC_URL,
    SECRETS,
    config_text,
    free_port,
    run_cli,
    spawn_serve,
)

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
KINDS = ("send", "look", "random")
Item = tuple[int, int]  # (customer, message number)


def customer(c: int) -> str:
    return f"+1555300{c:04d}"


def text_of(c: int, n: int) -> str:
    # Unique per message: the in-doubt look matches a Message by to, from and body.
    return f"customer {c} message {n}"


def inbound(c: int, n: int) -> SignedRequest:
    params = {
        "MessageSid": f"SMK{c:04d}N{n:04d}",
        "AccountSid": "AC" + "1" * 32,
        "From": customer(c),
        "To": OURS,
        "Body": text_of(c, n),
    }
    return signed(PUBLIC_URL, "/webhooks/twilio/messages", params, SECRETS["twilio"][0])


# -- the fake --------------------------------------------------------------------------------


class SoakTwilio(FakeTwilio):
    """FakeTwilio that knows which requests it is answering now, since when, and the Message
    each create being answered made: what the kills aim at. A request of a killed life stays
    "being answered" until its stall ends, so each life only counts its own."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        #: id(request) -> (operation, when it arrived (monotonic), the sid a create made).
        self.answering: dict[int, tuple[str, float, str | None]] = {}

    def handle(self, request: Request, op: str, fault: Fault | None) -> Response:
        response = super().handle(request, op, fault)
        mine = self.answering.get(id(request))
        if op == "create" and response.status == 201 and mine is not None:
            self.answering[id(request)] = (op, mine[1], json.loads(response.body)["sid"])
        return response

    async def _perform(
        self, request: Request, op: str, key: str | None, fault: Fault | None
    ) -> Response | Drop:
        with self.lock:
            self.answering[id(request)] = (op, time.monotonic(), None)
        try:
            return await super()._perform(request, op, key, fault)
        finally:
            with self.lock:
                self.answering.pop(id(request), None)

    def mid_send(self, since: float) -> bool:
        """A Message created since `since`, its answer not given yet (call under the lock)."""
        return any(
            op == "create" and sid is not None and at >= since
            for op, at, sid in self.answering.values()
        )

    def mid_look(self, since: float) -> bool:
        """A look (list request) that arrived since `since` is being answered."""
        return any(op == "list" and at >= since for op, at, _ in self.answering.values())


def cheap_status_callbacks() -> None:
    """FakeTwilio posts each status callback with a new `httpx.AsyncClient`, whose TLS context
    costs ~20 ms of CPU on the fake's loop, the one that answers the creates: one shared
    context (never used, the callbacks go to loopback over plain HTTP), as the tests do."""
    context = ssl.create_default_context()
    twilio_api.httpx = types.SimpleNamespace(  # type: ignore[attr-defined,assignment]
        AsyncClient=functools.partial(httpx.AsyncClient, verify=context),
        HTTPError=httpx.HTTPError,
    )


# -- the store, read from outside ------------------------------------------------------------


class StoreView:
    """What the bench reads of the store between lives: SQLite read-only, or PostgreSQL."""

    def __init__(self, db_path: Path, url: str | None) -> None:
        self.db_path, self.url = db_path, url

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.url is None:
            uri = f"file:{self.db_path}?mode=ro"
            with closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
                return list(conn.execute(sql))
        import asyncpg

        async def fetch() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(self.url, timeout=5)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()

        return asyncio.run(fetch())

    def recorded_sids(self) -> set[str]:
        query = "SELECT provider_message_id FROM outbox WHERE provider_message_id IS NOT NULL"
        return {sid for (sid,) in self._rows(query)}

    def counts(self) -> Counter[str]:
        try:
            rows = self._rows("SELECT status, count(*) FROM outbox GROUP BY status")
        except Exception:  # not migrated yet, locked a moment
            return Counter()
        return Counter({status: n for status, n in rows})


# -- the webhooks ----------------------------------------------------------------------------


class Poster:
    """Signed inbound SMS from a thread pool, one keep-alive client per thread; each
    conversation's messages in order, stopping at its first one not acknowledged."""

    def __init__(self, base_url: str, threads: int) -> None:
        self.base_url, self.threads = base_url, threads
        self._local = threading.local()
        self._clients: list[httpx.Client] = []
        self._lock = threading.Lock()
        self.acked: set[Item] = set()
        self.refused: list[Item] = []

    def _client(self) -> httpx.Client:
        client: httpx.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = httpx.Client(base_url=self.base_url, timeout=10)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _conversation(self, items: list[Item], stop: threading.Event) -> None:
        for position, item in enumerate(items):
            ok = False
            if not stop.is_set():
                request = inbound(*item)
                try:
                    answer = self._client().post(
                        request.path, content=request.body, headers=request.headers
                    )
                    ok = answer.status_code == 200
                except httpx.TransportError:
                    ok = False
            if not ok:  # Twilio would post it again later; the rest wait behind it
                with self._lock:
                    self.refused.extend(items[position:])
                return
            with self._lock:
                self.acked.add(item)

    def post(self, items: list[Item], stop: threading.Event) -> None:
        by_customer: dict[int, list[Item]] = defaultdict(list)
        for item in sorted(items, key=lambda i: (i[1], i[0])):
            by_customer[item[0]].append(item)
        with ThreadPoolExecutor(max_workers=self.threads) as pool:
            for future in [
                pool.submit(self._conversation, group, stop) for group in by_customer.values()
            ]:
                future.result()
        for client in self._clients:
            client.close()


# -- the server ------------------------------------------------------------------------------


def write_config(
    folder: Path, port: int, fake: FakeTwilio, args: argparse.Namespace, url: str | None
) -> Path:
    rules = folder / "rules"
    rules.mkdir(exist_ok=True)
    (rules / "echo.yaml").write_text(RULES)
    extra = f"""
[rules]
path = "{rules}"

[channels.sms]
account_sid = "{fake.account_sid}"
auth_token = "{fake.auth_token}"
from = "{OURS}"
mode = "live"
api_base = "{fake.url}"
rate_per_second = 10000

[worker]
lease_seconds = {args.lease}

[dispatch]
lease_seconds = {args.lease}
timeout_seconds = {args.timeout}
concurrency = {args.concurrency}
backoff_base_seconds = 0.02
backoff_cap_seconds = 0.3
breaker_open_seconds = 0.5
"""
    text = config_text(folder / "var" / "switchboard.db", port=port, extra=extra, storage_url=url)
    # config_text logs at warning; the attempts and looks are logged at info.
    text = text.replace('[logging]\nlevel = "warning"', f'[logging]\nlevel = "{args.log_level}"')
    path = folder / "switchboard.toml"
    path.write_text(text)
    return path


def start(config: Path, log: IO[bytes], base_url: str) -> subprocess.Popen[bytes]:
    process = spawn_serve(config, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"serve exited with {process.returncode} (log: {log.name})")
        try:
            if httpx.get(base_url + "/readyz", timeout=1).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    sys.exit(f"serve not ready in 60 s (log: {log.name})")


# -- the soak --------------------------------------------------------------------------------


@dataclass
class Kill:
    wanted: str
    caught: bool
    life_s: float  # spawn to SIGKILL
    startup_s: float  # spawn to ready
    in_doubt: int  # Messages created at the fake and not recorded in the store, after the kill
    created: int  # Messages created in this life


@dataclass
class Soak:
    kills: list[Kill] = field(default_factory=list)
    reposted: int = 0
    settle_s: float = 0.0
    settled: bool = False
    wall_s: float = 0.0
    sent: list[Item] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    dead: list[dict[str, Any]] = field(default_factory=list)
    accepted: list[TwilioMessage] = field(default_factory=list)
    creates: int = 0
    looks: int = 0
    looks_failed: int = 0
    fake_errors: list[str] = field(default_factory=list)


def slices(items: list[Item], kills: int) -> list[list[Item]]:
    """The webhooks first posted in each life: in message order, evenly over the kills."""
    out: list[list[Item]] = [[] for _ in range(kills + 1)]
    for index, item in enumerate(items):
        out[index * kills // len(items)].append(item)
    return out


def run(args: argparse.Namespace, folder: Path, url: str | None, rng: random.Random) -> Soak:
    soak = Soak()
    soak.sent = [(c, n) for n in range(args.messages) for c in range(args.customers)]
    chunks = slices(soak.sent, args.kills)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}"
    store = StoreView(folder / "var" / "switchboard.db", url)
    weights = [args.mix[k] for k in KINDS]
    with SoakTwilio(
        auth_token=SECRETS["twilio"][0],
        auto_callbacks=True,
        callback_target=base_url,
    ) as fake:
        fake.slow, fake.slow_jitter = args.stall[0], args.stall[1] - args.stall[0]
        fake._stalls = random.Random(args.seed)  # the stalls of this seed
        fake.fail_randomly(args.look_failures, (server_error(503),), op="list", seed=args.seed)
        config = write_config(folder, port, fake, args, url)
        refused: list[Item] = []
        began = time.monotonic()
        for life in range(args.kills + 1):
            final = life == args.kills
            spawned = time.monotonic()
            with (folder / f"life{life:03d}.log").open("wb") as log:
                process = start(config, log, base_url)
            ready = time.monotonic()
            created_before = fake.accepted_count()
            soak.reposted += len(refused)
            batch = (
                refused + [i for chunk in chunks[life:] for i in chunk]
                if final
                else (refused + chunks[life])
            )
            poster, stop = Poster(base_url, args.threads), threading.Event()
            if final:
                poster.post(batch, stop)
                if poster.refused:
                    sys.exit(f"the last life refused {len(poster.refused)} webhooks")
                settling = time.monotonic()
                soak.settled = wait(lambda: settled(store, len(soak.sent)), args.settle_timeout)
                time.sleep(1)  # a late duplicate would show now
                soak.settle_s = time.monotonic() - settling
                soak.rows = cli_json(config, "outbox", "list", "--json", "--limit", "100000")
                soak.dead = cli_json(config, "dlq", "list", "--json", "--limit", "100000")
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
                break
            posting = threading.Thread(target=poster.post, args=(batch, stop))
            posting.start()
            wanted = rng.choices(KINDS, weights)[0]
            # Every kill comes some time into the life, so lives also get answers and record
            # outcomes; a send or look kill then waits for its moment.
            time.sleep(rng.uniform(0, args.delay))
            caught = True
            if wanted != "random":
                aim: Callable[[float], bool] = fake.mid_send if wanted == "send" else fake.mid_look
                caught = fake.wait_until(functools.partial(aim, spawned), timeout=args.wait)
            os.kill(process.pid, signal.SIGKILL)
            process.wait()
            killed = time.monotonic()
            stop.set()
            posting.join()
            refused = sorted(poster.refused)
            created = fake.snapshot()
            in_doubt = len({m.sid for m in created} - store.recorded_sids())
            kill = Kill(
                wanted,
                caught,
                killed - spawned,
                ready - spawned,
                in_doubt,
                len(created) - created_before,
            )
            soak.kills.append(kill)
            if args.verbose or (life + 1) % 25 == 0:
                counts = store.counts()
                print(
                    f"  life {life + 1:>4}: {wanted:<6} {'caught' if caught else 'MISSED':<6} "
                    f"after {kill.life_s:5.2f} s, in doubt {in_doubt:>3}; replies accepted "
                    f"{fake.accepted_count():>5}, rows {sum(counts.values()):>5} "
                    f"({counts['pending']} pending, {counts['sending']} sending), "
                    f"{len(refused)} webhooks to post again",
                    flush=True,
                )
        soak.wall_s = time.monotonic() - began
        soak.accepted = fake.snapshot()
        soak.creates, soak.looks = fake.calls["create"], fake.calls["list"]
        soak.looks_failed = sum(1 for applied in fake.applied if applied.op == "list")
        soak.fake_errors = list(fake.errors)
    return soak


def wait(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return condition()


def settled(store: StoreView, expected: int) -> bool:
    counts = store.counts()
    return sum(counts.values()) == expected and sum(counts[s] for s in SETTLED) == expected


def cli_json(config: Path, *args: str) -> list[dict[str, Any]]:
    result = run_cli(config, *args)
    if result.exit_code != 0:
        sys.exit(f"switchboard {shlex.join(args)} failed: {result.stderr}")
    rows: list[dict[str, Any]] = result.json()
    return rows


# -- the verdict -----------------------------------------------------------------------------


@dataclass
class Verdict:
    doubled: list[tuple[str, str]]
    lost: list[tuple[str, str]]
    unexpected: list[tuple[str, str]]
    out_of_order: list[int]
    bad_rows: list[str]

    @property
    def ok(self) -> bool:
        return not (
            self.doubled or self.lost or self.unexpected or self.out_of_order or self.bad_rows
        )


def judge(soak: Soak) -> Verdict:
    """Every reply accepted once, in order per conversation; every row sent and naming the
    Message the fake holds for it."""
    expected = Counter((customer(c), f"got {text_of(c, n)}") for c, n in soak.sent)
    got = Counter((m.to, m.body) for m in soak.accepted)
    order: dict[str, list[str]] = defaultdict(list)
    for message in sorted(soak.accepted, key=lambda m: m.accepted_at):
        order[message.to].append(message.body)
    wanted: dict[int, list[str]] = defaultdict(list)
    for c, n in sorted(soak.sent):
        wanted[c].append(f"got {text_of(c, n)}")
    by_sid = {m.sid: m for m in soak.accepted}
    bad_rows = (
        [f"{len(soak.rows)} rows for {len(soak.sent)} webhooks"]
        if len(soak.rows) != len(soak.sent)
        else []
    )
    for row in soak.rows:
        named = by_sid.get(row.get("provider_message_id") or "")
        if row["status"] not in ("sent", "delivered"):
            bad_rows.append(f"row {row['id']} is {row['status']}")
        elif named is None or (named.to, named.body) != (row["to"], row["payload"]["text"]):
            bad_rows.append(f"row {row['id']} names no Message of its reply")
    return Verdict(
        doubled=sorted(key for key, count in got.items() if count > 1),
        lost=sorted(set(expected) - set(got)),
        unexpected=sorted(set(got) - set(expected)),
        out_of_order=sorted(c for c, bodies in wanted.items() if order[customer(c)] != bodies),
        bad_rows=bad_rows,
    )


def spread(values: list[float], unit: str = "", digits: int = 2) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"median {statistics.median(ordered):.{digits}f}{unit}, p90 {p90:.{digits}f}{unit}, "
        f"min {ordered[0]:.{digits}f}{unit}, max {ordered[-1]:.{digits}f}{unit}"
    )


def report(soak: Soak, verdict: Verdict) -> None:
    kills = soak.kills
    print("\nKills (SIGKILL of serve)")
    for kind in KINDS:
        of_kind = [k for k in kills if k.wanted == kind]
        missed = sum(1 for k in of_kind if not k.caught)
        label = {"send": "mid-send", "look": "mid-look", "random": "at random"}[kind]
        detail = f" ({missed} missed: the moment did not come in time)" if missed else ""
        doubt = [k.in_doubt for k in of_kind]
        mean = f", in doubt after it {statistics.mean(doubt):.1f} on average" if doubt else ""
        print(f"  {label:<10}: {len(of_kind) - missed:>4}{detail}{mean}")
    doubts = [k.in_doubt for k in kills]
    print(f"  total     : {len(kills)}")
    print(
        f"Messages in doubt at each kill (created at the fake, not recorded in the store): "
        f"{spread([float(d) for d in doubts], digits=0)}; kills with none: "
        f"{sum(1 for d in doubts if d == 0)}, sum {sum(doubts)}"
    )
    print(f"  histogram (in doubt: kills): {dict(sorted(Counter(doubts).items()))}")
    print(
        f"Provider calls: creates {soak.creates:,} (Messages {len(soak.accepted):,}), "
        f"looks (list requests) {soak.looks:,}, of which failed (503) {soak.looks_failed:,}"
    )
    print(
        f"Replies: expected {len(soak.sent):,}, accepted {len(soak.accepted):,}; "
        f"doubled {len(verdict.doubled)}, lost {len(verdict.lost)}, unexpected "
        f"{len(verdict.unexpected)}, conversations out of order {len(verdict.out_of_order)}, "
        f"dead letters {len(soak.dead)}, rows wrong {len(verdict.bad_rows)}"
    )
    print(f"  webhooks posted again after a kill: {soak.reposted:,}")
    status = Counter(row["status"] for row in soak.rows)
    print(f"  outbox rows at the end: {dict(status)}")
    print(
        f"Time: wall {soak.wall_s:.0f} s; last life settled in {soak.settle_s:.1f} s"
        + ("" if soak.settled else " (NEVER SETTLED)")
    )
    print(f"  per life (spawn to kill): {spread([k.life_s for k in kills], ' s')}")
    print(f"  start-up (spawn to ready): {spread([k.startup_s for k in kills], ' s')}")
    print(f"  Messages created per life: {spread([float(k.created) for k in kills], digits=0)}")


def explain(soak: Soak, verdict: Verdict, folder: Path) -> None:
    """The rows behind each doubled or lost reply, and every log line that names them."""
    print("\n!! FAILED", file=sys.stderr)
    for name in ("doubled", "lost", "unexpected", "out_of_order", "bad_rows"):
        found = getattr(verdict, name)
        if found:
            print(f"   {name}: {len(found)}, e.g. {found[:5]}", file=sys.stderr)
    if soak.dead:
        print(f"   dead letters: {soak.dead[:3]}", file=sys.stderr)
    keys = set(verdict.doubled[:5]) | set(verdict.lost[:5])
    rows = [r for r in soak.rows if (r["to"], r["payload"]["text"]) in keys]
    for row in rows:
        sids = [
            m.sid for m in soak.accepted if (m.to, m.body) == (row["to"], row["payload"]["text"])
        ]
        print(
            f"\n   row {row['id']} ({row['to']}, {row['payload']['text']!r}): {row}",
            file=sys.stderr,
        )
        print(f"   Messages at the fake: {sids}", file=sys.stderr)
        for log in sorted(folder.glob("life*.log")):
            for line in log.read_text(errors="replace").splitlines():
                if row["id"] in line or any(sid in line for sid in sids):
                    print(f"   {log.name}: {line[:400]}", file=sys.stderr)


# -- main ------------------------------------------------------------------------------------


def parse_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        pair = (float(low), float(high or low))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want SECONDS or LOW-HIGH") from None
    if pair[0] < 0 or pair[1] < pair[0]:
        raise argparse.ArgumentTypeError(f"{text!r}: want 0 <= LOW <= HIGH")
    return pair


def parse_mix(text: str) -> dict[str, float]:
    try:
        weights = dict(zip(KINDS, (float(w) for w in text.split(":")), strict=True))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: want SEND:LOOK:RANDOM weights") from None
    if any(w < 0 for w in weights.values()) or not sum(weights.values()):
        raise argparse.ArgumentTypeError(f"{text!r}: weights >= 0, not all 0")
    return weights


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", choices=("sqlite", "postgres"), default="sqlite")
    parser.add_argument(
        "--admin-url",
        default=os.environ.get(
            "SWITCHBOARD_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        ),
        help="PostgreSQL that may create databases (postgres: one made and dropped per run)",
    )
    parser.add_argument("--kills", type=int, default=200, help="SIGKILLs of serve (200)")
    parser.add_argument("--customers", type=int, default=40, help="conversations (40)")
    parser.add_argument("--messages", type=int, default=20, help="inbound SMS per customer (20)")
    parser.add_argument(
        "--mix",
        type=parse_mix,
        default=parse_mix("2:2:1"),
        help="weights of the kills' moments, SEND:LOOK:RANDOM (2:2:1)",
    )
    parser.add_argument(
        "--stall",
        type=parse_range,
        default=parse_range("1-3"),
        help="seconds every answer of the fake waits after it acted, LOW-HIGH (1-3)",
    )
    parser.add_argument(
        "--look-failures", type=float, default=0.25, help="share of looks failing 503 (0.25)"
    )
    parser.add_argument(
        "--delay",
        type=float,
        default=2,
        help="each life runs 0 to this many s before its kill is aimed (2)",
    )
    parser.add_argument(
        "--wait", type=float, default=5, help="seconds a send or look kill waits for its moment (5)"
    )
    parser.add_argument(
        "--lease", type=float, default=1, help="worker and dispatch lease_seconds (1)"
    )
    parser.add_argument(
        "--timeout", type=float, default=5, help="dispatch timeout_seconds (5: above the stall)"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="dispatch concurrency (16)")
    parser.add_argument("--threads", type=int, default=8, help="posting threads (8)")
    parser.add_argument(
        "--settle-timeout",
        type=float,
        default=600,
        help="seconds for the last life to settle (600)",
    )
    parser.add_argument("--seed", type=int, default=17, help="kills, stalls, failed looks (17)")
    parser.add_argument("--log-level", default="info", help="server logging.level (info)")
    parser.add_argument("--keep", action="store_true", help="keep the temp folder (logs, store)")
    parser.add_argument("-v", "--verbose", action="store_true", help="a line per life")
    args = parser.parse_args()
    if args.kills < 1 or args.customers < 1 or args.messages < 1:
        parser.error("--kills, --customers and --messages must be >= 1")
    if not 0 <= args.look_failures < 1:
        parser.error("--look-failures must be in [0, 1)")
    return args


def main() -> None:
    args = parse_args()
    cheap_status_callbacks()
    folder = Path(tempfile.mkdtemp(prefix="switchboard-soak-"))
    databases = pg_admin.Databases(args.admin_url) if args.backend == "postgres" else None
    url = databases.create("soak") if databases is not None else None
    print("Crash soak: kill -9 of serve mid-send, mid-look and at random, a stalling fake Twilio")
    print(f"  command : {shlex.join([sys.executable, *sys.argv])}")
    print(f"  git     : {proc_stats.git_revision(ROOT)}")
    print(f"  host    : {platform.node()}, {proc_stats.cpu_model()}, {os.cpu_count()} CPUs")
    store = pg_admin.describe(args.admin_url) if url else f"SQLite {sqlite3.sqlite_version}"
    print(f"  store   : {args.backend}: {store}")
    print(
        f"  load    : {args.customers} customers x {args.messages} messages, {args.kills} kills "
        f"(mix send:look:random {':'.join(f'{args.mix[k]:g}' for k in KINDS)}), stall "
        f"{args.stall[0]:g}-{args.stall[1]:g} s, looks failing {args.look_failures:.0%}, "
        f"seed {args.seed}; leases {args.lease:g} s, timeout {args.timeout:g} s, concurrency "
        f"{args.concurrency}"
    )
    print(f"  loadavg : {proc_stats.loadavg()} (before)", flush=True)
    failed = True
    try:
        soak = run(args, folder, url, random.Random(args.seed))
        verdict = judge(soak)
        report(soak, verdict)
        print(f"  loadavg after: {proc_stats.loadavg()}")
        if soak.fake_errors:
            print(f"  the fake failed {len(soak.fake_errors)} requests: {soak.fake_errors[:3]}")
        failed = not (verdict.ok and soak.settled and not soak.dead)
        if failed:
            explain(soak, verdict, folder)
    finally:
        if databases is not None:
            databases.drop_all()
        if failed or args.keep:
            print(f"\n  kept {folder} (config, store, one log per life)")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
