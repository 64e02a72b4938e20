"""`Client`: a long-lived connection that generated stubs call through.

The client keeps its connection alive by itself (docs/connections.md):

* right after the TLS handshake it opens the control stream and sends HELLO
  (client id, token, labels); calls wait until the server's WELCOME;
* it pings every heartbeat interval; a pong that does not come within
  ``heartbeat_timeout`` means the connection is dead;
* when the connection is lost (or the server says GOAWAY) it reconnects with
  exponential backoff and jitter, each attempt bounded by ``connect_timeout``.

Its states (`ClientState`) come from one transition table in
``quicflow/protocol/lifecycle.py``; watch them with ``client.state``,
``client.hooks.on_state_change`` or ``async for state in client.watch_state()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from .calls import ChannelMethods
from .clock import Clock, PolicyTimer, sleep, timeout
from .config import ClientConfig
from .dispatch import Dispatcher
from .dispatch import Handler as MessageHandler
from .endpoint import Endpoint
from .errors import ConfigError, ConnectionClosed, RpcError, UsageError, fresh
from .hooks import Hooks
from .incoming import IncomingCall
from .interceptors import ClientInterceptor
from .lane import LANE_FEATURE, ReceiveLane, SendLane
from .metadata import MetadataValue
from .metrics import Metrics, MetricsSnapshot, disabled_snapshot
from .protocol.backoff import Backoff
from .protocol.call import Role
from .protocol.control import (
    ControlProtocol,
    ControlStreamEnded,
    GoAwayReceived,
    HelloReceived,
    PingReceived,
    PongReceived,
    WelcomeReceived,
)
from .protocol.dedup import RecentReplies
from .protocol.events import ProtocolViolation
from .protocol.heartbeat import HeartbeatSender, HeartbeatTimedOut, PingDue
from .protocol.lifecycle import ClientLifecycle, ClientState, LifecycleEvent
from .retry import RetryPolicies, RetryPolicy
from .rpc import Service
from .sessions import Session
from .status import StatusCode
from .transport import QuicFlowProtocol, connect
from .transport.client_connect import ServerBusy
from .transport.tls import CLIENT_TICKETS, client_configuration
from .wire.codec import ErrorCode
from .wire.compression import ENCODINGS

__all__ = ["Client", "ClientState"]

logger = logging.getLogger("quicflow.client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_CLOSE_STATUS: dict[int, StatusCode] = {
    ErrorCode.UNAUTHENTICATED: StatusCode.UNAUTHENTICATED,
    ErrorCode.PERMISSION_DENIED: StatusCode.PERMISSION_DENIED,
}


NUDGES_PER_TIMEOUT = 5
"""A waiting client that hears nothing for ``heartbeat_timeout / 5`` sends a QUIC PING
(`QuicFlowProtocol.watch_quiet`): a NAT rebinding is then healed within that time, not
at the next heartbeat."""


def _forget(future: asyncio.Future[Any]) -> None:
    """Let go of a future nobody will await: cancel it, or mark its exception read."""
    if not future.done():
        future.cancel()
    elif not future.cancelled():
        future.exception()


class _Link:
    """One established connection: QUIC, its control stream, its heartbeat."""

    __slots__ = (
        "client",
        "conn",
        "control",
        "control_sid",
        "endpoint",
        "heartbeat",
        "message_lane",
        "peer_encodings",
        "timer",
        "welcome",
    )

    def __init__(
        self, client: Client, endpoint: Endpoint, conn: QuicFlowProtocol, control: ControlProtocol
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.conn = conn
        self.control = control
        self.control_sid = -1
        self.welcome: asyncio.Future[WelcomeReceived] = asyncio.get_running_loop().create_future()
        self.heartbeat: HeartbeatSender | None = None
        self.timer: PolicyTimer | None = None
        self.message_lane: SendLane | None = None
        """Our message lane to the server, once negotiated (wire-protocol.md §11.1)."""
        self.peer_encodings: frozenset[str] = frozenset()
        """Message encodings the server accepts (its WELCOME, wire-protocol.md §4.4): we
        compress only with these."""

    # StreamHandler for the control stream
    unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        for event in self.control.receive_data(data, end_stream):
            match event:
                case PongReceived():
                    if self.heartbeat is not None:
                        self.heartbeat.pong_received(event.sequence, self.endpoint.clock.time())
                        # A pong after the next PING fell due releases it now (§9.3).
                        if self.timer is not None:
                            self.timer.arm()
                case WelcomeReceived():
                    if not self.welcome.done():
                        self.welcome.set_result(event)
                case GoAwayReceived():
                    self.client._on_goaway(self, event)
                # §9.1: the control stream lives as long as the connection; a FIN or a
                # broken rule ends the connection, as the server does for ours.
                case ControlStreamEnded():
                    self.conn.close(ErrorCode.PROTOCOL_ERROR, "control stream closed")
                case ProtocolViolation():
                    self.conn.close(ErrorCode.PROTOCOL_ERROR, f"control stream: {event.error}")
                case HelloReceived() | PingReceived():  # the control machine refuses these
                    pass

    def stream_reset(self, error_code: int) -> None:
        self.conn.close(ErrorCode.PROTOCOL_ERROR, "control stream reset")

    def stop_sending(self, error_code: int) -> None:
        self.stream_reset(error_code)

    def connection_lost(self, exc: ConnectionClosed) -> None:
        if not self.welcome.done():
            self.welcome.set_exception(fresh(exc))

    # heartbeat

    def start_heartbeat(self, interval: float, timeout: float) -> None:
        hb = self.heartbeat = HeartbeatSender(interval, timeout, self.endpoint.clock.time())
        conn = self.conn
        # Calls besides the control stream, or a pong awaited: speak up after a fifth of
        # the pong timeout of silence (1 s by default), backing off to the heartbeat
        # interval while the server sends no data (QuietWatch).
        conn.watch_quiet(
            timeout / NUDGES_PER_TIMEOUT,
            max(interval, timeout / NUDGES_PER_TIMEOUT),
            lambda: conn.stream_count > 1 or hb.outstanding is not None,
        )
        self.timer = self.endpoint.timer(hb.get_timer, self._tick)
        self.timer.arm()

    def _tick(self, now: float) -> None:
        hb = self.heartbeat
        if hb is None or self.conn.is_closed:
            self.stop()
            return
        for event in hb.poll(now):
            match event:
                case PingDue():
                    self.conn.write(self.control_sid, self.control.send_ping(event.sequence))
                    hb.ping_sent(event.sequence, now)
                    self.conn.expect_answer()
                case HeartbeatTimedOut():
                    self.stop()
                    client_id = self.client.client_id
                    logger.warning(
                        "client %s: no pong within %.1f s: connection to %s presumed dead",
                        client_id,
                        hb.timeout,
                        self.client.config.host,
                        extra={"client_id": client_id, "reason": "heartbeat timeout"},
                    )
                    metrics = self.endpoint.metrics
                    if metrics is not None:
                        metrics.heartbeat_timeouts += 1
                    self.endpoint.hooks.fire("heartbeat_timeout")
                    self.conn.abort("heartbeat timeout")
                    return

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        self.heartbeat = None


class _ClientSide:
    """The client's connection as the runtime hears it: the `ConnectionListener` of the
    connection, and the link its pushed calls arrive on (the server needs no HELLO
    from us)."""

    __slots__ = ("client", "conn", "link", "requires_session", "session")

    def __init__(self, client: Client, conn: QuicFlowProtocol) -> None:
        self.client = client
        self.conn = conn
        self.link: _Link | None = None
        """The established link, once WELCOME came (its loss is the client's to handle)."""
        self.session: Session | None = None
        self.requires_session = False

    @property
    def peer_encodings(self) -> frozenset[str]:
        link = self.link
        return link.peer_encodings if link is not None else frozenset()

    def stream_opened(self, stream_id: int) -> IncomingCall:
        return self.client._endpoint.answer(self, stream_id)

    def lane_opened(self, stream_id: int) -> ReceiveLane | None:
        return self.client._new_lane(self.conn, stream_id)

    def call_reset(self) -> None:
        pass  # a server's cancelled push costs the client nothing to count

    def nudged(self) -> None:
        metrics = self.client._endpoint.metrics
        if metrics is not None:
            metrics.nudges += 1

    def connection_lost(self, exc: ConnectionClosed) -> None:
        if self.link is not None:
            self.client._on_lost(self.link, exc)


class Client(ChannelMethods):
    """A connection to a QuicFlow server; pass it to any generated stub.

    Example::

        config = ClientConfig(host="127.0.0.1", port=port, ca_file="certs/ca.pem",
                              server_name="localhost", client_id="sensor-1")
        async with Client(config) as client:
            stub = EchoStub(client)
            reply = await stub.say(EchoRequest(text="hi"), timeout=2.0)

    The event loop is bound on `connect`, not in the constructor. If an
    established connection is lost, calls in flight fail with UNAVAILABLE at
    once and the client reconnects with backoff; calls made meanwhile fail
    fast with UNAVAILABLE, or wait with ``wait_for_ready=True``.
    """

    def __init__(self, config: ClientConfig, *, clock: Clock | None = None) -> None:
        """Connect with ``config``; ``clock`` (tests: a `FakeClock`) arms every runtime
        timer (heartbeat, backoff, call deadlines, grace) instead of the event loop's."""
        self.config = config
        self._endpoint = Endpoint(
            config,
            interceptors=tuple(config.push_interceptors),
            replies=RecentReplies(),
            clock=clock,
        )
        self.client_id = config.client_id or ""
        """The id this client claims ("" lets the server assign one); after WELCOME, the one
        the server accepted, which later reconnects claim again."""
        self.hooks: Hooks = self._endpoint.hooks
        """Register ``connect``, ``disconnect``, ``heartbeat_timeout``, ``reconnect`` and
        ``state_change`` hooks here."""
        self._lifecycle = ClientLifecycle()
        self._link: _Link | None = None
        self._interceptors: tuple[ClientInterceptor, ...] = tuple(config.interceptors)
        self._retry = RetryPolicies(config.retry_table())
        # CallTarget, read by every call: plain attributes (the config is frozen), not
        # properties, so starting a call costs no Python frame per setting.
        self.max_message_size: int = config.max_message_size
        self.max_metadata_size: int = config.max_metadata_size
        self.default_timeout: float | None = config.default_timeout
        self.default_compression: str | None = config.compression
        self.compression_threshold: int = config.compression_threshold
        self.wait_for_ready_default: bool = config.wait_for_ready
        self.interceptors: tuple[ClientInterceptor, ...] = self._interceptors
        self.retry_policy: Callable[[str], RetryPolicy | None] = self._retry.for_route
        """The retry policy of a route, or None (`RetryPolicies.for_route`)."""
        self._backoff = Backoff(
            config.backoff_initial,
            config.backoff_multiplier,
            config.backoff_max,
            config.backoff_jitter,
        )
        self._reconnect_task: asyncio.Task[None] | None = None
        self._addresses = config.addresses()
        self._address = 0
        """Index in ``_addresses`` of the server to connect to (reconnects rotate it)."""
        self._state_waiters: list[asyncio.Future[None]] = []
        self._draining: set[QuicFlowProtocol] = set()
        self.server_limits: WelcomeReceived | None = None
        """What the server announced in its last WELCOME."""
        self.dispatcher: Dispatcher = self._endpoint.dispatcher
        """Runs handlers for untyped messages from the server (see `register_handler`)."""

    @property
    def metrics(self) -> Metrics | None:
        """The live counters calls record into (None with ``ClientConfig.metrics=False``);
        read them with `get_metrics`."""
        return self._endpoint.metrics

    @property
    def clock(self) -> Clock:
        """The clock the client's timers run on (the event loop's unless one was given)."""
        return self._endpoint.clock

    def get_metrics(self) -> MetricsSnapshot:
        """A snapshot of this client's metrics: its calls (``made``), the server's calls to
        it (``handled``), connects, reconnects, throughput and latency percentiles.

        With ``ClientConfig.metrics=False`` only the gauges are filled in and
        ``enabled`` is False.
        """
        gauges = {
            "connected_clients": 1 if self.connected else 0,
            "dispatcher_queue_depth": self.dispatcher.queue_depth,
            "dispatcher_busy_workers": self.dispatcher.busy_workers,
        }
        metrics = self._endpoint.metrics
        if metrics is None:
            return disabled_snapshot(**gauges)
        return metrics.snapshot(**gauges)

    def register_handler(self, message_type: str, handler: MessageHandler) -> None:
        """Run ``handler(message)`` for untyped messages of ``message_type`` from the server.

        The handler (plain or ``async``) returns the ack's payload (bytes or
        None) or raises `RpcError`. Handlers run on a bounded worker pool with
        ``handler_timeout``.

        Raises:
            UsageError: a handler is already registered for ``message_type``.
        """
        self.dispatcher.register_handler(message_type, handler)

    def add_service(self, service: Service) -> None:
        """Answer the server's calls to ``service`` (an instance of a generated ``FooBase``
        subclass): the server reaches it with ``FooStub(server.client(client_id))``.

        May be called before or after connecting.

        Raises:
            UsageError: a route is already served.
        """
        self._endpoint.add_handlers(service.__quicflow_handlers__())

    # -- CallTarget --

    # (max_message_size, max_metadata_size, default_timeout, default_compression,
    # compression_threshold, retry_policy, interceptors and wait_for_ready_default are
    # attributes set from the config in __init__: every call reads them.)

    message_id = b""
    peer_name = "server"

    @property
    def ready(self) -> bool:
        """True when a call made now would be sent at once."""
        link = self._link
        return link is not None and link.conn.closed_error is None

    def lane_for_call(self) -> SendLane | None:
        """Our message lane on the connection calls go to, once negotiated."""
        link = self._link
        return link.message_lane if link is not None else None

    def encodings_for_call(self) -> frozenset[str]:
        """Message encodings the server accepts on the connection calls go to."""
        link = self._link
        return link.peer_encodings if link is not None else frozenset()

    def connection_for_call(self) -> QuicFlowProtocol:
        link = self._link
        if link is not None and link.conn.closed_error is None:
            return link.conn
        state = self._lifecycle.state
        if state is ClientState.CLOSED:
            raise ConnectionClosed(message="the client is closed")
        if state is ClientState.IDLE:
            raise ConnectionClosed(message="the client is not connected (call connect() first)")
        raise ConnectionClosed(message=f"not connected ({state.name.lower()})")

    async def wait_ready(self) -> None:
        """Wait until the client is connected (wrap in ``asyncio.timeout`` to bound it).

        Raises:
            ConnectionClosed: the client is (or becomes) closed.
        """
        while not self.ready:
            if self._lifecycle.state in (ClientState.CLOSED, ClientState.IDLE):
                self.connection_for_call()  # raises with the reason
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._state_waiters.append(waiter)
            await waiter

    # -- state --

    @property
    def state(self) -> ClientState:
        """IDLE, CONNECTING, CONNECTED, RECONNECTING or CLOSED."""
        return self._lifecycle.state

    @property
    def connected(self) -> bool:
        """True while CONNECTED with a live connection."""
        return self.ready and self._lifecycle.state is ClientState.CONNECTED

    @property
    def connection(self) -> QuicFlowProtocol | None:
        """The current QUIC connection (for diagnostics)."""
        return self._link.conn if self._link is not None else None

    def _fire(self, event: LifecycleEvent) -> None:
        old, new = self._lifecycle.fire(event)
        if old is not new:
            logger.debug("client %s: %s -> %s", self.client_id, old.name, new.name)
            self.hooks.fire("state_change", old, new)
            waiters, self._state_waiters = self._state_waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    async def watch_state(self) -> AsyncIterator[ClientState]:
        """Yield the current state, then each new one, until CLOSED (inclusive)."""
        last: ClientState | None = None
        while True:
            state = self._lifecycle.state
            if state is not last:
                last = state
                yield state
                if state is ClientState.CLOSED:
                    return
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._state_waiters.append(waiter)
            await waiter

    # -- connecting --

    async def connect(self) -> None:
        """Connect, complete TLS 1.3, send HELLO and wait for WELCOME.

        One attempt, bounded by ``connect_timeout``. After it succeeds, a lost
        connection is re-established by itself (``reconnect=True``).

        Raises:
            ConnectionClosed: unreachable, TLS refused, or no answer in time;
                the client is then CLOSED.
            RpcError: UNAUTHENTICATED or PERMISSION_DENIED from the server's
                authenticator; the client is then CLOSED.
            UsageError: already connected, or closed.
        """
        if self._lifecycle.state is not ClientState.IDLE:
            raise UsageError(f"connect() needs an IDLE client; this one is {self.state.name}")
        self._fire(LifecycleEvent.CONNECT)
        self._endpoint.bind_clock()
        self._endpoint.start_metrics()
        try:
            await self._establish()
        except BaseException:
            if self._lifecycle.state in (ClientState.CONNECTING,):
                self._fire(LifecycleEvent.CONNECT_FAILED)
            self._fire(LifecycleEvent.CLOSE)
            self._endpoint.stop_metrics()
            raise

    @property
    def server_address(self) -> tuple[str, int]:
        """The server this client connects (or last tried to connect) to: ``(host, port)``."""
        return self._addresses[self._address]

    async def _establish(self) -> None:
        c = self.config
        host, port = self.server_address
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.connect_timeout
        quic_config = client_configuration(
            server_name=c.server_name or host,
            ca_file=c.ca_file,
            insecure_skip_verify=c.insecure_skip_verify,
            cert_file=c.cert_file,
            key_file=c.key_file,
        )
        control = ControlProtocol(Role.CALLER, max_frame_size=c.max_metadata_size)
        endpoint = self._endpoint
        metadata: list[tuple[str, MetadataValue]] = []
        if c.token is not None:
            metadata.append(("authorization", f"Bearer {c.token}"))
        hello = control.send_hello(
            self.client_id,
            metadata,
            c.labels,
            c.heartbeat_interval,
            # We accept the server's message lane, unless push interceptors must
            # see every call (lane messages bypass them).
            features=() if endpoint.interceptors else (LANE_FEATURE,),
            message_encodings=ENCODINGS,
        )
        started: list[tuple[_Link, _ClientSide]] = []

        def first_flight(conn: QuicFlowProtocol) -> None:
            # Runs as the handshake completes: HELLO leaves in the datagram that carries
            # our Finished, and WELCOME can come back with the server's first 1-RTT
            # datagram (one round trip less than writing it once connect() returns).
            link = _Link(self, endpoint, conn, control)
            side = _ClientSide(self, conn)
            conn.attach(side)
            link.control_sid = conn.open_stream(link)
            conn.write(link.control_sid, hello)
            started.append((link, side))

        try:
            conn = await connect(
                host,
                port,
                quic_config,
                c.transport_settings(),
                connect_timeout=c.connect_timeout,
                tickets=CLIENT_TICKETS if c.tls_resumption else None,
                on_handshake=first_flight,
            )
        except BaseException:
            # The handshake completed in the loop turn the attempt timed out (or was
            # cancelled): connect() discarded the connection, which failed the WELCOME
            # waiter first_flight made. Nobody awaits it now; read its exception, or
            # asyncio logs "Future exception was never retrieved" for each such attempt.
            for link, _side in started:
                _forget(link.welcome)
            raise
        try:
            if not started:  # cannot happen: connect() returns after the handshake event
                first_flight(conn)
            link, side = started[0]
            # WELCOME gets its own connect_timeout from the handshake's end (at most two
            # in all): a server that finished the handshake is alive, and the session it
            # is setting up for us is work we must not throw away because the handshake
            # itself took most of the time (a reconnect storm; docs/connections.md).
            deadline = max(deadline, loop.time() + c.connect_timeout)
            try:
                async with asyncio.timeout_at(deadline):
                    welcome = await link.welcome
            except TimeoutError:
                raise ConnectionClosed(
                    message=f"no WELCOME from {host}:{port} within {c.connect_timeout} s"
                ) from None
            except ConnectionClosed as exc:
                status = _CLOSE_STATUS.get(conn.close_code or 0)
                if status is not None:
                    raise RpcError(status, conn.close_reason) from exc
                raise
        except BaseException:
            await conn.aclose(ErrorCode.NO_ERROR, "connect failed")
            raise
        self.client_id = welcome.client_id
        self.server_limits = welcome
        if LANE_FEATURE in welcome.features:
            link.message_lane = SendLane(conn)
        link.peer_encodings = frozenset(welcome.message_encodings)
        # §9.3: ping at the interval the server granted; wait for a pong no longer than
        # either side's timeout (the server's is a suggestion, ours the user's bound).
        link.start_heartbeat(
            welcome.heartbeat_interval, min(c.heartbeat_timeout, welcome.heartbeat_timeout)
        )
        side.link = link
        self._link = link
        self._backoff.reset()
        self._fire(LifecycleEvent.CONNECTED)
        logger.info(
            "connected to %s:%d as %s",
            host,
            port,
            self.client_id,
            extra={"client_id": self.client_id},
        )
        if self.metrics is not None:
            self.metrics.connects += 1
        self.hooks.fire("connect", self.client_id)

    def _new_lane(self, conn: QuicFlowProtocol, stream_id: int) -> ReceiveLane | None:
        """The server's message lane: its first unidirectional stream (we offered lanes)."""
        if stream_id != 3:
            return None
        return self._endpoint.receive_lane(conn, stream_id, sender=lambda: "server")

    def _on_lost(self, link: _Link, exc: ConnectionClosed) -> None:
        link.stop()
        self._draining.discard(link.conn)
        if self._link is not link:
            return  # an old (drained) connection, or one we already replaced
        self._link = None
        reason = link.conn.close_reason or exc.message
        logger.info(
            "client %s: connection to %s lost: %s",
            self.client_id,
            self.config.host,
            reason,
            extra={"client_id": self.client_id, "reason": reason},
        )
        if self.metrics is not None:
            self.metrics.disconnects += 1
        self.hooks.fire("disconnect", reason)
        if self._lifecycle.state is ClientState.CONNECTED:
            self._fire(LifecycleEvent.CONNECTION_LOST)
            self._start_reconnecting()

    def _on_goaway(self, link: _Link, goaway: GoAwayReceived) -> None:
        if self._link is not link:
            return
        logger.info(
            "client %s: server sent GOAWAY (%s); reconnecting",
            self.client_id,
            goaway.reason,
            extra={"client_id": self.client_id, "reason": f"goaway: {goaway.reason}"},
        )
        # Calls in flight finish on the old connection; new ones wait for the next.
        self._link = None
        link.stop()
        self._draining.add(link.conn)
        if self.metrics is not None:
            self.metrics.disconnects += 1
        self.hooks.fire("disconnect", f"goaway: {goaway.reason}")
        if self._lifecycle.state is ClientState.CONNECTED:
            self._fire(LifecycleEvent.GOAWAY)
            self._start_reconnecting()

    def _start_reconnecting(self) -> None:
        if not self.config.reconnect:
            self._fire(LifecycleEvent.CLOSE)
            return
        if self._reconnect_task is None or self._reconnect_task.done():
            self._reconnect_task = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        busy: float | None = None
        while self._lifecycle.state is ClientState.RECONNECTING:
            if busy is None:
                delay = self._backoff.next_delay()
            else:
                # The server turned the last attempt away and said when to come back.
                delay, busy = self._backoff.busy_delay(busy), None
            attempt = self._backoff.attempts
            if self.metrics is not None:
                self.metrics.reconnects += 1
            self.hooks.fire("reconnect", attempt, delay)
            logger.debug("reconnect attempt %d in %.2f s", attempt, delay)
            await sleep(self._endpoint.clock, delay)
            if self._lifecycle.state is not ClientState.RECONNECTING:
                return
            self._fire(LifecycleEvent.CONNECT)
            # With several servers (ClientConfig.servers), each attempt tries the next one.
            self._address = (self._address + 1) % len(self._addresses)
            try:
                await self._establish()
                return
            except (RpcError, OSError, ConfigError) as exc:
                # ConfigError: a TLS file (ca_file, cert_file) went missing; keep trying.
                # ServerBusy: the server said when to come back.
                busy = exc.retry_after if isinstance(exc, ServerBusy) else None
                logger.debug("reconnect attempt %d failed: %s", attempt, exc)
                if self._lifecycle.state in (ClientState.CONNECTING,):
                    self._fire(LifecycleEvent.CONNECT_FAILED)

    async def close(self, grace: float | None = None) -> None:
        """Close: stop reconnecting, the heartbeat, and the connection. Idempotent.

        With ``grace``, waits up to that many seconds for calls in flight to
        finish first; calls still running then fail with UNAVAILABLE. No task,
        timer or socket is left behind.
        """
        if self._lifecycle.state is ClientState.CLOSED and self._link is None:
            return
        task = self._reconnect_task
        self._reconnect_task = None
        self._fire(LifecycleEvent.CLOSE)
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        link = self._link
        conns = list(self._draining) + ([link.conn] if link is not None else [])
        if link is not None:
            link.stop()
        if grace:
            with contextlib.suppress(TimeoutError):
                async with timeout(self._endpoint.clock, grace):
                    for conn in conns:
                        await conn.wait_idle()
        self._link = None
        self._draining.clear()
        for conn in conns:
            await conn.aclose(ErrorCode.NO_ERROR, "client closed")
        await self._endpoint.close()

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<Client {self.client_id} {self.config.host}:{self.config.port} {self.state.name}>"
