"""Rule engine benchmark (issue 4): decisions per second, one core, 200 and 20 rules.

Builds a realistic rules folder (keyword replies and escalations on SMS/WhatsApp, Stripe and
custom-source rules by type, email routing by sender domain, some unindexed catch-alls with
regexes and time windows, templated actions) with a fixed seed, loads it through the real
loader, and runs 10,000 varied events (message texts, Stripe types, amounts as numbers and as
text, contacts in several countries) through `evaluate`. The process is pinned to one core.

Prints, for each size, decisions/s with the index and, for comparison, trying every rule.
Then (issue 7) how long loading takes: 1,000 and 5,000 rules as block YAML in files of 500, the
largest file allowed (MAX_FILE_BYTES of such rules) and the largest folder allowed (MAX_RULES
rules), cold (every template new) and reloaded unchanged (template checks cached by text).
With --reload-latency, ingest latency of a running `switchboard serve` with and without a
large rules file being edited and reloaded over and over (see reload_latency).

Run: .venv/bin/python bench/rules.py                 (200 and 20 rules, 10,000 events)
     .venv/bin/python bench/rules.py --events 2000    (quicker)
     .venv/bin/python bench/rules.py --load-only      (load times only)
     .venv/bin/python bench/rules.py --reload-latency (ingest p50/p99 during reloads, ~1 min)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from router.events import Channel, Contact, Event  # noqa: E402
from router.rules import ConversationView, RuleSet, Snapshot, evaluate, load_ruleset  # noqa: E402
from router.rules.engine import evaluate_naive  # noqa: E402
from router.rules.loader import MAX_FILE_BYTES, MAX_RULES  # noqa: E402

WINDOWS = {"business": "Mon-Fri 09:00-17:00", "weekend": "Sat,Sun 10:00-16:00"}
STRIPE_TYPES = [
    f"{obj}.{verb}"
    for obj in ("invoice", "customer", "charge", "payment_intent", "customer.subscription")
    for verb in ("created", "updated", "deleted", "succeeded", "failed", "payment_failed")
]
CUSTOM = ["shop", "crm", "forms"]
CUSTOM_TYPES = [f"order.{verb}" for verb in ("created", "shipped", "cancelled", "refunded")]
_NAMED = "human agent person hours open status refund price cancel menu deals join delivery"
_NAMED += " tracking invoice receipt password login coupon gift store parking"
KEYWORDS = [*_NAMED.split(), *(f"promo{n}" for n in range(60)), *(f"code{n}" for n in range(60))]
FILLER = "hi hello please can you tell me my the is what when thanks ok a to for order"
FILLER_WORDS = FILLER.split()
PHONES = ["+12125550123", "+14155550123", "+33612345678", "+81312345678", "+447700900123"]
_COMPANIES = "acme globex initech umbrella hooli stark wayne wonka"
DOMAINS = [f"{name}.com" for name in _COMPANIES.split()]
DOMAINS += ["gmail.com", "outlook.com", "partner.io", "example.org"]


def message_rule(rng: random.Random, n: int) -> dict[str, Any]:
    channel = rng.choice(["sms", "whatsapp", ["sms", "whatsapp"]])
    words = rng.sample(KEYWORDS, 2)
    when: dict[str, Any] = {"channel": channel, "text": {"contains_any": words}}
    if rng.random() < 0.3:
        when["during"] = "business"
    then = [{"reply": {"text": f"Rule {n}: thanks {{{{ contact.name | default('there') }}}}!"}}]
    if rng.random() < 0.3:
        then.append({"escalate": {"reason": f"asked about {words[0]}"}})
    return {"id": f"msg-{n}", "when": when, "then": then}


def stripe_rule(rng: random.Random, n: int) -> dict[str, Any]:
    when: dict[str, Any] = {"source": "stripe", "type": rng.choice(STRIPE_TYPES)}
    if rng.random() < 0.5:
        when["data.amount"] = {"gte": rng.randint(0, 5000)}
    then = [
        {
            "send": {
                "channel": "sms",
                "to": "{{ data.customer_phone | default('+15550000000') }}",
                "category": "transactional",
                "text": "Invoice {{ data.invoice | default('?') }}: {{ data.amount }} cents",
            }
        },
        {"forward": {"to": "crm"}},
    ]
    return {"id": f"stripe-{n}", "when": when, "then": then}


def custom_rule(rng: random.Random, n: int) -> dict[str, Any]:
    when = {
        "source": rng.choice(CUSTOM),
        "type": rng.choice(CUSTOM_TYPES),
        "data.order_id": {"wildcard": f"ord-{rng.randint(0, 9)}*"},
    }
    return {"id": f"custom-{n}", "when": when, "then": [{"tag": ["orders", "{{ type }}"]}]}


def email_rule(rng: random.Random, n: int) -> dict[str, Any]:
    domain = rng.choice(DOMAINS)
    when = {"channel": "email", "contact.address": {"suffix": f"@{domain}"}}
    then = [{"escalate": {"reason": "mail from {{ contact.address }}", "channel": "#sales"}}]
    return {"id": f"email-{n}", "when": when, "then": then}


def catch_all_rule(rng: random.Random, n: int) -> dict[str, Any]:
    when = rng.choice(
        [
            {"text": {"matches": r"(?i)\border\s*#?\d{3,}"}},
            {"any": [{"data.amount": {"gt": 9000}}, {"conversation.state": "escalated"}]},
            {"not": {"during": "business"}, "contact.address": {"prefix": "+81"}},
        ]
    )
    return {"id": f"any-{n}", "when": when, "then": [{"set": {"seen": True}}]}


KINDS = [
    (message_rule, 40),
    (stripe_rule, 30),
    (custom_rule, 12),
    (email_rule, 10),
    (catch_all_rule, 8),
]


def make_rules(count: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    makers = [maker for maker, weight in KINDS for _ in range(weight)]
    return [rng.choice(makers)(rng, n) for n in range(count)]


def make_events(count: int, seed: int = 11) -> list[Event]:
    rng = random.Random(seed)
    start = datetime(2026, 11, 23, tzinfo=UTC)
    return [_event(rng, i, start + timedelta(minutes=7 * i)) for i in range(count)]


def _event(rng: random.Random, i: int, at: datetime) -> Event:
    base: dict[str, Any] = {
        "id": f"ev{i}",
        "dedupe_key": f"k{i}",
        "received_at": at,
        "correlation_id": f"c{i}",
    }
    pick = rng.random()
    if pick < 0.5:
        channel = rng.choice([Channel.SMS, Channel.WHATSAPP])
        words = rng.choices([*FILLER_WORDS, "Order #1234", "HUMAN?!"], k=rng.randint(1, 10))
        if rng.random() < 0.5:
            words.insert(rng.randint(0, len(words)), rng.choice(KEYWORDS).upper())
        text = " ".join(words)
        return Event(
            source="twilio",
            type="message.received",
            provider_type="sms",
            channel=channel,
            contact=Contact(address=rng.choice(PHONES)),
            text=text,
            **base,
        )
    if pick < 0.75:
        amount: Any = rng.randint(0, 10000)
        data = {"amount": str(amount) if rng.random() < 0.3 else amount, "invoice": f"in_{i}"}
        kind = rng.choice(STRIPE_TYPES)
        return Event(source="stripe", type=kind, provider_type=kind, data=data, **base)
    if pick < 0.9:
        kind = rng.choice(CUSTOM_TYPES)
        data = {"order_id": f"ord-{rng.randint(0, 99999)}"}
        return Event(source=rng.choice(CUSTOM), type=kind, provider_type=kind, data=data, **base)
    address = f"user{i}@{rng.choice(DOMAINS)}"
    return Event(
        source="mailgun",
        type="email.received",
        provider_type="email",
        channel=Channel.EMAIL,
        contact=Contact(address=address),
        text="Hello, about my order",
        **base,
    )


def load(rules: list[dict[str, Any]], folder: Path) -> RuleSet:
    for index in range(0, len(rules), 50):  # several files, like a real team's folder
        chunk = {"version": 1, "rules": rules[index : index + 50]}
        (folder / f"{index // 50:02d}.yaml").write_text(json.dumps(chunk), encoding="utf-8")
    return load_ruleset(folder, windows=WINDOWS)


def run(
    ruleset: RuleSet, events: list[Event], rounds: int, decide: Any = evaluate
) -> tuple[float, dict[str, float]]:
    snapshots = [Snapshot(), Snapshot(conversation=ConversationView(state="escalated"))]
    now = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    best, matched, actions, errors = float("inf"), 0, 0, 0
    for _ in range(rounds):
        started = time.perf_counter()
        for i, event in enumerate(events):
            decision = decide(ruleset, event, snapshots[(i & 7) == 7], now)
            matched += len(decision.matched)
            actions += len(decision.actions)
            errors += len(decision.errors)
        best = min(best, time.perf_counter() - started)
    total = len(events) * rounds
    candidates = sum(len(ruleset.candidates(event)) for event in events) / len(events)
    stats = {"matched": matched / total, "actions": actions / total, "errors": errors / total}
    return len(events) / best, {**stats, "candidates": candidates}


def block_yaml(rules: list[dict[str, Any]], stamp: str = "") -> str:
    """Rules as a marketer writes them (block YAML); `stamp` makes every template new."""
    import yaml

    text = yaml.safe_dump({"version": 1, "rules": rules}, sort_keys=False, width=100)
    return text.replace("{{ contact", f"{stamp}{{{{ contact") if stamp else text


def write_folder(folder: Path, rules: list[dict[str, Any]], per_file: int, stamp: str = "") -> int:
    """Write `rules` in files of `per_file`; the total size in bytes."""
    for old in folder.glob("*.yaml"):
        old.unlink()
    size = 0
    for index in range(0, len(rules), per_file):
        text = block_yaml(rules[index : index + per_file], stamp)
        (folder / f"{index // per_file:03d}.yaml").write_text(text, encoding="utf-8")
        size += len(text.encode())
    return size


def fitting(limit: int) -> int:
    """How many bench rules fit in one file of at most `limit` bytes."""
    low, high = 1, MAX_RULES
    while low < high:
        middle = (low + high + 1) // 2
        if len(block_yaml(make_rules(middle)).encode()) <= limit:
            low = middle
        else:
            high = middle - 1
    return low


def timed_load(folder: Path) -> tuple[float, RuleSet]:
    started = time.perf_counter()
    ruleset = load_ruleset(folder, windows=WINDOWS, forwards=["crm"])
    return time.perf_counter() - started, ruleset


def load_times() -> None:
    """Print load times: cold (new templates) and unchanged (cached template checks)."""
    one_file = fitting(MAX_FILE_BYTES - 60_000)  # room for the stamps that make templates new
    cases = [
        ("1,000 rules, files of 500", 1000, 500),
        ("5,000 rules, files of 500", 5000, 500),
        (f"largest file ({one_file:,} rules)", one_file, one_file),
        (f"largest folder ({MAX_RULES:,} rules)", MAX_RULES, one_file),
    ]
    print(f"load times (caps: {MAX_FILE_BYTES:,} B a file, {MAX_RULES:,} rules)")
    for label, count, per_file in cases:
        with tempfile.TemporaryDirectory() as name:
            size = write_folder(Path(name), make_rules(count), per_file, stamp=f"{count}-")
            cold, ruleset = timed_load(Path(name))
            warm, _ = timed_load(Path(name))
        assert len(ruleset.rules) == count
        print(
            f"  {label:<32} {size / 1e6:5.2f} MB  cold {cold * 1000:7.0f} ms  "
            f"unchanged {warm * 1000:6.0f} ms"
        )


def reload_latency(seconds: float) -> None:
    """Ingest latency of a real `switchboard serve` while a large rules file is edited and
    reloaded over and over, against the same without edits.

    One client sends signed Twilio webhooks one after another on a keep-alive connection (the
    latency a provider sees); in the second phase a thread rewrites a ~1 MB rules file (every
    template new, so nothing is cached) as soon as the previous version is live, so the server
    reloads back to back. Prints p50/p99/max per phase and how many reloads happened.
    """
    import signal
    import subprocess
    import threading

    sys.path.insert(0, str(ROOT / "bench"))
    from ingest import PUBLIC_URL, TOKEN, free_port, wait_healthy

    with tempfile.TemporaryDirectory() as name:
        root = Path(name)
        rules_dir = root / "rules"
        rules_dir.mkdir()
        rules = make_rules(fitting(MAX_FILE_BYTES - 60_000))
        write_folder(rules_dir, rules, len(rules), stamp="v0-")
        port = free_port()
        config = root / "switchboard.toml"
        config.write_text(_serve_config(port, root, TOKEN, PUBLIC_URL))
        server = subprocess.Popen(
            [sys.executable, "-m", "router", "--config", str(config), "serve"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}"
            wait_healthy(base, server, deadline_s=120)
            print(f"reload latency: {len(rules):,} rules in one file, {seconds:.0f} s a phase")
            quiet = _ingest_latency(port, seconds, 0)
            _print_latency("no reloads", quiet, None)
            stop = _Stop()
            editor = threading.Thread(target=_edit_forever, args=(base, rules_dir, rules, stop))
            editor.start()
            stop.ready.wait()
            before = _reloads(base)
            busy = _ingest_latency(port, seconds, len(quiet))
            stop.set()
            editor.join()
            _print_latency("reloading", busy, _reloads(base) - before)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=30)


class _Stop:
    """Tells the editor to stop; `ready` says its versions are built."""

    def __init__(self) -> None:
        import threading

        self._stop = threading.Event()
        self.ready = threading.Event()

    def set(self) -> None:
        self._stop.set()

    def is_set(self) -> bool:
        return self._stop.is_set()


def _serve_config(port: int, root: Path, token: str, public_url: str) -> str:
    return f"""
[server]
host = "127.0.0.1"
port = {port}
public_url = "{public_url}"
admin_token = "bench"

[storage]
url = "sqlite:///{root / "switchboard.db"}"

[rules]
path = "{root / "rules"}"

[channels.http.forwards.crm]
url = "http://127.0.0.1:9/"

[windows]
business = "Mon-Fri 09:00-17:00"
weekend = "Sat,Sun 10:00-16:00"

[sources.twilio]
auth_tokens = ["{token}"]

[logging]
level = "warning"
"""


def _ingest_latency(port: int, seconds: float, first: int) -> list[float]:
    """Signed webhooks one at a time for `seconds`; each latency in seconds."""
    import http.client

    from ingest import PATH, PUBLIC_URL, TOKEN
    from signed_requests import signed_line
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(TOKEN)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    index = first
    while time.monotonic() < deadline:
        signature, body = signed_line(validator, PUBLIC_URL + PATH, index).rstrip("\n").split("\t")
        headers = {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Twilio-Signature": signature,
        }
        started = time.perf_counter()
        connection.request("POST", PATH, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        latencies.append(time.perf_counter() - started)
        assert response.status == 200, response.status
        index += 1
    connection.close()
    return latencies


def _edit_forever(base: str, folder: Path, rules: list[dict[str, Any]], stop: Any) -> None:
    """Rewrite the rules file (all templates new) each time the previous edit is live.

    The versions are built before the phase starts, so this thread only writes bytes and polls
    /readyz: building YAML here would hold this process's GIL and slow the client instead.
    """
    texts = [block_yaml(rules, stamp=f"v{edit}-").encode() for edit in range(1, 40)]
    versions = [_version_of(folder, text) for text in texts]
    stop.ready.set()
    for text, want in zip(texts, versions, strict=True):
        if stop.is_set():
            return
        (folder / "000.yaml").write_bytes(text)
        while not stop.is_set() and _live_version(base) != want:
            time.sleep(0.05)


def _version_of(folder: Path, text: bytes) -> str:
    from router.rules.loader import _digest

    return _digest([("000.yaml", text)])


def _live_version(base: str) -> str | None:
    import urllib.request

    with urllib.request.urlopen(base + "/readyz", timeout=10) as response:
        version: str | None = json.loads(response.read())["rules_version"]
        return version


def _reloads(base: str) -> int:
    import urllib.request

    request = urllib.request.Request(base + "/metrics", headers={"Authorization": "Bearer bench"})
    with urllib.request.urlopen(request, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("switchboard_rules_reload_total{"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def _print_latency(label: str, latencies: list[float], reloads: int | None) -> None:
    ordered = sorted(latencies)
    p50 = ordered[len(ordered) // 2] * 1000
    p99 = ordered[int(len(ordered) * 0.99)] * 1000
    extra = f", {reloads} reloads" if reloads is not None else ""
    print(
        f"  {label:<11} {len(ordered):>6,} webhooks  p50 {p50:6.2f} ms  p99 {p99:6.2f} ms  "
        f"max {ordered[-1] * 1000:7.1f} ms{extra}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--load-only", action="store_true", help="Only the load times.")
    parser.add_argument(
        "--reload-latency", action="store_true", help="Only ingest latency during reloads."
    )
    parser.add_argument("--seconds", type=float, default=15.0, help="Per reload-latency phase.")
    args = parser.parse_args()
    if args.reload_latency:
        reload_latency(args.seconds)
        return
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    if args.load_only:
        load_times()
        return
    events = make_events(args.events)
    print(
        f"python {sys.version.split()[0]}, {args.events} events, "
        f"best of {args.rounds} rounds, 1 core"
    )
    for count in (200, 20):
        with tempfile.TemporaryDirectory() as folder:
            ruleset = load(make_rules(count), Path(folder))
        run(ruleset, events[:500], 1)  # warm caches (index, zones, regexes)
        rate, stats = run(ruleset, events, args.rounds)
        print(
            f"{count:>4} rules: {rate:>9,.0f} decisions/s  "
            f"(candidates/event {stats['candidates']:.1f}, matched/event {stats['matched']:.2f}, "
            f"actions/event {stats['actions']:.2f}, errors/event {stats['errors']:.2f})"
        )
        naive, _ = run(ruleset, events, 1, evaluate_naive)
        print(f"{count:>4} rules: {naive:>9,.0f} decisions/s  without the index (every rule tried)")
    load_times()


if __name__ == "__main__":
    main()
