"""Heartbeat policy, sans-IO: when to ping, when a pong is late, when a session is dead.

Two pure objects, both driven by ``now`` (seconds on any monotonic clock).
Each exposes ``get_timer()``, the next time it wants ``poll(now)``; the
runtime arms one timer for it and calls ``poll`` when it fires (aioquic's
``get_timer``/``handle_timer`` pattern). Neither sends anything: they return
events named as facts and the runtime acts on them.

**Client side: `HeartbeatSender`** (docs/wire-protocol.md §9, PING/PONG).

- The first ping is due at ``connected_at + interval``; each later one is due
  ``interval`` after the previous ping was *sent* (not after its pong).
- ``poll(now)`` returns ``PingDue(sequence)`` once per ping. The runtime
  writes the PING and calls ``ping_sent(sequence, now)``. Sequences start at
  1 and increase by one.
- At most one ping is outstanding. If the next ping falls due before the
  pong arrives, it waits for the pong (or the timeout) and goes out as soon
  as the pong is in.
- ``get_timer()`` is right after every ``poll`` and every input (aioquic's
  contract: re-arm after both). While a pong is outstanding it is the next
  ping's due time while that is still ahead and earlier than the pong
  deadline, else the pong deadline. So a prompt pong never moves the timer
  earlier: a runtime that only re-arms after ``poll`` still pings exactly one
  interval after each ping (the server evicts after ``max_missed`` intervals
  without one, §9.3, so this matters whenever the interval is shorter than
  the pong timeout). Only a pong that comes after the next ping fell due
  moves the timer earlier (to that due time, now past), which is why the
  runtime re-arms after ``pong_received`` too.
- A pong that has not arrived ``timeout`` seconds after its ping was sent
  yields ``HeartbeatTimedOut(sequence, sent_at)`` exactly once. The sender is
  then dead: ``poll`` returns ``[]`` and ``get_timer()`` returns None. The
  runtime treats the connection as lost and reconnects.
- The interval the server announces in WELCOME replaces the local one
  (`HeartbeatSender.set_interval`); `negotiate_interval` is the rule the
  server applies to what the client asked for (shorter only).

**Server side: `HeartbeatMonitor`**, one per session. The exact rule:

- ``last_ping`` starts at the session's start and moves to the time of every
  ping received (`HeartbeatMonitor.ping_received`).
- A *miss* is one whole ``interval`` without a ping:
  ``missed(now) = floor((now - last_ping) / interval)`` (with a tiny epsilon,
  so that exactly ``15.0`` seconds count as one miss despite float error).
- Checks run every ``check_interval`` from the session's start. At a check,
  each miss counted since the last report yields ``HeartbeatMissed(count,
  last_ping)``. A ping resets the count to 0.
- The session is evicted **exactly** at ``last_ping + max_missed * interval``
  (``get_timer()`` returns that deadline when it comes before the next
  check), yielding ``SessionExpired(last_ping, missed)`` once; the monitor is
  then done. The fatal miss is reported by ``SessionExpired`` alone, not by a
  ``HeartbeatMissed`` of its own.

With the defaults (interval 15 s, checks every 5 s, 3 misses) a session is
evicted exactly 45 s after its last ping; misses 1 and 2 are reported at the
first checks at or after +15 s and +30 s. ``next_report_at()`` skips the checks
that cannot report anything (the server arms its timer there: one wake-up per
interval of a punctual client instead of three). (The Go original counted a miss per
5 s check and evicted after 25-30 s.)

**Client side: `QuietWatch`**, the nudge. A client waiting for an answer (a
call in flight, a pong outstanding) that has received no datagram from the
server for ``after`` seconds sends a QUIC PING. Only the client can heal a
NAT rebinding: until its next datagram arrives from the new address the
server keeps sending to the old one, and a client that only waits would
wait there for its next heartbeat (up to an interval). A server that is
merely slow answers the PING with an ACK but no data, so while no stream
data arrives the gaps double (``after``, twice that, four times, ... up to
``longest``): a long wait costs a few PINGs, not one per ``after``. The
exact rule:

- ``streak`` is the number of nudges sent since stream data last arrived
  (``last_data``); ``gap = min(after * 2**streak, longest)``.
- ``poll(now, last_heard, last_data, waiting)`` is True (send a PING now)
  when ``waiting`` and ``now >= max(last_heard, last_nudge) + gap``.
- ``next_check(last_heard, last_data)`` is that moment; the runtime polls
  then and only while it is waiting (a new call re-arms it, and counts the
  silence from that moment at the earliest).

Example::

    sender = HeartbeatSender(interval=15.0, timeout=5.0, now=0.0)
    sender.get_timer()                  # 15.0
    sender.poll(15.0)                   # [PingDue(sequence=1)]
    sender.ping_sent(1, 15.0)           # the PING is on the wire
    sender.pong_received(1, 15.02)      # sender.last_rtt ~= 0.02

    monitor = HeartbeatMonitor(interval=15.0, check_interval=5.0, max_missed=3, now=0.0)
    monitor.ping_received(7.0)
    monitor.get_timer()                 # 5.0: the first check (eviction is due at 52.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError
from .numbers import positive_seconds

__all__ = [
    "HeartbeatEvent",
    "HeartbeatMissed",
    "HeartbeatMonitor",
    "HeartbeatSender",
    "HeartbeatTimedOut",
    "PingDue",
    "QuietWatch",
    "SessionExpired",
    "negotiate_interval",
]

_EPSILON: Final = 1e-9
"""Relative slack for counting whole intervals, so 45.0 / 15.0 style ratios
that float arithmetic leaves just under an integer still count."""


@dataclass(frozen=True, slots=True)
class PingDue:
    """A ping should be sent now (client side)."""

    sequence: int
    """The sequence number to put in the PING; pass it back to ``ping_sent``."""


@dataclass(frozen=True, slots=True)
class HeartbeatTimedOut:
    """A ping's pong did not arrive within the timeout: the connection is dead."""

    sequence: int
    """The ping that went unanswered."""
    sent_at: float
    """When that ping was sent (seconds, the caller's clock)."""


@dataclass(frozen=True, slots=True)
class HeartbeatMissed:
    """A periodic check found one more whole interval without a ping (server side)."""

    count: int
    """Consecutive misses so far (1, 2, ...; always below ``max_missed``)."""
    last_ping: float
    """When the last ping arrived (or the session started)."""


@dataclass(frozen=True, slots=True)
class SessionExpired:
    """``max_missed`` intervals passed without a ping: evict the session."""

    last_ping: float
    """When the last ping arrived (or the session started)."""
    missed: int
    """Whole intervals missed at eviction (``max_missed`` when polled on time)."""


HeartbeatEvent = PingDue | HeartbeatTimedOut | HeartbeatMissed | SessionExpired


def _whole(elapsed: float, interval: float) -> int:
    """Whole ``interval``s in ``elapsed`` (never negative), tolerant of float error."""
    if elapsed <= 0:
        return 0
    return math.floor(elapsed / interval + _EPSILON)


def negotiate_interval(
    client_requested: float | None, server_interval: float, server_minimum: float
) -> float:
    """The heartbeat interval a server announces to one client (wire-protocol.md §9).

    The server's interval is the default and the ceiling: a client may ask for
    a *shorter* one (``heartbeat_interval_ms`` in HELLO) but never below
    ``server_minimum``, and never longer than ``server_interval`` (the
    server's eviction rule assumes at most that).

    Args:
        client_requested: the client's request in seconds; None or 0 means
            "the server's choice".
        server_interval: the server's configured interval (seconds, > 0).
        server_minimum: the shortest interval the server accepts (seconds, > 0,
            at most ``server_interval``).

    Returns:
        ``server_interval`` when nothing was requested, else the request
        clamped to ``[server_minimum, server_interval]``.

    Raises:
        ValueError: a server argument is not positive and finite, the minimum
            exceeds the interval, or the request is negative or not finite.
    """
    positive_seconds("server_interval", server_interval)
    positive_seconds("server_minimum", server_minimum)
    if server_minimum > server_interval:
        raise ValueError(
            f"server_minimum ({server_minimum!r}) must not exceed "
            f"server_interval ({server_interval!r})"
        )
    if client_requested is None or client_requested == 0:
        return float(server_interval)
    if not math.isfinite(client_requested) or client_requested < 0:
        raise ValueError(
            f"client_requested must be None, 0 or a positive finite number, "
            f"got {client_requested!r}"
        )
    return float(min(server_interval, max(server_minimum, client_requested)))


class HeartbeatSender:
    """When the client pings and when a missing pong means the connection is dead.

    See the module docstring for the exact schedule. Nothing here raises for
    the peer's input: an unknown or stale pong sequence is ignored.

    Example::

        sender = HeartbeatSender(interval=15.0, timeout=5.0, now=connected_at)
        for event in sender.poll(now):
            if isinstance(event, PingDue):
                write(control.send_ping(event.sequence))
                sender.ping_sent(event.sequence, now)
            elif isinstance(event, HeartbeatTimedOut):
                ...  # the connection is dead: reconnect
        rearm(sender.get_timer())
    """

    __slots__ = (
        "_anchor",
        "_announced",
        "_dead",
        "_interval",
        "_next_sequence",
        "_outstanding",
        "_polled",
        "_sent_at",
        "_timeout",
        "last_rtt",
    )

    def __init__(self, interval: float, timeout: float, now: float) -> None:
        """Start the schedule at ``now`` (the moment the connection is up).

        Raises:
            ValueError: ``interval`` or ``timeout`` is not a positive finite number.
        """
        self._interval = positive_seconds("interval", interval)
        self._timeout = positive_seconds("timeout", timeout)
        self._anchor = float(now)  # the last ping's send time, or the start
        self._next_sequence = 1
        self._announced: int | None = None  # PingDue returned, ping_sent not yet called
        self._outstanding: int | None = None  # sent (or announced), pong not yet received
        self._sent_at = 0.0
        self._polled = -math.inf  # the last time poll() ran
        self._dead = False
        self.last_rtt: float | None = None
        """Seconds between the last answered ping and its pong; None before the first."""

    @property
    def interval(self) -> float:
        """Seconds between pings (the server's, once `set_interval` was called)."""
        return self._interval

    @property
    def timeout(self) -> float:
        """Seconds a pong may take before the connection counts as dead."""
        return self._timeout

    @property
    def outstanding(self) -> int | None:
        """The sequence of the ping awaiting its pong, or None."""
        return self._outstanding

    @property
    def timed_out(self) -> bool:
        """True once `HeartbeatTimedOut` was reported; the sender is then inert."""
        return self._dead

    @property
    def next_ping_at(self) -> float:
        """When the next ping is due (it may have to wait for an outstanding pong)."""
        return self._anchor + self._interval

    def set_interval(self, interval: float) -> None:
        """Adopt the interval the server announced in WELCOME.

        The next ping becomes due ``interval`` after the last ping sent (or
        after the start, if none was sent yet). Idempotent.

        Raises:
            ValueError: ``interval`` is not a positive finite number.
        """
        self._interval = positive_seconds("interval", interval)

    def get_timer(self) -> float | None:
        """The next time `poll` has something to do, or None when dead.

        Re-arm after every `poll` and every `pong_received`. While a pong is
        outstanding this is the next ping's due time if `poll` has not yet
        passed it and it comes before the pong deadline, else the deadline:
        a pong that arrives in time finds the timer already set for the next
        ping (wire-protocol.md §9.3: one interval after each PING).
        """
        if self._dead:
            return None
        due = self._anchor + self._interval
        if self._outstanding is None:
            return due
        deadline = self._sent_at + self._timeout
        if self._polled < due < deadline:
            # The pong will most likely be back by then: wake for the ping.
            return due
        return deadline

    def poll(self, now: float) -> list[HeartbeatEvent]:
        """Return what is due at ``now``: a `PingDue`, a `HeartbeatTimedOut`, or nothing.

        A `PingDue` is returned once per sequence. Until ``ping_sent`` is
        called for it, the pong deadline runs from the time it was announced,
        so a runtime that never sends still learns that the link is dead.
        """
        if self._dead:
            return []
        self._polled = max(self._polled, float(now))
        if self._outstanding is not None:
            if now >= self._sent_at + self._timeout:
                self._dead = True
                return [HeartbeatTimedOut(self._outstanding, self._sent_at)]
            return []
        if now >= self._anchor + self._interval:
            sequence = self._next_sequence
            self._next_sequence += 1
            self._announced = self._outstanding = sequence
            self._sent_at = float(now)
            return [PingDue(sequence)]
        return []

    def ping_sent(self, sequence: int, now: float) -> None:
        """Record that the PING announced by ``PingDue(sequence)`` was written at ``now``.

        The pong deadline becomes ``now + timeout`` and the next ping is due
        at ``now + interval``.

        Raises:
            LocalProtocolError: ``sequence`` is not the ping last announced, or
                it was already recorded as sent.
        """
        if self._announced is None or sequence != self._announced:
            state = "no ping due" if self._announced is None else f"ping {self._announced} due"
            raise LocalProtocolError(f"cannot send ping {sequence} with {state}")
        self._announced = None
        self._sent_at = max(self._sent_at, float(now))
        self._anchor = self._sent_at

    def pong_received(self, sequence: int, now: float) -> None:
        """Record the pong for ``sequence`` at ``now``: sets `last_rtt`, clears the ping.

        A pong for any other sequence (stale, duplicated or made up) is
        ignored, as is anything after the sender timed out.
        """
        if self._dead or sequence != self._outstanding:
            return
        if self._announced is not None:
            # The pong beat our own ping_sent call: the ping was evidently sent.
            self._announced = None
            self._anchor = self._sent_at
        self.last_rtt = max(0.0, now - self._sent_at)
        self._outstanding = None


class QuietWatch:
    """When a client that waits for its server should speak up (a QUIC PING).

    See the module docstring for the rule. With ``after=1.0`` and
    ``longest=15.0``, a call whose server fell silent at 0.0 gets nudges at
    1, 3, 7, 15, 30, 45, ... s; a datagram arriving at 1.5 (the ACK of the
    first nudge) moves the next one to 3.5; stream data arriving starts the
    series again at 1 s.

    Example::

        watch = QuietWatch(after=1.0, longest=15.0)
        if watch.poll(now, last_heard, last_data, waiting=calls_in_flight > 0):
            quic.send_ping(0)
        rearm(watch.next_check(last_heard, last_data))
    """

    __slots__ = ("_after", "_last_nudge", "_longest", "_streak")

    def __init__(self, after: float, longest: float | None = None) -> None:
        """Raises ValueError if ``after`` or ``longest`` is not a positive finite number
        or ``longest`` is shorter than ``after``."""
        self._after = positive_seconds("after", after)
        self._longest = self._after if longest is None else positive_seconds("longest", longest)
        if self._longest < self._after:
            raise ValueError(f"longest ({longest!r}) must not be shorter than after ({after!r})")
        self._last_nudge = -math.inf
        self._streak = 0  # nudges since stream data last arrived

    @property
    def after(self) -> float:
        """Seconds of silence before the first nudge."""
        return self._after

    def _streak_at(self, last_data: float) -> int:
        return 0 if last_data > self._last_nudge else self._streak

    def next_check(self, last_heard: float, last_data: float) -> float:
        """When the next nudge falls due if the silence since ``last_heard`` lasts
        (``last_data``: the last datagram that carried stream data)."""
        gap = min(math.ldexp(self._after, self._streak_at(last_data)), self._longest)
        return max(last_heard, self._last_nudge) + gap

    def poll(self, now: float, last_heard: float, last_data: float, waiting: bool) -> bool:
        """True if a nudge should be sent at ``now`` (it is then counted as sent)."""
        if waiting and now + _EPSILON * max(1.0, abs(now)) >= self.next_check(
            last_heard, last_data
        ):
            self._streak = min(self._streak_at(last_data) + 1, 64)  # 2**64 * after > longest
            self._last_nudge = float(now)
            return True
        return False


class HeartbeatMonitor:
    """When a session has missed heartbeats and when it is evicted (server side).

    See the module docstring for the exact rule. With ``interval=15``,
    ``check_interval=5`` and ``max_missed=3`` the session is evicted exactly
    45 s after its last ping.

    Example::

        monitor = HeartbeatMonitor(15.0, 5.0, 3, now=session_start)
        # on every PING:
        monitor.ping_received(now)
        # when the timer fires:
        for event in monitor.poll(now):
            if isinstance(event, SessionExpired):
                ...  # close the connection, drop the session
        rearm(monitor.get_timer())
    """

    __slots__ = (
        "_check_index",
        "_check_interval",
        "_done",
        "_interval",
        "_max_missed",
        "_reported",
        "_start",
        "last_ping",
    )

    def __init__(self, interval: float, check_interval: float, max_missed: int, now: float) -> None:
        """Start watching a session that began at ``now``.

        Raises:
            ValueError: ``interval`` or ``check_interval`` is not a positive
                finite number, or ``max_missed`` is not an int of at least 1.
        """
        self._interval = positive_seconds("interval", interval)
        self._check_interval = positive_seconds("check_interval", check_interval)
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 1:
            raise ValueError(f"max_missed must be an int of at least 1, got {max_missed!r}")
        self._max_missed = max_missed
        self._start = float(now)
        self._check_index = 1  # the next check is at start + index * check_interval
        self._reported = 0
        self._done = False
        self.last_ping: float = float(now)
        """When the last ping arrived; the session's start before the first."""

    @property
    def missed_count(self) -> int:
        """Consecutive misses reported so far (0 after a ping)."""
        return self._reported

    @property
    def expired(self) -> bool:
        """True once `SessionExpired` was reported; the monitor is then inert."""
        return self._done

    @property
    def expires_at(self) -> float:
        """When the session will be evicted unless a ping arrives first."""
        return self.last_ping + self._max_missed * self._interval

    @property
    def next_check_at(self) -> float:
        """The next periodic check."""
        return self._start + self._check_index * self._check_interval

    def missed(self, now: float) -> int:
        """Whole intervals without a ping at ``now`` (not limited to checks)."""
        return _whole(now - self.last_ping, self._interval)

    def ping_received(self, now: float) -> None:
        """Record a ping at ``now``: the miss count returns to 0. Ignored once expired."""
        if self._done:
            return
        self.last_ping = max(self.last_ping, float(now))
        self._reported = 0

    def get_timer(self) -> float | None:
        """The next check or the eviction deadline, whichever is first; None once expired."""
        if self._done:
            return None
        return min(self.next_check_at, self.expires_at)

    def next_report_at(self) -> float | None:
        """The first check at which `poll` can report something (the next miss, counted
        ``interval`` after the last ping or the last miss), or the eviction deadline,
        whichever is first; None once expired.

        A runtime that only acts on what `poll` reports arms its timer here rather than at
        `get_timer`: the checks in between would report nothing, so it polls once per
        interval of a session that pings on time instead of once per check, and every
        event still comes at the check (or deadline) `get_timer` would have polled it at.
        """
        if self._done:
            return None
        due = self.last_ping + (self._reported + 1) * self._interval
        index = max(
            self._check_index,
            math.ceil((due - self._start) / self._check_interval - _EPSILON),
        )
        return min(self._start + index * self._check_interval, self.expires_at)

    def poll(self, now: float) -> list[HeartbeatEvent]:
        """Run the check (and the eviction) due at ``now``.

        Returns `HeartbeatMissed` for each miss counted since the last report
        (only at a check, or when eviction is due), then `SessionExpired` if
        ``now`` is at or past the deadline. Calling it early is harmless.
        """
        if self._done:
            return []
        events: list[HeartbeatEvent] = []
        expired = now >= self.expires_at
        at_check = now >= self.next_check_at
        if at_check or expired:
            count = min(self.missed(now), self._max_missed - 1)
            while self._reported < count:
                self._reported += 1
                events.append(HeartbeatMissed(self._reported, self.last_ping))
        if at_check:
            # Next check strictly after now; computed by index, so no drift accumulates.
            passed = _whole(now - self._start, self._check_interval)
            self._check_index = max(self._check_index, passed) + 1
        if expired:
            self._done = True
            missed = max(self.missed(now), self._max_missed)
            events.append(SessionExpired(self.last_ping, missed))
        return events
