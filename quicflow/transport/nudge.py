"""`Nudge`: the client's timer that pings a silent server while an answer is awaited.

Only the client can heal a NAT rebinding: the server learns the new address
from the client's next datagram, and sends into the old one until then. A
client that only waits for a reply would stay silent until its next
heartbeat. The policy (when to check, when a PING is due, the back-off while no
data comes) is sans-IO (`quicflow.protocol.heartbeat.QuietWatch`); this arms its
one timer on a `Clock`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..clock import Clock, TimerHandleLike
from ..protocol.heartbeat import QuietWatch

__all__ = ["Heard", "Nudge"]


class Heard(Protocol):
    """When the connection last heard from its peer (times on the nudge's clock)."""

    @property
    def last_heard(self) -> float:
        """The last datagram from the peer."""
        ...

    @property
    def last_data(self) -> float:
        """The last datagram that carried stream data to a handler."""
        ...


class Nudge:
    """Sends ``ping()`` whenever ``waiting()`` holds and the peer has been silent for
    ``after`` seconds, backing off to ``longest`` while no data comes.

    Checks run only while something is awaited: `expect_answer` starts them, and
    the silence counts from then at the earliest; once ``waiting()`` is false they
    stop until the next `expect_answer`.
    """

    __slots__ = ("_clock", "_heard", "_ping", "_timer", "_wait_began", "_waiting", "_watch")

    def __init__(
        self,
        clock: Clock,
        heard: Heard,
        *,
        after: float,
        longest: float,
        waiting: Callable[[], bool],
        ping: Callable[[], None],
    ) -> None:
        self._clock = clock
        self._heard = heard
        self._watch = QuietWatch(after, longest)
        self._waiting = waiting
        self._ping = ping
        self._timer: TimerHandleLike | None = None
        self._wait_began = 0.0  # when the nudge was last armed from idle

    @property
    def armed(self) -> bool:
        """Whether a check is scheduled."""
        return self._timer is not None

    def _quiet_since(self) -> float:
        return max(self._heard.last_heard, self._wait_began)

    def expect_answer(self) -> None:
        """Something now awaits the peer (a call, a ping sent): make sure a check is
        armed."""
        if self._timer is not None:
            return
        self._wait_began = self._clock.time()
        self._arm()

    def _arm(self) -> None:
        when = self._watch.next_check(self._quiet_since(), self._heard.last_data)
        self._timer = self._clock.call_at(when, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._waiting():
            return  # idle now; the next call or ping re-arms
        heard = self._heard
        if self._watch.poll(self._clock.time(), self._quiet_since(), heard.last_data, True):
            self._ping()
        self._arm()

    def cancel(self) -> None:
        """Stop checking (the connection ended)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
