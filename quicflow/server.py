"""`Server`: accepts QUIC connections, keeps a session per client, and stops.

The server is one face of an `Endpoint` (quicflow/endpoint.py), which owns
what a client has too: the routes, the answering side (each stream a client
opens becomes a `quicflow.incoming.IncomingCall`), the dispatcher, the reply
cache, hooks, metrics and the clock. What is the server's alone lives here:

* accepting connections, under ``max_connections``;
* each connection's control stream: HELLO (authenticate, open the session,
  negotiate heartbeat and lanes), PING/PONG with its flood bound, the hello
  timeout and the heartbeat monitor that evicts a silent client;
* the session registry (quicflow/sessions.py) and push (quicflow/push.py);
* stopping: GOAWAY, grace for calls in flight, then close.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from .admin import AdminService
from .auth import HelloInfo, PeerInfo, allow_all
from .calls import check_timeout
from .clock import Clock, PolicyTimer, TimerHandleLike, wait_all
from .cluster.node import ClusterNode
from .config import ServerConfig
from .dispatch import Dispatcher
from .dispatch import Handler as MessageHandler
from .endpoint import Endpoint
from .errors import ConnectionClosed, RpcError, UsageError
from .gcpause import GcGovernor
from .health import SERVICE_NAME as HEALTH_SERVICE_NAME
from .health import HealthService
from .hooks import Hooks
from .incoming import IncomingCall
from .lane import LANE_FEATURE, ReceiveLane, SendLane
from .metadata import MetadataLike
from .metrics import Metrics, MetricsSnapshot, disabled_snapshot
from .protocol.budget import ResetBudget
from .protocol.call import Role
from .protocol.control import (
    ControlEvent,
    ControlProtocol,
    ControlStreamEnded,
    HelloReceived,
    PingReceived,
)
from .protocol.events import ProtocolViolation
from .protocol.heartbeat import HeartbeatMonitor, SessionExpired, negotiate_interval
from .protocol.logbudget import LogBudget
from .protocol.slices import SliceBudget
from .push import (
    BroadcastResult,
    ClientChannel,
    Promise,
    PromiseManager,
    broadcast,
)
from .reflection import ReflectionService
from .rpc import Service
from .sessions import ClientInfo, Session, SessionRegistry, SessionState
from .status import StatusCode
from .transport import QuicFlowProtocol, QuicFlowServer, serve
from .transport.reset import load_reset_key
from .transport.tickets import SealedTickets, load_ticket_keys
from .transport.tls import ServerTicketStore, server_configuration
from .wire.codec import ErrorCode
from .wire.compression import ENCODINGS

__all__ = ["Server"]

logger = logging.getLogger("quicflow.server")

T = TypeVar("T")

_OUR_ENCODINGS: frozenset[str] = frozenset(ENCODINGS)
"""Our message encodings as a set: a session whose client offers the same shares it."""

EVICTIONS_PER_SLICE = 32
"""Evicted connections closed per `EVICTION_SLICE` at most; more that fall due at once (a
server whose loop stalled) are closed in the slices after, so other connections' datagrams
are served between them (docs/connections.md)."""
EVICTION_SLICE = 0.01
"""Seconds per slice of evictions."""

CONNECTION_LOG_BURST = 20
"""Connection events (connected, disconnected, evicted, replaced) logged one by one per
second at most; the rest of that second is one summary line (docs/observability.md)."""


class _ConnectionLog:
    """The server's INFO lines for connection events, at most `CONNECTION_LOG_BURST` a
    second one by one and a summary line for the rest (`LogBudget`)."""

    __slots__ = ("_budget", "_clock", "_timer")

    def __init__(self, clock: Callable[[], Clock], per_second: int = CONNECTION_LOG_BURST) -> None:
        self._clock = clock  # the server's clock is the loop's only once it starts
        self._budget = LogBudget(per_second, 1.0)
        self._timer: PolicyTimer | None = None

    def admit(self, kind: str) -> bool:
        """True: log this event now, on its own line; False: it was counted (or INFO is off)."""
        if not logger.isEnabledFor(logging.INFO):
            return False
        clock = self._clock()
        now = clock.time()
        self._flush(now)
        if self._budget.admit(now, kind):
            return True
        if self._timer is None:
            self._timer = PolicyTimer(clock, self._budget.get_timer, self._flush)
        self._timer.arm()
        return False

    def _flush(self, now: float) -> None:
        summary = self._budget.poll(now)
        if summary is not None:
            logger.info(
                "%s more connection events in %.1f s not logged one by one: %s",
                f"{summary.count:,}",
                summary.until - summary.since,
                summary.describe(),
            )

    def stop(self) -> None:
        """Log what is still counted, and stop the timer."""
        self._flush(float("inf"))
        if self._timer is not None:
            self._timer.stop()
            self._timer = None


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

    def __init__(self, config: ServerConfig, *, clock: Clock | None = None) -> None:
        """Serve with ``config``; ``clock`` (tests: a `FakeClock`) arms every runtime
        timer instead of the event loop's."""
        self.config = config
        self._endpoint = Endpoint(
            config, interceptors=tuple(config.interceptors), replies=None, clock=clock
        )
        self._listener: QuicFlowServer | None = None
        self._gc: tuple[GcGovernor, PolicyTimer] | None = None
        self._closed: asyncio.Event | None = None
        self._stopping = False
        self._connections: set[_ServerConnection] = set()
        self._connections_refused = 0
        self._log = _ConnectionLog(lambda: self._endpoint.clock)
        self._evictions: deque[_ServerConnection] = deque()
        """Connections whose session was evicted, waiting for a slice to be closed in."""
        self._eviction_budget = SliceBudget(EVICTIONS_PER_SLICE, EVICTION_SLICE)
        self._eviction_timer: TimerHandleLike | None = None
        self.sessions = SessionRegistry()
        """Connected clients by id (see `list_clients` for snapshots)."""
        self.hooks: Hooks = self._endpoint.hooks
        """Register ``connect``, ``disconnect`` and ``heartbeat_timeout`` hooks here."""
        self._authenticator = config.authenticator or allow_all
        self._promises = PromiseManager(self, config.max_pending_promises)
        self.dispatcher: Dispatcher = self._endpoint.dispatcher
        """Runs handlers for untyped messages (see `register_handler`)."""
        self._http: Any = None  # the metrics endpoint (quicflow.http.MetricsEndpoint)
        self.health = HealthService()
        """The grpc.health.v1 statuses this server reports: ``server.health.set(name, status)``."""
        if config.health:
            self._endpoint.add_handlers(self.health.__quicflow_handlers__())
        admin = AdminService(self.fetch_clients, config.admin_token)
        self._endpoint.add_handlers(admin.__quicflow_handlers__())
        if config.reflection:  # it reads the live route table: later services are listed too
            handlers = self._endpoint.handlers
            self._endpoint.add_handlers(ReflectionService(handlers).__quicflow_handlers__())
        self.cluster: ClusterNode | None = None
        """This node's membership in a cluster (None: no ``cluster_nats_urls``)."""

    @property
    def metrics(self) -> Metrics | None:
        """The live counters (None with ``ServerConfig.metrics=False``); read them with
        `get_metrics`."""
        return self._endpoint.metrics

    @property
    def clock(self) -> Clock:
        """The clock the server's timers run on (the event loop's unless one was given)."""
        return self._endpoint.clock

    # -- setup --

    def add_service(self, service: Service) -> None:
        """Serve every rpc of ``service`` (an instance of a generated ``FooBase`` subclass).

        Raises:
            UsageError: a route is already served by another service, or the
                server has started.
        """
        if self._listener is not None:
            raise UsageError("add_service() must be called before start()")
        handlers = service.__quicflow_handlers__()
        if self.config.health:
            for route in handlers:
                if route in self._endpoint.handlers and route.startswith(
                    f"/{HEALTH_SERVICE_NAME}/"
                ):
                    raise UsageError(
                        f"route {route} is already served by the built-in health service "
                        "(server.health); to serve your own, set ServerConfig(health=False)"
                    )
        self._endpoint.add_handlers(handlers)

    @property
    def routes(self) -> list[str]:
        """Every route served, sorted."""
        return sorted(self._endpoint.handlers)

    async def start(self) -> None:
        """Bind the UDP port and start accepting connections.

        Raises:
            UsageError: already started.
            OSError: the address cannot be bound.
        """
        if self._listener is not None:
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
        self._endpoint.bind_clock()
        self._listener = await serve(
            config.host,
            config.port,
            quic_config,
            config.transport_settings(),
            self._accept,
            retry=config.retry,
            retry_threshold=config.retry_threshold,
            tickets=_ticket_store(config),
            reset_key=load_reset_key(config.stateless_reset_key_file),
            max_connections=config.max_connections,
            on_refused=self._refused,
        )
        self._endpoint.start_metrics()
        if config.gc_walk_limit:
            self._gc = self._govern_gc(config.gc_walk_limit)
        if config.metrics_port is not None:
            from .http import MetricsEndpoint

            try:
                self._http = await MetricsEndpoint.start(
                    self, config.metrics_host, config.metrics_port
                )
            except BaseException:
                self._endpoint.stop_metrics()
                self._listener.close()
                self._listener = None
                raise
        # Only now: a start that failed to bind leaves stop() nothing to wait for.
        self._closed = asyncio.Event()
        if config.cluster_nats_urls:
            from .cluster.node import join

            self.cluster = await join(self)
        logger.info(
            "serving %d routes on %s:%d", len(self._endpoint.handlers), config.host, self.port
        )

    def _govern_gc(self, walk_limit: int) -> tuple[GcGovernor, PolicyTimer]:
        listener = self._listener
        assert listener is not None
        governor = GcGovernor(walk_limit, now=self._endpoint.clock.time())

        def look(now: float) -> None:
            governor.poll(now, len(listener.connections), busy=listener.handshakes > 0)

        timer = self._endpoint.timer(governor.get_timer, look)
        timer.arm()
        return governor, timer

    @property
    def port(self) -> int:
        """The bound UDP port (useful after asking for port 0).

        Raises:
            UsageError: the server has not started.
        """
        if self._listener is None:
            raise UsageError("server not started")
        return self._listener.port

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
            "promises_pending": self.pending_promises,
            "dispatcher_queue_depth": self.dispatcher.queue_depth,
            "dispatcher_busy_workers": self.dispatcher.busy_workers,
        }
        metrics = self._endpoint.metrics
        if metrics is None:
            return disabled_snapshot(**gauges)
        return metrics.snapshot(**gauges)

    @property
    def connections(self) -> list[QuicFlowProtocol]:
        """Open QUIC connections."""
        return [] if self._listener is None else list(self._listener.connections)

    @property
    def active_calls(self) -> int:
        """Calls whose handler is still running."""
        return len(self._endpoint.calls)

    def _accept(self, conn: QuicFlowProtocol) -> None:
        if self._stopping:
            conn.refuse("server is shutting down")
            return
        self._connections.add(_ServerConnection(self, conn))

    def _refused(self, reason: str) -> None:
        """The endpoint refused a connection at ``max_connections``."""
        self._connections_refused += 1
        if self.metrics is not None:
            self.metrics.connections_refused += 1
        if self._connections_refused == 1 or self._connections_refused % 1000 == 0:
            logger.warning(
                "refused a connection: max_connections (%d) reached (%d refused so far)",
                self.config.max_connections,
                self._connections_refused,
            )

    # -- sessions --

    def _admit(self, session: Session, address: str) -> None:
        """A HELLO was accepted: register the session, replacing one under the same id."""
        client_id = session.client_id
        metrics = self._endpoint.metrics
        old = self.sessions.add(session)
        if old is not None and old.end():
            # Same id again: the newer connection wins at once (nothing is refused),
            # and the old session ends now, not when its connection finishes closing.
            reason = "replaced by a newer connection"
            old.conn.close(ErrorCode.SESSION_REPLACED, reason)
            if self._log.admit("replaced by a newer connection"):
                logger.info(
                    "client %s reconnected: old session replaced",
                    client_id,
                    extra={"client_id": client_id, "reason": reason},
                )
            if metrics is not None:
                metrics.reconnects += 1
                metrics.disconnects += 1
            if self.hooks.wants("disconnect"):
                self.hooks.fire("disconnect", old.info(), reason)
        self._promises.client_connected(client_id)
        if self._log.admit("connected"):
            logger.info(
                "client %s connected from %s", client_id, address, extra={"client_id": client_id}
            )
        if metrics is not None:
            metrics.connects += 1
        if self.hooks.wants("connect"):
            self.hooks.fire("connect", session.info())

    def _session_lost(self, session: Session, reason: str) -> None:
        """A session's connection ended (the session is already CLOSED)."""
        self.sessions.remove(session)
        if self._log.admit(f"disconnected ({reason})"):
            logger.info(
                "client %s disconnected: %s",
                session.client_id,
                reason,
                extra={"client_id": session.client_id, "reason": reason},
            )
        if self._endpoint.metrics is not None:
            self._endpoint.metrics.disconnects += 1
        if self.hooks.wants("disconnect"):
            self.hooks.fire("disconnect", session.info(), reason)

    def _evicted(self, sconn: _ServerConnection) -> None:
        """Close an evicted session's connection now, or in a later slice if this slice has
        closed `EVICTIONS_PER_SLICE` already (the session itself is gone already)."""
        clock = self._endpoint.clock
        if not self._evictions and self._eviction_budget.take(clock.time()):
            sconn.close_evicted()
            return
        self._evictions.append(sconn)
        if self._eviction_timer is None:
            self._eviction_timer = clock.call_at(
                self._eviction_budget.next_slice, self._next_evictions
            )

    def _next_evictions(self) -> None:
        self._eviction_timer = None
        clock = self._endpoint.clock
        queue, budget = self._evictions, self._eviction_budget
        now = max(clock.time(), budget.next_slice)  # a loop may run a timer early (uvloop)
        while queue and budget.take(now):
            queue.popleft().close_evicted()
        if queue:
            self._eviction_timer = clock.call_at(budget.next_slice, self._next_evictions)

    # -- push --

    def client(self, client_id: str) -> ClientChannel:
        """A `Channel` to one connected client, for generated stubs:
        ``await NotifyStub(server.client("id-42")).deliver(event)``.

        Calls through it fail at once with `ClientNotConnected` if no client is
        connected under ``client_id``. In a cluster, a client on another node is
        reached through its node (all four call kinds; docs/cluster.md).
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

        Raises:
            ArgumentError: ``client_timeout`` is NaN or over `MAX_CALL_TIMEOUT`.
        """
        check_timeout(client_timeout, "client_timeout")
        if client_timeout is None:
            client_timeout = self.config.push_timeout
        max_in_flight = max_in_flight or self.config.broadcast_max_in_flight
        if self.cluster is not None:
            return await self.cluster.broadcast(
                send, labels=labels, client_timeout=client_timeout, max_in_flight=max_in_flight
            )
        return await broadcast(
            self, send, labels=labels, client_timeout=client_timeout, max_in_flight=max_in_flight
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
            ArgumentError: ``timeout`` is NaN or over `MAX_CALL_TIMEOUT`.
        """
        timeout = check_timeout(timeout)
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
        """Acked sends still waiting for their ack (in a cluster, those routed too)."""
        return len(self._promises) + (self.cluster.pending if self.cluster is not None else 0)

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

    async def fetch_client_info(self, client_id: str) -> ClientInfo:
        """`get_client_info` with live figures for a client on another node: that node is
        asked for its heartbeat, RTT, call and byte counts (within
        ``cluster_broadcast_grace``). Without a cluster, the same as `get_client_info`.

        Raises:
            ClientNotConnected: no client is connected under that id (on any node).
        """
        if self.cluster is not None and client_id not in self.sessions:
            return await self.cluster.fetch_client_info(client_id)
        return self.get_client_info(client_id)

    async def fetch_clients(self) -> list[ClientInfo]:
        """`list_clients` with live figures for clients on other nodes (each live node is
        asked once; one that does not answer within ``cluster_broadcast_grace`` is listed
        from the registry). Without a cluster, the same as `list_clients`."""
        local = sorted((s.info() for s in self.sessions), key=lambda i: i.client_id)
        if self.cluster is not None:
            return await self.cluster.fetch_clients(local)
        return local

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
        if self._listener is None or self._stopping:
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
        calls = self._endpoint.calls
        clock = self._endpoint.clock
        if grace and calls:
            await wait_all(clock, [c.handler_task for c in calls], grace)
        for call in list(calls):
            call.cancel_with(StatusCode.UNAVAILABLE, "the server is shutting down")
        if calls:
            await wait_all(clock, [c.handler_task for c in calls], 1.0)
        if self._eviction_timer is not None:
            self._eviction_timer.cancel()  # connections still waiting are closed below
            self._eviction_timer = None
        self._evictions.clear()
        self._promises.close()
        await self.dispatcher.close()
        self._endpoint.stop_metrics()
        if self._gc is not None:
            self._gc[1].stop()
            self._gc[0].release()
            self._gc = None
        if self._http is not None:
            await self._http.close()
            self._http = None
        listener = self._listener
        port = listener.port
        # Closing each connection ends its session (_ServerConnection.connection_lost).
        listener.close()
        # Let CONNECTION_CLOSE frames leave before the socket goes.
        await asyncio.sleep(0)
        await self.hooks.drain()
        self._log.stop()
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


def _ticket_store(config: ServerConfig) -> ServerTicketStore | SealedTickets | None:
    """How the server keeps its TLS session tickets: sealed under ``tls_ticket_key_file`` (they
    survive a restart), in memory, or none (``tls_session_tickets=0``; and under mutual TLS,
    since a resumed handshake carries no client certificate). A bad key file is refused
    even when no ticket would be issued."""
    keys = load_ticket_keys(config.tls_ticket_key_file) if config.tls_ticket_key_file else None
    if not config.tls_session_tickets or config.client_cert_mode != "none":
        return None
    if keys is not None:
        return SealedTickets(keys)
    return ServerTicketStore(config.tls_session_tickets)


class _ServerConnection:
    """One accepted QUIC connection: its control stream, its session, its calls.

    It is the `quicflow.incoming.CallerLink` of every call its client makes.
    """

    __slots__ = (
        "conn",
        "control",
        "control_sid",
        "endpoint",
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
        self.endpoint = endpoint = server._endpoint
        self.conn = conn
        self.session: Session | None = None
        self.control: ControlProtocol | None = None
        self.control_sid = -1
        self.ping_window = 0.0  # start of the current one-second PING count
        self.pings = 0
        clock = endpoint.clock
        self.hello_timer: TimerHandleLike | None = clock.call_at(
            clock.time() + server.config.hello_timeout, self._hello_timeout
        )
        self.lane_in: ReceiveLane | bool = False  # True: we accept the client's lane
        rate = server.config.max_reset_rate
        self.resets = ResetBudget(rate, rate, clock.time()) if rate else None
        conn.attach(self)

    @property
    def peer_encodings(self) -> frozenset[str]:
        """Message encodings the client accepts, once its session is open."""
        session = self.session
        return session.peer_encodings if session is not None else frozenset()

    # -- what the connection tells us (transport.ConnectionListener) --

    def call_reset(self) -> None:
        # The peer reset a call we had not finished: spend from its budget (rapid reset).
        if self.resets is None or self.resets.spend(self.endpoint.clock.time()):
            return
        rate = self.server.config.max_reset_rate
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
        if self.endpoint.metrics is not None:
            self.endpoint.metrics.rapid_reset_closes += 1
        self.conn.close(ErrorCode.EXCESSIVE_LOAD, "rapid reset")

    def stream_opened(self, stream_id: int) -> IncomingCall | _ControlHandler | None:
        if self.server._stopping:
            return None  # refused: REFUSED reset, safe for the client to retry
        if stream_id == 0 and self.control is None:
            # The client's first stream is the control stream (wire-protocol.md §9).
            self.control = ControlProtocol(
                Role.CALLEE, max_frame_size=self.server.config.max_metadata_size
            )
            self.control_sid = stream_id
            return _ControlHandler(self)
        return self.endpoint.answer(self, stream_id)

    def lane_opened(self, stream_id: int) -> ReceiveLane | None:
        """The client's message lane (its first unidirectional stream), if negotiated."""
        session = self.session
        if self.lane_in is not True or stream_id != 2 or session is None:
            return None
        self.lane_in = lane = self.endpoint.receive_lane(
            self.conn, stream_id, sender=lambda: session.client_id
        )
        return lane

    # -- control stream --

    def control_events(self, events: list[ControlEvent]) -> None:
        for event in events:
            if self.conn.is_closed:
                return
            match event:
                case PingReceived():
                    self._on_ping(event.sequence)
                case HelloReceived():
                    self.endpoint.spawn(self._on_hello(event))
                case ControlStreamEnded():
                    self.conn.close(ErrorCode.PROTOCOL_ERROR, "control stream closed")
                case ProtocolViolation():
                    self.conn.close(ErrorCode.PROTOCOL_ERROR, f"control stream: {event.error}")
                case _:  # WELCOME, PONG, GOAWAY: the control machine refuses them on our side
                    pass

    async def _on_hello(self, hello: HelloReceived) -> None:
        """HELLO: authenticate, then open the session (wire-protocol.md §9)."""
        peer = self._peer_info()
        client_id = await self._authenticate(hello, peer)
        if client_id is None or self.conn.is_closed or self.session is not None:
            return
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        session = self._open_session(hello, client_id)
        self.server._admit(session, peer.address)

    def _peer_info(self) -> PeerInfo:
        addr = self.conn.peer_address
        verified = self.conn.client_certificate
        return PeerInfo(
            f"{addr[0]}:{addr[1]}" if addr else "",
            verified.der if verified is not None else None,
            verified.client_id if verified is not None else None,
        )

    async def _authenticate(self, hello: HelloReceived, peer: PeerInfo) -> str | None:
        """The client id the authenticator accepts; None (the connection closed) if none."""
        info = HelloInfo(
            hello.client_id, hello.metadata, dict(hello.labels), hello.protocol_version
        )
        try:
            result = self.server._authenticator(info, peer)
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
            self.conn.close(code, exc.message)
            return None
        except Exception as exc:
            logger.exception("authenticator raised")
            self.conn.close(
                ErrorCode.UNAUTHENTICATED, f"authenticator failed ({type(exc).__name__})"
            )
            return None
        return client_id

    def _open_session(self, hello: HelloReceived, client_id: str) -> Session:
        """The session's heartbeat and lanes, negotiated, and WELCOME sent."""
        config = self.server.config
        conn = self.conn
        interval = negotiate_interval(
            hello.heartbeat_interval, config.heartbeat_interval, config.min_heartbeat_interval
        )
        monitor = HeartbeatMonitor(
            interval,
            min(config.heartbeat_check_interval, interval),
            config.max_missed_heartbeats,
            self.endpoint.clock.time(),
        )
        session = Session(client_id, conn, hello.labels, interval, monitor)
        self.session = session
        assert self.control is not None
        # Message lanes (wire-protocol.md §11.1): the client's, unless interceptors must
        # see every message; ours, whenever the client accepts one.
        lanes = LANE_FEATURE in hello.features
        self.lane_in = lanes and not self.endpoint.interceptors
        conn.write(
            self.control_sid,
            self.control.send_welcome(
                client_id,
                interval,
                config.heartbeat_timeout,
                config.max_message_size,
                features=(LANE_FEATURE,) if self.lane_in else (),
                message_encodings=ENCODINGS,
            ),
        )
        if lanes:
            session.message_lane = SendLane(conn)
        peer_encodings = frozenset(hello.message_encodings)
        # The usual offer (ours) shares one set rather than a set per session.
        session.peer_encodings = (
            _OUR_ENCODINGS if peer_encodings == _OUR_ENCODINGS else peer_encodings
        )
        session.timer = self.endpoint.timer(
            monitor.next_report_at, lambda now: self._check_heartbeat(session, now)
        )
        session.timer.arm()
        return session

    def _on_ping(self, sequence: int) -> None:
        session = self.session
        if session is None or self.control is None:
            self.conn.close(ErrorCode.PROTOCOL_ERROR, "PING before HELLO")
            return
        if session.state is SessionState.CLOSED:
            return  # evicted: its connection is closed in the next slice, no PONG
        now = self.endpoint.clock.time()
        if now - self.ping_window >= 1.0:
            self.ping_window = now
            self.pings = 0
        self.pings += 1
        if self.pings > self.server.config.max_ping_rate:
            # Each PING costs a PONG: a flood is answered by closing, not by work.
            self.conn.close(ErrorCode.EXCESSIVE_LOAD, "ping flood")
            return
        session.monitor.ping_received(now)
        session.last_heartbeat = time.time()
        self.conn.write(self.control_sid, self.control.send_pong(sequence))

    def _check_heartbeat(self, session: Session, now: float) -> None:
        for event in session.monitor.poll(now):
            if isinstance(event, SessionExpired):
                # Evicted at the deadline: the session ends and leaves the registry now
                # (no push reaches it, no PING is answered); its connection is closed now
                # too unless many fell due at once, then in the next slices (`_evicted`).
                server = self.server
                info = session.info() if server.hooks.wants("heartbeat_timeout") else None
                session.end()
                server.sessions.remove(session)
                if server._log.admit("evicted (no heartbeat)"):
                    logger.info(
                        "client %s evicted: no heartbeat for %.1f s",
                        session.client_id,
                        now - event.last_ping,
                        extra={"client_id": session.client_id, "reason": "no heartbeat"},
                    )
                if self.endpoint.metrics is not None:
                    self.endpoint.metrics.heartbeat_timeouts += 1
                if info is not None:
                    server.hooks.fire("heartbeat_timeout", info)
                server._evicted(self)
                return

    def close_evicted(self) -> None:
        """Close the connection of a session evicted for its heartbeat: its calls end and
        the session's ``disconnect`` follows at once (no draining wait)."""
        session, self.session = self.session, None
        if session is None:
            return  # the connection ended meanwhile: connection_lost reported the session
        self.conn.close(ErrorCode.SESSION_EXPIRED, "no heartbeat: session expired")
        self.server._session_lost(session, "no heartbeat: session expired")

    def _hello_timeout(self) -> None:
        self.hello_timer = None
        if self.session is None:
            self.conn.close(ErrorCode.HELLO_TIMEOUT, "no HELLO in time")

    def send_goaway(self, reason: str, grace: float) -> None:
        session = self.session
        if session is not None and self.control is not None and not self.conn.is_closed:
            session.state = SessionState.DRAINING
            self.conn.write(self.control_sid, self.control.send_goaway(reason, grace))

    def nudged(self) -> None:
        pass  # only a client nudges

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.server._connections.discard(self)
        if self.hello_timer is not None:
            self.hello_timer.cancel()
            self.hello_timer = None
        session = self.session
        if session is None:
            return
        self.session = None
        # An evicted session has ended already; its connection closing is still its loss.
        if session.end() or session.monitor.expired:
            self.server._session_lost(session, self.conn.close_reason or exc.message)


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
