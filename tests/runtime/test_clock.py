"""Tests for `FakeClock` (virtual time, ordered callbacks) and `LoopClock` (the event loop's)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from quicflow.clock import Clock, FakeClock, LoopClock, PolicyTimer, TimerHandleLike, wait_all
from quicflow.clock import sleep as clock_sleep
from quicflow.clock import timeout as clock_timeout
from quicflow.protocol.heartbeat import HeartbeatMonitor, SessionExpired


def test_time_moves_only_when_advanced() -> None:
    """Check that the virtual time starts where told and moves by exactly dt."""
    clock = FakeClock()
    assert clock.time() == 0.0
    clock.advance(15.0)
    assert clock.time() == 15.0
    clock.advance(0.0)
    assert clock.time() == 15.0
    assert FakeClock(start=100.0).time() == 100.0


def test_callbacks_fire_in_time_order_at_their_own_time() -> None:
    """Check that callbacks run by due time (ties by scheduling order) and see their due time."""
    clock = FakeClock()
    seen: list[tuple[str, float]] = []
    clock.call_at(3.0, lambda: seen.append(("c", clock.time())))
    clock.call_at(1.0, lambda: seen.append(("a", clock.time())))
    clock.call_later(2.0, lambda: seen.append(("b1", clock.time())))
    clock.call_at(2.0, lambda: seen.append(("b2", clock.time())))
    assert clock.pending == 4
    clock.advance(2.5)
    assert seen == [("a", 1.0), ("b1", 2.0), ("b2", 2.0)]
    assert clock.time() == 2.5
    assert clock.pending == 1
    clock.advance(10.0)
    assert seen[-1] == ("c", 3.0)
    assert clock.pending == 0


def test_callbacks_due_exactly_at_the_window_end_fire() -> None:
    """Check that a callback due exactly at now + dt fires in that advance."""
    clock = FakeClock()
    fired: list[float] = []
    clock.call_later(15.0, lambda: fired.append(clock.time()))
    clock.advance(14.999)
    assert fired == []
    clock.advance(0.001)
    assert fired == [15.0]


def test_callbacks_scheduled_during_advance_fire_within_the_window() -> None:
    """Check that a callback scheduled by a callback fires in the same advance when due by then."""
    clock = FakeClock()
    ticks: list[float] = []

    def tick() -> None:
        ticks.append(clock.time())
        clock.call_later(15.0, tick)

    clock.call_later(15.0, tick)
    clock.advance(60.0)
    assert ticks == [15.0, 30.0, 45.0, 60.0]
    assert clock.pending == 1
    clock.advance(14.0)
    assert ticks[-1] == 60.0


def test_cancelled_callbacks_never_fire() -> None:
    """Check that cancel stops a callback, is idempotent, and drops it from pending."""
    clock = FakeClock()
    fired: list[str] = []
    keep = clock.call_later(1.0, lambda: fired.append("keep"))
    drop = clock.call_later(1.0, lambda: fired.append("drop"))
    drop.cancel()
    drop.cancel()
    assert drop.cancelled and not keep.cancelled
    assert clock.pending == 1
    clock.advance(5.0)
    assert fired == ["keep"]
    keep.cancel()  # after it fired: harmless
    assert clock.pending == 0


def test_a_callback_can_cancel_a_later_one_in_the_same_window() -> None:
    """Check that cancelling a still-pending callback from inside another callback works."""
    clock = FakeClock()
    fired: list[str] = []
    later = clock.call_at(2.0, lambda: fired.append("later"))
    clock.call_at(1.0, later.cancel)
    clock.advance(3.0)
    assert fired == []


def test_a_callback_in_the_past_fires_at_the_current_time() -> None:
    """Check that a callback scheduled before now fires on the next advance, even advance(0)."""
    clock = FakeClock(start=10.0)
    fired: list[float] = []
    clock.call_at(5.0, lambda: fired.append(clock.time()))
    clock.advance(0.0)
    assert fired == [10.0]


def test_an_exception_propagates_and_leaves_the_clock_at_that_callback() -> None:
    """Check that a raising callback surfaces from advance and later callbacks stay scheduled."""
    clock = FakeClock()
    fired: list[float] = []

    def boom() -> None:
        raise RuntimeError("boom")

    clock.call_at(1.0, boom)
    clock.call_at(2.0, lambda: fired.append(clock.time()))
    with pytest.raises(RuntimeError, match="boom"):
        clock.advance(5.0)
    assert clock.time() == 1.0
    assert clock.pending == 1
    clock.advance(1.0)
    assert fired == [2.0]


@pytest.mark.parametrize("dt", [-1.0, float("nan"), float("inf")])
def test_advance_refuses_negative_or_non_finite_steps(dt: float) -> None:
    """Check that advance raises ValueError for a step that is negative, NaN or infinite."""
    with pytest.raises(ValueError, match="dt"):
        FakeClock().advance(dt)


def test_policy_timer_drives_a_sans_io_monitor_to_the_exact_deadline() -> None:
    """Check that the runtime's one timer routine (PolicyTimer) on a FakeClock evicts
    exactly 45 s after the last ping, polling at each check and stopping when told."""
    clock = FakeClock()
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=clock.time())
    expired: list[float] = []
    polls: list[float] = []

    def on_due(now: float) -> None:
        polls.append(now)
        if any(isinstance(e, SessionExpired) for e in monitor.poll(now)):
            expired.append(now)
            timer.stop()

    timer = PolicyTimer(clock, monitor.get_timer, on_due)
    timer.arm()
    assert timer.when == 5.0
    clock.advance(3.0)
    monitor.ping_received(clock.time())
    clock.advance(100.0)
    assert expired == [48.0]
    assert polls == [5.0, 10.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 45.0, 48.0]
    assert clock.pending == 0 and timer.when is None


def test_policy_timer_moves_to_an_earlier_deadline_and_disarms_on_none() -> None:
    """Check that arm() after the deadline moved re-schedules (one handle pending, the old
    one cancelled), and that a None deadline disarms it."""
    clock = FakeClock()
    deadline: list[float | None] = [10.0]
    fired: list[float] = []
    timer = PolicyTimer(clock, lambda: deadline[0], fired.append)
    timer.arm()
    deadline[0] = 4.0
    timer.arm()
    assert timer.when == 4.0 and clock.pending == 1
    deadline[0] = None  # after the poll at 4 s, nothing more is due
    clock.advance(20.0)
    assert fired == [4.0] and clock.pending == 0
    deadline[0] = 30.0
    timer.arm()
    timer.stop()
    timer.arm()  # stopped for good
    assert clock.pending == 0 and timer.when is None


class _EarlyClock:
    """A `FakeClock` whose timers run half a millisecond before their time, as uvloop's
    do (its clock counts whole milliseconds)."""

    def __init__(self) -> None:
        self.fake = FakeClock()

    def time(self) -> float:
        return self.fake.time()

    def call_at(self, when: float, callback: Callable[[], object]) -> TimerHandleLike:
        return self.fake.call_at(max(self.fake.time(), when - 0.0005), callback)

    def call_later(self, delay: float, callback: Callable[[], object]) -> TimerHandleLike:
        return self.call_at(self.fake.time() + delay, callback)


def test_policy_timer_fired_early_polls_once_at_its_deadline() -> None:
    """Check that a timer the loop runs before its deadline (uvloop: up to 0.5 ms) polls the
    policy once, at the deadline, and re-arms for the next one: not once per loop pass at
    the same deadline until the clock catches up."""
    clock = _EarlyClock()
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=0.0)
    polls: list[tuple[float, float]] = []

    def on_due(now: float) -> None:
        polls.append((clock.time(), now))
        monitor.poll(now)
        if len(polls) > 5:  # before the fix: the same deadline, again and again
            timer.stop()

    timer = PolicyTimer(clock, monitor.get_timer, on_due)
    timer.arm()
    clock.fake.advance(12.0)
    assert polls == [(4.9995, 5.0), (9.9995, 10.0)]
    assert timer.when == 15.0


async def test_clock_sleep_wakes_exactly_when_the_clock_passes_the_delay() -> None:
    """Check that clock.sleep(2.5) is still waiting at 2.499 s of virtual time, done at 2.5."""
    clock = FakeClock()
    sleeper = asyncio.ensure_future(clock_sleep(clock, 2.5))
    await asyncio.sleep(0)
    clock.advance(2.499)
    await asyncio.sleep(0)
    assert not sleeper.done()
    clock.advance(0.001)
    await asyncio.wait_for(sleeper, 1.0)
    assert clock.pending == 0


async def test_clock_timeout_raises_at_the_bound_and_not_before() -> None:
    """Check that clock.timeout(1.0) cancels its block at exactly 1 s of virtual time with
    TimeoutError and an expired Deadline, leaves a block that ends first alone, and lets a
    cancellation from outside through as CancelledError."""
    clock = FakeClock()
    seen: list[bool] = []

    async def bounded(wait: asyncio.Event) -> None:
        async with clock_timeout(clock, 1.0) as deadline:
            try:
                await wait.wait()
            finally:
                seen.append(deadline.expired)

    stuck = asyncio.ensure_future(bounded(asyncio.Event()))
    await asyncio.sleep(0)
    clock.advance(0.999)
    await asyncio.sleep(0)
    assert not stuck.done()
    clock.advance(0.001)
    with pytest.raises(TimeoutError):
        await stuck
    done = asyncio.Event()
    quick = asyncio.ensure_future(bounded(done))
    await asyncio.sleep(0)
    done.set()
    await quick
    assert clock.pending == 0
    outside = asyncio.ensure_future(bounded(asyncio.Event()))
    await asyncio.sleep(0)
    outside.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outside
    assert seen == [True, False, False]
    async with clock_timeout(clock, None) as unbounded:
        await asyncio.sleep(0)
    assert not unbounded.expired


async def test_wait_all_returns_when_all_are_done_or_at_the_bound() -> None:
    """Check that wait_all returns once every future is done (None entries skipped), and at
    exactly its bound otherwise, cancelling nothing."""
    clock = FakeClock()
    loop = asyncio.get_running_loop()
    a: asyncio.Future[None] = loop.create_future()
    b: asyncio.Future[None] = loop.create_future()
    waiter = asyncio.ensure_future(wait_all(clock, [a, None, b], 5.0))
    await asyncio.sleep(0)
    a.set_result(None)
    await asyncio.sleep(0)
    assert not waiter.done()
    b.set_result(None)
    await asyncio.wait_for(waiter, 1.0)
    slow: asyncio.Future[None] = loop.create_future()
    bounded = asyncio.ensure_future(wait_all(clock, [slow], 5.0))
    await asyncio.sleep(0)
    clock.advance(4.999)
    await asyncio.sleep(0)
    assert not bounded.done()
    clock.advance(0.001)
    await asyncio.wait_for(bounded, 1.0)
    assert not slow.done() and clock.pending == 0
    await wait_all(clock, [], 5.0)  # nothing to wait for: at once


async def test_loop_clock_uses_the_running_loop() -> None:
    """Check that LoopClock reads loop.time() and schedules on the loop, cancellably."""
    loop = asyncio.get_running_loop()
    clock: Clock = LoopClock()
    assert abs(clock.time() - loop.time()) < 1.0
    fired = asyncio.Event()
    skipped: list[int] = []
    clock.call_at(clock.time(), fired.set)
    clock.call_at(clock.time(), lambda: skipped.append(1)).cancel()
    await asyncio.wait_for(fired.wait(), 5.0)
    await asyncio.sleep(0)
    assert skipped == []
    later = LoopClock(loop).call_later(0.0, fired.clear)
    later.cancel()


def test_loop_clock_needs_a_loop_outside_one() -> None:
    """Check that LoopClock() outside a running loop raises RuntimeError instead of guessing."""
    with pytest.raises(RuntimeError):
        LoopClock()
