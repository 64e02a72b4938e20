"""Virtual-time tests for duplicate suppression: the age window, the size bound, memory."""

from __future__ import annotations

import math
import uuid

import pytest

from quicflow.protocol import RecentIds as ExportedRecentIds
from quicflow.protocol.dedup import RecentIds


def mid(n: int) -> bytes:
    """A deterministic 16-byte message id."""
    return uuid.UUID(int=n).bytes


def test_first_sighting_is_new_and_a_retry_is_a_duplicate() -> None:
    """Check that an id is new once and a duplicate on every retry within max_age."""
    recent = RecentIds(max_age=600.0)
    assert recent.seen(mid(1), 0.0) is False
    assert recent.seen(mid(1), 0.0) is True
    assert recent.seen(mid(1), 599.999) is True
    assert recent.seen(mid(2), 1.0) is False
    assert len(recent) == 2
    assert ExportedRecentIds is RecentIds


def test_id_expires_exactly_at_max_age() -> None:
    """Check that an id recorded at 0 counts as new again at exactly max_age."""
    recent = RecentIds(max_age=10.0)
    assert recent.seen(mid(1), 0.0) is False
    assert recent.seen(mid(1), 9.999) is True
    assert recent.seen(mid(1), 10.0) is False  # forgotten, then recorded again at 10.0
    assert recent.seen(mid(1), 19.999) is True
    assert recent.seen(mid(1), 20.0) is False


def test_duplicates_do_not_extend_the_window() -> None:
    """Check that the window runs from the first sighting, not from the latest retry."""
    recent = RecentIds(max_age=10.0)
    recent.seen(mid(1), 0.0)
    for t in (2.0, 4.0, 6.0, 8.0):
        assert recent.seen(mid(1), t) is True
    assert recent.seen(mid(1), 10.0) is False


def test_expired_ids_are_dropped_from_memory() -> None:
    """Check that ids older than max_age are evicted as time moves on."""
    recent = RecentIds(max_age=10.0)
    for n in range(100):
        recent.seen(mid(n), n * 0.5)  # 0.0, 0.5, ... 49.5
    assert len(recent) == 20  # only the last 10 s: 40.0 and later
    recent.seen(mid(1000), 52.25)  # everything at or before 42.25 is now too old
    assert len(recent) == 1 + 15
    recent.seen(mid(1001), 100.0)
    assert len(recent) == 1


def test_oldest_id_is_evicted_by_size() -> None:
    """Check that recording one id more than max_size forgets the oldest one."""
    recent = RecentIds(max_size=3, max_age=600.0)
    for n in range(3):
        assert recent.seen(mid(n), float(n)) is False
    assert recent.seen(mid(3), 3.0) is False
    assert len(recent) == 3
    assert recent.seen(mid(1), 4.0) is True  # still remembered
    assert recent.seen(mid(0), 4.0) is False  # pushed out, so new again (and now recorded)
    assert recent.seen(mid(2), 5.0) is True
    assert recent.seen(mid(1), 5.0) is False  # pushed out by mid(0)'s return


def test_time_going_backwards_keeps_order() -> None:
    """Check that an earlier now is treated as the latest seen, so eviction stays oldest-first."""
    recent = RecentIds(max_age=10.0)
    recent.seen(mid(1), 5.0)
    assert recent.seen(mid(2), 1.0) is False  # recorded as if at 5.0
    assert recent.seen(mid(2), 14.999) is True
    assert recent.seen(mid(1), 15.0) is False
    assert recent.seen(mid(2), 15.0) is False


def test_a_hundred_thousand_ids_stay_bounded() -> None:
    """Check that 1e5 distinct ids leave at most max_size remembered, and the last ones."""
    recent = RecentIds(max_size=1000, max_age=600.0)
    for n in range(100_000):
        assert recent.seen(mid(n), n * 1e-3) is False
    assert len(recent) == 1000
    assert recent.seen(mid(99_999), 100.0) is True
    assert recent.seen(mid(99_000), 100.0) is True
    assert recent.seen(mid(98_999), 100.0) is False


def test_a_hundred_thousand_ids_with_defaults_stay_bounded_by_age() -> None:
    """Check that with the defaults, 1e5 ids over 20 minutes keep only the last 10 minutes."""
    recent = RecentIds()
    for n in range(100_000):
        recent.seen(mid(n), n * 0.012)  # 1,200 s in all
    assert len(recent) <= 50_001
    assert len(recent) >= 49_999


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"max_size": 0}, "max_size"),
        ({"max_size": 2.5}, "max_size"),
        ({"max_size": True}, "max_size"),
        ({"max_age": 0.0}, "max_age"),
        ({"max_age": -1.0}, "max_age"),
        ({"max_age": math.inf}, "max_age"),
        ({"max_age": math.nan}, "max_age"),
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, float], name: str) -> None:
    """Check that an out-of-range argument raises ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        RecentIds(**kwargs)  # type: ignore[arg-type]


def test_now_must_be_finite() -> None:
    """Check that seen refuses a NaN or infinite now without recording anything."""
    recent = RecentIds()
    for now in (math.nan, math.inf):
        with pytest.raises(ValueError, match="now"):
            recent.seen(mid(1), now)
    assert len(recent) == 0
