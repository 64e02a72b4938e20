"""The stream side of the transport: what the runtime registers per stream
(`StreamHandler`), and a connection's registry of them with their waiters
(`StreamRegistry`)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from ..errors import ConnectionClosed, fresh

__all__ = ["StreamEngine", "StreamHandler", "StreamRegistry"]


class StreamHandler(Protocol):
    """What the runtime registers for one stream (a call)."""

    unread_bytes: int
    """Bytes received but not yet consumed by the application (for credit)."""

    def data_received(self, data: bytes, end_stream: bool) -> None:
        """Bytes (possibly empty) arrived in order; ``end_stream``: the peer sent FIN."""
        ...

    def stream_reset(self, error_code: int) -> None:
        """The peer reset its sending side (RESET_STREAM)."""
        ...

    def stop_sending(self, error_code: int) -> None:
        """The peer asked us to stop sending (STOP_SENDING); our side is reset."""
        ...

    def connection_lost(self, exc: ConnectionClosed) -> None:
        """The connection ended; the call must fail with ``exc``."""
        ...


class StreamEngine(Protocol):
    """What the registry reads of the engine's streams (`engine.EngineConnection`)."""

    def send_buffered(self, stream_id: int) -> int: ...

    def free_bidi_slots(self) -> int: ...


class StreamRegistry:
    """The streams of one connection, as the runtime registered them, and whatever
    waits on them.

    It holds each live stream's `StreamHandler` (the dict is the engine's own
    ``flow_handlers``, which aioquic's reads for receive credit), which of them are
    long-lived message lanes, which streams the peer opened, and four kinds of
    waiters, each woken by the protocol when what it waits for may have happened:

    - *drain*, per stream: its unacknowledged bytes fall under ``send_buffer_limit``;
    - *budget*, connection-wide: the bytes queued on all streams fall under
      ``connection_send_limit`` (an upper bound, made exact by a scan only when it
      passes the limit, so writes stay O(1));
    - *idle*: no call is left (message lanes do not count);
    - *credit*: the peer's MAX_STREAMS allows another bidirectional stream (woken
      one per free slot, oldest first).

    When the connection ends, `fail` fails every waiter at once.
    """

    __slots__ = (
        "_budget_waiter",
        "_credit_waiters",
        "_drain_waiters",
        "_engine",
        "_idle_waiters",
        "_loop",
        "_peer_next_bidi",
        "_peer_unseen",
        "_scan_at",
        "_sending",
        "closed",
        "handlers",
        "lanes",
        "send_buffer_limit",
        "send_limit",
        "unsent_bound",
    )

    def __init__(
        self,
        engine: StreamEngine,
        handlers: dict[int, StreamHandler],
        *,
        is_client: bool,
        send_buffer_limit: int,
        send_limit: int,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._engine = engine
        self.handlers = handlers
        """Stream id -> the runtime's handler, for every live stream (calls and lanes)."""
        self.lanes: set[int] = set()
        """The unidirectional streams among them: not calls, never "idle"."""
        self.send_buffer_limit = send_buffer_limit
        self.send_limit = send_limit
        self.closed: ConnectionClosed | None = None
        """Why the connection ended, once it has (`fail`)."""
        self._peer_next_bidi = 1 if is_client else 0
        self._peer_unseen: set[int] | None = None  # made when the peer skips an id
        self._drain_waiters: dict[int, asyncio.Future[None]] = {}
        self._budget_waiter: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._credit_waiters: deque[asyncio.Future[None]] | None = None  # made on demand
        self.unsent_bound = 0
        """An upper bound of the bytes queued on all streams (exact after a scan)."""
        self._sending: set[int] = set()
        self._scan_at = 64  # prune _sending when it grows past this (amortised O(1))

    # -- registration --

    @property
    def call_count(self) -> int:
        """Streams with a live handler besides message lanes (calls in flight)."""
        return len(self.handlers) - len(self.lanes)

    def add(self, stream_id: int, handler: StreamHandler, *, lane: bool = False) -> None:
        """Register ``handler`` for a stream (``lane``: a long-lived message lane)."""
        self.handlers[stream_id] = handler
        if lane:
            self.lanes.add(stream_id)

    def release(self, stream_id: int) -> None:
        """Forget a stream's handler; wakes its drain waiter (which then returns) and,
        once no call is left, idle waiters."""
        self.handlers.pop(stream_id, None)
        if self._drain_waiters:
            self.wake_drain(stream_id)
        lanes = self.lanes
        if lanes:
            lanes.discard(stream_id)
        if self._idle_waiters and len(self.handlers) <= len(lanes):
            self._wake_idle()

    def is_peer_call(self, stream_id: int) -> bool:
        """Whether ``stream_id`` is a bidirectional stream the peer opens (a call)."""
        return (stream_id & 3) == (self._peer_next_bidi & 3)

    def peer_stream_is_new(self, stream_id: int) -> bool:
        """Whether a peer-opened bidirectional stream is seen for the first time (then it
        is marked seen). QUIC opens every lower-numbered stream implicitly and packets
        reorder, so a stream below the highest seen is new if not seen yet; data that
        arrives late on a stream already released is not."""
        unseen = self._peer_unseen
        if stream_id < self._peer_next_bidi:
            if unseen is None or stream_id not in unseen:
                return False
            unseen.discard(stream_id)
        else:
            if stream_id > self._peer_next_bidi:
                if unseen is None:
                    unseen = self._peer_unseen = set()
                unseen.update(range(self._peer_next_bidi, stream_id, 4))
            self._peer_next_bidi = stream_id + 4
        return True

    # -- idle --

    async def wait_idle(self) -> None:
        """Wait until no call is left (returns at once if the connection has ended)."""
        if len(self.handlers) > len(self.lanes) and self.closed is None:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    # -- stream credit --

    async def wait_credit(self) -> None:
        """Wait until the peer may allow another bidirectional stream, or the connection
        ended (then raises `ConnectionClosed`)."""
        if self.closed is not None:
            raise fresh(self.closed)
        waiter: asyncio.Future[None] = self._loop.create_future()
        waiters = self._credit_waiters
        if waiters is None:
            waiters = self._credit_waiters = deque()
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Gave up (deadline, cancel): leave no dead waiter behind; pass on a slot
            # that may already have been handed to us.
            if waiter in waiters:
                waiters.remove(waiter)
            elif waiters and self._engine.free_bidi_slots() > 0:
                self.wake_credit()
            raise

    @property
    def credit_waiting(self) -> int:
        """Openers waiting for stream credit."""
        return len(self._credit_waiters) if self._credit_waiters is not None else 0

    def wake_credit(self) -> None:
        """Wake as many credit waiters as the peer now allows streams, oldest first
        (waking all of them for a handful of slots is quadratic with thousands)."""
        slots = self._engine.free_bidi_slots()
        waiters = self._credit_waiters
        while slots > 0 and waiters:  # (None: nobody ever waited)
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                slots -= 1

    # -- one stream's send buffer --

    async def drain(self, stream_id: int) -> None:
        """Wait until the stream's unacknowledged bytes are under ``send_buffer_limit``.

        Returns at once when already under, and when the stream is released. Raises
        `ConnectionClosed` if the connection ends meanwhile.
        """
        limit = self.send_buffer_limit
        send_buffered = self._engine.send_buffered
        while send_buffered(stream_id) > limit:
            if self.closed is not None:
                raise fresh(self.closed)
            if stream_id not in self.handlers:
                return
            waiter = self._drain_waiters.get(stream_id)
            if waiter is None:
                waiter = self._drain_waiters[stream_id] = self._loop.create_future()
            await waiter

    @property
    def drain_waiting(self) -> int:
        """Streams with a writer waiting for its send buffer to drain."""
        return len(self._drain_waiters)

    def wake_drain(self, stream_id: int) -> None:
        """Wake the stream's drain waiter (it re-checks; the stream may be gone)."""
        waiter = self._drain_waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- the connection's send budget --

    def wrote(self, stream_id: int, count: int) -> None:
        """``count`` bytes were queued on the stream."""
        self.unsent_bound += count
        sending = self._sending
        sending.add(stream_id)
        if len(sending) > self._scan_at:
            self._scan_sending()

    def _scan_sending(self) -> int:
        """Bytes queued on all streams now; forgets streams that hold none."""
        total = 0
        send_buffered = self._engine.send_buffered
        for sid in list(self._sending):
            queued = send_buffered(sid)
            if queued:
                total += queued
            else:
                self._sending.discard(sid)
        self.unsent_bound = total
        self._scan_at = max(64, 2 * len(self._sending))
        return total

    def budget_exceeded(self) -> bool:
        """Whether the bytes queued on all streams pass ``send_limit`` (cheap while well
        under it: no scan)."""
        limit = self.send_limit
        return self.unsent_bound > limit and self._scan_sending() > limit

    async def drain_connection(self) -> None:
        """Wait until the bytes queued on all streams are under ``send_limit``; raises
        `ConnectionClosed` if the connection ends meanwhile."""
        while self.budget_exceeded():
            if self.closed is not None:
                raise fresh(self.closed)
            waiter = self._budget_waiter
            if waiter is None or waiter.done():
                waiter = self._budget_waiter = self._loop.create_future()
            await waiter

    @property
    def budget_waiting(self) -> bool:
        """Whether a sender waits for the connection's send budget."""
        return self._budget_waiter is not None

    # -- after each datagram, and at the end --

    def progressed(self) -> None:
        """The peer's datagram was handled (acknowledgements, MAX_STREAMS may have come):
        wake the waiters whose condition may now hold."""
        if self._drain_waiters:
            limit = self.send_buffer_limit
            send_buffered = self._engine.send_buffered
            for stream_id in [s for s in self._drain_waiters if send_buffered(s) <= limit]:
                self.wake_drain(stream_id)
        budget = self._budget_waiter
        if budget is not None and not self.budget_exceeded():
            self._budget_waiter = None
            if not budget.done():
                budget.set_result(None)
        if self._credit_waiters and self._engine.free_bidi_slots() > 0:
            self.wake_credit()

    def engine_ended(self, engine: StreamEngine) -> None:
        """Ask ``engine`` from now on (the connection's ended engine: `EndedEngine`)."""
        self._engine = engine

    def fail(self, exc: ConnectionClosed) -> list[StreamHandler]:
        """The connection ended with ``exc``: forget every stream, wake idle waiters and
        fail every other waiter with ``exc``. Returns the handlers that were live (to
        tell them)."""
        self.closed = exc
        handlers = list(self.handlers.values())
        self.handlers.clear()
        self.lanes.clear()
        self._wake_idle()
        for waiter in self._drain_waiters.values():
            if not waiter.done():
                waiter.set_exception(fresh(exc))
        self._drain_waiters.clear()
        budget, self._budget_waiter = self._budget_waiter, None
        if budget is not None and not budget.done():
            budget.set_exception(fresh(exc))
        self._sending.clear()
        waiters, self._credit_waiters = self._credit_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_exception(fresh(exc))
        if waiters:
            waiters.clear()
        return handlers
