"""`LogBudget`: the first events of each window logged one by one, the rest summed up."""

from __future__ import annotations

import pytest

from quicflow.protocol.logbudget import LogBudget, Suppressed


def test_first_events_of_a_window_are_admitted_the_rest_counted_by_kind() -> None:
    budget = LogBudget(per_window=3, window=1.0)
    assert [budget.admit(0.0, "connected") for _ in range(3)] == [True, True, True]
    assert budget.get_timer() is None  # nothing counted: no wake-up needed
    assert not budget.admit(0.2, "disconnected (a)")
    assert not budget.admit(0.5, "disconnected (b)")
    assert not budget.admit(0.9, "disconnected (a)")
    assert budget.get_timer() == 1.0
    assert budget.poll(0.999) is None
    summary = budget.poll(1.0)
    assert summary == Suppressed(3, {"disconnected (a)": 2, "disconnected (b)": 1}, 0.0, 1.0)
    assert summary.describe() == "2 disconnected (a), 1 disconnected (b)"
    assert budget.get_timer() is None
    assert budget.poll(5.0) is None


def test_a_new_window_opens_at_the_first_event_after_the_last_one_ended() -> None:
    budget = LogBudget(per_window=1, window=1.0)
    assert budget.admit(0.0, "x")
    assert not budget.admit(0.5, "x")
    assert budget.poll(1.0) is not None
    assert budget.admit(1.7, "x")  # a new window [1.7, 2.7): its first event is logged
    assert not budget.admit(2.6, "x")
    assert budget.get_timer() == pytest.approx(2.7)
    assert budget.admit(2.7, "x")  # the window ended at 2.7: the next one starts here


def test_a_late_poll_loses_nothing() -> None:
    """A window that ended while nobody polled keeps its summary for the next poll, even
    after events of the next window (and two such windows add up)."""
    budget = LogBudget(per_window=1, window=1.0)
    budget.admit(0.0, "a")
    budget.admit(0.1, "a")  # counted
    assert budget.admit(1.5, "b")  # window [0, 1) ended unpolled; this one is logged
    assert not budget.admit(1.6, "b")
    assert budget.get_timer() == 1.0  # the pending summary is due already
    assert budget.admit(3.0, "c")  # and window [1.5, 2.5) ended unpolled too
    summary = budget.poll(3.0)
    assert summary == Suppressed(2, {"a": 1, "b": 1}, 0.0, 2.5)
    assert budget.get_timer() is None


def test_describe_names_the_commonest_kinds_and_counts_the_others() -> None:
    summary = Suppressed(1311, {"a": 1000, "b": 300, "c": 10, "d": 1}, 0.0, 1.0)
    assert summary.describe(most=2) == "1,000 a, 300 b, 11 other"


@pytest.mark.parametrize("per_window", [-1, 1.5, True])
def test_per_window_must_be_a_count(per_window: object) -> None:
    with pytest.raises(ValueError):
        LogBudget(per_window, 1.0)  # type: ignore[arg-type]


def test_zero_per_window_counts_everything() -> None:
    budget = LogBudget(per_window=0, window=2.0)
    assert not budget.admit(0.0, "x")
    assert budget.poll(2.0) == Suppressed(1, {"x": 1}, 0.0, 2.0)
