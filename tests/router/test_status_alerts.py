"""The alert rules of `switchboard status` (SPEC §12), one threshold at a time: each alert
appears just past its threshold and not before it."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from router.config import EscalationConfig, Settings
from router.status.alerts import alerts, duration
from router.status.model import (
    BackupStatus,
    EscalationsStatus,
    EventsStatus,
    OutboxStatus,
    ServerStatus,
    Status,
    StorageStatus,
)

SETTINGS = Settings(escalation=EscalationConfig(claim_timeout="10m"))
WELL = Status(
    server=ServerStatus(
        url="http://127.0.0.1:8080", ready=True, rules_version="v", rules_error=None
    ),
    events=EventsStatus(waiting=0, oldest_waiting_seconds=None, failed=3),
    outbox=OutboxStatus(due=0, oldest_due_seconds=None, deferred=4, sending=1, dead=0),
    escalations=EscalationsStatus(open=1, unclaimed=0, oldest_unclaimed_seconds=None),
    breakers={"http:crm": "closed"},
    reconcile={},
    backup=BackupStatus(last=None, age_seconds=None),
    storage=StorageStatus(bytes=1, blobs_bytes=0, disk_free_bytes=10_000),
    alerts=[],
)
DISK_TOTAL = 100_000


def _alerts(problem: str | None = None, **sections: Any) -> list[str]:
    status = WELL
    for name, fields in sections.items():
        section = getattr(status, name)
        value = msgspec.structs.replace(section, **fields) if fields is not None else None
        status = msgspec.structs.replace(status, **{name: value})
    return alerts(status, SETTINGS, problem, DISK_TOTAL)


def test_all_well_is_no_alert() -> None:
    assert _alerts() == []


def test_a_server_down_says_why() -> None:
    found = _alerts(
        "nothing answers at http://127.0.0.1:8080 (ConnectError)", server={"ready": False}
    )
    assert found == ["server down: nothing answers at http://127.0.0.1:8080 (ConnectError)"]


def test_an_invalid_rules_edit_needs_a_person() -> None:
    found = _alerts(server={"rules_error": "rules/a.yaml:3:1: bad"})
    assert found == ["rules files invalid, the previous version stays live: rules/a.yaml:3:1: bad"]


@pytest.mark.parametrize(("oldest", "alerted"), [(59.9, False), (60.0, False), (60.5, True)])
def test_an_event_waiting_over_a_minute(oldest: float, alerted: bool) -> None:
    found = _alerts(events={"waiting": 4, "oldest_waiting_seconds": oldest})
    assert found == (
        ["4 events waiting to be routed, the oldest for 1m (is a worker running?)"]
        if alerted
        else []
    )


def test_dead_letters() -> None:
    assert _alerts(outbox={"dead": 1}) == [
        "1 dead letter in the outbox: see `switchboard dlq list`"
    ]


@pytest.mark.parametrize(("oldest", "alerted"), [(599.0, False), (600.0, True)])
def test_an_unclaimed_escalation_past_its_reminder(oldest: float, alerted: bool) -> None:
    found = _alerts(escalations={"unclaimed": 1, "oldest_unclaimed_seconds": oldest})
    assert bool(found) is alerted
    if alerted:
        assert found[0].startswith("escalation unclaimed for 10m, past its reminder")


@pytest.mark.parametrize(("free", "alerted"), [(10_000, False), (9_999, True)])
def test_under_a_tenth_of_the_disk_free(free: int, alerted: bool) -> None:
    found = _alerts(storage={"disk_free_bytes": free})
    assert found == (["disk almost full where the store is: 10% free (9.8 KB)"] if alerted else [])


def test_an_open_breaker_and_a_probing_one() -> None:
    status = msgspec.structs.replace(WELL, breakers={"a": "open", "b": "half_open", "c": "closed"})
    assert alerts(status, SETTINGS, None, DISK_TOTAL) == [
        "circuit breaker open for a: sends to it are held",
        "circuit breaker half-open for b: sends to it are held",
    ]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (75, "1m 15s"), (3600, "1h"), (7500, "2h 5m"), (180_000, "2d 2h")],
)
def test_durations_for_people(seconds: float, text: str) -> None:
    assert duration(seconds) == text
