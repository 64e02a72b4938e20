"""`SliceBudget`: at most per_slice units of work per slice of time."""

from __future__ import annotations

import pytest

from quicflow.protocol.slices import SliceBudget


def test_a_slice_takes_per_slice_units_then_refuses_until_it_ends() -> None:
    budget = SliceBudget(per_slice=3, length=0.5)
    assert [budget.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert budget.next_slice == 10.5
    assert not budget.take(10.499)
    assert budget.take(10.5)  # a new slice [10.5, 11.0)
    assert budget.next_slice == 11.0
    assert budget.take(10.9) and budget.take(10.9) and not budget.take(10.9)


def test_a_slice_begins_at_the_first_take_after_the_last_one_ended() -> None:
    budget = SliceBudget(per_slice=1, length=1.0)
    assert budget.next_slice == float("-inf")
    assert budget.take(3.25)
    assert budget.next_slice == 4.25
    assert budget.take(7.0)  # long after: the slice starts here, not on a grid
    assert budget.next_slice == 8.0


@pytest.mark.parametrize("per_slice", [0, -1, 2.0, True])
def test_per_slice_must_be_a_positive_count(per_slice: object) -> None:
    with pytest.raises(ValueError):
        SliceBudget(per_slice, 1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize("length", [0.0, -1.0, float("inf"), float("nan")])
def test_length_must_be_positive_and_finite(length: float) -> None:
    with pytest.raises(ValueError):
        SliceBudget(1, length)
