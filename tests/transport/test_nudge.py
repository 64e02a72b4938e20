"""The client's nudge timer (`quicflow.transport.nudge.Nudge`) on a virtual clock."""

from __future__ import annotations

from dataclasses import dataclass

from quicflow.clock import FakeClock
from quicflow.transport.nudge import Nudge


@dataclass
class _Peer:
    last_heard: float = 0.0
    last_data: float = 0.0


def _nudge(clock: FakeClock, peer: _Peer, waiting: list[bool], pings: list[float]) -> Nudge:
    return Nudge(
        clock,
        peer,
        after=1.0,
        longest=4.0,
        waiting=lambda: waiting[0],
        ping=lambda: pings.append(clock.time()),
    )


def test_pings_a_silent_peer_backing_off_while_no_data_comes() -> None:
    """Check that, armed at t=10 with the peer silent since t=0, the nudge pings at
    11, 13, 17, 21 (1 s, then doubling to the 4 s ceiling while no data arrives);
    data at 21.5 does not move the check armed for 25, which pings (silence since the
    data passed 1 s), and the back-off restarts: the next ping is 2 s later, at 27."""
    clock, peer, waiting = FakeClock(10.0), _Peer(), [True]
    pings: list[float] = []
    nudge = _nudge(clock, peer, waiting, pings)
    nudge.expect_answer()
    clock.advance(11.0)
    assert pings == [11.0, 13.0, 17.0, 21.0]
    peer.last_heard = peer.last_data = 21.5
    clock.advance(3.9)
    assert pings == [11.0, 13.0, 17.0, 21.0]
    clock.advance(2.1)
    assert pings == [11.0, 13.0, 17.0, 21.0, 25.0, 27.0]


def test_stops_when_nothing_is_awaited_and_rearms_on_expect_answer() -> None:
    """Check that a check finding nothing awaited sends nothing and leaves no timer,
    that `expect_answer` arms it again (the silence counting from then), and that
    `cancel` disarms it."""
    clock, peer, waiting = FakeClock(), _Peer(), [False]
    pings: list[float] = []
    nudge = _nudge(clock, peer, waiting, pings)
    nudge.expect_answer()
    clock.advance(5.0)
    assert pings == [] and not nudge.armed and clock.pending == 0
    waiting[0] = True
    nudge.expect_answer()
    nudge.expect_answer()  # already armed: no second timer
    assert clock.pending == 1
    clock.advance(1.0)
    assert pings == [6.0]
    nudge.cancel()
    clock.advance(10.0)
    assert pings == [6.0] and not nudge.armed
