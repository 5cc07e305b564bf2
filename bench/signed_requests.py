"""Distinct Twilio inbound-SMS webhooks, signed with twilio's own RequestValidator.

One request per line, `<X-Twilio-Signature>\t<url-encoded form body>`, for bench/ingest.lua.
Every request has its own MessageSid (and so its own dedupe key and body); senders and texts
vary too. Signing costs ~50 us a request in the library, so the file is built by every core in
parallel and cached under var/bench/ (signatures cover `public_url`, not the port, so one file
serves every run with the same size, token and URL).
"""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from urllib.parse import urlencode

FORMAT_VERSION = "1"
TEXTS = (
    "Hi, where is my order?",
    "Can I move my appointment to Thursday afternoon?",
    "Thanks! That works for me.",
    "What are your opening hours this weekend?",
    "I'd like to talk to someone about my bill, it looks wrong",
)
_CHUNK = 5_000


def params(index: int) -> dict[str, str]:
    """The form fields of a real Twilio inbound SMS, in Twilio's order; distinct per index."""
    sid = f"SM{index:032x}"
    sender = f"+1555{index % 100_000:07d}"
    return {
        "ToCountry": "US",
        "ToState": "CA",
        "SmsMessageSid": sid,
        "NumMedia": "0",
        "ToCity": "SAN FRANCISCO",
        "FromZip": "94105",
        "SmsSid": sid,
        "FromState": "NY",
        "SmsStatus": "received",
        "FromCity": "NEW YORK",
        "Body": f"{TEXTS[index % len(TEXTS)]} (#{index})",
        "FromCountry": "US",
        "To": "+15559870000",
        "MessagingServiceSid": "MG" + "5" * 32,
        "ToZip": "94105",
        "NumSegments": "1",
        "ReferralNumMedia": "0",
        "MessageSid": sid,
        "AccountSid": "AC" + "7" * 32,
        "From": sender,
        "ApiVersion": "2010-04-01",
    }


def signed_line(validator: object, url: str, index: int) -> str:
    fields = params(index)
    signature = validator.compute_signature(url, fields)  # type: ignore[attr-defined]
    return f"{signature}\t{urlencode(fields)}\n"


def _chunk(token: str, url: str, start: int, stop: int) -> str:
    from twilio.request_validator import RequestValidator

    validator = RequestValidator(token)
    return "".join(signed_line(validator, url, i) for i in range(start, stop))


def requests_file(cache: Path, count: int, *, token: str, url: str) -> tuple[Path, str]:
    """The file of `count` signed requests (built or reused) and one spare request line
    (index `count`, not in the file) for a pre-flight check."""
    from twilio.request_validator import RequestValidator

    key = hashlib.sha256(f"{FORMAT_VERSION}|{token}|{url}".encode()).hexdigest()[:12]
    path = cache / f"twilio-{count}-{key}.txt"
    spare = signed_line(RequestValidator(token), url, count).rstrip("\n")
    if path.exists():
        print(f"  requests: reusing {count:,} signed requests from {path}")
        return path, spare
    cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    bounds = [(i, min(i + _CHUNK, count)) for i in range(0, count, _CHUNK)]
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    with ProcessPoolExecutor() as pool, partial.open("w") as out:
        futures = [pool.submit(_chunk, token, url, a, b) for a, b in bounds]
        for future in futures:
            out.write(future.result())
    partial.replace(path)
    took = time.perf_counter() - started
    print(f"  requests: signed {count:,} distinct requests in {took:.1f} s -> {path}")
    return path, spare
