"""`ResetBudget`: how many streams a peer may reset before we finished them (sans-IO).

The rapid-reset attack (HTTP/2's CVE-2023-44487, and QUIC is no different)
opens calls and resets them at once, as fast as stream credit allows: each
costs the server some work and the attacker almost none. A well-behaved
client cancels calls too (a search box that cancels the previous query on
every keystroke), so the budget is a rate, not a count: a leaky bucket that
drains ``rate`` resets per second and holds ``burst`` of them. A connection
that resets faster than ``rate`` for long enough to fill the bucket has
spent its budget, and the server closes it (docs/limits.md).
"""

from __future__ import annotations

__all__ = ["ResetBudget"]


class ResetBudget:
    """A leaky bucket of premature stream resets for one connection.

    Each `spend` adds one reset; the level drains at ``rate`` per second of
    the times passed in (any monotonic clock, e.g. a `FakeClock`'s). The
    budget is exceeded when the level passes ``burst``.

    Example::

        budget = ResetBudget(rate=1000, burst=1000, now=0.0)
        assert all(budget.spend(0.0) for _ in range(1000))
        assert not budget.spend(0.0)  # the 1,001st reset within no time at all
    """

    __slots__ = ("burst", "last", "level", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = float(rate)
        """Resets per second the bucket drains (a sustained rate this high is allowed)."""
        self.burst = float(burst)
        """Resets the bucket holds (how far above ``rate`` a burst may go)."""
        self.level = 0.0
        """Resets counted and not yet drained."""
        self.last = now
        """When `level` was last updated."""

    def spend(self, now: float) -> bool:
        """Count one reset at ``now``; False when that exceeds the budget."""
        level = self.level - (now - self.last) * self.rate
        self.level = (level if level > 0.0 else 0.0) + 1.0
        self.last = now
        return self.level <= self.burst
