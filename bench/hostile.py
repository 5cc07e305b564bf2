"""Hostile bodies benchmark (issue 7): signed webhooks' latency while attacks run, against the
same server with no attack, measured in one run.

`switchboard serve` runs pinned to one core. A client process sends signed Twilio webhooks one
after another and records each answer's latency; two attacker processes (on the other core)
loop one hostile request each:

- `fields`: a 10 MiB form of ~1.29 million empty fields, forged X-Twilio-Signature (Twilio's
  body limit raised to 16 MiB for the run, so the field cap is what holds);
- `mime-replay`: a Mailgun signature used once, replayed with 20,000 nested MIME parts;
- `mime-fresh`: freshly signed Mailgun posts of 20,000 nested MIME parts (quarantined);
- `escapes`: an unsigned url-encoded Mailgun body of 10 MiB of `%41`;
- `bytes-10MiB`, the control: an unsigned 10 MiB body with nothing to parse, i.e. what
  receiving that many bytes costs; attacks of that size cannot cost less.

Prints, per scenario: the signed webhooks' p50/p99 and their ratio to the quiet run, the
attackers' answers per second and statuses. Before issue 7, `fields` alone took signed
webhooks to a p50 of 9.4 s.

Run: .venv/bin/python bench/hostile.py             (200 signed webhooks per scenario)
     .venv/bin/python bench/hostile.py --quick     (50)
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import hmac
import multiprocessing
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from statistics import quantiles
from typing import Any
from urllib.parse import urlencode

import httpx
from ingest import free_port, pinned, wait_healthy
from signed_requests import params as twilio_params
from twilio.request_validator import RequestValidator

ROOT = Path(__file__).resolve().parent.parent
PUBLIC_URL = "https://switchboard.example.com"
TWILIO_TOKEN = "bench-twilio-auth-token"
MAILGUN_KEY = "bench-mailgun-key"
MESSAGES = "/webhooks/twilio/messages"
MAILGUN = "/webhooks/email/mailgun"
MiB = 1024 * 1024
FORM = "application/x-www-form-urlencoded"


def config_text(port: int, folder: Path) -> str:
    return f"""
[server]
port = {port}
public_url = "{PUBLIC_URL}"
max_body_bytes = {48 * MiB}

[storage]
url = "sqlite:///{folder / "switchboard.db"}"

[rules]
path = "{folder / "rules"}"

[sources.twilio]
auth_tokens = ["{TWILIO_TOKEN}"]
max_body_bytes = {16 * MiB}

[sources.mailgun]
signing_keys = ["{MAILGUN_KEY}"]

[logging]
level = "error"
"""


# -- requests ----------------------------------------------------------------------------------


Request = tuple[str, bytes, dict[str, str]]


def signed_twilio(index: int) -> Request:
    fields = twilio_params(index)
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + MESSAGES, fields)
    body = urlencode(fields).encode()
    headers = {"Content-Type": FORM, "X-Twilio-Signature": signature}
    return MESSAGES, body, headers


@functools.cache
def field_bomb(_: int = 0) -> Request:
    """Built once: the attacker's own CPU must not pace the attack."""
    body = b"&".join(b"f%d=" % i for i in range(1_290_000))
    headers = {"Content-Type": FORM, "X-Twilio-Signature": "forged"}
    return MESSAGES, body, headers


def nested_mime(levels: int) -> bytes:
    opening = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(levels)
    )
    closing = b"".join(b"--b%d--\r\n" % i for i in reversed(range(levels)))
    head = b"From: ann@example.com\r\nTo: support@example.com\r\nSubject: bomb\r\n"
    return head + opening + b"Content-Type: text/plain\r\n\r\nhi\r\n" + closing


def mailgun(token: str, mime: bytes) -> Request:
    timestamp = str(int(time.time()))
    signature = hmac.new(MAILGUN_KEY.encode(), (timestamp + token).encode(), hashlib.sha256)
    fields = {
        "timestamp": timestamp,
        "token": token,
        "signature": signature.hexdigest(),
        "recipient": "support@example.com",
    }
    request = httpx.Request(
        "POST", "http://x" + MAILGUN, data=fields, files={"body-mime": (None, mime, "text/plain")}
    )
    return MAILGUN, request.read(), {"Content-Type": request.headers["content-type"]}


@functools.cache
def mime_replay(_: int = 0) -> Request:
    return mailgun("captured-token-0001", nested_mime(20_000))


def mime_fresh(n: int) -> Request:
    return mailgun(f"fresh-{n}-{time.monotonic_ns()}", nested_mime(20_000))


@functools.cache
def escapes(_: int = 0) -> Request:
    body = b"body-plain=" + b"%41" * (10 * MiB // 3)
    return MAILGUN, body, {"Content-Type": FORM}


@functools.cache
def plain_bytes(_: int = 0) -> Request:
    """The control: 10 MiB of one unsigned field's bytes, nothing to parse. What receiving
    that many bytes costs is the floor of every attack of that size."""
    return MAILGUN, b"body-plain=" + b"x" * (10 * MiB), {"Content-Type": FORM}


ATTACKS: dict[str, Callable[[int], Request]] = {
    "bytes-10MiB": plain_bytes,
    "fields": field_bomb,
    "mime-replay": mime_replay,
    "mime-fresh": mime_fresh,
    "escapes": escapes,
}


# -- load --------------------------------------------------------------------------------------


def attacker(base: str, name: str, stop: Any, answers: Any) -> None:
    """Loop one hostile request until `stop` (an Event) is set; put each status on `answers`."""
    make = ATTACKS[name]
    with httpx.Client(base_url=base, timeout=120) as client:
        n = 0
        while not stop.is_set():
            path, body, headers = make(n if name == "mime-fresh" else 0)
            n += 1
            try:
                answers.put(client.post(path, content=body, headers=headers).status_code)
            except httpx.HTTPError:
                answers.put(0)


def signed_latencies(base: str, first: int, count: int) -> list[float]:
    """Send `count` signed webhooks one after another; their latencies in ms (all must be 200)."""
    latencies = []
    with httpx.Client(base_url=base, timeout=120) as client:
        for index in range(first, first + count):
            path, body, headers = signed_twilio(index)
            started = time.perf_counter()
            response = client.post(path, content=body, headers=headers)
            latencies.append((time.perf_counter() - started) * 1000)
            if response.status_code != 200:
                raise RuntimeError(f"signed webhook answered {response.status_code}")
    return latencies


def scenario(
    base: str, name: str | None, first: int, count: int
) -> tuple[list[float], Counter[int], float]:
    """Signed latencies with `name` attacking (None: quiet), attack statuses, attacks/s."""
    if name is None:
        return signed_latencies(base, first, count), Counter(), 0.0
    stop = multiprocessing.Event()
    answers: Any = multiprocessing.Queue()
    attackers = [
        multiprocessing.Process(target=attacker, args=(base, name, stop, answers)) for _ in range(2)
    ]
    for process in attackers:
        process.start()
    first_answer = answers.get(timeout=120)  # the attack is under way
    started = time.monotonic()
    latencies = signed_latencies(base, first, count)
    elapsed = time.monotonic() - started
    stop.set()
    statuses = Counter([first_answer])
    for process in attackers:
        process.join(timeout=120)
    while not answers.empty():
        statuses[answers.get()] += 1
    return latencies, statuses, sum(statuses.values()) / max(elapsed, 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 signed webhooks per scenario")
    args = parser.parse_args()
    count = 50 if args.quick else 200
    folder = Path(tempfile.mkdtemp(prefix="switchboard-hostile-"))
    (folder / "rules").mkdir()
    port = free_port()
    config = folder / "switchboard.toml"
    config.write_text(config_text(port, folder))
    cpu = 0 if shutil.which("taskset") else None
    server = subprocess.Popen(
        pinned(cpu, [sys.executable, "-m", "router", "--config", str(config), "serve"]),
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(base, server)
        with httpx.Client(base_url=base, timeout=60) as client:  # the token to replay
            path, body, headers = mailgun("captured-token-0001", b"From: a@b.c\r\n\r\nhi")
            client.post(path, content=body, headers=headers)
        print(f"server on cpu {cpu}; {count} signed Twilio webhooks per scenario; 2 attackers")
        print(f"{'scenario':<12} {'p50 ms':>8} {'p99 ms':>8} {'p50 ratio':>9}  attack answers")
        quiet_p50 = 0.0
        for index, name in enumerate([None, *ATTACKS]):
            latencies, statuses, rate = scenario(base, name, index * count, count)
            cuts = quantiles(latencies, n=100)
            p50, p99 = cuts[49], cuts[98]
            quiet_p50 = quiet_p50 or p50
            answers = f"{rate:.1f}/s {dict(statuses)}" if name else "-"
            print(f"{name or 'quiet':<12} {p50:8.2f} {p99:8.2f} {p50 / quiet_p50:9.2f}  {answers}")
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
