"""Named time windows, evaluated in the contact's zone at a fixed `now`."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from router.clock import FrozenClock
from router.rules import RuleSet, Snapshot, load_ruleset
from router.timewindows import parse_window
from tests.rules.support import decide, make_event, write_rules

MONDAY = datetime(2026, 11, 23, tzinfo=UTC)  # Monday 00:00 UTC


@pytest.mark.parametrize(
    ("spec", "local", "inside"),
    [
        ("Mon-Fri 09:00-17:00", "Mon 09:00", True),
        ("Mon-Fri 09:00-17:00", "Mon 08:59", False),
        ("Mon-Fri 09:00-17:00", "Fri 16:59", True),
        ("Mon-Fri 09:00-17:00", "Fri 17:00", False),
        ("Mon-Fri 09:00-17:00", "Sat 12:00", False),
        ("mon-fri 9:00-17:00", "Wed 12:00", True),
        ("Sat,Sun 10:00-14:00", "Sun 13:59", True),
        ("Sat, Sun 10:00-14:00", "Mon 11:00", False),
        ("Fri-Mon 10:00-11:00", "Sun 10:30", True),
        ("Fri-Mon 10:00-11:00", "Tue 10:30", False),
        ("22:00-06:00", "Wed 23:30", True),
        ("22:00-06:00", "Thu 05:59", True),
        ("22:00-06:00", "Thu 06:00", False),
        ("Fri 22:00-02:00", "Sat 01:00", True),
        ("Fri 22:00-02:00", "Fri 01:00", False),
        ("Mon-Fri 09:00-12:00,13:00-17:00", "Tue 12:30", False),
        ("Mon-Fri 09:00-12:00,13:00-17:00", "Tue 13:00", True),
        ("Mon-Fri 08:00-20:00; Saturday 10:00-16:00", "Sat 15:00", True),
        ("00:00-24:00", "Sun 23:59", True),
        ("Mon 18:00-24:00", "Mon 23:59", True),
        ("Mon 18:00-24:00", "Tue 00:00", False),
    ],
)
def test_window_contains(spec: str, local: str, inside: bool) -> None:
    day, clock = local.split()
    days = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
    hours, minutes = (int(part) for part in clock.split(":"))
    moment = MONDAY + timedelta(days=days.index(day), hours=hours, minutes=minutes)
    assert parse_window(spec).contains(moment) is inside


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty window"),
        ("Mon-Fri", "no time range"),
        ("Mon-Fry 09:00-17:00", "unknown day 'Fry'"),
        ("Mon 9-17", "bad time '9'"),
        ("Mon 09:00-25:00", "bad time '25:00'"),
        ("Mon 09:60-10:00", "bad time '09:60'"),
        ("Mon 09:00-09:00", "empty time range"),
        ("Mon 09:00", "expected HH:MM-HH:MM"),
    ],
)
def test_window_spec_errors(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_window(spec)


def business_rules(folder: Path, default_timezone: str = "UTC") -> RuleSet:
    rules = {
        "version": 1,
        "rules": [
            {"id": "open", "when": {"during": "business"}, "then": [{"tag": "open"}]},
            {"id": "closed", "when": {"not": {"during": "business"}}, "then": [{"tag": "closed"}]},
        ],
    }
    write_rules(folder, {"hours.yaml": rules})
    windows = {"business": "Mon-Fri 09:00-17:00"}
    return load_ruleset(folder, windows=windows, default_timezone=default_timezone)


@pytest.mark.parametrize(
    ("address", "snapshot_zone", "expected"),
    [
        ("+12125550123", None, "open"),  # New York: 10:00 Monday
        ("+14155550123", None, "closed"),  # Los Angeles: 07:00 Monday
        ("+33612345678", None, "open"),  # Paris: 16:00 Monday
        ("whatsapp:+33612345678", None, "open"),
        ("+81312345678", None, "closed"),  # Tokyo: 00:00 Tuesday
        ("+81312345678", "America/Chicago", "open"),  # the snapshot's zone wins: 09:00
        ("+18005550123", None, "closed"),  # toll-free, no single zone: default Tokyo
        ("+12125550123", "Not/AZone", "open"),  # an invalid snapshot zone is ignored
        ("ana@example.com", None, "closed"),  # not a phone number: default Tokyo
    ],
)
def test_during_uses_the_contacts_zone(
    tmp_path: Path, address: str, snapshot_zone: str | None, expected: str
) -> None:
    clock = FrozenClock(datetime(2026, 11, 23, 15, 0, tzinfo=UTC))  # Monday 15:00 UTC
    ruleset = business_rules(tmp_path, default_timezone="Asia/Tokyo")
    snapshot = Snapshot(contact_timezone=snapshot_zone)
    decision = decide(ruleset, make_event(contact=address), snapshot, clock.now())
    assert decision.matched == [expected]


def test_default_zone_when_nothing_else_is_known(tmp_path: Path) -> None:
    ruleset = business_rules(tmp_path, default_timezone="Europe/Berlin")
    monday_0830_utc = datetime(2026, 11, 23, 8, 30, tzinfo=UTC)  # 09:30 in Berlin
    event = make_event(contact=None)
    assert decide(ruleset, event, now=monday_0830_utc).matched == ["open"]
    assert decide(business_rules(tmp_path), event, now=monday_0830_utc).matched == ["closed"]


def test_same_clock_same_answer_across_a_dst_change(tmp_path: Path) -> None:
    ruleset = business_rules(tmp_path)
    clock = FrozenClock(datetime(2026, 3, 6, 13, 59, tzinfo=UTC))  # Friday, New York 08:59 EST
    event = make_event(contact="+12125550123")
    assert decide(ruleset, event, now=clock.now()).matched == ["closed"]
    clock.advance(timedelta(minutes=1))
    assert decide(ruleset, event, now=clock.now()).matched == ["open"]
    clock.set(datetime(2026, 3, 9, 13, 0, tzinfo=UTC))  # Monday after DST: 09:00 EDT
    assert decide(ruleset, event, now=clock.now()).matched == ["open"]


def test_naive_now_counts_as_utc(tmp_path: Path) -> None:
    ruleset = business_rules(tmp_path)
    assert decide(ruleset, make_event(), now=datetime(2026, 11, 23, 10, 0)).matched == ["open"]
