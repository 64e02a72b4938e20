"""`GcGovernor`: when the heap is frozen and when it is given back."""

from __future__ import annotations

import gc

import pytest

from quicflow.gcpause import GcAction, GcGovernor


def test_freezes_once_the_walked_objects_pass_the_limit() -> None:
    """Check that nothing happens at the limit and FREEZE one object past it."""
    governor = GcGovernor(walk_limit=1000)
    assert governor.decide(walked=1000, frozen=0, alive=10, ended=0) is GcAction.NOTHING
    assert governor.decide(walked=1001, frozen=0, alive=10, ended=0) is GcAction.FREEZE


def test_thaws_once_enough_connections_ended_since_the_freeze() -> None:
    """Check that with 1,000 connections alive at the freeze, THAW comes after more than
    250 ended (a quarter), not before, and counting restarts after the thaw."""
    governor = GcGovernor(walk_limit=1000, thaw_fraction=0.25, thaw_interval=0.0)
    governor.frozen_with = 1000
    assert governor.decide(walked=10, frozen=5000, alive=900, ended=250) is GcAction.NOTHING
    assert governor.decide(walked=10, frozen=5000, alive=700, ended=251) is GcAction.THAW
    governor.ended_at_thaw = 251
    assert governor.decide(walked=10, frozen=5000, alive=700, ended=400) is GcAction.NOTHING


def test_thaws_at_most_once_per_thaw_interval() -> None:
    """Check that a thaw due by churn waits until thaw_interval after the last one (a
    storm's failed handshakes must not cost a full collection every second)."""
    governor = GcGovernor(walk_limit=1000, now=100.0, thaw_interval=60.0)
    governor.frozen_with = 1000
    assert governor.decide(10, 5000, alive=500, ended=900, now=159.9) is GcAction.NOTHING
    assert governor.decide(10, 5000, alive=500, ended=900, now=160.0) is GcAction.THAW
    try:
        governor.apply(GcAction.THAW, alive=500, ended=900, now=160.0)
        governor.frozen_with = 500
        assert governor.decide(10, 5000, alive=0, ended=2000, now=219.9) is GcAction.NOTHING
        assert governor.decide(10, 5000, alive=0, ended=2000, now=220.0) is GcAction.THAW
    finally:
        gc.unfreeze()


def test_nothing_frozen_means_nothing_to_thaw() -> None:
    """Check that churn alone never asks for THAW while nothing is frozen."""
    governor = GcGovernor(walk_limit=1000)
    assert governor.decide(walked=10, frozen=0, alive=0, ended=10_000) is GcAction.NOTHING


def test_apply_freezes_and_thaws_the_real_collector() -> None:
    """Check that FREEZE moves objects to the permanent generation and THAW gives them
    all back."""
    governor = GcGovernor()
    try:
        governor.apply(GcAction.FREEZE, alive=3, ended=0)
        assert gc.get_freeze_count() > 0 and governor.frozen_with == 3
        governor.apply(GcAction.THAW, alive=0, ended=7)
        assert gc.get_freeze_count() == 0
        assert (governor.ended_at_thaw, governor.frozen_with) == (7, 0)
    finally:
        gc.unfreeze()


def test_polls_once_per_interval_and_releases_what_it_froze() -> None:
    """Check that get_timer moves one interval past each poll, that a poll over the limit
    freezes, and that release gives the frozen objects back."""
    governor = GcGovernor(walk_limit=0, now=10.0, interval=1.0, quiet_time=0.0)
    assert governor.get_timer() == 11.0
    try:
        assert governor.poll(11.0, alive=1, ended=0) is GcAction.FREEZE
        assert governor.get_timer() == 12.0 and gc.get_freeze_count() > 0
        governor.release()
        assert gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()


def test_never_thaws_while_handshakes_are_in_progress() -> None:
    """Check that a thaw due by churn and interval waits while the server is busy with
    handshakes (a storm), and comes once it is not."""
    governor = GcGovernor(walk_limit=1000, thaw_interval=0.0)
    governor.frozen_with = 1000
    assert governor.decide(10, 5000, 0, 2000, now=5.0, busy=True) is GcAction.NOTHING
    assert governor.decide(10, 5000, 0, 2000, now=5.0, busy=False) is GcAction.THAW


def test_a_moment_without_handshakes_is_not_quiet_enough_to_thaw() -> None:
    """Check that poll holds a due thaw until quiet_time seconds passed without a busy look,
    and lets it through after."""
    governor = GcGovernor(walk_limit=10**9, now=0.0, thaw_interval=0.0, quiet_time=10.0)
    try:
        governor.apply(GcAction.FREEZE, alive=1000, ended=0)
        assert governor.poll(1.0, alive=0, ended=2000, busy=True) is GcAction.NOTHING
        assert governor.poll(10.9, alive=0, ended=2000) is GcAction.NOTHING
        assert governor.poll(11.0, alive=0, ended=2000) is GcAction.THAW
    finally:
        gc.unfreeze()


def test_a_look_never_walks_the_frozen_objects(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that polling through a freeze, a thaw and a release never asks the collector
    how many objects are frozen (`gc.get_freeze_count` walks them all: ~20 ms a look at
    1,000 connections) and still thaws only what it froze."""

    def walks() -> int:
        raise AssertionError("gc.get_freeze_count walks every frozen object")

    monkeypatch.setattr(gc, "get_freeze_count", walks)
    governor = GcGovernor(walk_limit=0, now=0.0, thaw_interval=0.0, quiet_time=0.0)
    try:
        assert governor.poll(1.0, alive=200, ended=0) is GcAction.FREEZE
        assert governor.frozen and governor.frozen_with == 200
        assert governor.poll(2.0, alive=100, ended=101) is GcAction.THAW
        assert not governor.frozen and governor.thaws == 1
        governor.release()  # nothing frozen: nothing given back
        assert governor.thaws == 1
    finally:
        gc.unfreeze()
