"""Rule engine benchmark (issue 4): decisions per second, one core, 200 and 20 rules.

Builds a realistic rules folder (keyword replies and escalations on SMS/WhatsApp, Stripe and
custom-source rules by type, email routing by sender domain, some unindexed catch-alls with
regexes and time windows, templated actions) with a fixed seed, loads it through the real
loader, and runs 10,000 varied events (message texts, Stripe types, amounts as numbers and as
text, contacts in several countries) through `evaluate`. The process is pinned to one core.

Prints, for each size, decisions/s with the index and, for comparison, trying every rule.

Run: .venv/bin/python bench/rules.py                 (200 and 20 rules, 10,000 events)
     .venv/bin/python bench/rules.py --events 2000    (quicker)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
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


if __name__ == "__main__":
    main()
