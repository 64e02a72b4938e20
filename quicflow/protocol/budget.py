"""Budgets a peer spends (sans-IO): `ResetBudget`, `ByteBudget`, `PartialFrame`.

`ResetBudget`: how many streams a peer may reset before we finished them.

The rapid-reset attack (HTTP/2's CVE-2023-44487, and QUIC is no different)
opens calls and resets them at once, as fast as stream credit allows: each
costs the server some work and the attacker almost none. A well-behaved
client cancels calls too (a search box that cancels the previous query on
every keystroke), so the budget is a rate, not a count: a leaky bucket that
drains ``rate`` resets per second and holds ``burst`` of them. A connection
that resets faster than ``rate`` for long enough to fill the bucket has
spent its budget, and the server closes it (docs/limits.md).

`ByteBudget` and `PartialFrame`: how many bytes of unfinished frames a
connection (and the whole server) may hold, and for how long. A frame is
buffered whole before it is decoded, so receive credit for a frame larger
than the stream window must run ahead of what the application consumed:
a peer that never finishes such frames would pin up to ``max_message_size``
on each of its streams. Instead, a frame larger than half the stream window
gets credit beyond that only with a reservation of its whole size from its
connection's budget and the server's; frames that cannot reserve wait (their
bytes so far count as unread, so the window bounds them). A reserved frame
always completes as fast as the peer sends it, so waiting streams are served
in turn, never deadlocked. Every unfinished frame has a deadline
(``frame_timeout`` after it began, or after it got its reservation).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ByteBudget", "PartialFrame", "Reservation", "ResetBudget"]


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


class Reservation:
    """A request for ``size`` bytes of a `ByteBudget` (and of its parents).

    ``on_grant`` is called once the whole chain granted it, unless it was granted at
    once (`ByteBudget.reserve` returned True) or cancelled first.
    """

    __slots__ = ("granted", "held", "on_grant", "size")

    def __init__(self, size: int, on_grant: Callable[[], None]) -> None:
        self.size = size
        self.on_grant = on_grant
        self.held: list[ByteBudget] = []
        """The budgets that count it now (innermost first)."""
        self.granted = False


class ByteBudget:
    """Bytes that may be reserved at once, served first come first served.

    A reservation must fit this budget and then its ``parent`` (the server's, for a
    connection's budget): it is counted here while it waits for the parent. One
    that does not fit waits in line; `cancel` gives back what it holds and serves
    the line.

    Example::

        server = ByteBudget(8)
        conn = ByteBudget(6, parent=server)
        first = Reservation(5, on_grant=lambda: None)
        assert conn.reserve(first)
        second = Reservation(4, on_grant=lambda: print("granted"))
        assert not conn.reserve(second)  # 5 + 4 > 6: waits
        conn.cancel(first)  # prints "granted"
    """

    __slots__ = ("_waiting", "limit", "parent", "used")

    def __init__(self, limit: int, parent: ByteBudget | None = None) -> None:
        self.limit = limit
        self.parent = parent
        self.used = 0
        """Bytes counted here: granted, or waiting for the parent."""
        self._waiting: dict[Reservation, None] = {}  # insertion order: the line

    @property
    def capacity(self) -> int:
        """The largest reservation that can ever be granted: the smallest limit up the chain."""
        limit = self.limit
        parent = self.parent
        while parent is not None:
            limit = min(limit, parent.limit)
            parent = parent.parent
        return limit

    @property
    def waiting(self) -> int:
        """Reservations waiting in this budget's line."""
        return len(self._waiting)

    def reserve(self, reservation: Reservation) -> bool:
        """Ask for ``reservation.size`` bytes; True if granted now (no callback then)."""
        if self._waiting or self.used + reservation.size > self.limit:
            self._waiting[reservation] = None
            return False
        self.used += reservation.size
        reservation.held.append(self)
        if self.parent is not None and not self.parent.reserve(reservation):
            return False
        reservation.granted = True
        return True

    def cancel(self, reservation: Reservation) -> None:
        """Give back what ``reservation`` holds (or stop waiting); idempotent."""
        budget: ByteBudget | None = self
        while budget is not None:
            budget._waiting.pop(reservation, None)
            budget = budget.parent
        held, reservation.held = reservation.held, []
        reservation.granted = False
        for owner in held:
            owner.used -= reservation.size
        for owner in reversed(held):  # the outermost first: its line may wait on it
            owner._serve()

    def _serve(self) -> None:
        waiting = self._waiting
        while waiting:
            head = next(iter(waiting))
            if self.used + head.size > self.limit:
                return
            del waiting[head]
            self.used += head.size
            head.held.append(self)
            if self.parent is None or self.parent.reserve(head):
                head.granted = True
                head.on_grant()


class PartialFrame:
    """The unfinished frame on one stream: its reservation, its deadline (sans-IO).

    The runtime calls `update` after each chunk of the stream was decoded, with the
    decoder's state; it reads `withheld` (bytes of the frame that count as unread
    for receive credit) and `deadline` (when the frame must have completed; None:
    none in progress), and calls `granted` when the budget's callback says the
    reservation came through.

    Example::

        frame = PartialFrame(ByteBudget(4 << 20), threshold=512 << 10, timeout=30.0,
                             on_grant=lambda: None)
        frame.update(0.0, buffered=1000, size=1 << 20, completed=False)
        assert frame.withheld == 0 and frame.deadline == 30.0  # reserved at once
    """

    __slots__ = (
        "_reservation",
        "budget",
        "buffered",
        "on_grant",
        "since",
        "size",
        "threshold",
        "timeout",
    )

    def __init__(
        self,
        budget: ByteBudget | None,
        *,
        threshold: int,
        timeout: float,
        on_grant: Callable[[], None],
    ) -> None:
        self.budget = budget
        """Where frames over ``threshold`` reserve their size (None: they need not)."""
        self.threshold = threshold
        """Frames up to this size complete within the stream window: no reservation."""
        self.timeout = timeout
        self.on_grant = on_grant
        self.buffered = 0
        self.size = 0
        self.since: float | None = None
        """When the frame in progress began (or got its reservation); None: none."""
        self._reservation: Reservation | None = None

    @property
    def reserved(self) -> bool:
        """The frame in progress holds a reservation of its whole size."""
        r = self._reservation
        return r is not None and r.granted

    @property
    def waiting(self) -> bool:
        """The frame in progress waits for its reservation."""
        r = self._reservation
        return r is not None and not r.granted

    @property
    def withheld(self) -> int:
        """Bytes of the unfinished frame that count as unread (0 once it is reserved)."""
        return 0 if self.reserved else self.buffered

    @property
    def deadline(self) -> float | None:
        """When the frame in progress times out; None when there is none."""
        return None if self.since is None else self.since + self.timeout

    def update(self, now: float, *, buffered: int, size: int, completed: bool) -> None:
        """The stream's decoder holds ``buffered`` bytes of a frame of ``size`` bytes
        (0: its length not known yet); ``completed``: frames finished since the last
        update (so this is a new frame)."""
        in_progress = buffered > 0 or size > 0
        if completed or not in_progress:
            self._release()
            self.since = None
        self.buffered = buffered
        self.size = size
        if not in_progress:
            return
        if self.since is None:
            self.since = now
        if self._reservation is None and size > self.threshold and self.budget is not None:
            # A frame larger than the whole budget takes all of it, alone.
            self._reservation = Reservation(min(size, self.budget.capacity), self.on_grant)
            self.budget.reserve(self._reservation)

    def granted(self, now: float) -> None:
        """The reservation came through at ``now``: the frame's time starts again."""
        if self.since is not None:
            self.since = now

    def close(self) -> None:
        """The stream is over: give back the reservation."""
        self._release()
        self.since = None
        self.buffered = self.size = 0

    def _release(self) -> None:
        r = self._reservation
        if r is not None:
            self._reservation = None
            if self.budget is not None:
                self.budget.cancel(r)
