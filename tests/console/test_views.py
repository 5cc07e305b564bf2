"""How the console words times: "3 min ago", with the exact UTC time beside."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from router.console.views import ago, moment

NOW = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("delta", "said"),
    [
        (timedelta(seconds=5), "just now"),
        (timedelta(minutes=3, seconds=20), "3 min ago"),
        (timedelta(hours=2, minutes=59), "2 h ago"),
        (timedelta(days=1, hours=3), "1 day ago"),
        (timedelta(days=5), "5 days ago"),
        (-timedelta(minutes=10), "in 10 min"),
    ],
)
def test_ago(delta: timedelta, said: str) -> None:
    assert ago(delta) == said


def test_a_moment_carries_the_exact_time() -> None:
    shown = moment(NOW - timedelta(minutes=3), NOW)
    assert shown is not None
    assert shown.iso == "2026-11-23T14:57:00Z"
    assert shown.exact == "2026-11-23 14:57:00 UTC"
    assert shown.ago == "3 min ago"
    assert moment(None, NOW) is None
