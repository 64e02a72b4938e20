"""Clocks for the runtime: the real event loop's, and a virtual one for tests.

The sans-IO core never reads a clock; it takes ``now`` and answers with the
next deadline (``get_timer()``). The runtime reads ``now`` from a `Clock` and
arms one timer per policy object with ``call_at``, always through the one
routine `PolicyTimer` (arm at the policy's ``get_timer()``, poll it when due,
re-arm). Tests swap in `FakeClock`,
whose time moves only when `FakeClock.advance` says so, firing due callbacks
in time order, so a 45-second eviction schedule runs in microseconds and
asserts exact times (docs/testing.md). Never sleep for real seconds and never
patch ``time.monotonic``.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import math
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, Protocol

__all__ = [
    "Clock",
    "Deadline",
    "FakeClock",
    "FakeTimerHandle",
    "LoopClock",
    "PolicyTimer",
    "TimerHandleLike",
    "sleep",
    "timeout",
    "wait_all",
]


class TimerHandleLike(Protocol):
    """A scheduled callback that can be cancelled (``asyncio.TimerHandle`` is one)."""

    def cancel(self) -> None:
        """Stop the callback from running; harmless if it already ran or was cancelled."""


class Clock(Protocol):
    """Where the runtime reads the time and schedules its timers (seconds, monotonic)."""

    def time(self) -> float:
        """The current time in seconds."""

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandleLike:
        """Run ``callback()`` once the time reaches ``when``; return a cancellable handle."""


class LoopClock:
    """The `Clock` of an asyncio event loop (``loop.time()`` and ``loop.call_at``).

    Example::

        clock = LoopClock(asyncio.get_running_loop())
        handle = clock.call_at(clock.time() + 15.0, on_timer)
    """

    __slots__ = ("_loop",)

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Use ``loop``, or the running loop when None (then call from inside it).

        Raises:
            RuntimeError: ``loop`` is None and no loop is running.
        """
        self._loop = loop if loop is not None else asyncio.get_running_loop()

    def time(self) -> float:
        """The loop's monotonic time in seconds."""
        return self._loop.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandleLike:
        """Schedule ``callback`` on the loop at ``when``."""
        return self._loop.call_at(when, callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandleLike:
        """Schedule ``callback`` on the loop ``delay`` seconds from now."""
        return self._loop.call_later(delay, callback)


class FakeTimerHandle:
    """A callback scheduled on a `FakeClock`."""

    __slots__ = ("_callback", "_cancelled", "_fired", "when")

    def __init__(self, when: float, callback: Callable[[], object]) -> None:
        self.when = when
        """The virtual time the callback is due."""
        self._callback = callback
        self._cancelled = False
        self._fired = False

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "fired" if self._fired else "pending"
        return f"<FakeTimerHandle when={self.when!r} {state}>"

    @property
    def cancelled(self) -> bool:
        """True once `cancel` was called."""
        return self._cancelled

    def cancel(self) -> None:
        """Stop the callback from running. Idempotent; harmless after it fired."""
        self._cancelled = True

    def _run(self) -> None:
        self._fired = True
        self._callback()


class FakeClock:
    """A virtual `Clock`: time moves only in `advance`, firing due callbacks in order.

    Callbacks run in order of their due time (ties in the order they were
    scheduled), and `time` reads exactly each callback's due time while it
    runs. A callback scheduled during `advance` that falls due within the
    window fires in the same `advance`. One scheduled in the past fires at
    the next `advance` (even ``advance(0)``), at the current time. An
    exception from a callback propagates out of `advance`, with the clock
    left at that callback's time.

    Example::

        clock = FakeClock()
        fired: list[float] = []
        clock.call_later(15.0, lambda: fired.append(clock.time()))
        clock.advance(20.0)
        assert fired == [15.0] and clock.time() == 20.0
    """

    __slots__ = ("_heap", "_now", "_order")

    def __init__(self, start: float = 0.0) -> None:
        """Start the virtual time at ``start`` seconds."""
        self._now = float(start)
        self._heap: list[tuple[float, int, FakeTimerHandle]] = []
        self._order = itertools.count()

    def time(self) -> float:
        """The virtual time in seconds."""
        return self._now

    @property
    def pending(self) -> int:
        """Callbacks scheduled and neither fired nor cancelled."""
        return sum(1 for _, _, handle in self._heap if not handle.cancelled)

    def call_at(self, when: float, callback: Callable[[], object]) -> FakeTimerHandle:
        """Run ``callback()`` when the virtual time reaches ``when``.

        Raises:
            ValueError: ``when`` is NaN.
        """
        if math.isnan(when):
            raise ValueError("when must be a number, got nan")
        handle = FakeTimerHandle(float(when), callback)
        heapq.heappush(self._heap, (handle.when, next(self._order), handle))
        return handle

    def call_later(self, delay: float, callback: Callable[[], object]) -> FakeTimerHandle:
        """Run ``callback()`` ``delay`` seconds from the current virtual time."""
        return self.call_at(self._now + delay, callback)

    def advance(self, dt: float) -> None:
        """Move time forward by ``dt`` seconds, firing every callback due by then.

        Raises:
            ValueError: ``dt`` is negative or not finite.
        """
        if not math.isfinite(dt) or dt < 0:
            raise ValueError(f"dt must be a finite number >= 0, got {dt!r}")
        target = self._now + dt
        heap = self._heap
        while heap and heap[0][0] <= target:
            when, _, handle = heapq.heappop(heap)
            if handle.cancelled:
                continue
            self._now = max(self._now, when)
            handle._run()
        self._now = target


class PolicyTimer:
    """One clock timer kept at a sans-IO policy's next deadline: arm, poll when due, re-arm.

    Every runtime timer that follows a core object (the heartbeat sender and
    monitor, the pending-ack table) goes through this one routine:
    ``next_deadline()`` is the object's ``get_timer()``, and ``on_due(now)``
    polls it and acts on what it returns. After ``on_due`` the timer re-arms
    at the new deadline, unless `stop` was called (from ``on_due`` too).

    Example::

        timer = PolicyTimer(clock, heartbeat.get_timer, on_due)
        timer.arm()          # after every change that may move the deadline
        ...
        timer.stop()
    """

    __slots__ = ("_at", "_clock", "_handle", "_next_deadline", "_on_due", "_stopped")

    def __init__(
        self,
        clock: Clock,
        next_deadline: Callable[[], float | None],
        on_due: Callable[[float], object],
    ) -> None:
        self._clock = clock
        self._next_deadline = next_deadline
        self._on_due = on_due
        self._handle: TimerHandleLike | None = None
        self._at: float | None = None
        self._stopped = False

    @property
    def when(self) -> float | None:
        """The time the timer is armed for (None: not armed)."""
        return self._at

    def arm(self) -> None:
        """Arm (or move) the timer to ``next_deadline()``; None disarms it."""
        if self._stopped:
            return
        when = self._next_deadline()
        if when == self._at:
            return
        if self._handle is not None:
            self._handle.cancel()
        self._at = when
        self._handle = None if when is None else self._clock.call_at(when, self._fire)

    def _fire(self) -> None:
        # uvloop runs a timer up to half a millisecond before its time (its clock counts
        # whole milliseconds): polled at the clock's time, the policy would find nothing
        # due, and the timer re-armed at the same deadline would fire again, loop pass
        # after loop pass, until the clock caught up (11 fires per heartbeat check on a
        # server, a third of its idle CPU). The deadline it was armed for has come.
        at = self._at
        now = self._clock.time()
        self._handle = None
        self._at = None
        self._on_due(now if at is None or now >= at else at)
        self.arm()

    def stop(self) -> None:
        """Disarm for good. Idempotent."""
        self._stopped = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._at = None


# -- awaiting on a clock: what asyncio.sleep, asyncio.timeout and asyncio.wait(timeout=) do
# on the loop's clock, on any Clock (tests: a FakeClock, whose advance() ends the wait).


async def sleep(clock: Clock, delay: float) -> None:
    """Wait ``delay`` seconds of ``clock`` time."""
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not waiter.done():
            waiter.set_result(None)

    handle = clock.call_at(clock.time() + delay, wake)
    try:
        await waiter
    finally:
        handle.cancel()


class Deadline:
    """What `timeout` yields: whether its bound passed (``expired``)."""

    __slots__ = ("expired",)

    def __init__(self) -> None:
        self.expired = False
        """True once the bound passed and the block was cancelled for it."""


@contextlib.asynccontextmanager
async def timeout(clock: Clock, delay: float | None) -> AsyncIterator[Deadline]:
    """Like ``asyncio.timeout(delay)``, on ``clock``: past ``delay`` seconds the block is
    cancelled and `TimeoutError` raised; None: no bound. Yields a `Deadline`."""
    deadline = Deadline()
    if delay is None:
        yield deadline
        return
    task = asyncio.current_task()
    assert task is not None, "timeout() needs a running task"

    def expire() -> None:
        deadline.expired = True
        task.cancel()

    handle = clock.call_at(clock.time() + delay, expire)
    try:
        yield deadline
    except asyncio.CancelledError:
        if deadline.expired and task.uncancel() == 0:
            raise TimeoutError from None
        raise
    finally:
        handle.cancel()


async def wait_all(
    clock: Clock, futures: Iterable[asyncio.Future[Any] | None], timeout: float
) -> None:
    """Wait until every future is done, at most ``timeout`` seconds of ``clock`` time.

    None entries are skipped; nothing is cancelled or raised when time runs out.
    """
    pending = {f for f in futures if f is not None and not f.done()}
    if not pending:
        return
    gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def open_gate(_: object = None) -> None:
        if not gate.done():
            gate.set_result(None)

    def one_done(future: asyncio.Future[Any]) -> None:
        pending.discard(future)
        if not pending:
            open_gate()

    for future in pending:
        future.add_done_callback(one_done)
    handle = clock.call_at(clock.time() + timeout, open_gate)
    try:
        await gate
    finally:
        handle.cancel()
        for future in list(pending):
            future.remove_done_callback(one_done)
