"""`FrameWatch`: the runtime side of one stream's unfinished frame (its credit, its timer).

The policy is sans-IO (`quicflow.protocol.budget.PartialFrame`): which frames
reserve bytes of the connection's and the server's budgets, what counts as
unread, when the frame times out. This arms its one timer on a `Clock` (the
event loop, or a `FakeClock` in tests) and tells the transport how many bytes
to withhold from the stream's receive credit.
"""

from __future__ import annotations

from collections.abc import Callable

from ..clock import Clock, TimerHandleLike
from ..protocol.budget import ByteBudget, PartialFrame

__all__ = ["FrameWatch"]


class FrameWatch:
    """Watches the unfinished frame of one incoming stream.

    The stream's handler calls `update` after each chunk it decoded and `close` when
    the stream is over; ``on_timeout`` runs when a frame stayed unfinished for
    ``timeout`` seconds (the handler ends the call). ``withhold(n)`` is told the
    bytes of the frame that count as unread for receive credit.
    """

    __slots__ = ("_clock", "_frame", "_on_timeout", "_timer", "_withhold")

    def __init__(
        self,
        clock: Clock,
        budget: ByteBudget | None,
        *,
        threshold: int,
        timeout: float,
        on_timeout: Callable[[], None],
        withhold: Callable[[int], None],
    ) -> None:
        self._clock = clock
        self._frame = PartialFrame(
            budget, threshold=threshold, timeout=timeout, on_grant=self._granted
        )
        self._on_timeout: Callable[[], None] | None = on_timeout
        self._withhold = withhold
        self._timer: TimerHandleLike | None = None

    @property
    def frame(self) -> PartialFrame:
        """The policy's state (for tests and introspection)."""
        return self._frame

    def update(self, buffered: int, size: int, completed: bool) -> None:
        """The stream's decoder now holds ``buffered`` bytes of a frame of ``size``
        payload bytes (0: length unknown yet); ``completed``: frames finished since."""
        frame = self._frame
        before = frame.withheld
        frame.update(self._clock.time(), buffered=buffered, size=size, completed=completed)
        if frame.withheld != before:
            self._withhold(frame.withheld)
        if frame.since is not None and self._timer is None:
            self._arm()

    def close(self) -> None:
        """The stream is over: release the reservation, stop the timer. Idempotent."""
        self._on_timeout = None
        if self._frame.withheld:
            self._withhold(0)
        self._frame.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        deadline = self._frame.deadline
        if deadline is not None:
            self._timer = self._clock.call_at(deadline, self._fire)

    def _fire(self) -> None:
        # One timer per stream, moved lazily: a frame that completed leaves it armed, and
        # it re-arms for the frame in progress now (if any) instead of being rescheduled
        # on every frame.
        self._timer = None
        deadline = self._frame.deadline
        if deadline is None:
            return
        if self._clock.time() < deadline:
            self._arm()
            return
        on_timeout = self._on_timeout
        self.close()
        if on_timeout is not None:
            on_timeout()

    def _granted(self) -> None:
        self._frame.granted(self._clock.time())
        self._withhold(0)
