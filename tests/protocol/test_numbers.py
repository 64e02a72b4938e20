"""The core's one spelling of its number checks (quicflow/protocol/numbers.py)."""

from __future__ import annotations

import math

import pytest

from quicflow.protocol.numbers import finite, positive_seconds


@pytest.mark.parametrize("value", [0, -1.0, math.inf, math.nan, True, "1", None])
def test_positive_seconds_refuses_what_is_not_a_positive_finite_number(value: object) -> None:
    """Check that zero, negatives, infinity, NaN, bools and non-numbers are refused with
    the name in the message."""
    with pytest.raises(ValueError, match=r"^max_age must be a positive finite number"):
        positive_seconds("max_age", value)


def test_positive_seconds_returns_a_float() -> None:
    """Check that an int or float passes and comes back as a float."""
    assert positive_seconds("interval", 15) == 15.0
    assert isinstance(positive_seconds("interval", 15), float)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan, False, "0"])
def test_finite_refuses_infinities_nan_and_non_numbers(value: object) -> None:
    """Check that finite() refuses infinities, NaN, bools and strings, naming the argument."""
    with pytest.raises(ValueError, match=r"^now must be a finite number"):
        finite("now", value)


def test_finite_allows_zero_and_negatives() -> None:
    """Check that finite() passes any finite number, zero and negatives included."""
    assert (finite("now", 0), finite("now", -2.5)) == (0.0, -2.5)
