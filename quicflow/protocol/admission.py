"""Handshake admission in a reconnect storm, sans-IO: which new connection attempts wait in
the server's backlog, and which are told to come back later.

A server restart brings every client back at once. The server can start only so many
handshakes a second; an Initial that waits longer than its client's patience is wasted
work twice over (the client gives up and backs off, the server may still start the
handshake). So a server answers an Initial it cannot start soon with a cheap
CONNECTION_CLOSE (QUIC transport error CONNECTION_REFUSED, ``0x02``) whose reason says
when to come back: ``server busy, retry in <ms> ms`` (docs/wire-protocol.md §2). The times
it hands out are slots one session's cost apart, after the backlog it already holds, so
the clients it turns away come back at the pace it can serve them, like taking a number.

`HandshakeAdmission` holds no clock and does no I/O: the endpoint
(`quicflow.transport.server_endpoint.QuicFlowServer`) tells it what a handshake cost and
asks it, per Initial, whether to queue it or when to send it back.
"""

from __future__ import annotations

import re

__all__ = ["BUSY_REASON", "HandshakeAdmission", "busy_reason", "parse_busy"]

BUSY_REASON = "server busy, retry in {ms} ms"
"""The reason phrase of a busy answer (CONNECTION_CLOSE, transport error 0x02)."""
_BUSY = re.compile(r"server busy, retry in (\d{1,9}) ms")


def busy_reason(delay: float) -> str:
    """The reason phrase that asks a client to come back in ``delay`` seconds."""
    return BUSY_REASON.format(ms=max(0, round(delay * 1000)))


def parse_busy(reason: str) -> float | None:
    """The delay in seconds a busy answer asks for; None if ``reason`` is not one."""
    match = _BUSY.fullmatch(reason)
    return None if match is None else int(match[1]) / 1000


class HandshakeAdmission:
    """Queue an Initial, or hand its client a time to come back.

    Args:
        max_wait: seconds an Initial may be expected to wait in the backlog; one that
            would wait longer is turned away.
        max_delay: the latest a client is told to come back, seconds from now.
        initial_cost: seconds a handshake start is assumed to take until one is measured.

    The pace is measured, not configured: ``spacing`` is the mean time between two
    handshake starts while the backlog stayed non-empty in between (the server was
    starting handshakes as fast as it could, whatever else it did meanwhile: sessions'
    HELLO and WELCOME, established traffic, another process on the same core). Until
    there is such a measurement it is the CPU time one start took (``cost``), which is
    too fast a pace: a client back too early is only turned away again, cheaply, while a
    client told to come back too late leaves the server idle.

    A client's slot is ``max(next free slot, now + backlog * spacing)``, the next free
    slot moving one ``spacing`` later per client turned away, and never more than
    ``max_delay`` ahead. Nothing here grows: a flood of Initials only pushes the slots
    out, up to ``max_delay``.

    Example::

        admission = HandshakeAdmission(max_wait=1.0, initial_cost=0.002)
        admission.admit(now=10.0, waiting=100)   # None: 0.2 s of backlog, queue it
        admission.admit(now=10.0, waiting=600)   # 1.2: come back at 11.2
        admission.admit(now=10.0, waiting=600)   # 1.202: the next slot
    """

    __slots__ = ("_last", "_next", "_paced", "cost", "max_delay", "max_wait")

    def __init__(
        self, *, max_wait: float = 1.0, max_delay: float = 30.0, initial_cost: float = 0.002
    ) -> None:
        if max_wait <= 0 or max_delay < max_wait or initial_cost <= 0:
            raise ValueError("HandshakeAdmission: bad bounds")
        self.max_wait = max_wait
        self.max_delay = max_delay
        self.cost = initial_cost
        """CPU seconds one handshake start takes (a moving average, 1/8 to the newest)."""
        self._paced: float | None = None
        self._last: float | None = None
        self._next = 0.0

    @property
    def spacing(self) -> float:
        """Seconds between two handshake starts at the server's full pace."""
        return self._paced if self._paced is not None else self.cost

    def started(self, now: float, cost: float, more: bool) -> None:
        """A handshake started at ``now``, its start took ``cost`` CPU seconds, and
        ``more`` Initials still wait (the server is saturated until the next start)."""
        if cost > 0:
            self.cost += (cost - self.cost) / 8
        if self._last is not None:
            gap = max(0.0, now - self._last)
            paced = self._paced
            # Starts come in bursts of a loop pass (gaps of 0, then one long gap), so the
            # mean over many (1/32 to the newest) is the pace.
            self._paced = gap if paced is None else paced + (gap - paced) / 32
        self._last = now if more else None

    def admit(self, now: float, waiting: int) -> float | None:
        """None: queue the Initial (``waiting`` are queued before it). Otherwise the
        seconds after which its client should come back."""
        spacing = self.spacing
        drained = now + waiting * spacing
        if drained - now <= self.max_wait:
            return None
        slot = min(max(self._next, drained), now + self.max_delay)
        self._next = slot + spacing
        return slot - now
