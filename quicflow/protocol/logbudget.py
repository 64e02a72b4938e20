"""How many connection events a second are logged one by one, sans-IO.

A server logs each connection event (a client connected, disconnected,
evicted) at INFO. When thousands happen at once (a third of the clients
killed, half of them closing together, a restart storm) a line each costs
the server's loop as much as the teardown itself and floods the log with
lines nobody reads one by one. `LogBudget` keeps the first ``per_window``
events of each window for their own lines and counts the rest by kind; when
the window ends, the runtime logs one summary line of what it counted.

The exact rule (times in seconds on any monotonic clock):

- A window opens at the first event while none is open and lasts
  ``window`` seconds: ``[start, start + window)``.
- ``admit(now, kind)`` is True for the first ``per_window`` events of the
  window (log it), False for the rest (counted under ``kind``).
- ``get_timer()`` is the window's end while something was counted, else
  None (a window that counted nothing needs no wake-up).
- ``poll(now)`` at or after the window's end closes it and returns the
  `Suppressed` summary if anything was counted (None otherwise); before the
  end it returns None. ``admit`` at or after the end polls first, so a
  runtime that is late loses nothing: the summary waits for its ``poll``.

Example::

    budget = LogBudget(per_window=2, window=1.0)
    budget.admit(0.0, "connected")     # True
    budget.admit(0.1, "connected")     # True
    budget.admit(0.2, "disconnected")  # False: counted
    budget.get_timer()                 # 1.0
    budget.poll(1.0)                   # Suppressed(count=1, kinds={"disconnected": 1}, ...)
"""

from __future__ import annotations

from dataclasses import dataclass

from .numbers import positive_seconds

__all__ = ["LogBudget", "Suppressed"]


@dataclass(frozen=True, slots=True)
class Suppressed:
    """The events of one window that were counted instead of logged."""

    count: int
    """How many."""
    kinds: dict[str, int]
    """How many of each kind, most frequent first."""
    since: float
    """The window's start."""
    until: float
    """The window's end."""

    def describe(self, most: int = 5) -> str:
        """``"3,300 disconnected (no heartbeat), 16 connected"``: the ``most`` commonest kinds,
        then how many of the others."""
        parts = [f"{n:,} {kind}" for kind, n in list(self.kinds.items())[:most]]
        rest = sum(list(self.kinds.values())[most:])
        if rest:
            parts.append(f"{rest:,} other")
        return ", ".join(parts)


class LogBudget:
    """Which events are logged one by one and what the rest add up to (module docstring)."""

    __slots__ = (
        "_counted",
        "_end",
        "_kinds",
        "_logged",
        "_pending",
        "_per_window",
        "_start",
        "_window",
    )

    def __init__(self, per_window: int, window: float = 1.0) -> None:
        """Raises ValueError if ``per_window`` is not an int of at least 0 or ``window`` is not
        a positive finite number."""
        if isinstance(per_window, bool) or not isinstance(per_window, int) or per_window < 0:
            raise ValueError(f"per_window must be an int of at least 0, got {per_window!r}")
        self._per_window = per_window
        self._window = positive_seconds("window", window)
        self._start = 0.0
        self._end: float | None = None  # None: no window open
        self._logged = 0
        self._counted = 0
        self._kinds: dict[str, int] = {}
        self._pending: Suppressed | None = None

    def admit(self, now: float, kind: str) -> bool:
        """True: log this event on its own line; False: it was counted under ``kind``."""
        end = self._end
        if end is not None and now >= end:
            closed = self._close()
            if closed is not None:
                self._pending = closed if self._pending is None else _merge(self._pending, closed)
            end = None
        if end is None:
            self._start = float(now)
            self._end = end = self._start + self._window
        if self._logged < self._per_window:
            self._logged += 1
            return True
        self._counted += 1
        self._kinds[kind] = self._kinds.get(kind, 0) + 1
        return False

    def get_timer(self) -> float | None:
        """When `poll` has a summary to give: the window's end if anything was counted."""
        if self._pending is not None:
            return self._pending.until
        return self._end if self._counted else None

    def poll(self, now: float) -> Suppressed | None:
        """The summary of the window that ended by ``now``, if it counted anything."""
        pending, self._pending = self._pending, None
        if pending is not None:
            return pending
        if self._end is not None and now >= self._end:
            return self._close()
        return None

    def _close(self) -> Suppressed | None:
        assert self._end is not None
        out = None
        if self._counted:
            kinds = dict(sorted(self._kinds.items(), key=lambda item: -item[1]))
            out = Suppressed(self._counted, kinds, self._start, self._end)
        self._end = None
        self._logged = self._counted = 0
        self._kinds = {}
        return out


def _merge(first: Suppressed, second: Suppressed) -> Suppressed:
    kinds = dict(first.kinds)
    for kind, n in second.kinds.items():
        kinds[kind] = kinds.get(kind, 0) + n
    kinds = dict(sorted(kinds.items(), key=lambda item: -item[1]))
    return Suppressed(first.count + second.count, kinds, first.since, second.until)
