"""The core's argument checks for numbers: one spelling of each rule, one message.

Example::

    interval = positive_seconds("interval", 15)    # 15.0
    positive_seconds("max_age", float("inf"))      # ValueError: max_age must be a ...
"""

from __future__ import annotations

import math
from typing import Final

__all__ = ["MAX_DURATION", "finite", "positive_seconds"]

MAX_DURATION: Final = 315_360_000.0
"""Ten years, in seconds: the bound of every duration (the configs' settings, a call's
``timeout``, a retry policy's backoffs). Far beyond any deadline, and still exact in the
wire's microseconds (docs/limits.md)."""


def finite(name: str, value: object) -> float:
    """``value`` as a float if it is a finite number (a bool is not).

    Raises:
        ValueError: it is not; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def positive_seconds(name: str, value: object) -> float:
    """``value`` as a float if it is a positive finite number of seconds (a bool is not).

    Raises:
        ValueError: it is not; the message names ``name``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a positive finite number of seconds, got {value!r}")
    return float(value)
