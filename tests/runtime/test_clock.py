"""Tests for `FakeClock` (virtual time, ordered callbacks) and `LoopClock` (the event loop's)."""

from __future__ import annotations

import asyncio

import pytest

from quicflow.clock import Clock, FakeClock, LoopClock, TimerHandleLike
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


def test_fake_clock_drives_a_sans_io_timer_to_the_exact_deadline() -> None:
    """Check that a monitor re-armed on the FakeClock evicts exactly 45 s after the last ping."""
    clock: Clock = FakeClock()
    monitor = HeartbeatMonitor(15.0, 5.0, 3, now=clock.time())
    expired: list[float] = []
    handles: list[TimerHandleLike] = []

    def fire() -> None:
        for event in monitor.poll(clock.time()):
            if isinstance(event, SessionExpired):
                expired.append(clock.time())
        when = monitor.get_timer()
        if when is not None:
            handles.append(clock.call_at(when, fire))

    handles.append(clock.call_at(monitor.get_timer() or 0.0, fire))
    assert isinstance(clock, FakeClock)
    clock.advance(3.0)
    monitor.ping_received(clock.time())
    clock.advance(100.0)
    assert expired == [48.0]
    assert clock.pending == 0


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
