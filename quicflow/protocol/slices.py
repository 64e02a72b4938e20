"""Work done in bounded slices of time, sans-IO: `SliceBudget`.

When thousands of units of the same work fall due at once (a server's
heartbeat evictions after its loop stalled), doing them all in one pass of
the event loop holds every other connection for that long. A `SliceBudget`
lets at most ``per_slice`` units run per ``length`` seconds; the runtime
queues the rest and comes back at `next_slice`, so other work (a
bystander's calls) runs between slices.

The exact rule (times in seconds on any monotonic clock): a slice begins at
the first `take` at or after the previous slice's end and lasts ``length``:
``[start, start + length)``. `take` is True for the first ``per_slice``
takes of a slice, False after that until the slice ends. `next_slice` is
the current slice's end (when `take` is True again).

Example::

    budget = SliceBudget(per_slice=2, length=0.01)
    budget.take(5.0), budget.take(5.0), budget.take(5.0)  # True, True, False
    budget.next_slice                                     # 5.01
    budget.take(5.01)                                     # True: a new slice
"""

from __future__ import annotations

from .numbers import positive_seconds

__all__ = ["SliceBudget"]


class SliceBudget:
    """At most ``per_slice`` units of work per ``length`` seconds (module docstring)."""

    __slots__ = ("_end", "_length", "_per_slice", "_used")

    def __init__(self, per_slice: int, length: float) -> None:
        """Raises ValueError if ``per_slice`` is not an int of at least 1 or ``length`` is
        not a positive finite number."""
        if isinstance(per_slice, bool) or not isinstance(per_slice, int) or per_slice < 1:
            raise ValueError(f"per_slice must be an int of at least 1, got {per_slice!r}")
        self._per_slice = per_slice
        self._length = positive_seconds("length", length)
        self._end = float("-inf")
        self._used = 0

    @property
    def next_slice(self) -> float:
        """When the current slice ends (-inf before the first `take`)."""
        return self._end

    def take(self, now: float) -> bool:
        """Take one unit at ``now``: True if the slice has room for it."""
        if now >= self._end:
            self._end = float(now) + self._length
            self._used = 0
        if self._used < self._per_slice:
            self._used += 1
            return True
        return False
