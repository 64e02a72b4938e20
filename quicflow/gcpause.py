"""Bounded garbage-collection pauses for a process holding many long-lived connections.

CPython's full collection walks every tracked object. A server holding 10,000
connections tracks millions (about 250 per connection with aioquic), so a full
collection stops the event loop for hundreds of milliseconds to seconds, longer
than QUIC's loss timers: every connection then retransmits at once. Most of those
objects live as long as their connection. `GcGovernor` moves them out of the
collector's sight with `gc.freeze()` whenever the objects the collector still
walks pass ``walk_limit``, so a full collection never walks more than about that
many; and it gives them back (`gc.unfreeze()`, then one collection) once enough
connections have ended since that their cyclic garbage is worth the one long
pause (frozen objects are still freed by reference counting; only reference
cycles among them wait for the unfreeze).

The decision is a pure function of counts (`GcGovernor.decide`); the server polls
it once a second through its clock (`GcGovernor.get_timer`, `GcGovernor.poll`) while
``ServerConfig.gc_walk_limit`` is not 0. docs/scale.md "Garbage collection".
"""

from __future__ import annotations

import enum
import gc
import logging

__all__ = ["GcAction", "GcGovernor"]

logger = logging.getLogger("quicflow.gc")


class GcAction(enum.Enum):
    """What `GcGovernor.decide` asks for."""

    NOTHING = "nothing"
    FREEZE = "freeze"
    """Move every tracked object out of the collector's walk (`gc.freeze`)."""
    THAW = "thaw"
    """Give frozen objects back (`gc.unfreeze`) and collect once: ended connections'
    cycles are reclaimed."""


class GcGovernor:
    """Keeps the objects a full collection walks under ``walk_limit``.

    Example::

        governor = GcGovernor(now=clock.time())
        timer = PolicyTimer(clock, governor.get_timer, lambda now: governor.poll(now, alive, ended))
        timer.arm()
    """

    def __init__(
        self,
        walk_limit: int = 200_000,
        thaw_fraction: float = 0.25,
        *,
        now: float = 0.0,
        interval: float = 1.0,
        thaw_interval: float = 60.0,
        quiet_time: float = 10.0,
    ) -> None:
        self.walk_limit = walk_limit
        """Objects in the oldest generation (not frozen) past which everything is frozen."""
        self.thaw_fraction = thaw_fraction
        """Connections ended since the last thaw, as a fraction of those alive when the
        heap was frozen, past which frozen objects are given back and collected."""
        self.frozen_with = 0  # connections alive at the first freeze since the last thaw
        self.frozen = False
        """Whether this governor froze objects that it has not given back yet. Kept here:
        `gc.get_freeze_count` walks every frozen object (~20 ms per 230,000), too dear to
        ask once a second."""
        self.ended_at_thaw = 0
        self.freezes = 0
        self.thaws = 0
        self.thaw_interval = thaw_interval
        """Seconds from one thaw (or the start) to the next, at least."""
        self.thawed_at = now
        self.quiet_time = quiet_time
        """Seconds without handshakes in progress before a thaw may come."""
        self.busy_at = now
        self.interval = interval
        """Seconds between looks (a look lists the oldest generation: ~1 ms per 20,000)."""
        self._next: float | None = now + interval

    def decide(
        self,
        walked: int,
        frozen: int,
        alive: int,
        ended: int,
        now: float = 0.0,
        busy: bool = False,
    ) -> GcAction:
        """The action at ``now``: ``walked`` objects the oldest generation holds, ``frozen``
        objects frozen, ``alive`` connections now, ``ended`` connections ended ever.

        A thaw costs one full collection over the whole heap, so it comes at most once
        per `thaw_interval`: in a storm, thousands of handshakes that never finish end
        too, and counting them must not turn into a long pause every second. Nor while
        ``busy`` (handshakes in progress): a storm is the worst moment for that pause."""
        churn = ended - self.ended_at_thaw
        if (
            frozen
            and not busy
            and churn > max(100, self.thaw_fraction * max(self.frozen_with, alive))
            and now >= self.thawed_at + self.thaw_interval
        ):
            return GcAction.THAW
        if walked > self.walk_limit:
            return GcAction.FREEZE
        return GcAction.NOTHING

    def apply(self, action: GcAction, alive: int, ended: int, now: float = 0.0) -> None:
        """Do what `decide` said (``alive`` and ``ended`` as given to it)."""
        if action is GcAction.FREEZE:
            if not self.frozen:
                self.frozen_with = alive
                self.frozen = True
            gc.freeze()
            self.freezes += 1
        elif action is GcAction.THAW:
            gc.unfreeze()
            self.frozen = False
            gc.collect()
            self.ended_at_thaw = ended
            self.thawed_at = now
            self.frozen_with = 0
            self.thaws += 1
            logger.info("gc: frozen objects given back and collected (%d connections ended)", ended)

    def get_timer(self) -> float | None:
        """When to look next (`PolicyTimer`'s ``next_deadline``)."""
        return self._next

    def poll(self, now: float, alive: int, ended: int, busy: bool = False) -> GcAction:
        """Look now: decide and apply; the next look is `interval` seconds later. The
        server counts as busy until it was not for `quiet_time` seconds (a storm's
        handshakes in progress can drop to none for a moment)."""
        self._next = now + self.interval
        if busy:
            self.busy_at = now
        walked = len(gc.get_objects(generation=2))
        quiet = now - self.busy_at >= self.quiet_time
        action = self.decide(walked, int(self.frozen), alive, ended, now, not quiet)
        self.apply(action, alive, ended, now)
        return action

    def release(self) -> None:
        """Give back whatever this governor froze (the server stops)."""
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
            self.thaws += 1
