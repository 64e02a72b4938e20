"""The server's connection-event log: one line each up to a burst a second, then one
summary line for the rest of that second (virtual clock, exact times)."""

from __future__ import annotations

import logging

import pytest

from quicflow.clock import FakeClock
from quicflow.server import _ConnectionLog


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "quicflow.server"]


def test_a_burst_is_logged_one_by_one_up_to_the_limit_then_summed_up_at_the_seconds_end(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="quicflow")
    clock = FakeClock(start=100.0)
    log = _ConnectionLog(lambda: clock, per_second=3)
    admitted = [log.admit("disconnected (no heartbeat)") for _ in range(10)]
    clock.advance(0.5)
    admitted.append(log.admit("connected"))
    assert admitted == [True] * 3 + [False] * 8
    assert _lines(caplog) == []  # the runtime logs the admitted ones itself
    clock.advance(0.499)
    assert _lines(caplog) == []
    clock.advance(0.001)  # 101.0: the second that began at 100.0 is over
    assert _lines(caplog) == [
        "8 more connection events in 1.0 s not logged one by one: "
        "7 disconnected (no heartbeat), 1 connected"
    ]
    clock.advance(10.0)
    assert len(_lines(caplog)) == 1  # nothing counted since: no line, no timer
    assert log.admit("connected")


def test_what_is_counted_at_stop_is_logged_then(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="quicflow")
    clock = FakeClock()
    log = _ConnectionLog(lambda: clock, per_second=1)
    log.admit("a")
    log.admit("a")
    log.stop()
    assert _lines(caplog) == ["1 more connection events in 1.0 s not logged one by one: 1 a"]
    assert clock.pending == 0


def test_nothing_is_admitted_or_counted_while_info_is_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="quicflow")
    clock = FakeClock()
    log = _ConnectionLog(lambda: clock, per_second=1)
    assert not log.admit("a")
    assert clock.pending == 0
