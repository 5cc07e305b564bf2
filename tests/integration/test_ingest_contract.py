"""The adapter contract over every provider endpoint, through real HTTP on loopback.

Each request is signed by the provider's official signing code (tests/cases/); outcomes are
read back with `switchboard events list --json`, as a user would.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

import pytest

from router.ids import ulid_floor
from tests.cases import ALL_CASES, ProviderCase
from tests.support import SECRETS, WRONG_SECRETS, LiveServer

pytestmark = pytest.mark.parametrize("case", ALL_CASES, ids=lambda c: c.id)


def secret_of(case: ProviderCase, index: int) -> str:
    return SECRETS["custom" if case.source == "crm" else case.source][index]


def wrong_secret(case: ProviderCase) -> str:
    return WRONG_SECRETS["custom" if case.source == "crm" else case.source]


def unique() -> str:
    return uuid.uuid4().hex


def test_signed_request_is_stored_with_normalised_fields(
    server: LiveServer, case: ProviderCase
) -> None:
    key = unique()
    response = server.post(case.sign(secret_of(case, 0), key, int(time.time())))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(case.ack_media_type)
    assert case.ack_contains in response.content
    events = server.events()
    assert len(events) == 1
    event = events[0]
    assert event["dedupe_key"] == case.dedupe_key(key)
    for name, value in case.expected(key).items():
        assert event[name] == value, name
    # Time bounds of `events list` read the primary key: the id holds `received_at`'s ms.
    received = datetime.fromisoformat(event["received_at"])
    assert ulid_floor(received) <= event["id"] < ulid_floor(received + timedelta(milliseconds=1))


def test_rotated_second_secret_is_accepted(server: LiveServer, case: ProviderCase) -> None:
    response = server.post(case.sign(secret_of(case, 1), unique(), int(time.time())))
    assert response.status_code == 200, response.text
    assert len(server.events()) == 1


@pytest.mark.parametrize("fault", ["tampered", "wrong_secret", "missing_signature", "stale"])
def test_bad_signature_is_refused_and_nothing_stored(
    server: LiveServer, case: ProviderCase, fault: str
) -> None:
    now = int(time.time())
    good = case.sign(secret_of(case, 0), unique(), now)
    if fault == "tampered":
        request = case.tamper(good)
    elif fault == "wrong_secret":
        request = case.sign(wrong_secret(case), unique(), now)
    elif fault == "missing_signature":
        request = case.strip_signature(good)
    else:
        if not case.signs_timestamp:
            pytest.skip(f"{case.id} signs no timestamp (replay protection is the dedupe key)")
        request = case.sign(secret_of(case, 0), unique(), now - 3600)
    response = server.post(request)
    assert response.status_code == 401, response.text
    assert "error" in response.json()
    assert server.events() == []


def test_same_delivery_ten_times_concurrently_is_one_event(
    server: LiveServer, case: ProviderCase
) -> None:
    request = case.sign(secret_of(case, 0), unique(), int(time.time()))
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(pool.map(lambda _: server.post(request), range(10)))
    assert [r.status_code for r in responses] == [200] * 10
    assert len(server.events()) == 1
