"""Quiet hours: the window in the recipient's zone, across DST, with the US state windows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phonenumbers import geocoder

from router.config import ComplianceConfig
from statemachines.quiet_hours import AREA_CODES, STATE_WINDOWS, not_before, us_state

NY, PARIS = ZoneInfo("America/New_York"), ZoneInfo("Europe/Paris")
CHICAGO = ZoneInfo("America/Chicago")
CONFIG = ComplianceConfig(quiet_hours="21:00-08:00", default_timezone="UTC")
NEW_YORK_NUMBER, PARIS_NUMBER = "+12125550123", "+33612345678"
MIAMI, HARTFORD, DALLAS = "+13055550123", "+18605550123", "+12145550123"


def at(zone: ZoneInfo, *fields: int) -> datetime:
    return datetime(*fields, tzinfo=zone)


# (now, phone number, recipient zone, expected not_before as a local time, or None)
CASES = [
    # New York, spring forward (2026-03-08 02:00 -> 03:00): 08:00 EDT is 12:00 UTC, not 13:00.
    (at(NY, 2026, 3, 7, 22, 0), NEW_YORK_NUMBER, None, at(NY, 2026, 3, 8, 8, 0)),
    (at(NY, 2026, 3, 8, 1, 59), NEW_YORK_NUMBER, None, at(NY, 2026, 3, 8, 8, 0)),
    (at(NY, 2026, 3, 8, 3, 30), NEW_YORK_NUMBER, None, at(NY, 2026, 3, 8, 8, 0)),
    # New York, fall back (2026-11-01 02:00 -> 01:00): the night is an hour longer.
    (at(NY, 2026, 10, 31, 23, 0), NEW_YORK_NUMBER, None, at(NY, 2026, 11, 1, 8, 0)),
    (at(NY, 2026, 11, 1, 1, 30), NEW_YORK_NUMBER, None, at(NY, 2026, 11, 1, 8, 0)),
    # Paris, spring forward (2026-03-29 02:00 -> 03:00) and fall back (2026-10-25 03:00 -> 02:00).
    (at(PARIS, 2026, 3, 28, 23, 0), PARIS_NUMBER, None, at(PARIS, 2026, 3, 29, 8, 0)),
    (at(PARIS, 2026, 10, 24, 22, 0), PARIS_NUMBER, None, at(PARIS, 2026, 10, 25, 8, 0)),
    # The edges: the start is quiet, the end is open.
    (at(NY, 2026, 6, 10, 20, 59), NEW_YORK_NUMBER, None, None),
    (at(NY, 2026, 6, 10, 21, 0), NEW_YORK_NUMBER, None, at(NY, 2026, 6, 11, 8, 0)),
    (at(NY, 2026, 6, 11, 7, 59, 59), NEW_YORK_NUMBER, None, at(NY, 2026, 6, 11, 8, 0)),
    (at(NY, 2026, 6, 11, 8, 0), NEW_YORK_NUMBER, None, None),
    # A known zone beats the number's; a bad one falls back to the number; no number: default.
    (at(PARIS, 2026, 6, 10, 23, 0), NEW_YORK_NUMBER, "Europe/Paris", at(PARIS, 2026, 6, 11, 8, 0)),
    (at(NY, 2026, 6, 10, 23, 0), NEW_YORK_NUMBER, "Mars/Olympus", at(NY, 2026, 6, 11, 8, 0)),
    (at(UTC, 2026, 6, 10, 23, 0), None, None, at(UTC, 2026, 6, 11, 8, 0)),
    (at(UTC, 2026, 6, 10, 23, 0), "+15555550123", None, at(UTC, 2026, 6, 11, 8, 0)),
    # State windows: Florida closes at 20:00, Connecticut opens at 09:00 (Wed 2026-06-10).
    (at(NY, 2026, 6, 10, 20, 30), MIAMI, None, at(NY, 2026, 6, 11, 8, 0)),
    (at(NY, 2026, 6, 10, 19, 59), MIAMI, None, None),
    (at(NY, 2026, 6, 10, 8, 30), HARTFORD, None, at(NY, 2026, 6, 10, 9, 0)),
    (at(NY, 2026, 6, 10, 20, 0), HARTFORD, None, at(NY, 2026, 6, 11, 9, 0)),
    # Texas: 9-21 Monday to Saturday, noon-21 on Sunday (Sat 2026-06-13, Sun 06-14).
    (at(CHICAGO, 2026, 6, 13, 10, 0), DALLAS, None, None),
    (at(CHICAGO, 2026, 6, 13, 8, 30), DALLAS, None, at(CHICAGO, 2026, 6, 13, 9, 0)),
    (at(CHICAGO, 2026, 6, 14, 10, 0), DALLAS, None, at(CHICAGO, 2026, 6, 14, 12, 0)),
    (at(CHICAGO, 2026, 6, 13, 21, 30), DALLAS, None, at(CHICAGO, 2026, 6, 14, 12, 0)),
    (at(CHICAGO, 2026, 6, 14, 21, 30), DALLAS, None, at(CHICAGO, 2026, 6, 15, 9, 0)),
    # Texas on the US spring-forward Sunday: noon CDT.
    (at(CHICAGO, 2026, 3, 7, 22, 0), DALLAS, None, at(CHICAGO, 2026, 3, 8, 12, 0)),
    # WhatsApp addresses are the same number.
    (at(NY, 2026, 6, 10, 20, 30), "whatsapp:" + MIAMI, None, at(NY, 2026, 6, 11, 8, 0)),
]


@pytest.mark.parametrize(("now", "number", "zone", "expected"), CASES)
def test_marketing_waits_for_the_window_to_open(
    now: datetime, number: str | None, zone: str | None, expected: datetime | None
) -> None:
    result = not_before(now, "marketing", zone, number, CONFIG)

    assert result == expected
    assert result is None or result.tzinfo is UTC


@pytest.mark.parametrize("category", ["transactional", "conversational"])
def test_other_categories_are_not_held(category: str) -> None:
    assert not_before(at(NY, 2026, 6, 10, 23, 0), category, None, MIAMI, CONFIG) is None


def test_held_categories_are_a_parameter() -> None:
    held = frozenset({"marketing", "transactional"})
    now = at(NY, 2026, 6, 10, 23, 0)

    assert not_before(now, "transactional", None, NEW_YORK_NUMBER, CONFIG, held=held) == at(
        NY, 2026, 6, 11, 8, 0
    )


@pytest.mark.parametrize(
    ("now", "number"),
    [
        (at(NY, 2026, 6, 10, 20, 30), MIAMI),
        (at(NY, 2026, 6, 10, 8, 30), HARTFORD),
        (at(CHICAGO, 2026, 6, 14, 10, 0), DALLAS),
    ],
)
def test_state_windows_can_be_switched_off(now: datetime, number: str) -> None:
    without = ComplianceConfig(state_windows=False)

    assert not_before(now, "marketing", None, number, CONFIG) is not None
    assert not_before(now, "marketing", None, number, without) is None


def test_when_quiet_hours_leave_no_time_the_state_window_still_binds() -> None:
    odd = ComplianceConfig(quiet_hours="08:00-21:00")  # misconfigured: quiet all day
    now = at(CHICAGO, 2026, 6, 13, 22, 0)

    assert not_before(now, "marketing", None, DALLAS, odd) == at(CHICAGO, 2026, 6, 14, 12, 0)


def test_the_area_code_table_agrees_with_libphonenumber_both_ways() -> None:
    """Every code in the table geocodes to its state, and no code of those states is missing."""
    names = {"FL": "Florida", "MD": "Maryland", "MS": "Mississippi", "NJ": "New Jersey"}
    names |= {"OK": "Oklahoma", "CT": "Connecticut", "TX": "Texas"}
    assert set(AREA_CODES) == set(STATE_WINDOWS) == set(names)
    for code in range(200, 1000):
        number = phonenumbers.parse(f"+1{code}2345678")
        place = geocoder.description_for_number(number, "en")
        geocoded = next(
            (s for s, n in names.items() if place == n or place.endswith(f", {s}")), None
        )
        if phonenumbers.region_code_for_number(number) == "US":
            assert us_state(f"+1{code}2345678") == geocoded, (code, place)


ZONES = st.sampled_from([(None, NEW_YORK_NUMBER), (None, PARIS_NUMBER), (None, MIAMI),
                         (None, HARTFORD), (None, DALLAS), ("Europe/Paris", DALLAS),
                         ("America/Denver", None)])  # fmt: skip
NOWS = st.datetimes(
    min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31), timezones=st.just(UTC)
)


@settings(max_examples=400, deadline=None)
@given(now=NOWS, where=ZONES, state_windows=st.booleans())
def test_not_before_is_the_first_open_moment(
    now: datetime, where: tuple[str | None, str | None], state_windows: bool
) -> None:
    """Never inside a quiet window, and held right up to it (it is the earliest)."""
    zone, number = where
    config = ComplianceConfig(state_windows=state_windows)
    result = not_before(now, "marketing", zone, number, config)
    if result is None:
        return
    assert now < result <= now + timedelta(days=2)
    assert not_before(result, "marketing", zone, number, config) is None
    just_before = max(now, result - timedelta(minutes=1))
    assert not_before(just_before, "marketing", zone, number, config) is not None
