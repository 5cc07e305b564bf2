"""ULIDs: the ids events are listed and ordered by."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from router.ids import new_ulid

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: The last millisecond a 48-bit ULID time part can hold (year 10889), capped by datetime.max.
LATEST = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)

moments = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=LATEST.replace(tzinfo=None), timezones=st.just(UTC)
)


def time_part(ulid: str) -> int:
    """The milliseconds encoded in the first 10 characters."""
    value = 0
    for char in ulid[:10]:
        value = value * 32 + CROCKFORD.index(char)
    return value


def millis(at: datetime) -> int:
    return (at - EPOCH) // timedelta(milliseconds=1)


@given(moments)
def test_ulid_is_26_crockford_characters(at: datetime) -> None:
    ulid = new_ulid(at)
    assert len(ulid) == 26
    assert set(ulid) <= set(CROCKFORD)


@given(moments)
def test_time_part_is_the_exact_millisecond(at: datetime) -> None:
    # A float product (timestamp() * 1000) once put some ids a millisecond early.
    assert time_part(new_ulid(at)) == millis(at)


def test_known_millisecond_boundary_is_not_rounded_down() -> None:
    at = datetime(2107, 4, 22, 5, 15, 30, 374000, tzinfo=UTC)
    assert time_part(new_ulid(at)) == millis(at)


@given(moments, moments)
def test_ids_sort_by_time(a: datetime, b: datetime) -> None:
    if millis(a) == millis(b):
        return  # same millisecond: order is random by design
    earlier, later = sorted((a, b))
    assert new_ulid(earlier) < new_ulid(later)


def test_ids_of_successive_milliseconds_sort_in_creation_order() -> None:
    start = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    ids = [new_ulid(start + timedelta(milliseconds=i)) for i in range(2000)]
    assert ids == sorted(ids)


def test_other_time_zones_encode_the_same_instant() -> None:
    at = datetime(2026, 11, 23, 15, 0, 0, 123456, tzinfo=UTC)
    in_new_york = at.astimezone(datetime.fromisoformat("2026-11-23T10:00:00-05:00").tzinfo)
    assert new_ulid(at)[:10] == new_ulid(in_new_york)[:10]


def test_unique_across_100k_in_the_same_millisecond() -> None:
    at = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
    ids = {new_ulid(at) for _ in range(100_000)}
    assert len(ids) == 100_000


def test_ids_made_in_one_millisecond_sort_in_creation_order() -> None:
    at = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
    made = [new_ulid(at) for _ in range(10_000)]
    assert made == sorted(made)
    assert len(set(made)) == len(made)
