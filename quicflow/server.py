"""`Server`: accepts QUIC connections and runs handlers, one task per call.

Each peer-opened stream becomes a `_ServerCall`, which is both the stream's
handler (fed by the transport) and the handler's `ServicerContext`. The call
reads HEADERS, finds the route, and starts the handler task; the task writes
responses and the final status. A reset from the client, its connection's
loss, the deadline or the server's stop cancels the task; in every case
the stream's state is dropped when the call ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from .admin import AdminService
from .auth import HelloInfo, PeerInfo, allow_all
from .clock import LoopClock
from .cluster.node import ClusterNode
from .config import ClientConfig, ServerConfig
from .context import ServicerContext
from .dispatch import Dispatcher
from .dispatch import Handler as MessageHandler
from .errors import ConnectionClosed, FrameTooLarge, RpcError, UsageError
from .health import HealthService
from .hooks import Hooks, message_info
from .interceptors import ServerInterceptor
from .lane import LANE_FEATURE, ReceiveLane, SendLane
from .messaging import MessagingService
from .metadata import Metadata, MetadataLike
from .metrics import MethodStats, Metrics, MetricsSnapshot, disabled_snapshot
from .protocol.budget import ResetBudget
from .protocol.call import CallProtocol, Role, SideState
from .protocol.control import (
    ControlProtocol,
    ControlStreamEnded,
    HelloReceived,
    PingReceived,
)
from .protocol.events import (
    EndOfStream,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
)
from .protocol.heartbeat import HeartbeatMonitor, SessionExpired, negotiate_interval
from .push import (
    BroadcastResult,
    ClientChannel,
    Promise,
    PromiseManager,
    ReplyCache,
    broadcast,
)
from .reflection import ReflectionService
from .rpc import Cardinality, Handler, Service
from .sessions import ClientInfo, Session, SessionRegistry, SessionState
from .status import StatusCode
from .transport import QuicFlowProtocol, QuicFlowServer, serve
from .transport.inflow import FrameWatch
from .transport.tls import server_configuration
from .wire.codec import ErrorCode

__all__ = ["Server"]

logger = logging.getLogger("quicflow.server")

T = TypeVar("T")

_UNARY_UNARY = Cardinality.UNARY_UNARY
_UNARY_STREAM = Cardinality.UNARY_STREAM
_STREAM_UNARY = Cardinality.STREAM_UNARY


class Server:
    """A QuicFlow server.

    Example::

        server = Server(ServerConfig(host="127.0.0.1", port=0,
                                     cert_file="certs/server.pem", key_file="certs/server.key"))
        server.add_service(MyEcho())          # class MyEcho(EchoBase)
        await server.start()
        print("listening on", server.port)
        ...
        await server.stop(grace=5.0)
    """

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self._handlers: dict[str, Handler] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._callee_interceptors: tuple[ServerInterceptor, ...] = tuple(config.interceptors)
        self._endpoint: QuicFlowServer | None = None
        self._calls: set[_ServerCall] = set()
        self._closed: asyncio.Event | None = None
        self._stopping = False
        self._connections: set[_ServerConnection] = set()
        self._connections_refused = 0
        self.sessions = SessionRegistry()
        """Connected clients by id (see `list_clients` for snapshots)."""
        self.hooks = Hooks()
        """Register ``connect``, ``disconnect`` and ``heartbeat_timeout`` hooks here."""
        self._authenticator = config.authenticator or allow_all
        self._promises = PromiseManager(self, config.max_pending_promises)
        self._replies: ReplyCache | None = None
        self.dispatcher = Dispatcher(
            config.dispatcher_workers, config.dispatcher_queue_size, config.handler_timeout
        )
        """Runs handlers for untyped messages (see `register_handler`)."""
        self._handlers.update(MessagingService(self.dispatcher).__quicflow_handlers__())
        self._metrics: Metrics | None = Metrics() if config.metrics else None
        self._http: Any = None  # the metrics endpoint (quicflow.http.MetricsEndpoint)
        self.health = HealthService()
        """The grpc.health.v1 statuses this server reports: ``server.health.set(name, status)``."""
        self._handlers.update(self.health.__quicflow_handlers__())
        admin = AdminService(self.list_clients, config.admin_token)
        self._handlers.update(admin.__quicflow_handlers__())
        if config.reflection:  # it reads the live route table: later services are listed too
            self._handlers.update(ReflectionService(self._handlers).__quicflow_handlers__())
        self.cluster: ClusterNode | None = None
        """This node's membership in a cluster (None: no ``cluster_nats_urls``)."""

    # -- setup --

    def add_service(self, service: Service) -> None:
        """Serve every rpc of ``service`` (an instance of a generated ``FooBase`` subclass).

        Raises:
            UsageError: a route is already served by another service, or the
                server has started.
        """
        if self._endpoint is not None:
            raise UsageError("add_service() must be called before start()")
        handlers: Mapping[str, Handler] = service.__quicflow_handlers__()
        for route in handlers:
            if route in self._handlers:
                raise UsageError(f"route {route} is already served")
        self._handlers.update(handlers)

    @property
    def routes(self) -> list[str]:
        """Every route served, sorted."""
        return sorted(self._handlers)

    async def start(self) -> None:
        """Bind the UDP port and start accepting connections.

        Raises:
            UsageError: already started.
            OSError: the address cannot be bound.
        """
        if self._endpoint is not None:
            raise UsageError("server already started")
        config = self.config
        assert config.cert_file is not None  # ServerConfig guarantees it
        quic_config = server_configuration(
            cert_file=config.cert_file,
            key_file=config.key_file,
            client_ca_file=config.client_ca_file,
            client_cert_mode=config.client_cert_mode,
            client_crl_file=config.client_crl_file,
            client_crl_check=config.client_crl_check,
        )
        self._closed = asyncio.Event()
        self._endpoint = await serve(
            config.host,
            config.port,
            quic_config,
            config.transport_settings(),
            self._accept,
            retry=config.retry,
            retry_threshold=config.retry_threshold,
        )
        if self._metrics is not None:
            self._metrics.start(LoopClock())
        if config.metrics_port is not None:
            from .http import MetricsEndpoint

            try:
                self._http = await MetricsEndpoint.start(
                    self, config.metrics_host, config.metrics_port
                )
            except BaseException:
                if self._metrics is not None:
                    self._metrics.stop()
                self._endpoint.close()
                self._endpoint = None
                raise
        if config.cluster_nats_urls:
            from .cluster.node import join

            self.cluster = await join(self)
        logger.info("serving %d routes on %s:%d", len(self._handlers), config.host, self.port)

    @property
    def port(self) -> int:
        """The bound UDP port (useful after asking for port 0).

        Raises:
            UsageError: the server has not started.
        """
        if self._endpoint is None:
            raise UsageError("server not started")
        return self._endpoint.port

    @property
    def metrics_port(self) -> int | None:
        """The bound TCP port of the metrics endpoint (None when it is off or not started)."""
        return None if self._http is None else int(self._http.port)

    def get_metrics(self) -> MetricsSnapshot:
        """A snapshot of the server's metrics: counts, recent throughput, latency percentiles.

        With ``ServerConfig.metrics=False`` only the gauges (connected clients,
        pending promises, dispatcher) are filled in and ``enabled`` is False.
        """
        gauges = {
            "connected_clients": len(self.sessions),
            "promises_pending": len(self._promises),
            "dispatcher_queue_depth": self.dispatcher.queue_depth,
            "dispatcher_busy_workers": self.dispatcher.busy_workers,
        }
        if self._metrics is None:
            return disabled_snapshot(**gauges)
        return self._metrics.snapshot(**gauges)

    @property
    def connections(self) -> list[QuicFlowProtocol]:
        """Open QUIC connections."""
        return [] if self._endpoint is None else list(self._endpoint.connections)

    @property
    def active_calls(self) -> int:
        """Calls whose handler is still running."""
        return len(self._calls)

    def _accept(self, conn: QuicFlowProtocol) -> None:
        if self._stopping:
            conn.refuse("server is shutting down")
            return
        if self._endpoint is not None and len(self._endpoint.connections) > (
            self.config.max_connections
        ):
            # Over the cap (this one included): refuse before any work for it. The client
            # sees UNAVAILABLE and retries with backoff; connections already here are untouched.
            conn.refuse("too many connections")
            self._connections_refused += 1
            if self._metrics is not None:
                self._metrics.connections_refused += 1
            if self._connections_refused == 1 or self._connections_refused % 1000 == 0:
                logger.warning(
                    "refused a connection: max_connections (%d) reached (%d refused so far)",
                    self.config.max_connections,
                    self._connections_refused,
                )
            return
        self._connections.add(_ServerConnection(self, conn))

    # -- push --

    def client(self, client_id: str) -> ClientChannel:
        """A `Channel` to one connected client, for generated stubs:
        ``await NotifyStub(server.client("id-42")).deliver(event)``.

        Calls through it fail at once with `ClientNotConnected` if no client is
        connected under ``client_id``. In a cluster, a client on another node is
        reached through its node (unary calls; docs/cluster.md).
        """
        if self.cluster is not None:
            return self.cluster.channel(client_id)
        return ClientChannel(self, client_id)

    async def broadcast(
        self,
        send: Callable[[ClientChannel], Awaitable[T]],
        *,
        labels: Mapping[str, str] | None = None,
        client_timeout: float | None = None,
        max_in_flight: int | None = None,
    ) -> BroadcastResult[T]:
        """Run ``send(channel)`` for every connected client and report each outcome.

        ``send`` makes the call, e.g. ``lambda ch: NotifyStub(ch).deliver(event)``.
        Only clients whose labels include every ``labels`` pair are reached.
        At most ``max_in_flight`` sends run at once (default
        ``broadcast_max_in_flight``); each client gets ``client_timeout`` seconds
        (default ``push_timeout``). Never raises for a client's failure: each client's
        `Delivery` says delivered (with the reply), failed (with the status) or
        timed out. In a cluster every node's clients are reached, and the result
        (a `ClusterBroadcastResult`) also says which nodes answered.
        """
        if self.cluster is not None:
            return await self.cluster.broadcast(
                send,
                labels=labels,
                client_timeout=self.config.push_timeout
                if client_timeout is None
                else client_timeout,
                max_in_flight=max_in_flight or self.config.broadcast_max_in_flight,
            )
        return await broadcast(
            self,
            send,
            labels=labels,
            client_timeout=self.config.push_timeout if client_timeout is None else client_timeout,
            max_in_flight=max_in_flight or self.config.broadcast_max_in_flight,
        )

    def async_send(
        self,
        client_id: str,
        send: Callable[[ClientChannel], Awaitable[T]],
        *,
        timeout: float | None = None,
        callback: Callable[[Promise[T]], object] | None = None,
    ) -> Promise[T]:
        """Send now and return a `Promise` of the client's ack (its reply) at once.

        Example::

            server.async_send("id-42", lambda ch: NotifyStub(ch).deliver(event),
                              callback=lambda p: print(p.message_id, p.exception() or p.result()))

        Raises:
            ClientNotConnected: no client is connected under ``client_id``.
            PromiseCapacityFull: ``max_pending_promises`` are outstanding; nothing was sent.
        """
        timeout = self.config.promise_timeout if timeout is None else timeout
        if self.cluster is not None:
            return self.cluster.async_send(client_id, send, timeout, callback)
        return self._promises.send(client_id, send, timeout, callback)

    def register_handler(self, message_type: str, handler: MessageHandler) -> None:
        """Run ``handler(message)`` for untyped messages of ``message_type`` from clients.

        The handler (plain or ``async``) returns the ack's payload (bytes or
        None) or raises `RpcError` to fail the send with that status. Handlers
        run on the dispatcher's bounded worker pool with ``handler_timeout``.

        Raises:
            UsageError: a handler is already registered for ``message_type``.
        """
        self.dispatcher.register_handler(message_type, handler)

    async def send_to(
        self,
        client_id: str,
        message_type: str,
        payload: bytes = b"",
        *,
        metadata: MetadataLike | None = None,
        timeout: float | None = None,
        wait_ack: bool = True,
    ) -> bytes | None:
        """Send an untyped message to one client; see `ClientChannel.send_message`.

        Raises:
            ClientNotConnected: no client is connected under ``client_id``.
            RpcError: the client's handler failed, or no handler is registered
                (UNIMPLEMENTED), or its dispatcher is full (RESOURCE_EXHAUSTED).
        """
        return await self.client(client_id).send_message(
            message_type, payload, metadata=metadata, timeout=timeout, wait_ack=wait_ack
        )

    @property
    def pending_promises(self) -> int:
        """Acked sends still waiting for their ack."""
        return len(self._promises)

    # -- clients --

    def list_clients(self) -> list[ClientInfo]:
        """Snapshots of every connected client, sorted by client id (in a cluster, of
        every node; remote clients' snapshots come from the registry)."""
        local = sorted((s.info() for s in self.sessions), key=lambda i: i.client_id)
        if self.cluster is not None:
            return self.cluster.list_clients(local)
        return local

    def get_client_info(self, client_id: str) -> ClientInfo:
        """A snapshot of one connected client.

        Raises:
            ClientNotConnected: no client is connected under that id.
        """
        if self.cluster is not None and client_id not in self.sessions:
            return self.cluster.client_info(client_id)
        return self.sessions.require(client_id).info()

    # -- stopping --

    async def stop(self, grace: float | None = None) -> None:
        """Stop serving.

        Every client gets GOAWAY (it reconnects elsewhere or later, with
        backoff); new calls are refused at once (reset with REFUSED, which
        clients report as UNAVAILABLE). Calls in flight get ``grace`` seconds
        to finish (None: none); the rest are cancelled and their clients get
        UNAVAILABLE. Then every connection is closed and the port released.
        Idempotent.
        """
        if self._endpoint is None or self._stopping:
            if self._closed is not None:
                await self._closed.wait()
            return
        self._stopping = True
        self.health.shutdown()
        if self.cluster is not None:
            await self.cluster.stop()  # unregister first: nobody routes here while we close
        await asyncio.sleep(0)  # health watchers send NOT_SERVING before the GOAWAY
        grace_s = grace or 0.0
        for sconn in list(self._connections):
            sconn.send_goaway("server is shutting down", grace_s)
        if grace and self._calls:
            tasks = [c._task for c in self._calls if c._task is not None]
            if tasks:
                await asyncio.wait(tasks, timeout=grace)
        for call in list(self._calls):
            call._cancel((StatusCode.UNAVAILABLE, "the server is shutting down"))
        pending = [c._task for c in self._calls if c._task is not None]
        if pending:
            await asyncio.wait(pending, timeout=1.0)
        self._promises.close()
        await self.dispatcher.close()
        if self._metrics is not None:
            self._metrics.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        endpoint = self._endpoint
        port = endpoint.port
        endpoint.close()  # closing each connection ends its session (_ServerConnection.lost)
        # Let CONNECTION_CLOSE frames leave before the socket goes.
        await asyncio.sleep(0)
        await self.hooks.drain()
        assert self._closed is not None
        self._closed.set()
        logger.info("server on port %d stopped", port)

    async def wait_closed(self) -> None:
        """Wait until `stop` has finished."""
        if self._closed is not None:
            await self._closed.wait()

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class _ServerConnection:
    """One accepted QUIC connection: its control stream, its session, its calls."""

    __slots__ = (
        "conn",
        "control",
        "control_sid",
        "hello_timer",
        "lane_in",
        "ping_window",
        "pings",
        "resets",
        "server",
        "session",
    )
    requires_session = True

    def __init__(self, server: Server, conn: QuicFlowProtocol) -> None:
        self.server = server
        self.conn = conn
        self.session: Session | None = None
        self.control: ControlProtocol | None = None
        self.control_sid = -1
        self.ping_window = 0.0  # start of the current one-second PING count
        self.pings = 0
        loop = conn._loop
        self.hello_timer: asyncio.TimerHandle | None = loop.call_later(
            server.config.hello_timeout, self._hello_timeout
        )
        self.lane_in: ReceiveLane | bool = False  # True: we accept the client's lane
        rate = server.config.max_reset_rate
        self.resets = ResetBudget(rate, rate, loop.time()) if rate else None
        if rate:
            conn.on_peer_reset = self._on_peer_reset
        conn.on_new_stream = self.new_stream
        conn.on_new_uni_stream = self.new_lane
        conn.on_connection_lost.append(self.lost)

    def _on_peer_reset(self) -> None:
        # The peer reset a call we had not finished: spend from its budget (rapid reset).
        assert self.resets is not None
        if self.resets.spend(self.conn._loop.time()):
            return
        server = self.server
        rate = server.config.max_reset_rate
        session = self.session
        client_id = session.client_id if session is not None else ""
        addr = self.conn.peer_address
        logger.warning(
            "closing the connection of %s (%s): more than %d stream resets per second "
            "(rapid reset)",
            client_id or "a client without a session",
            f"{addr[0]}:{addr[1]}" if addr else "?",
            rate,
            extra={"client_id": client_id, "reason": "rapid reset"},
        )
        if server._metrics is not None:
            server._metrics.rapid_reset_closes += 1
        self.conn.close(ErrorCode.EXCESSIVE_LOAD, "rapid reset")

    def new_stream(self, stream_id: int) -> _ServerCall | _ControlHandler | None:
        if self.server._stopping:
            return None  # refused: REFUSED reset, safe for the client to retry
        if stream_id == 0 and self.control is None:
            # The client's first stream is the control stream (wire-protocol.md §9).
            self.control = ControlProtocol(
                Role.CALLEE, max_frame_size=self.server.config.max_metadata_size
            )
            self.control_sid = stream_id
            return _ControlHandler(self)
        return _ServerCall(self.server, self, stream_id)

    def new_lane(self, stream_id: int) -> ReceiveLane | None:
        """The client's message lane (its first unidirectional stream), if negotiated."""
        session = self.session
        if self.lane_in is not True or stream_id != 2 or session is None:
            return None
        server = self.server
        config = server.config
        self.lane_in = lane = ReceiveLane(
            self.conn,
            stream_id,
            server.dispatcher,
            sender=lambda: session.client_id,
            metrics=server._metrics,
            hooks=server.hooks,
            max_message_size=config.max_message_size,
            max_metadata_size=config.max_metadata_size,
        )
        return lane

    # -- control stream --

    def control_events(self, events: list[Any]) -> None:
        for event in events:
            if self.conn.is_closed:
                return
            if type(event) is PingReceived:
                self._on_ping(event.sequence)
            elif type(event) is HelloReceived:
                task = self.conn._loop.create_task(self._on_hello(event))
                self.server._background.add(task)
                task.add_done_callback(self.server._background.discard)
            elif type(event) is ControlStreamEnded:
                self.conn.close(ErrorCode.PROTOCOL_ERROR, "control stream closed")
            elif type(event) is ProtocolViolation:
                self.conn.close(ErrorCode.PROTOCOL_ERROR, f"control stream: {event.error}")

    async def _on_hello(self, hello: HelloReceived) -> None:
        server = self.server
        config = server.config
        conn = self.conn
        addr = conn.peer_address
        info = HelloInfo(
            hello.client_id, hello.metadata, dict(hello.labels), hello.protocol_version
        )
        verified = conn.client_certificate
        peer = PeerInfo(
            f"{addr[0]}:{addr[1]}" if addr else "",
            verified.der if verified is not None else None,
            verified.client_id if verified is not None else None,
        )
        try:
            result = server._authenticator(info, peer)
            client_id = await result if inspect.isawaitable(result) else result
            if not isinstance(client_id, str) or not client_id:
                raise RpcError(StatusCode.INTERNAL, "authenticator returned no client id")
        except RpcError as exc:
            code = (
                ErrorCode.PERMISSION_DENIED
                if exc.code is StatusCode.PERMISSION_DENIED
                else ErrorCode.UNAUTHENTICATED
            )
            logger.info(
                "refused client %r from %s: %s",
                hello.client_id,
                peer.address,
                exc,
                extra={"client_id": hello.client_id, "reason": exc.message},
            )
            conn.close(code, exc.message)
            return
        except Exception as exc:
            logger.exception("authenticator raised")
            conn.close(ErrorCode.UNAUTHENTICATED, f"authenticator failed ({type(exc).__name__})")
            return
        if conn.is_closed or self.session is not None:
            return
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        interval = negotiate_interval(
            hello.heartbeat_interval, config.heartbeat_interval, config.min_heartbeat_interval
        )
        now = conn._loop.time()
        monitor = HeartbeatMonitor(
            interval,
            min(config.heartbeat_check_interval, interval),
            config.max_missed_heartbeats,
            now,
        )
        session = Session(client_id, conn, hello.labels, interval, monitor)
        self.session = session
        assert self.control is not None
        # Message lanes (wire-protocol.md §11.1): the client's, unless interceptors must
        # see every message; ours, whenever the client accepts one.
        lanes = LANE_FEATURE in hello.features
        self.lane_in = lanes and not server._callee_interceptors
        conn.write(
            self.control_sid,
            self.control.send_welcome(
                client_id,
                interval,
                config.heartbeat_timeout,
                config.max_message_size,
                features=(LANE_FEATURE,) if self.lane_in else (),
            ),
        )
        if lanes:
            conn.message_lane = SendLane(conn)
        old = server.sessions.add(session)
        if old is not None:
            # Same id again: the newer connection wins at once (nothing is refused),
            # and the old session ends now, not when its connection finishes closing.
            old.state = SessionState.CLOSED
            if old.timer is not None:
                old.timer.cancel()
                old.timer = None
            old.conn.close(ErrorCode.SESSION_REPLACED, "replaced by a newer connection")
            logger.info(
                "client %s reconnected: old session replaced",
                client_id,
                extra={"client_id": client_id, "reason": "replaced by a newer connection"},
            )
            if server._metrics is not None:
                server._metrics.reconnects += 1
                server._metrics.disconnects += 1
            server.hooks.fire("disconnect", old.info(), "replaced by a newer connection")
        self._arm(session)
        server._promises.client_connected(client_id)
        logger.info(
            "client %s connected from %s", client_id, peer.address, extra={"client_id": client_id}
        )
        if server._metrics is not None:
            server._metrics.connects += 1
        server.hooks.fire("connect", session.info())

    def _on_ping(self, sequence: int) -> None:
        session = self.session
        if session is None or self.control is None:
            self.conn.close(ErrorCode.PROTOCOL_ERROR, "PING before HELLO")
            return
        now = self.conn._loop.time()
        if now - self.ping_window >= 1.0:
            self.ping_window = now
            self.pings = 0
        self.pings += 1
        if self.pings > self.server.config.max_ping_rate:
            # Each PING costs a PONG: a flood is answered by closing, not by work.
            self.conn.close(ErrorCode.EXCESSIVE_LOAD, "ping flood")
            return
        session.monitor.ping_received(self.conn._loop.time())
        session.last_heartbeat = time.time()
        self.conn.write(self.control_sid, self.control.send_pong(sequence))

    def _arm(self, session: Session) -> None:
        when = session.monitor.get_timer()
        if when is not None and session.state is not SessionState.CLOSED:
            session.timer = self.conn._loop.call_at(when, self._check, session)

    def _check(self, session: Session) -> None:
        session.timer = None
        for event in session.monitor.poll(self.conn._loop.time()):
            if type(event) is SessionExpired:
                info = session.info()
                logger.info(
                    "client %s evicted: no heartbeat for %.1f s",
                    session.client_id,
                    self.conn._loop.time() - event.last_ping,
                    extra={"client_id": session.client_id, "reason": "no heartbeat"},
                )
                if self.server._metrics is not None:
                    self.server._metrics.heartbeat_timeouts += 1
                self.server.hooks.fire("heartbeat_timeout", info)
                # close() ends the connection's calls and session at once (no draining wait).
                self.conn.close(ErrorCode.SESSION_EXPIRED, "no heartbeat: session expired")
                return
        self._arm(session)

    def _hello_timeout(self) -> None:
        self.hello_timer = None
        if self.session is None:
            self.conn.close(ErrorCode.HELLO_TIMEOUT, "no HELLO in time")

    def send_goaway(self, reason: str, grace: float) -> None:
        session = self.session
        if session is not None and self.control is not None and not self.conn.is_closed:
            session.state = SessionState.DRAINING
            self.conn.write(self.control_sid, self.control.send_goaway(reason, grace))

    def lost(self, exc: ConnectionClosed) -> None:
        server = self.server
        server._connections.discard(self)
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        session = self.session
        if session is None:
            return
        self.session = None
        if session.timer is not None:
            session.timer.cancel()
            session.timer = None
        if session.state is SessionState.CLOSED:
            return  # replaced: already reported when the newer connection took over
        reason = self.conn.close_reason or exc.message
        session.state = SessionState.CLOSED
        server.sessions.remove(session)
        logger.info(
            "client %s disconnected: %s",
            session.client_id,
            reason,
            extra={"client_id": session.client_id, "reason": reason},
        )
        if server._metrics is not None:
            server._metrics.disconnects += 1
        server.hooks.fire("disconnect", session.info(), reason)


class _ControlHandler:
    """The server end of a connection's control stream."""

    __slots__ = ("_sconn",)
    unread_bytes = 0

    def __init__(self, sconn: _ServerConnection) -> None:
        self._sconn = sconn

    def data_received(self, data: bytes, end_stream: bool) -> None:
        control = self._sconn.control
        assert control is not None
        self._sconn.control_events(control.receive_data(data, end_stream))

    def stream_reset(self, error_code: int) -> None:
        self._sconn.conn.close(ErrorCode.PROTOCOL_ERROR, "control stream reset")

    def stop_sending(self, error_code: int) -> None:
        self.stream_reset(error_code)

    def connection_lost(self, exc: ConnectionClosed) -> None:
        pass


class CalleeHost(Protocol):
    """What answers calls: a `Server`, or a `Client` serving calls the server makes to it."""

    @property
    def config(self) -> ServerConfig | ClientConfig: ...

    _handlers: dict[str, Handler]
    _callee_interceptors: tuple[ServerInterceptor, ...]
    _calls: set[_ServerCall]
    hooks: Hooks
    _metrics: Metrics | None
    _replies: ReplyCache | None
    """Replies by message id, to answer a repeated message without running it again."""


class CalleeConnection(Protocol):
    """The connection a call arrived on, as the callee sees it."""

    conn: QuicFlowProtocol
    session: Session | None
    requires_session: bool
    """True on the server: a call needs an accepted HELLO (wire-protocol.md §9.2)."""


class _ServerCall(ServicerContext):
    """One incoming call: the stream's handler and the handler's context.

    Used on the server for client calls, and on the client for the calls the
    server makes to it (push); ``host`` is whichever answers.
    """

    __slots__ = (
        "_cancel_status",
        "_conn",
        "_deadline_handle",
        "_eager",
        "_frames",
        "_handler",
        "_last_bytes",
        "_machine",
        "_messages",
        "_mstats",
        "_reply_key",
        "_request_done",
        "_sconn",
        "_server",
        "_sid",
        "_start_timer",
        "_status",
        "_t0",
        "_task",
        "_waiter",
        "unread_bytes",
    )

    def __init__(self, server: CalleeHost, sconn: CalleeConnection, stream_id: int) -> None:
        conn = sconn.conn
        super().__init__(conn._loop)
        self._server = server
        self._sconn = sconn
        self._conn = conn
        self._sid = stream_id
        config = server.config
        self._machine = CallProtocol(
            Role.CALLEE,
            max_message_size=config.max_message_size,
            max_metadata_size=config.max_metadata_size,
        )
        self._messages: deque[bytes] = deque()
        self.unread_bytes = 0
        self._request_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._eager = False
        self._handler: Handler | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._start_timer: asyncio.TimerHandle | None = None
        self._frames: FrameWatch | None = None  # once a frame arrived in pieces
        self._cancel_status: tuple[StatusCode, str] | None = None
        self._status: tuple[StatusCode, str] | None = None
        self._last_bytes = b""
        self._reply_key = b""
        self._mstats: MethodStats | None = None
        self._t0 = 0.0

    @property
    def client_id(self) -> str:
        session = self._sconn.session
        return session.client_id if session is not None else "server"

    def peer(self) -> str:
        addr = self._conn.peer_address
        return f"{addr[0]}:{addr[1]}" if addr else ""

    # -- StreamHandler --

    def data_received(self, data: bytes, end_stream: bool) -> None:
        session = self._sconn.session
        if session is not None:
            session.bytes_in += len(data)
        events = self._machine.receive_data(data, end_stream)
        for event in events:
            cls = type(event)
            if cls is MessageReceived:
                payload = event.data  # type: ignore[union-attr]
                self._messages.append(payload)
                self.unread_bytes += len(payload)
            elif cls is EndOfStream:
                self._request_done = True
            elif cls is HeadersReceived:
                self._on_headers(event)  # type: ignore[arg-type]
            elif cls is ProtocolViolation:
                err = event.error  # type: ignore[union-attr]
                if isinstance(err, FrameTooLarge):
                    self._refuse(StatusCode.RESOURCE_EXHAUSTED, str(err), ErrorCode.EXCESSIVE_LOAD)
                else:
                    self._refuse(
                        StatusCode.INTERNAL, f"malformed request: {err}", ErrorCode.PROTOCOL_ERROR
                    )
                return
        buffered, length = self._machine.partial_frame
        if (buffered or length or self._frames is not None) and self._status is None:
            # A frame arrived in pieces: bound its credit and its time (docs/limits.md).
            frames = self._frames
            if frames is None:
                frames = self._frames = self._conn.watch_frames(self._sid, self._on_frame_timeout)
            frames.update(buffered, length, bool(events))
        if self._task is None and self._status is None and not self._cancelled:
            if self._handler is not None and self._request_done:
                self._start(self._handler)
            elif self._start_timer is None:
                # Opened, but no complete HEADERS yet, or (unary and server-streaming
                # calls) no complete request: a legitimate caller sends both in its first
                # write, so this is rare. Give it header_timeout, not forever.
                self._start_timer = self._loop.call_later(
                    self._server.config.header_timeout, self._on_header_timeout
                )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._eager:
            self._eager = False
            _run_first_step(self._loop, self._task)

    def _on_header_timeout(self) -> None:
        self._start_timer = None
        timeout = self._server.config.header_timeout
        what = "complete request" if self.method else "call HEADERS"
        self._refuse(
            StatusCode.DEADLINE_EXCEEDED,
            f"no {what} within {timeout:g} s (header_timeout)",
            ErrorCode.DEADLINE_EXCEEDED,
        )

    def _on_frame_timeout(self) -> None:
        assert self._frames is not None
        self._refuse(
            StatusCode.DEADLINE_EXCEEDED,
            f"a frame stayed unfinished for {self._frames.frame.timeout:g} s (frame_timeout)",
            ErrorCode.DEADLINE_EXCEEDED,
        )

    def stream_reset(self, error_code: int) -> None:
        # The client cancelled (or gave up at its deadline): nobody reads our answer.
        # If the answer is already complete, leave our side alone: a peer may reset
        # its side just because we sent STOP_SENDING (qh3 does, as RFC 9000 §3.5
        # allows), and resetting ours would throw away the status in flight.
        if self._machine.local_state not in (SideState.TRAILED, SideState.CLOSED):
            self._conn.reset(self._sid, ErrorCode.CANCELLED)
        self._status = self._status or (StatusCode.CANCELLED, "cancelled by the client")
        self._cancel(None)

    def stop_sending(self, error_code: int) -> None:
        self._conn.reset(self._sid, ErrorCode.CANCELLED)  # the client reads no more
        self.stream_reset(error_code)

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self._status = self._status or (StatusCode.UNAVAILABLE, exc.message)
        self._cancel(None)

    # -- lifecycle --

    def _on_headers(self, headers: HeadersReceived) -> None:
        server = self._server
        handler = server._handlers.get(headers.method)
        self.method = headers.method
        metrics = server._metrics
        if metrics is not None:
            # Routes nobody serves share one label, so a peer cannot grow the label set.
            stats = self._mstats = (
                metrics.handled.method(headers.method)
                if handler is not None
                else metrics.handled.unknown
            )
            stats.started += 1
            self._t0 = self._loop.time()
        session = self._sconn.session
        if session is not None:
            session.calls_in += 1
        elif self._sconn.requires_session:
            # No HELLO accepted on this connection: nobody to serve (wire-protocol.md §9).
            self._refuse(StatusCode.UNAUTHENTICATED, "no session: send HELLO first")
            return
        if handler is None:
            self._refuse(StatusCode.UNIMPLEMENTED, f"unknown method {headers.method}")
            return
        if headers.message_encoding not in ("", "identity"):
            self._refuse(
                StatusCode.UNIMPLEMENTED,
                f"message encoding {headers.message_encoding!r} is not supported",
            )
            return
        self._handler = handler
        self._invocation_metadata = headers.metadata
        self._message_id = headers.message_id
        if headers.timeout is not None:
            self._deadline = self._loop.time() + headers.timeout
            self._deadline_handle = self._loop.call_at(self._deadline, self._on_deadline)
        if handler.method.cardinality in (_UNARY_UNARY, _UNARY_STREAM):
            return  # started once the request is complete (`data_received`)
        self._start(handler)

    def _start(self, handler: Handler) -> None:
        """Run the handler: a task, counted in the server's calls."""
        if self._start_timer is not None:  # the header_timeout timer
            self._start_timer.cancel()
            self._start_timer = None
        self._server._calls.add(self)
        self._task = self._loop.create_task(self._run(handler))
        self._eager = True  # run its first step once this data is parsed (data_received)

    def _refuse(self, code: StatusCode, message: str, stop_code: int = ErrorCode.NO_ERROR) -> None:
        """End the call from the transport side: status to the client, stop its sending."""
        self._send_status(code, message, ())
        if self._machine.peer_state is not SideState.CLOSED:
            self._conn.stop_reading(self._sid, stop_code)
        if self._task is not None:
            self._cancel(None)
        else:
            self._end()

    def _on_deadline(self) -> None:
        self._deadline_handle = None
        self._cancel((StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"))

    def _cancel(self, status: tuple[StatusCode, str] | None) -> None:
        """Cancel the handler; ``status``: what to tell the client (None: nobody to tell)."""
        if self._cancelled:
            return
        self._cancelled = True
        self._cancel_status = status
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            task.add_done_callback(self._cancelled_task_done)
        elif task is None:
            if status is not None:  # e.g. the deadline passed while the request was due
                self._send_status(*status, ())
            self._end()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancelled_task_done(self, task: asyncio.Task[None]) -> None:
        # A task cancelled before its first step never runs `_run` at all (not even its
        # ``finally``): HEADERS and a RESET_STREAM in one datagram do that. End the call
        # here, or it would stay in ``_calls`` for good (a leak under rapid reset).
        if self in self._server._calls:
            if self._cancel_status is not None:
                self._send_status(*self._cancel_status, ())
            self._handler = None  # no interceptor saw on_start, so none sees on_end
            self._end()

    async def _run(self, handler: Handler) -> None:
        server = self._server
        try:
            for interceptor in server._callee_interceptors:
                await interceptor.on_start(self)
            kind = handler.method.cardinality
            func: Any = handler.func
            if kind is _UNARY_UNARY:
                request = await self._read_single()
                if self._message_id and server._replies is not None:
                    self._reply_key = _reply_key(self._message_id, self.method, self._last_bytes)
                    cached = server._replies.get(self._reply_key, self._loop.time())
                    if cached is not None:
                        # A repeat of a message we already answered (its ack was lost):
                        # the same reply again, and the handler does not run twice.
                        self._send_last_bytes(cached)
                        return
                response = await func(request, self)
                if self._conn.send_budget_exceeded():
                    await self._conn.drain_connection()
                self._send_last(response)
                return
            if kind is _STREAM_UNARY:
                response = await func(_RequestIterator(self), self)
                if self._conn.send_budget_exceeded():
                    await self._conn.drain_connection()
                self._send_last(response)
                return
            stream: AsyncIterator[Any] = (
                func(await self._read_single(), self)
                if kind is _UNARY_STREAM
                else func(_RequestIterator(self), self)
            )
            async for response in stream:
                await self._send_response(response)
            self._send_status(StatusCode.OK, "", self._trailing_metadata)
        except RpcError as exc:
            self._send_status(
                exc.code, exc.message, exc.trailing_metadata or self._trailing_metadata
            )
        except asyncio.CancelledError:
            if self._cancel_status is not None:
                self._send_status(*self._cancel_status, ())
        except Exception as exc:
            logger.exception("handler for %s raised", self.method)
            self._send_status(
                StatusCode.UNKNOWN, f"unexpected {type(exc).__name__} in the handler", ()
            )
        finally:
            self._end()

    def _end(self) -> None:
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        self._conn.release(self._sid)
        self._server._calls.discard(self)
        status = self._status or (StatusCode.UNKNOWN, "")
        stats = self._mstats
        if stats is not None:
            self._mstats = None  # count each call once, however many ways it ends
            stats.finished(status[0], self._loop.time() - self._t0)
        started = self._handler is not None and self._task is not None  # on_start was due
        for interceptor in reversed(self._server._callee_interceptors) if started else ():
            try:
                interceptor.on_end(self, *status)
            except Exception:
                logger.exception("server interceptor failed in on_end")
        callbacks = self._done_callbacks
        if callbacks:
            self._done_callbacks = None
            for callback in callbacks:
                try:
                    callback(self)
                except Exception:
                    logger.exception("done callback failed")

    # -- requests --

    async def _next_request(self) -> Any:
        """The next decoded request; raises StopAsyncIteration at the client's half-close."""
        while True:
            messages = self._messages
            if messages:
                data = messages.popleft()
                self.unread_bytes -= len(data)
                self._conn.credit_released(self._sid)
                if self._message_id:
                    self._last_bytes = data
                stats = self._mstats
                if stats is not None:
                    stats.messages_received += 1
                    stats.bytes_received += len(data)
                assert self._handler is not None
                try:
                    request = self._handler.method.deserialize_request(data)
                except Exception as exc:
                    raise RpcError(
                        StatusCode.INTERNAL, f"could not parse the request: {exc}"
                    ) from exc
                for interceptor in self._server._callee_interceptors:
                    interceptor.on_message_received(self, request)
                hooks = self._server.hooks
                if hooks.wants("message_received"):
                    hooks.fire(
                        "message_received",
                        message_info(self.client_id, self.method, request, len(data)),
                    )
                return request
            if self._request_done:
                raise StopAsyncIteration
            if self._cancelled:
                raise asyncio.CancelledError
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    async def _read_single(self) -> Any:
        try:
            request = await self._next_request()
        except StopAsyncIteration:
            raise RpcError(StatusCode.INTERNAL, "the client sent no request") from None
        try:
            await self._next_request()
        except StopAsyncIteration:
            return request
        raise RpcError(StatusCode.INTERNAL, "the client sent more than one request")

    # -- responses --

    def _encode_response(self, response: Any) -> bytes:
        assert self._handler is not None
        data: bytes = self._handler.method.serialize_response(response)
        limit = self._server.config.max_message_size
        if len(data) > limit:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"response of {len(data)} bytes exceeds max_message_size ({limit})",
            )
        for interceptor in self._server._callee_interceptors:
            interceptor.on_message_sent(self, response)
        stats = self._mstats
        if stats is not None:
            stats.messages_sent += 1
            stats.bytes_sent += len(data)
        return data

    def _headers_prefix(self) -> bytes:
        if self._initial_metadata_sent:
            return b""
        self._initial_metadata_sent = True
        pending = self._pending_initial_metadata
        if not pending:
            return b""
        self._pending_initial_metadata = None
        return self._machine.send_headers("", pending)

    def _flush_initial_metadata(self) -> None:
        out = self._headers_prefix()
        if out:
            self._write(out)

    async def _send_response(self, response: Any) -> None:
        data = self._encode_response(response)
        conn = self._conn
        sid = self._sid
        self._write(self._headers_prefix() + self._machine.send_message(data))
        if conn.send_buffered(sid) > conn.settings.send_buffer_limit:
            await conn.drain(sid)
        if conn.send_budget_exceeded():
            await conn.drain_connection()

    def _send_last(self, response: Any) -> None:
        """One response and the OK status in a single write (unary responses)."""
        data = self._encode_response(response)
        replies = self._server._replies
        if self._reply_key and replies is not None:
            replies.put(self._reply_key, data, self._loop.time())
        self._send_last_bytes(data)

    def _send_last_bytes(self, data: bytes) -> None:
        machine = self._machine
        out = self._headers_prefix() + machine.send_message(data)
        self._status = (StatusCode.OK, "")
        out += machine.send_trailers(0, "", self._trailing_metadata)
        self._write(out, end_stream=True)
        self._after_status()

    def _send_status(self, code: StatusCode, message: str, metadata: Metadata) -> None:
        if self._machine.local_state in (SideState.TRAILED, SideState.CLOSED):
            return
        if self._status is None or self._status[0] is not StatusCode.CANCELLED:
            self._status = (code, message)
        out = self._headers_prefix() + self._machine.send_trailers(int(code), message, metadata)
        self._write(out, end_stream=True)
        self._after_status()

    def _write(self, out: bytes, end_stream: bool = False) -> None:
        session = self._sconn.session
        if session is not None:
            session.bytes_out += len(out)
        self._conn.write(self._sid, out, end_stream)

    def _after_status(self) -> None:
        # The answer is complete; if the client is still sending, tell it to stop.
        if self._machine.peer_state is not SideState.CLOSED and not self._request_done:
            self._conn.stop_reading(self._sid, ErrorCode.NO_ERROR)


def _run_first_step(loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any] | None) -> None:
    """Run a just-created task's first step now instead of at the next loop turn.

    Python 3.11 has no eager tasks (3.12's ``eager_start``). A unary handler that
    does not wait for anything finishes in its first step, so running that step
    while the request's datagram is being handled puts the reply into the
    datagram aioquic sends right after it, instead of a loop turn (and a
    transmit) later. The task is a real task either way (``current_task()``,
    cancellation, ``asyncio.timeout`` and contextvars behave as usual); only
    where its first step runs moves. Done only when the step is still the last
    callback queued on asyncio's own loop and no task is running (a task cannot
    start inside another); otherwise the step runs when the loop reaches it.
    """
    ready = getattr(loop, "_ready", None)  # asyncio's queue of callbacks (uvloop has none)
    if not ready or task is None or asyncio.current_task(loop) is not None:
        return
    handle = ready[-1]
    if getattr(handle._callback, "__self__", None) is not task or handle._cancelled:
        return
    ready.pop()
    handle._run()


def _reply_key(message_id: bytes, method: str, request: bytes) -> bytes:
    """Replies are cached per message id *and* request: two different calls made under one
    acked send's id must not share a reply; an identical retry must."""
    digest = hashlib.blake2b(method.encode() + b"\0" + request, digest_size=16).digest()
    return message_id + digest


class _RequestIterator:
    """The request stream a client-streaming or bidi handler iterates.

    It ends (StopAsyncIteration) only when the client half-closes; a client
    that cancels or disappears cancels the handler instead, so an upload is
    never mistaken for complete.
    """

    __slots__ = ("_call",)

    def __init__(self, call: _ServerCall) -> None:
        self._call = call

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        return await self._call._next_request()
