"""`GcGovernor`: when the heap is frozen and when it is given back."""

from __future__ import annotations

import gc

from quicflow.gcpause import GcAction, GcGovernor


def _governor(**options: float) -> GcGovernor:
    """A governor whose process accounts for 100,000 objects and each connection for 250
    (as if measured at a freeze), with a walk limit of 200,000."""
    governor = GcGovernor(walk_limit=200_000, base=100_000, thaw_interval=0.0, **options)
    governor.per_connection = 250.0
    return governor


def test_freezes_once_the_walked_objects_pass_the_limit() -> None:
    """Check that nothing happens at the limit and FREEZE one object past it."""
    governor = GcGovernor(walk_limit=1000, base=0)
    assert governor.decide(walked=1000, alive=10) is GcAction.NOTHING
    assert governor.decide(walked=1001, alive=10) is GcAction.FREEZE


def test_connections_ending_never_ask_for_a_thaw() -> None:
    """Check that a storm ending connections by the thousand asks for nothing: an ended
    connection's frozen objects are freed by reference counting, so the frozen count
    falls with the connections alive and stays within what they explain (the churn
    alone used to thaw the whole heap once a quarter of the connections had ended)."""
    governor = _governor()
    for alive in (10_000, 6_664, 1_000, 0):
        frozen = 100_000 + 250 * alive
        assert governor.decide(walked=10, alive=alive, now=100.0, frozen=frozen) is (
            GcAction.NOTHING
        )


def test_thaws_once_the_unexplained_frozen_objects_pass_the_walk_limit() -> None:
    """Check that with 6,000 connections alive (1,600,000 objects explained), 1,800,000
    frozen objects ask for nothing and 1,800,001 for THAW: reference cycles nobody
    freed, one walk limit's worth."""
    governor = _governor()
    assert governor.expected(6_000) == 1_600_000
    assert governor.decide(10, 6_000, now=5.0, frozen=1_800_000) is GcAction.NOTHING
    assert governor.decide(10, 6_000, now=5.0, frozen=1_800_001) is GcAction.THAW


def test_without_a_count_of_the_frozen_objects_there_is_no_thaw() -> None:
    """Check that a look that did not count the frozen objects (``frozen`` None) never
    thaws, and still freezes past the limit."""
    governor = _governor()
    assert governor.decide(walked=10, alive=0, now=5.0) is GcAction.NOTHING
    assert governor.decide(walked=200_001, alive=0, now=5.0) is GcAction.FREEZE


def test_thaws_at_most_once_per_thaw_interval() -> None:
    """Check that a due thaw waits until thaw_interval after the last one (or the start)."""
    governor = GcGovernor(walk_limit=1000, base=0, now=100.0, thaw_interval=600.0)
    assert governor.decide(10, 0, now=699.9, frozen=5000) is GcAction.NOTHING
    assert governor.decide(10, 0, now=700.0, frozen=5000) is GcAction.THAW
    governor.thawed_at = 700.0
    assert governor.decide(10, 0, now=1299.9, frozen=5000) is GcAction.NOTHING
    assert governor.decide(10, 0, now=1300.0, frozen=5000) is GcAction.THAW


def test_never_thaws_while_handshakes_are_in_progress() -> None:
    """Check that a due thaw waits while the server is busy with handshakes (a storm),
    and comes once it is not."""
    governor = GcGovernor(walk_limit=1000, base=0, thaw_interval=0.0)
    assert governor.decide(10, 0, now=5.0, busy=True, frozen=5000) is GcAction.NOTHING
    assert governor.decide(10, 0, now=5.0, busy=False, frozen=5000) is GcAction.THAW


def test_the_first_quiet_look_after_a_freeze_measures_the_objects_per_connection() -> None:
    """Check that a freeze with more connections alive than ever makes the next quiet look
    count the frozen objects and measure the share per connection beyond the base (not
    the freeze itself: a count walks them all, and freezes come in storms), and that a
    freeze with fewer connections keeps the measure of the one with more."""
    governor = GcGovernor(walk_limit=10**9, base=0, now=0.0, quiet_time=10.0)
    try:
        governor.apply(GcAction.FREEZE, alive=4)
        assert governor.frozen and governor.measure_due and governor.per_connection == 0.0
        governor.poll(1.0, alive=4, busy=True)
        assert governor.per_connection == 0.0  # in a storm: not yet
        governor.poll(11.0, alive=4)
        frozen = gc.get_freeze_count()
        assert (governor.per_connection, governor.measured_with) == (frozen / 4, 4)
        assert not governor.measure_due and governor.checked_at == 11.0
        governor.apply(GcAction.FREEZE, alive=2)
        assert not governor.measure_due
    finally:
        gc.unfreeze()


def test_a_thaw_gives_everything_back_and_counts_the_survivors_as_explained() -> None:
    """Check that THAW unfreezes, collects, and raises the base to what survived beyond the
    connections' share, so the same heap is not thawed again for it."""
    governor = GcGovernor(walk_limit=1000, base=0, now=0.0, thaw_interval=0.0)
    try:
        governor.apply(GcAction.FREEZE, alive=0)
        frozen = gc.get_freeze_count()
        assert governor.decide(10, 0, now=1.0, frozen=frozen) is GcAction.THAW
        governor.apply(GcAction.THAW, alive=0, now=1.0)
        assert gc.get_freeze_count() == 0 and not governor.frozen
        assert governor.thawed_at == 1.0 and governor.thaws == 1
        survivors = len(gc.get_objects())
        assert governor.base >= survivors - 1000
        # Frozen again as they are, the survivors are explained: no second thaw for them.
        assert governor.decide(10, 0, now=2.0, frozen=survivors) is GcAction.NOTHING
    finally:
        gc.unfreeze()


def test_counts_the_frozen_objects_once_per_check_interval_while_quiet() -> None:
    """Check that poll counts the frozen objects only while frozen, quiet_time after the last
    busy look, and at most once per check_interval (a count walks them all)."""
    governor = GcGovernor(
        walk_limit=10**9, base=10**9, now=0.0, check_interval=60.0, quiet_time=10.0
    )
    try:
        assert governor.poll(61.0, alive=0) is GcAction.NOTHING
        assert governor.checked_at == 0.0  # nothing frozen: nothing to count
        governor.apply(GcAction.FREEZE, alive=0)  # no more connections than ever: no measure
        governor.poll(62.0, alive=0, busy=True)
        governor.poll(71.9, alive=0)
        assert governor.checked_at == 0.0  # not quiet for 10 s yet
        governor.poll(72.0, alive=0)
        assert governor.checked_at == 72.0
        governor.poll(131.9, alive=0)
        assert governor.checked_at == 72.0
        governor.poll(132.0, alive=0)
        assert governor.checked_at == 132.0
    finally:
        gc.unfreeze()


def test_a_moment_without_handshakes_is_not_quiet_enough_to_thaw() -> None:
    """Check that poll holds a due thaw until quiet_time seconds passed without a busy look,
    and lets it through after: the whole heap frozen, none of it explained."""
    governor = GcGovernor(
        walk_limit=1000, base=0, now=0.0, check_interval=0.0, thaw_interval=0.0, quiet_time=10.0
    )
    try:
        governor.apply(GcAction.FREEZE, alive=0)
        assert governor.poll(1.0, alive=0, busy=True) is GcAction.NOTHING
        assert governor.poll(10.9, alive=0) is GcAction.NOTHING
        assert governor.poll(11.0, alive=0) is GcAction.THAW
    finally:
        gc.unfreeze()


def test_polls_once_per_interval_and_releases_what_it_froze() -> None:
    """Check that get_timer moves one interval past each poll, that a poll over the limit
    freezes, and that release gives the frozen objects back."""
    governor = GcGovernor(walk_limit=0, now=10.0, interval=1.0, quiet_time=0.0)
    assert governor.get_timer() == 11.0
    try:
        assert governor.poll(11.0, alive=1) is GcAction.FREEZE
        assert governor.get_timer() == 12.0 and gc.get_freeze_count() > 0
        governor.release()
        assert gc.get_freeze_count() == 0 and not governor.frozen
    finally:
        gc.unfreeze()
