"""Reconnect backoff, sans-IO: how long to wait before the next connection attempt.

Attempt ``n`` (0-based, counted since the last `Backoff.reset`) has the base
delay ``b_n = min(maximum, initial * multiplier**n)`` and waits
``b_n * U(1 - jitter, 1]``: never more than the cap, and spread *below* it so
that a thousand clients dropped by the same server restart do not all come
back in the same instant. With the defaults the bases are 1, 2, 4, 8, 16,
32, 60, 60, ... seconds. The runtime calls `Backoff.reset` once a connection
has proved healthy (e.g. after WELCOME).

The object holds no clock: it only answers "how long". The randomness comes
from a `random.Random` you may seed, so tests are exact.
"""

from __future__ import annotations

import math
import random

from .numbers import finite

__all__ = ["Backoff"]


class Backoff:
    """Exponential backoff with downward jitter.

    Args:
        initial: base delay of the first attempt, seconds (> 0).
        multiplier: growth per attempt (>= 1).
        maximum: cap on every delay, seconds (>= ``initial``).
        jitter: fraction of the base that may be taken off, in ``[0, 1)``;
            0 gives the exact bases.
        rng: the source of randomness; a fresh unseeded ``random.Random``
            when None.

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        backoff = Backoff(rng=random.Random(7))
        backoff.next_delay()   # in (0.8, 1.0]
        backoff.next_delay()   # in (1.6, 2.0]
        backoff.reset()        # after a healthy connection: back to ~1 s
    """

    __slots__ = ("_attempts", "_cap_from", "_rng", "initial", "jitter", "maximum", "multiplier")

    def __init__(
        self,
        initial: float = 1.0,
        multiplier: float = 2.0,
        maximum: float = 60.0,
        jitter: float = 0.2,
        rng: random.Random | None = None,
    ) -> None:
        self.initial = finite("initial", initial)
        if self.initial <= 0:
            raise ValueError(f"initial must be > 0 seconds, got {initial!r}")
        self.multiplier = finite("multiplier", multiplier)
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be >= 1, got {multiplier!r}")
        self.maximum = finite("maximum", maximum)
        if self.maximum < self.initial:
            raise ValueError(f"maximum ({maximum!r}) must be >= initial ({initial!r})")
        self.jitter = finite("jitter", jitter)
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {jitter!r}")
        self._rng = rng if rng is not None else random.Random()
        self._attempts = 0
        # The first attempt whose base is the cap; from there on no power is
        # computed, so a client retrying for weeks never overflows a float.
        if self.multiplier == 1 or self.maximum == self.initial:
            self._cap_from = 0 if self.maximum == self.initial else -1
        else:
            self._cap_from = max(
                0, math.ceil(math.log(self.maximum / self.initial, self.multiplier))
            )

    def __repr__(self) -> str:
        return (
            f"Backoff(initial={self.initial!r}, multiplier={self.multiplier!r}, "
            f"maximum={self.maximum!r}, jitter={self.jitter!r}, attempts={self._attempts})"
        )

    @property
    def attempts(self) -> int:
        """Delays handed out since the last `reset` (the next attempt's ``n``)."""
        return self._attempts

    def base_delay(self, attempt: int) -> float:
        """Attempt ``n``'s un-jittered delay: ``min(maximum, initial * multiplier**n)``."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt!r}")
        if self._cap_from < 0:  # multiplier 1: the base never grows
            return self.initial
        if attempt >= self._cap_from:
            return self.maximum
        return min(self.maximum, self.initial * self.multiplier**attempt)

    def next_delay(self) -> float:
        """Return the next delay in seconds and count the attempt.

        The result lies in ``(b_n * (1 - jitter), b_n]`` (exactly ``b_n`` when
        ``jitter`` is 0).
        """
        base = self.base_delay(self._attempts)
        self._attempts += 1
        return base * (1.0 - self.jitter * self._rng.random())

    def busy_delay(self, asked: float) -> float:
        """The delay before the next attempt when the server answered the last one "busy,
        retry in ``asked`` seconds" (a reconnect storm: docs/wire-protocol.md §2).

        The server spreads the clients it turns away over the time it needs, so the
        client follows it: ``asked`` (at least a tenth of ``initial``, at most
        ``maximum``) plus up to ``jitter`` of it more, never more than ``maximum``. The
        attempt count does not grow: the server is alive and answering.
        """
        base = min(self.maximum, max(self.initial / 10, finite("asked", asked)))
        return min(self.maximum, base * (1.0 + self.jitter * self._rng.random()))

    def reset(self) -> None:
        """Start again from ``initial`` (after a healthy connection). Idempotent."""
        self._attempts = 0
