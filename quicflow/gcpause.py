"""Bounded garbage-collection pauses for a process holding many long-lived connections.

CPython's full collection walks every tracked object. A server holding 10,000
connections tracks millions (about 250 per connection with aioquic), so a full
collection stops the event loop for hundreds of milliseconds to seconds, longer
than QUIC's loss timers: every connection then retransmits at once. Most of those
objects live as long as their connection. `GcGovernor` moves them out of the
collector's sight with `gc.freeze()` whenever the objects the collector still
walks pass ``walk_limit``, so a full collection never walks more than about that
many.

Frozen objects are still freed by reference counting; only reference cycles among
them would wait, for a collection of the whole heap. A connection's teardown leaves
none (the transport takes an ended connection's engine apart, errors are raised as
copies, the current call is held by weak reference: tests/e2e/test_teardown_gc.py
holds that for each way a connection ends), so ended connections are freed while
frozen and the heap is never given back for them: no whole-heap collection in a
connect, restart or eviction storm, and memory follows the connections alive.

What the connections do not explain is watched instead, at a cost kept out of
storms: every `check_interval` seconds (5 minutes), while no handshake has been in
progress for `quiet_time`, the governor counts the frozen objects (a walk of them
all: tens of milliseconds at 10,000 connections) and compares them with what the
live connections account for (`expected`: the objects tracked at start, plus a share
per connection measured at the first quiet look after the heap was frozen with more
connections than ever). Past that by more than ``walk_limit`` (reference cycles of
the application's, say), it gives the heap back (`gc.unfreeze()`) and collects
once: the one long pause, at most once per `thaw_interval` (10 minutes), never in a
storm. What survives then counts as explained, so a heap that merely grew is not
thawed again for it.

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
    """Give frozen objects back (`gc.unfreeze`) and collect once: garbage in reference
    cycles that the live connections do not explain is reclaimed."""


class GcGovernor:
    """Keeps the objects a full collection walks under ``walk_limit``.

    Example::

        governor = GcGovernor(now=clock.time())
        timer = PolicyTimer(clock, governor.get_timer, lambda now: governor.poll(now, alive))
        timer.arm()
    """

    def __init__(
        self,
        walk_limit: int = 100_000,
        *,
        now: float = 0.0,
        interval: float = 1.0,
        check_interval: float = 300.0,
        thaw_interval: float = 600.0,
        quiet_time: float = 10.0,
        base: int | None = None,
    ) -> None:
        self.walk_limit = walk_limit
        """Objects in the oldest generation (not frozen) past which everything is frozen;
        also the frozen objects beyond `expected` past which the heap is given back."""
        if base is None:
            base = len(gc.get_objects()) + gc.get_freeze_count()
        self.base = base
        """Objects tracked with no connection (those at start; after a thaw, whatever
        survived it beyond the connections' share)."""
        self.per_connection = 0.0
        """Frozen objects per live connection beyond `base`, measured at the first quiet
        look after a freeze with more connections alive than any before."""
        self.measured_with = 0  # connections alive when it was measured
        self.measure_due = False
        """A freeze came with more connections alive than when `per_connection` was
        measured: measure it again at the next quiet look."""
        self.frozen = False
        """Whether this governor froze the heap and has not given it back since."""
        self.freezes = 0
        self.thaws = 0
        self.interval = interval
        """Seconds between looks (a look lists the oldest generation: ~1 ms per 20,000)."""
        self.check_interval = check_interval
        """Seconds between counts of the frozen objects (a count walks them all: ~10 ms
        per million objects on this machine, more on a heap grown in pieces)."""
        self.checked_at = now
        self.thaw_interval = thaw_interval
        """Seconds from one thaw (or the start) to the next, at least."""
        self.thawed_at = now
        self.quiet_time = quiet_time
        """Seconds without handshakes in progress before a count (and a thaw) may come."""
        self.busy_at = now
        self._next: float | None = now + interval

    def expected(self, alive: int) -> float:
        """Frozen objects that ``alive`` connections and the process itself account for."""
        return self.base + self.per_connection * alive

    def decide(
        self,
        walked: int,
        alive: int,
        now: float = 0.0,
        busy: bool = False,
        frozen: int | None = None,
    ) -> GcAction:
        """The action at ``now``: ``walked`` objects the oldest generation holds, ``alive``
        connections, ``busy``: handshakes in progress lately, ``frozen``: the frozen
        objects if counted at this look (None: not counted).

        A thaw costs one full collection over the whole heap, so it comes only for garbage
        the connections cannot explain (``frozen`` beyond `expected` by more than
        `walk_limit`), never while ``busy`` (a storm is the worst moment for that pause),
        and at most once per `thaw_interval`."""
        if (
            frozen is not None
            and not busy
            and frozen - self.expected(alive) > self.walk_limit
            and now >= self.thawed_at + self.thaw_interval
        ):
            return GcAction.THAW
        if walked > self.walk_limit:
            return GcAction.FREEZE
        return GcAction.NOTHING

    def apply(self, action: GcAction, alive: int, now: float = 0.0) -> None:
        """Do what `decide` said (``alive`` as given to it)."""
        if action is GcAction.FREEZE:
            gc.freeze()
            self.frozen = True
            self.freezes += 1
            if alive > self.measured_with:
                # Measure the share per connection at the next quiet look (counting the
                # frozen objects walks them all: not in a storm).
                self.measure_due = True
        elif action is GcAction.THAW:
            frozen = gc.get_freeze_count()
            unexplained = int(frozen - self.expected(alive))
            gc.unfreeze()
            found = gc.collect()
            self.frozen = False
            self.thawed_at = now
            self.thaws += 1
            # What survived is alive: count it as explained from now on.
            survivors = len(gc.get_objects())
            self.base = max(self.base, int(survivors - self.per_connection * alive))
            logger.warning(
                "gc: %d frozen objects, %d more than %d connections explain: heap given "
                "back and collected (%d unreachable objects found)",
                frozen,
                unexplained,
                alive,
                found,
            )

    def get_timer(self) -> float | None:
        """When to look next (`PolicyTimer`'s ``next_deadline``)."""
        return self._next

    def poll(self, now: float, alive: int, busy: bool = False) -> GcAction:
        """Look now: decide and apply; the next look is `interval` seconds later. The
        server counts as busy until it was not for `quiet_time` seconds (a storm's
        handshakes in progress can drop to none for a moment). The frozen objects are
        counted only while quiet and frozen: every `check_interval` seconds, and once
        after a freeze with more connections alive than ever (which measures
        `per_connection`)."""
        self._next = now + self.interval
        if busy:
            self.busy_at = now
        quiet = now - self.busy_at >= self.quiet_time
        frozen: int | None = None
        if (
            quiet
            and self.frozen
            and (self.measure_due or now >= self.checked_at + self.check_interval)
        ):
            self.checked_at = now
            frozen = gc.get_freeze_count()
            if self.measure_due:
                self.measure_due = False
                if alive > self.measured_with:
                    self.per_connection = max(0.0, (frozen - self.base) / alive)
                    self.measured_with = alive
        walked = len(gc.get_objects(generation=2))
        action = self.decide(walked, alive, now, not quiet, frozen)
        self.apply(action, alive, now)
        return action

    def release(self) -> None:
        """Give back whatever this governor froze (the server stops)."""
        if self.frozen:
            gc.unfreeze()
            self.frozen = False
