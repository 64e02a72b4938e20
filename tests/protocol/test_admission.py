"""Tests for `HandshakeAdmission` (queue an Initial or tell its client when to come back)
and the busy reason phrase, on exact times: no clock, no I/O."""

from __future__ import annotations

import pytest

from quicflow.protocol.admission import HandshakeAdmission, busy_reason, parse_busy


def test_the_busy_reason_round_trips_in_whole_milliseconds() -> None:
    """Check the phrase's exact text, that parsing gives the delay back in seconds, and
    that anything else (another reason, extra text, a negative or huge number) is no busy
    answer."""
    assert busy_reason(1.2344) == "server busy, retry in 1234 ms"
    assert busy_reason(-1.0) == "server busy, retry in 0 ms"
    assert parse_busy("server busy, retry in 1234 ms") == 1.234
    assert parse_busy("server busy, retry in 0 ms") == 0.0
    for other in (
        "too many connections",
        "server busy, retry in 1234 ms!",
        "server busy, retry in -5 ms",
        "server busy, retry in 1234567890 ms",
        "",
    ):
        assert parse_busy(other) is None, other


def test_initials_are_queued_while_the_backlog_drains_within_max_wait() -> None:
    """Check that with a 2 ms pace and max_wait 1 s, an Initial behind 500 waiting ones is
    queued (1.0 s) and one behind 501 is turned away with the first slot after them."""
    admission = HandshakeAdmission(max_wait=1.0, initial_cost=0.002)
    assert admission.admit(10.0, 0) is None
    assert admission.admit(10.0, 500) is None
    assert admission.admit(10.0, 501) == pytest.approx(1.002)


def test_clients_turned_away_get_slots_one_pace_apart() -> None:
    """Check the take-a-number schedule: each client turned away gets the next slot, one
    spacing after the previous one, counted from when the backlog drains; once time has
    passed the slots are still after the last one given."""
    admission = HandshakeAdmission(max_wait=1.0, initial_cost=0.01)
    assert admission.admit(0.0, 200) == pytest.approx(2.0)
    assert admission.admit(0.0, 200) == pytest.approx(2.01)
    assert admission.admit(0.0, 200) == pytest.approx(2.02)
    assert admission.admit(1.0, 101) == pytest.approx(2.03 - 1.0)  # drains by 2.01
    # Later, with the backlog further out than the last slot: its end wins.
    assert admission.admit(5.0, 300) == pytest.approx(3.0)


def test_slots_are_never_further_than_max_delay() -> None:
    """Check that a flood of Initials pushes the slots out only up to max_delay ahead."""
    admission = HandshakeAdmission(max_wait=1.0, max_delay=5.0, initial_cost=0.01)
    delays = [admission.admit(0.0, 1000) for _ in range(3)]
    assert delays == [5.0, 5.0, 5.0]
    assert admission.admit(2.0, 1000) == 5.0


def test_the_pace_is_the_mean_gap_between_starts_while_initials_wait() -> None:
    """Check that the spacing is the CPU cost of a start until gaps are measured; that
    gaps count only after a start that left Initials waiting (saturated), as a mean with
    1/32 to the newest; and that the cost is a mean with 1/8 to the newest."""
    admission = HandshakeAdmission(initial_cost=0.002)
    assert admission.spacing == 0.002
    admission.started(100.0, 0.010, more=False)  # nothing waits: no gap is measured
    assert admission.cost == pytest.approx(0.002 + (0.010 - 0.002) / 8)
    assert admission.spacing == admission.cost
    admission.started(105.0, 0.003, more=True)  # idle gap before it: not a pace
    assert admission.spacing == admission.cost
    admission.started(105.004, 0.003, more=True)  # the first measured gap: 4 ms
    assert admission.spacing == pytest.approx(0.004)
    admission.started(105.004, 0.003, more=True)  # same loop pass: a gap of 0
    assert admission.spacing == pytest.approx(0.004 - 0.004 / 32)
    admission.started(105.104, 0.003, more=False)  # the backlog emptied after this one
    paced = admission.spacing
    admission.started(200.0, 0.003, more=True)  # the next storm: no gap across the calm
    assert admission.spacing == paced


def test_bad_bounds_are_refused() -> None:
    """Check that a non-positive max_wait or cost, or max_delay below max_wait, raise."""
    for kwargs in ({"max_wait": 0.0}, {"initial_cost": 0.0}, {"max_wait": 2.0, "max_delay": 1.0}):
        with pytest.raises(ValueError):
            HandshakeAdmission(**kwargs)
