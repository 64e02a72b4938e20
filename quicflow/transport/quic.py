"""The protocol adapter: one QUIC connection carrying QuicFlow streams
(`QuicFlowProtocol`).

It runs aioquic's `QuicConnectionProtocol` loop itself (feed a datagram, drain
the events, transmit, re-arm one timer) over an `engine.EngineConnection`, so
it depends on no private state of aioquic's asyncio layer, and either engine
fits without a cast. See the package docstring for the theory of operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import QuicErrorCode, QuicFrameType

from ..clock import LoopClock
from ..errors import ConnectionClosed, fresh
from ..protocol.budget import ByteBudget
from ..wire.codec import ErrorCode
from .engine import EndedEngine, EngineConnection, release_engine
from .inflow import FrameWatch
from .listener import ConnectionListener, Unattached
from .nudge import Nudge
from .settings import TransportSettings
from .streams import StreamHandler, StreamRegistry
from .tls import VerifiedClientCertificate

__all__ = ["FLUSH_STREAMS", "ConnectionRouter", "QuicFlowProtocol"]

logger = logging.getLogger("quicflow.transport")

FLUSH_STREAMS = 2
"""A write that ends a stream is sent at once (not at the next loop turn) while the
connection has at most this many live streams: the control stream and one call.
Nothing else is likely to share its datagram, and the loop turn is latency."""


class ConnectionRouter(Protocol):
    """The server endpoint a connection reports to: the connection ids it issues and
    retires (`server_endpoint.QuicFlowServer` routes datagrams by them), its
    handshake's end, and its own."""

    def connection_id_issued(self, protocol: QuicFlowProtocol, cid: bytes) -> None: ...

    def connection_id_retired(self, protocol: QuicFlowProtocol, cid: bytes) -> None: ...

    def handshake_completed(self, protocol: QuicFlowProtocol) -> None: ...

    def connection_closed(self, protocol: QuicFlowProtocol) -> None:
        """The connection is over for its streams (closed either way, or aborted); its
        ids still route until `connection_ended`."""
        ...

    def connection_ended(self, protocol: QuicFlowProtocol) -> None:
        """The engine reported the end (after the draining period): forget the ids."""
        ...


_STREAM_EVENTS = (events.StreamDataReceived, events.StreamReset, events.StopSendingReceived)


class QuicFlowProtocol(asyncio.DatagramProtocol):
    """One QUIC connection carrying QuicFlow streams.

    The runtime opens streams with `open_stream`, writes with `write`, and
    receives through the `StreamHandler` it registered. Peer-opened streams are
    offered to the `ConnectionListener` the runtime attached, which returns a
    handler or None to refuse.
    Methods that only queue output schedule one transmit for the end of the
    current loop iteration, so many streams' frames share datagrams.
    """

    # Slots: one per connection, so its attributes cost 8 bytes each rather than a dict's
    # entries (docs/scale.md "Memory per session"). ``__dict__`` stays for the rare
    # attribute set from outside (tests, benchmarks, the client subclass); it is only
    # made when one is.
    __slots__ = (
        "__dict__",
        "__weakref__",
        "_connected",
        "_connected_waiter",
        "_delivered",
        "_early",
        "_ended",
        "_ended_waiter",
        "_engine_time",
        "_handlers",
        "_loop",
        "_more",
        "_nudge",
        "_on_handshake",
        "_quic",
        "_receiving",
        "_router",
        "_timer",
        "_timer_at",
        "_transmit_task",
        "_transport",
        "_watches",
        "_wrote",
        "cids",
        "close_code",
        "close_reason",
        "closed_error",
        "connect_started",
        "last_data",
        "last_heard",
        "listener",
        "owns_transport",
        "receive_budget",
        "settings",
        "streams",
    )

    def __init__(
        self,
        quic: EngineConnection,
        *,
        settings: TransportSettings,
        router: ConnectionRouter | None = None,
        on_handshake: Callable[[QuicFlowProtocol], None] | None = None,
    ) -> None:
        """``router``: the server endpoint this connection reports to (None: a client's).
        ``on_handshake``: called once as the handshake completes, before the datagram
        that completes it is answered, so what it writes leaves with the client's
        Finished (HELLO does)."""
        self._loop = asyncio.get_running_loop()
        self._quic = quic
        self._router = router
        self._transport: asyncio.DatagramTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._engine_time = 0.0
        """The latest time handed to the engine (`_engine_now`). A timer is handled at the
        time it asked for, which on uvloop can be up to 0.5 ms ahead of the loop's clock;
        nothing handed to the engine after it may go back before it (qh3 fails the
        connection with InvalidTime when time goes backwards)."""
        self._transmit_task: asyncio.Handle | None = None
        self._connected = False
        self.connect_started = False
        """Whether `connect` started the handshake (a client's)."""
        self._connected_waiter: asyncio.Future[None] | None = None
        self._early: list[events.QuicEvent] | None = [] if router is not None else None
        """A server's stream events that came before the handshake completed (0-RTT),
        held until it does (docs/security.md, "Session resumption and 0-RTT")."""
        self._on_handshake = on_handshake
        self._ended = False  # the connection ended (`wait_closed` returns at once)
        self._ended_waiter: asyncio.Future[None] | None = None
        """What `wait_closed` waits on: made on demand (an `asyncio.Event` each cost ~0.8 KiB
        per connection, docs/scale.md "Memory per session")."""
        self.settings = settings
        self.streams = StreamRegistry(
            quic,
            quic.flow_handlers,
            is_client=quic.configuration.is_client,
            send_buffer_limit=settings.send_buffer_limit,
            send_limit=settings.connection_send_limit,
        )
        """Each live stream's handler, and what waits on the streams."""
        self._handlers = self.streams.handlers
        self._receiving = False
        self._wrote = False  # stream data queued since the last transmit
        self._delivered = False  # the datagram being handled gave a handler data
        self.owns_transport = quic.configuration.is_client
        """A client connection has its own UDP socket, closed when the connection ends."""
        self.listener: ConnectionListener = Unattached()
        """Hears of the peer's new streams, premature resets, nudges and the end
        (`attach`)."""
        self.closed_error: ConnectionClosed | None = None
        self.close_code: int | None = None
        """The CONNECTION_CLOSE error code once the connection ended."""
        self.close_reason = ""
        self.cids: set[bytes] = set()
        """Connection ids routed to us by `QuicFlowServer` (so removal is O(own ids))."""
        self.last_heard = self.last_data = self._loop.time()
        """Loop time of the last datagram received from the peer (``last_data``: the last
        one that carried stream data to a handler)."""
        self._nudge: Nudge | None = None  # the client's (watch_quiet)
        self.receive_budget = ByteBudget(settings.connection_receive_limit)
        """Bytes of large unfinished frames this connection may hold (`watch_frames`); a
        server makes its own budget the parent."""
        self._watches: dict[int, FrameWatch] = {}
        self._more: list[tuple[bytes, NetworkAddress]] | None = None
        """The rest of a run of datagrams (`datagrams_received`) while the first is handled."""

    def attach(self, listener: ConnectionListener) -> None:
        """Report the peer's streams, premature resets, nudges and the connection's end
        to ``listener`` from now on (until then they are refused or ignored)."""
        self.listener = listener

    # -- introspection --

    @property
    def is_closed(self) -> bool:
        """True once the connection has terminated."""
        return self.closed_error is not None

    @property
    def stream_count(self) -> int:
        """Streams with a live handler (calls in flight; message lanes not counted)."""
        return self.streams.call_count

    @property
    def quic_stream_count(self) -> int:
        """Streams aioquic still holds state for (freed once both sides finish)."""
        return self._quic.stream_state_count()

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The peer's current (host, port)."""
        addr = self._quic.get_peer_address()
        if addr is None:
            return None
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return host, int(addr[1])

    @property
    def rtt(self) -> float | None:
        """QUIC's smoothed round-trip time in seconds, once measured."""
        return self._quic.smoothed_rtt()

    @property
    def client_certificate(self) -> VerifiedClientCertificate | None:
        """On the server: the client certificate verified during the handshake (mutual TLS)."""
        return self._quic.client_certificate

    def peer_certificate_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), if it presented one."""
        return self._quic.peer_certificate_der()

    # -- streams --

    def open_stream(self, handler: StreamHandler) -> int:
        """Allocate a new bidirectional stream for a call and register its handler.

        No bytes move until the first `write`. Beyond the peer's stream credit
        the stream simply waits in aioquic until MAX_STREAMS arrives.
        """
        if self.closed_error is not None:
            raise fresh(self.closed_error)
        stream_id = self._quic.reserve_stream()
        self._handlers[stream_id] = handler  # streams.add, inlined (a call, not a lane)
        if self._nudge is not None:
            self._nudge.expect_answer()
        return stream_id

    def open_uni_stream(self, handler: StreamHandler) -> int:
        """Allocate a unidirectional stream for the connection's life (a message lane).

        ``handler`` hears of the peer's STOP_SENDING and of the connection's end;
        the stream does not count as a call (`stream_count`, `wait_idle`).
        """
        if self.closed_error is not None:
            raise fresh(self.closed_error)
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self.streams.add(stream_id, handler, lane=True)
        return stream_id

    def can_open_stream(self) -> bool:
        """True if the peer's stream credit allows one more bidirectional stream now."""
        return self._quic.free_bidi_slots() > 0

    def wait_stream_credit(self) -> Coroutine[Any, Any, None]:
        """Wait until `can_open_stream` may have become true (MAX_STREAMS arrived), or the
        connection ended (then raises `ConnectionClosed`). (The registry's own coroutine:
        no wrapper coroutine per wait.)"""
        return self.streams.wait_credit()

    def write(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue bytes on a stream; False if that side is already closed or reset."""
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError, AssertionError):
            return False
        self.streams.wrote(stream_id, len(data))
        self._wrote = True
        if end_stream and not self._receiving and self._few_streams():
            pending = self._transmit_task
            if pending is not None:
                pending.cancel()
            self.transmit()
        else:
            self._transmit_soon()
        return True

    # -- the client's nudge --

    def watch_quiet(self, after: float, longest: float, waiting: Callable[[], bool]) -> None:
        """Send a QUIC PING whenever ``waiting()`` holds and the peer has been silent
        for ``after`` seconds, backing off to ``longest`` while no data comes (`Nudge`);
        the client turns this on. Checks run while something is awaited: `open_stream`
        and `expect_answer` start them."""
        self._nudge = Nudge(
            LoopClock(self._loop),
            self,
            after=after,
            longest=longest,
            waiting=waiting,
            ping=self._ping_quiet_peer,
        )
        self.expect_answer()

    def expect_answer(self) -> None:
        """Something now awaits the peer (a call, a ping sent): make sure the nudge is
        armed."""
        if self._nudge is not None and self.closed_error is None:
            self._nudge.expect_answer()

    def _ping_quiet_peer(self) -> None:
        self._quic.send_ping(0)
        self.transmit()
        self.listener.nudged()

    def _few_streams(self) -> bool:
        """At most `FLUSH_STREAMS` live streams besides message lanes (the control
        stream and one call): nothing else is likely to share a datagram."""
        streams = self.streams
        return len(streams.handlers) - len(streams.lanes) <= FLUSH_STREAMS

    def send_budget_exceeded(self) -> bool:
        """Whether the bytes queued towards the peer on all streams pass
        ``connection_send_limit`` (cheap while well under it: no scan)."""
        streams = self.streams
        # Checked once per reply: well under the limit, answer without a call.
        return streams.unsent_bound > streams.send_limit and streams.budget_exceeded()

    async def drain_connection(self) -> None:
        """Wait until the bytes queued on all streams are under ``connection_send_limit``.

        Bounds what a peer that never reads can make this side hold: a sender
        calls it before writing a whole reply. Raises `ConnectionClosed` if the
        connection ends meanwhile.
        """
        await self.streams.drain_connection()

    def reset(self, stream_id: int, error_code: int, *, stop: bool = True) -> None:
        """Abort a stream: RESET_STREAM our side and, with ``stop``, STOP_SENDING the peer's.

        Idempotent. Also forgets the stream's handler.
        """
        self.release(stream_id)
        quic = self._quic
        with contextlib.suppress(RuntimeError, ValueError, AssertionError):
            quic.reset_stream(stream_id, error_code)
        if stop and self._quic.receive_finished(stream_id) is not True:
            with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                quic.stop_stream(stream_id, error_code)
        self.streams.wake_drain(stream_id)
        self._transmit_soon()

    def stop_reading(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        """Tell the peer we will read no more from this stream (STOP_SENDING)."""
        if self._quic.receive_finished(stream_id) is not True:
            with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                self._quic.stop_stream(stream_id, error_code)
            self._transmit_soon()

    def watch_frames(self, stream_id: int, on_timeout: Callable[[], None]) -> FrameWatch:
        """The `FrameWatch` of an incoming stream whose frames arrive in pieces: frames
        over half the stream window reserve their size from `receive_budget` before they
        get credit beyond it, and ``on_timeout`` runs when one stays unfinished for
        ``frame_timeout``. Closed by `release` (and when the connection ends)."""
        watch = self._watches.get(stream_id)
        if watch is None:
            settings = self.settings
            watch = self._watches[stream_id] = FrameWatch(
                self._loop,
                self.receive_budget,
                threshold=settings.stream_receive_window >> 1,
                timeout=settings.frame_timeout,
                on_timeout=on_timeout,
                withhold=lambda n: self._withhold(stream_id, n),
            )
        return watch

    def _withhold(self, stream_id: int, count: int) -> None:
        withheld = self._quic.flow_withheld
        if count:
            withheld[stream_id] = count
        elif (
            withheld.pop(stream_id, None) is not None
            and not self._receiving
            and self._quic.credit_due(stream_id, self.settings.stream_receive_window >> 2)
        ):
            # A reservation came through (another stream's frame ended): the credit the
            # frame was waiting for goes out now, not with the next unrelated packet.
            self._transmit_soon()

    def release(self, stream_id: int) -> None:
        """Forget a stream's handler once its call is over (frees our per-stream state)."""
        self.streams.release(stream_id)
        if self._watches:
            watch = self._watches.pop(stream_id, None)
            if watch is not None:
                watch.close()

    async def wait_idle(self) -> None:
        """Wait until no stream has a live handler (every call has ended)."""
        await self.streams.wait_idle()

    def credit_released(self, stream_id: int) -> None:
        """The runtime consumed data on this stream: send MAX_STREAM_DATA if worthwhile."""
        if self._quic.credit_due(stream_id):
            self._transmit_soon()

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written on a stream that the peer has not acknowledged yet."""
        return self._quic.send_buffered(stream_id)

    async def drain(self, stream_id: int) -> None:
        """Wait until the stream's unacknowledged bytes are under ``send_buffer_limit``.

        Returns at once when already under. Raises `ConnectionClosed` if the
        connection ends meanwhile; returns if the stream is reset.
        """
        await self.streams.drain(stream_id)

    # -- the loop: feed a datagram, drain events, transmit, re-arm the timer --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def connect(self, addr: NetworkAddress) -> None:
        """Start the TLS handshake towards ``addr`` (a client, once)."""
        self.connect_started = True
        self._quic.connect(addr, now=self._engine_now())
        self.transmit()

    @property
    def handshake_done(self) -> bool:
        """Whether the handshake has completed."""
        return self._connected

    async def wait_connected(self) -> None:
        """Wait for the handshake to complete (`ConnectionError` if the connection ends)."""
        if not self._connected:
            if self._connected_waiter is None:
                self._connected_waiter = self._loop.create_future()
            await asyncio.shield(self._connected_waiter)

    async def wait_closed(self) -> None:
        """Wait until the connection has ended."""
        if self._ended:
            return
        if self._ended_waiter is None:
            self._ended_waiter = self._loop.create_future()
        await asyncio.shield(self._ended_waiter)

    def _set_ended(self) -> None:
        """The connection ended: wake `wait_closed`."""
        self._ended = True
        waiter, self._ended_waiter = self._ended_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail_connect_waiter(self) -> None:
        """The connection ended before its handshake completed: `wait_connected` fails."""
        waiter, self._connected_waiter = self._connected_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionError)
            waiter.exception()  # read: an attempt that timed out awaits it no more

    def _engine_now(self) -> float:
        """The loop's time, or the latest time the engine was given if that is later."""
        now = self._loop.time()
        if now < self._engine_time:
            return self._engine_time
        self._engine_time = now
        return now

    def _handle_timer(self) -> None:
        # uvloop runs a timer up to 0.5 ms early (its clock counts whole milliseconds):
        # the engine hears the time it asked for, and so do the transmits that follow.
        # Sent at the loop's (earlier) time, an ACK or a paced packet due at the timer's
        # time was not due yet, the engine asked for the same time again, and the timer
        # fired again every loop pass until the clock caught up (qh3: ~6 fires per
        # broadcast push instead of ~1).
        self._engine_time = now = max(self._timer_at or 0.0, self._engine_now())
        self._timer = None
        self._timer_at = None
        self._quic.handle_timer(now=now)
        self._process_events()
        self.transmit()

    def _process_events(self) -> None:
        quic = self._quic
        router = self._router
        event = quic.next_event()
        while event is not None:
            early = self._early
            if early is not None and type(event) in _STREAM_EVENTS:
                # 0-RTT data: a replayed first flight can never complete the handshake,
                # so what it carries is acted upon only once the handshake completes.
                early.append(event)
                event = quic.next_event()
                continue
            if isinstance(event, events.ConnectionIdIssued):
                if router is not None:
                    router.connection_id_issued(self, event.connection_id)
            elif isinstance(event, events.ConnectionIdRetired):
                if router is not None:
                    router.connection_id_retired(self, event.connection_id)
            elif isinstance(event, events.ConnectionTerminated):
                if router is not None:
                    router.connection_ended(self)
                self._fail_connect_waiter()
                self._set_ended()
            elif isinstance(event, events.HandshakeCompleted):
                if router is not None:
                    router.handshake_completed(self)
                self._connected = True
                first_flight, self._on_handshake = self._on_handshake, None
                if first_flight is not None:
                    first_flight(self)
                waiter, self._connected_waiter = self._connected_waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if early is not None:
                    self._early = None
                    self.quic_event_received(event)
                    for held in early:
                        self.quic_event_received(held)
                    event = quic.next_event()
                    continue
            self.quic_event_received(event)
            event = quic.next_event()
        if self._ended:
            self._release()

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        # aioquic transmits right after processing a datagram, so writes made by
        # stream handlers meanwhile need no transmit of their own.
        quic = self._quic
        active = self._quic.active_path()
        self._receiving = True
        self._delivered = False
        self.last_heard = now = self._engine_now()
        try:
            quic.receive_datagram(cast(bytes, data), addr, now=now)
            self._process_events()
            self.receive_more(now)
        finally:
            self._receiving = False
        if self._delivered:
            self.last_data = now
        if active is not None and self._quic.active_path() is not active:
            self._path_changed()
        if self._wrote or not self._delivered or not self._few_streams():
            # With many calls in flight, datagrams arrive back to back and each
            # deferred transmit would add a loop turn to every ACK and credit update:
            # on qh3 that doubled CPU per call at c=128 (9,555 vs 16,987 calls/s).
            self.transmit()
        elif self._transmit_task is None:
            # Data reached a handler that wrote nothing back yet: its answer (the next
            # request, the reply of a task) comes at the next loop turn, and one
            # transmit then carries it with whatever ACK is due now.
            self._transmit_task = self._loop.call_soon(self.transmit)
        close_event = self._quic.close_event()
        if close_event is not None and self.closed_error is None:
            # The peer closed: aioquic reports it only after its draining period
            # (3 PTO), but every call on this connection is over now.
            self._terminated(close_event)
        self.streams.progressed()

    def datagrams_received(self, datagrams: list[tuple[bytes, NetworkAddress]]) -> None:
        """Several datagrams at once (a server's endpoint read them back to back): each is
        handled as `datagram_received` does, with one transmit after the last."""
        self._more = datagrams[1:]
        try:
            self.datagram_received(*datagrams[0])
        finally:
            self._more = None

    def receive_more(self, now: float) -> None:
        """Feed the engine more datagrams already waiting, before the one transmit that
        answers them all (a server's: those `datagrams_received` was given; a client reads
        its own socket: `client_connect`)."""
        more, self._more = self._more, None
        if not more:
            return
        quic = self._quic
        for data, addr in more:
            if self.closed_error is not None:
                return
            quic.receive_datagram(data, addr, now=now)
            self._process_events()

    def _path_changed(self) -> None:
        # The peer moved (a NAT rebinding) or we fell back to an older path. aioquic
        # keeps the probe-timeout backoff earned on the old path: after seconds of
        # sending into an address that is gone it is seconds long, so anything lost
        # on the new path (the path challenge, the first answers) waited for that
        # backed-off probe, 10 s and more. A new path starts with a fresh backoff.
        self._quic.reset_probe_backoff()

    def transmit(self) -> None:
        """Send what the engine has queued and re-arm its timer; data written since the
        last transmit carries any pending ACK (`AioquicFlowConnection.ack_with_data`)."""
        self._transmit_task = None
        quic = self._quic
        now = self._engine_now()  # not before a timer the engine handled (_handle_timer)
        if self._wrote:
            self._wrote = False
            quic.ack_with_data(now)
        transport = self._transport
        if transport is not None:
            for data, addr in quic.datagrams_to_send(now=now):
                transport.sendto(data, addr)
        timer_at = quic.get_timer()
        if self._timer is not None and self._timer_at != timer_at:
            self._timer.cancel()
            self._timer = None
        if self._timer is None and timer_at is not None:
            self._timer = self._loop.call_at(timer_at, self._handle_timer)
        self._timer_at = timer_at

    def _transmit_soon(self) -> None:
        if not self._receiving and self._transmit_task is None:
            self._transmit_task = self._loop.call_soon(self.transmit)

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason_phrase: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with an application error code)."""
        self._close_now(error_code=error_code, reason_phrase=reason_phrase)

    def refuse(self, reason: str) -> None:
        """Refuse a connection still in its handshake: CONNECTION_CLOSE with QUIC's own
        CONNECTION_REFUSED (0x02). A transport error, unlike our application codes, keeps
        its reason phrase in Initial packets (RFC 9000 §10.2.3), so the client sees why."""
        self._close_now(
            error_code=QuicErrorCode.CONNECTION_REFUSED,
            frame_type=QuicFrameType.PADDING,
            reason_phrase=reason,
        )

    def _close_now(self, **close: Any) -> None:
        """Send CONNECTION_CLOSE (``close``: `QuicConnection.close`'s arguments) and end
        the calls still open now, not after the draining period."""
        if self._transport is None or self._transport.is_closing():
            return
        self._quic.close(**close)
        self.transmit()
        close_event = self._quic.close_event()
        if close_event is not None and self.closed_error is None:
            self._terminated(close_event)

    def abort(self, reason: str) -> None:
        """Give up on the connection now: fail every stream with UNAVAILABLE at once.

        For a peer we believe dead (no heartbeat answer): we still queue a
        CONNECTION_CLOSE, but do not wait for the peer's acknowledgement.
        """
        if self.closed_error is not None:
            return
        with contextlib.suppress(Exception):
            self._quic.close(error_code=ErrorCode.NO_ERROR, reason_phrase=reason)
            self.transmit()
        self._end_now(reason)

    def reset_by_peer(self) -> None:
        """The peer answered with a stateless reset (RFC 9000 §10.3): it holds no state
        for this connection (it restarted). End it now, like `abort`, but send nothing
        (the peer would only answer a CONNECTION_CLOSE with another reset)."""
        if self.closed_error is not None:
            return
        self._end_now("stateless reset")

    def _end_now(self, reason: str) -> None:
        """End the connection here and now (`abort`, `reset_by_peer`): its streams fail,
        its timer stops, `wait_closed` returns, and the engine is released."""
        self._terminated(
            events.ConnectionTerminated(
                error_code=ErrorCode.NO_ERROR, frame_type=None, reason_phrase=reason
            )
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._set_ended()
        self._release()

    def discard(self, reason: str) -> None:
        """Drop a connection for good, now (a failed connect attempt): `abort`, then cancel
        the timer and transmit still armed (they would fire into the closed socket) and
        close the socket if this connection owns it."""
        self.abort(reason)
        for handle in (self._timer, self._transmit_task):
            if handle is not None:
                handle.cancel()
        self._timer = None
        self._transmit_task = None
        if self.owns_transport and self._transport is not None:
            self._transport.close()

    async def aclose(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close, wait (up to 1 s) for the close to complete, and release the socket if
        this connection owns it."""
        if self.closed_error is None:
            self.close(error_code, reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.wait_closed()
        if self.owns_transport and self._transport is not None:
            self._transport.close()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            self._dispatch_event(event)
        except Exception:
            # A bug in one stream's handler must not take the connection (or the other
            # events of this datagram) with it: end that stream, log, go on.
            sid = getattr(event, "stream_id", None)
            logger.exception("stream handler failed on %s", type(event).__name__)
            if sid is not None:
                self.reset(sid, ErrorCode.INTERNAL_ERROR)

    def _dispatch_event(self, event: events.QuicEvent) -> None:
        handlers = self._handlers
        if type(event) is events.StreamDataReceived:
            sid = event.stream_id
            handler = handlers.get(sid)
            if handler is None:
                handler = self._accept_stream(sid)
                if handler is None:
                    return
            handler.data_received(event.data, event.end_stream)
            self._delivered = True
        elif type(event) is events.StreamReset:
            handler = handlers.get(event.stream_id)
            if (
                self.closed_error is None
                and self.streams.is_peer_call(event.stream_id)
                and (handler is not None or self._quic.sent_fin(event.stream_id) is False)
            ):
                # A call still open on our side (or one we never saw): a premature reset.
                self.listener.call_reset()
                if self.closed_error is not None:
                    return  # that was one too many: the connection is closed
                handler = handlers.get(event.stream_id)
            if handler is not None:
                handler.stream_reset(event.error_code)
            else:
                # A stream reset before we saw any of it (or after we let it go): if we
                # never finished our side, reset it as well so aioquic can free it. A
                # side that sent FIN stays as it is (its trailers may still be in flight).
                self._accept_stream(event.stream_id, offer=False)
                if self._quic.sent_fin(event.stream_id) is False:
                    with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                        self._quic.reset_stream(event.stream_id, event.error_code)
        elif type(event) is events.StopSendingReceived:
            self.streams.wake_drain(event.stream_id)
            handler = handlers.get(event.stream_id)
            if handler is not None:
                handler.stop_sending(event.error_code)
        elif type(event) is events.ConnectionTerminated:
            self._terminated(event)

    def _accept_stream(self, stream_id: int, *, offer: bool = True) -> StreamHandler | None:
        # Only bidirectional streams the peer opened, and only new ones: data
        # arriving late on a stream we already released is dropped.
        is_peer_bidi = (stream_id & 3) == (1 if self._quic.configuration.is_client else 0)
        if not is_peer_bidi:
            if (stream_id & 2) and stream_id not in self._handlers:
                # A peer's unidirectional stream: a message lane if the runtime takes it
                # (wire-protocol.md §11.1), else refused.
                is_peer_uni = (stream_id & 1) == (1 if self._quic.configuration.is_client else 0)
                if offer and is_peer_uni:
                    uni_handler = self.listener.lane_opened(stream_id)
                    if uni_handler is not None:
                        self.streams.add(stream_id, uni_handler, lane=True)
                        return uni_handler
                with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                    self._quic.stop_stream(stream_id, ErrorCode.REFUSED)
            return None
        if not self.streams.peer_stream_is_new(stream_id) or not offer:
            return None
        handler = self.listener.stream_opened(stream_id)
        if handler is None:
            self.reset(stream_id, ErrorCode.REFUSED)
            return None
        self._handlers[stream_id] = handler  # streams.add, inlined (a call, not a lane)
        if self._nudge is not None:
            self._nudge.expect_answer()  # a push: the rest of its request may be stuck on a path
        return handler

    def _release(self) -> None:
        """The connection is over for good (the engine reported its end, or we gave up on
        it): answer from an `EndedEngine` from now on, take the engine apart, and drop
        what points back at this protocol, so reference counting frees the connection
        at once, without the cyclic collector (docs/scale.md "Garbage collection")."""
        engine = self._quic
        if type(engine) is EndedEngine:
            return
        ended = EndedEngine(engine)
        self._quic = ended
        self.streams.engine_ended(ended)
        release_engine(engine)
        self.listener = Unattached()
        self._nudge = None
        self._on_handshake = None
        self._early = None

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self.closed_error is not None:
            return
        reason = event.reason_phrase or f"error code 0x{event.error_code:x}"
        self.close_code = event.error_code
        self.close_reason = reason
        self.closed_error = ConnectionClosed(message=f"connection closed: {reason}")
        # Closed in its handshake (refused, busy): the attempt ends now, not when the
        # engine reports the close after its draining period (3 PTO).
        self._fail_connect_waiter()
        if self.owns_transport and self._transport is not None:
            # Let the CONNECTION_CLOSE we may have queued leave first.
            self._loop.call_soon(self._transport.close)
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            watch.close()  # give the server's budget back
        if self._nudge is not None:
            self._nudge.cancel()
        handlers = self.streams.fail(self.closed_error)
        for handler in handlers:
            try:
                handler.connection_lost(self.closed_error)
            except Exception:  # one broken handler must not stop the others
                logger.exception("stream handler failed on connection loss")
        try:
            self.listener.connection_lost(self.closed_error)
        except Exception:
            logger.exception("connection listener failed on connection loss")
        if self._router is not None:
            self._router.connection_closed(self)
