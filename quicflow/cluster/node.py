"""`ClusterNode`: one server's membership in a cluster (the runtime ring of cluster mode).

The server delegates to it only when a client is not local; a local client
always takes the local path with no NATS hop. What it does:

* **Registry.** It watches the server's ``connect``/``disconnect`` hooks and,
  one client at a time in order, subscribes the client's subject and
  registers it (compare-and-set; the KV revision becomes the session's
  epoch), kicks the session it replaced on another node, and delivers the
  sends held for it. On disconnect it unsubscribes and compare-and-deletes
  with its own epoch (a late unregister never deletes a newer session).
* **Routing.** ``server.client(id)`` for a remote id gives a channel whose
  unary calls travel as NATS requests to the owning node, which makes the
  call over QUIC and replies with the client's status and reply bytes.
  "No responders" is UNAVAILABLE at once (or a held send when holding is
  on); an answer "not here" (the client just moved) is retried with the
  same message id until the deadline. Streaming calls stay local-only.
* **Broadcast.** The local share runs as on one node; every other live node
  gets one scatter-gather request and answers with its clients' results;
  a node that has not answered by the deadline is reported, with its
  registered clients as timed out.
* **Liveness.** Every ``node_refresh`` seconds it rewrites its node record
  and deletes (compare-and-delete) registrations left by dead nodes.
* **Outage.** Without NATS every cluster operation fails fast with
  UNAVAILABLE; local work goes on; when NATS is back every local client is
  registered again.
* **Bounds.** At most ``max_in_flight`` routed calls per target node wait
  or run at once (more wait, within their deadline: back-pressure, not a
  queue), and at most ``max_in_flight`` routed calls are served at once
  (more are refused RESOURCE_EXHAUSTED).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import (
    AsyncIterable,
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Mapping,
)
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any, Protocol, TypeVar

from ..calls import UnaryUnaryCall
from ..errors import ClientNotConnected, ConnectionClosed, PromiseCapacityFull, RpcError, Timeout
from ..metadata import Metadata, MetadataLike, normalize_metadata
from ..push import (
    BroadcastResult,
    ClientChannel,
    Delivery,
    DeliveryStatus,
    Promise,
    PushHost,
    broadcast,
    deliver_one,
)
from ..rpc import Cardinality, Method
from ..sessions import ClientInfo, SessionState
from ..status import StatusCode
from ..wire.codec import ErrorCode
from .backend import BackendUnavailable, ClusterBackend, HoldFull, NotReachable
from .codec import (
    STREAM_REQUESTS,
    STREAM_RESPONSES,
    BroadcastCall,
    CallOutcome,
    ClientOutcome,
    NodeAnswer,
    NodeRecord,
    Registration,
    RoutedCall,
    StreamOpen,
)
from .streams import (
    RemoteStreamStreamCall,
    RemoteStreamUnaryCall,
    RemoteUnaryStreamCall,
    RoutedStream,
    ServedStream,
)
from .view import Entry, kick_applies

__all__ = [
    "ClusterBroadcastResult",
    "ClusterHost",
    "ClusterNode",
    "ClusterStats",
    "HoldRefused",
    "NodeOutcome",
]

logger = logging.getLogger("quicflow.cluster")

T = TypeVar("T")


class ClusterHost(PushHost, Protocol):
    """What a node needs of its `Server`: push's seam (`PushHost`) plus the bound port
    and the count of local acked sends; the seam the cluster reaches the server through
    (no import of server.py)."""

    @property
    def port(self) -> int: ...

    @property
    def pending_promises(self) -> int: ...


Resp = TypeVar("Resp")

_KICK = b"K"
_REGISTRY_ATTEMPTS = 12
_ANSWER = b"A"


def _identity(data: bytes) -> bytes:
    return data


def raw_method(route: str) -> Method[bytes, bytes]:
    """A unary method that carries already-serialized bytes both ways."""
    return Method(route, Cardinality.UNARY_UNARY, _identity, _identity, _identity, _identity)


@dataclass(frozen=True, slots=True)
class NodeOutcome:
    """How one node fared in a cluster broadcast."""

    node_id: str
    answered: bool
    clients: int
    """Clients it reported (answered), or had registered (did not answer)."""


@dataclass(frozen=True, slots=True)
class ClusterBroadcastResult(BroadcastResult[T]):
    """A `BroadcastResult` across the cluster, with each node's outcome.

    Clients of a node that did not answer by the deadline are in
    ``deliveries`` as TIMED_OUT (we cannot know whether they got it).
    """

    nodes: Mapping[str, NodeOutcome] = field(default_factory=dict)

    @property
    def missing_nodes(self) -> list[str]:
        """Nodes that did not answer in time."""
        return sorted(n for n, o in self.nodes.items() if not o.answered)


@dataclass(slots=True)
class ClusterStats:
    """Cross-node traffic, counted apart from local pushes."""

    routed_out: int = 0
    """Calls this node routed to a client on another node."""
    routed_out_failed: int = 0
    routed_in: int = 0
    """Calls other nodes routed to a client here."""
    routed_in_refused: int = 0
    """Routed calls refused: over the in-flight bound."""
    retried_stale: int = 0
    """Retries after a 'not here' answer (the client had moved)."""
    held: int = 0
    """Sends kept in JetStream for an absent client."""
    held_delivered: int = 0
    """Held sends this node delivered to a client that came back here."""
    held_expired: int = 0
    """Held sends taken back after ``hold_max_age`` (the client did not come back)."""
    broadcasts: int = 0
    broadcast_missing_nodes: int = 0
    kicks_sent: int = 0
    kicks_applied: int = 0
    registrations: int = 0
    stale_removed: int = 0
    """Registrations of dead nodes this node deleted."""
    streams_out: int = 0
    """Streaming calls this node routed to a client on another node."""
    streams_out_failed: int = 0
    streams_in: int = 0
    """Streaming calls other nodes routed to a client here."""
    streams_in_refused: int = 0
    """Routed streams refused: over the in-flight bound."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class RemoteUnaryCall(UnaryUnaryCall[Resp]):
    """A unary call to a client on another node, routed through the cluster.

    It is a `UnaryUnaryCall` for the type checker (stubs return that), but
    none of the stream machinery runs: the request is serialized at once
    and one task waits for the owning node's answer.
    """

    def __init__(
        self,
        node: ClusterNode,
        client_id: str,
        method: Method[Any, Resp],
        request: Any,
        timeout: float | None,
        metadata: MetadataLike | None,
        message_id: bytes,
        holdable: bool,
        outcome: CallOutcome | None = None,
    ) -> None:
        self._method = method
        self._rcode: StatusCode | None = None
        self._rdetails = ""
        self._rtrailing: Metadata = ()
        self._rtask: asyncio.Task[CallOutcome] | None = None
        self._routcome = outcome
        if outcome is not None:
            return
        loop = asyncio.get_running_loop()
        try:
            payload = method.serialize_request(request)
            md = normalize_metadata(metadata)
        except Exception as exc:
            self._routcome = CallOutcome(
                StatusCode.INTERNAL, f"could not serialize the request: {exc}"
            )
            return
        if timeout is None:
            timeout = node.server.config.push_timeout
        deadline = loop.time() + (node.call_timeout if timeout is None else timeout)
        call = RoutedCall(
            method.route,
            payload,
            md,
            None if timeout is None else timeout,
            message_id,
            node.node_id,
            "",
            holdable,
        )
        self._rtask = loop.create_task(node.route(client_id, call, deadline))

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()

    async def _outcome(self) -> CallOutcome:
        if self._routcome is None:
            assert self._rtask is not None
            try:
                self._routcome = await self._rtask
            except RpcError as exc:
                self._routcome = CallOutcome(exc.code, exc.message, b"", exc.trailing_metadata)
                self._rcode = exc.code
                self._rdetails = exc.message
                raise
        outcome = self._routcome
        self._rcode, self._rdetails, self._rtrailing = (
            outcome.code,
            outcome.message,
            outcome.trailing_metadata,
        )
        return outcome

    async def _result(self) -> Resp:
        outcome = await self._outcome()
        if outcome.code is not StatusCode.OK:
            if outcome.not_here:
                raise ClientNotConnected(message=outcome.message)
            raise RpcError(outcome.code, outcome.message, outcome.trailing_metadata)
        try:
            return self._method.deserialize_response(outcome.payload)
        except Exception as exc:
            raise RpcError(StatusCode.INTERNAL, f"could not parse the response: {exc}") from exc

    async def _settled(self) -> None:
        with contextlib.suppress(RpcError):
            await self._outcome()

    async def initial_metadata(self) -> Metadata:
        await self._settled()
        return ()

    async def trailing_metadata(self) -> Metadata:
        await self._settled()
        return self._rtrailing

    async def code(self) -> StatusCode:
        await self._settled()
        return self._rcode or StatusCode.UNKNOWN

    async def details(self) -> str:
        await self._settled()
        return self._rdetails

    def cancel(self) -> bool:
        task = self._rtask
        if task is None or task.done():
            return False
        return task.cancel()

    def done(self) -> bool:
        return self._routcome is not None or (self._rtask is not None and self._rtask.done())

    def __repr__(self) -> str:
        return f"<RemoteUnaryCall {self._method.route}>"


class ClusterChannel(ClientChannel):
    """`server.client(id)` in a cluster: the local path when the client is here, else
    routed to its node. It follows the id: each call looks again."""

    def __init__(
        self,
        node: ClusterNode,
        client_id: str,
        message_id: bytes = b"",
        *,
        holdable: bool = False,
        outcome: CallOutcome | None = None,
    ) -> None:
        super().__init__(node.server, client_id, message_id)
        self._node = node
        self._holdable = holdable
        self._outcome = outcome

    def _local(self) -> bool:
        return self._outcome is None and self._node.is_local(self.client_id)

    def unary_unary(
        self,
        method: Method[Any, Resp],
        request: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryUnaryCall[Resp]:
        if self._local():
            return super().unary_unary(
                method,
                request,
                timeout=timeout,
                metadata=metadata,
                wait_for_ready=wait_for_ready,
                compression=compression,
            )
        # Routed through NATS to the client's node: ``compression`` applies to QUIC only.
        return RemoteUnaryCall(
            self._node,
            self.client_id,
            method,
            request,
            timeout,
            metadata,
            self.message_id,
            self._holdable,
            self._outcome,
        )

    def unary_stream(self, method: Method[Any, Resp], request: Any, **kw: Any) -> Any:
        if self._local():
            return super().unary_stream(method, request, **kw)
        return RemoteUnaryStreamCall(self._stream(method, STREAM_RESPONSES, request, **kw))

    def stream_unary(
        self, method: Method[Any, Resp], requests: AsyncIterable[Any] | Iterable[Any], **kw: Any
    ) -> Any:
        if self._local():
            return super().stream_unary(method, requests, **kw)
        return RemoteStreamUnaryCall(self._stream(method, STREAM_REQUESTS, requests, **kw))

    def stream_stream(
        self, method: Method[Any, Resp], requests: AsyncIterable[Any] | Iterable[Any], **kw: Any
    ) -> Any:
        if self._local():
            return super().stream_stream(method, requests, **kw)
        return RemoteStreamStreamCall(
            self._stream(method, STREAM_REQUESTS | STREAM_RESPONSES, requests, **kw)
        )

    def _stream(
        self,
        method: Method[Any, Any],
        kind: int,
        request_or_requests: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> RoutedStream:
        # Routed through NATS to the client's node: ``compression`` applies to QUIC only.
        return RoutedStream(
            self._node,
            self.client_id,
            method,
            kind,
            request_or_requests,
            timeout,
            metadata,
            self.message_id,
        )

    async def send_message(
        self,
        message_type: str,
        payload: bytes = b"",
        *,
        metadata: MetadataLike | None = None,
        timeout: float | None = None,
        wait_ack: bool = True,
    ) -> bytes | None:
        if self._local() or wait_ack:
            return await super().send_message(
                message_type, payload, metadata=metadata, timeout=timeout, wait_ack=wait_ack
            )
        # Fire and forget across nodes: one routed call whose answer nobody awaits.
        from ..messaging import DELIVER
        from ..wire.v1.frames_pb2 import RawMessage

        call = self.unary_unary(
            DELIVER,
            RawMessage(type=message_type, payload=payload),
            timeout=timeout,
            metadata=metadata,
        )
        self._node.spawn(_swallow(call))
        return None

    def __repr__(self) -> str:
        return f"<ClusterChannel {self.client_id}>"


async def _swallow(call: Awaitable[Any]) -> None:
    with contextlib.suppress(RpcError):
        await call


class HoldRefused(ClientNotConnected):
    """A held send that failed for good: the client's hold slots are full, or it did not
    come back within ``hold_max_age``. Not retried."""


class _NodeDied(Exception):
    """The node holding a routed call's client was declared dead while the call waited."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.node_id = node_id


class _NotUnary(Exception):
    """Raised by `_CaptureChannel` when a `send` function makes a streaming call."""


class _Captured(Exception):
    """Raised by `_CaptureChannel` once it has the call a `send` function makes."""


class _CaptureChannel(ClientChannel):
    """Runs a user's ``send(channel)`` only far enough to learn its unary call."""

    def __init__(self, node: ClusterNode) -> None:
        super().__init__(node.server, "")
        self.call: tuple[Method[Any, Any], bytes, Metadata, float | None] | None = None

    def unary_unary(
        self,
        method: Method[Any, Resp],
        request: Any,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryUnaryCall[Resp]:
        self.call = (
            method,
            method.serialize_request(request),
            normalize_metadata(metadata),
            timeout,
        )
        raise _Captured()

    def unary_stream(self, method: Method[Any, Resp], request: Any, **kw: Any) -> Any:
        raise _NotUnary()

    def stream_unary(
        self, method: Method[Any, Resp], requests: AsyncIterable[Any] | Iterable[Any], **kw: Any
    ) -> Any:
        raise _NotUnary()

    def stream_stream(
        self, method: Method[Any, Resp], requests: AsyncIterable[Any] | Iterable[Any], **kw: Any
    ) -> Any:
        raise _NotUnary()


class ClusterNode:
    """One server's membership in a cluster; see the module docstring."""

    def __init__(
        self,
        server: ClusterHost,
        backend: ClusterBackend,
        node_id: str,
        *,
        address: str,
        node_refresh: float = 1.0,
        call_timeout: float = 30.0,
        broadcast_grace: float = 1.0,
        max_in_flight: int = 1000,
        stream_window: int = 256 * 1024,
    ) -> None:
        self.server = server
        self.backend = backend
        self.node_id = node_id
        self.address = address
        self.node_refresh = node_refresh
        self.call_timeout = call_timeout
        self.broadcast_grace = broadcast_grace
        self.max_in_flight = max_in_flight
        self.stream_window = stream_window
        """Bytes a routed stream may have unconsumed per direction (its credit window;
        each message counts its length plus 64)."""
        self.streams_out: set[RoutedStream] = set()
        """Routed streams this node called, not ended."""
        self.streams_in: set[ServedStream] = set()
        """Routed streams this node serves, not ended."""
        self.stats = ClusterStats()
        self.started = time.time()
        self._epochs: dict[str, int] = {}
        self._chains: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._gates: dict[str, asyncio.Semaphore] = {}
        self._serving = 0
        self._answers: dict[bytes, asyncio.Future[CallOutcome]] = {}
        self._promises = 0
        self._refresher: asyncio.Task[None] | None = None
        self._waiting_on: dict[str, set[asyncio.Task[Any]]] = {}
        """Routed calls waiting for an answer, by the node they wait on."""
        self._abandoned: set[asyncio.Task[Any]] = set()
        self._closing = False

    # -- lifecycle --

    async def start(self) -> None:
        """Join the cluster (or keep trying in the background) and follow the sessions."""
        hooks = self.server.hooks
        hooks.add("connect", self._on_connect)
        hooks.add("disconnect", self._on_disconnect)
        await self.backend.start(self)
        if self.backend.connected:
            await self._reconcile()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def stop(self) -> None:
        """Leave: unregister local clients (compare-and-delete), withdraw, disconnect."""
        self._closing = True
        hooks = self.server.hooks
        hooks.remove("connect", self._on_connect)
        hooks.remove("disconnect", self._on_disconnect)
        if self._refresher is not None:
            self._refresher.cancel()
        if self.backend.connected:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0):
                    await asyncio.gather(
                        *(self.backend.unregister(c, e) for c, e in list(self._epochs.items())),
                        return_exceptions=True,
                    )
        self._epochs.clear()
        for task in list(self._tasks) + list(self._chains.values()):
            task.cancel()
        for future in self._answers.values():
            if not future.done():
                future.set_exception(ConnectionClosed(message="the server is shutting down"))
        self._end_streams(StatusCode.UNAVAILABLE, "the node is shutting down")
        await self.backend.close()

    @property
    def pending(self) -> int:
        """Acked sends this node made through the cluster path, not yet settled."""
        return self._promises

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task the node cancels when it stops."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- sessions -> registry --

    def is_local(self, client_id: str) -> bool:
        """True if a live session for ``client_id`` is on this node."""
        session = self.server.sessions.get(client_id)
        return session is not None and not session.conn.is_closed

    def _on_connect(self, info: ClientInfo) -> None:
        self._chain(info.client_id, self._up)

    def _on_disconnect(self, info: ClientInfo, reason: str) -> None:
        self._chain(info.client_id, self._down)

    def _chain(self, client_id: str, step: Callable[[str], Coroutine[Any, Any, None]]) -> None:
        """Run registry work for one client in order (a down never overtakes an up),
        retried while JetStream does not answer (e.g. a NATS cluster electing a leader)."""
        if self._closing:
            return
        previous = self._chains.get(client_id)

        async def run() -> None:
            if previous is not None:
                with contextlib.suppress(BaseException):
                    await previous
            for attempt in range(_REGISTRY_ATTEMPTS):
                try:
                    await step(client_id)
                    return
                except BackendUnavailable:
                    return  # re-registered when NATS is back (_reconcile)
                except Exception as exc:
                    if attempt == _REGISTRY_ATTEMPTS - 1:
                        logger.warning("cluster: registry update for %r failed: %s", client_id, exc)
                        return
                    await asyncio.sleep(min(0.05 * 2**attempt, 1.0))

        task = asyncio.get_running_loop().create_task(run())
        self._chains[client_id] = task

        def done(t: asyncio.Task[None]) -> None:
            if self._chains.get(client_id) is t:
                del self._chains[client_id]

        task.add_done_callback(done)

    async def _up(self, client_id: str) -> None:
        session = self.server.sessions.get(client_id)
        if session is None or session.conn.is_closed or not self.backend.connected:
            return
        await self.backend.serve(client_id)
        info = session.info()
        epoch, previous = await self.backend.register(
            client_id,
            Registration(
                self.node_id,
                info.connected_since,
                info.remote_address,
                dict(info.labels),
                info.heartbeat_interval,
            ),
        )
        self.stats.registrations += 1
        self._epochs[client_id] = epoch
        if previous is not None and previous.registration.node_id != self.node_id:
            # The client was on another node: end that session (one live session per id).
            await self.backend.send_to_node(
                previous.registration.node_id,
                _KICK + json.dumps({"client": client_id, "epoch": previous.epoch}).encode(),
            )
            self.stats.kicks_sent += 1
        self.spawn(self._deliver_held(client_id))

    async def _down(self, client_id: str) -> None:
        if self.is_local(client_id):
            return  # replaced here by a newer session, which registered itself
        epoch = self._epochs.pop(client_id, None)
        await self.backend.unserve(client_id)
        if epoch is not None and self.backend.connected:
            await self.backend.unregister(client_id, epoch)

    async def _reconcile(self) -> None:
        """After (re)joining: register every local client, drop our stale registrations."""
        local = {s.client_id for s in self.server.sessions}
        now = self.backend.now()
        for entry in self.backend.view.clients(now) + self.backend.view.stale_registrations(now):
            if entry.registration.node_id == self.node_id and entry.client_id not in local:
                with contextlib.suppress(Exception):
                    await self.backend.unregister(entry.client_id, entry.epoch)
        for client_id in local:
            self._chain(client_id, self._up)

    def connection_changed(self, connected: bool) -> None:
        if not connected:
            # Frames may be lost while NATS is away: end the streams rather than stall.
            self._end_streams(StatusCode.UNAVAILABLE, "lost the cluster backend mid-stream")
        elif not self._closing:
            self.spawn(self._reconcile())

    def _end_streams(self, code: StatusCode, why: str) -> None:
        for out in list(self.streams_out):
            out.fail(code, why)
        for served in list(self.streams_in):
            served.abort(code, why)

    async def _refresh_loop(self) -> None:
        while True:
            if self.backend.connected:
                record = NodeRecord(
                    self.node_id, self.address, self.started, len(self.server.sessions)
                )
                # Each step on its own: one failing (JetStream busy electing) must not
                # starve the others, above all the healing in _check_registry.
                self._abandon_dead()
                for step in (
                    partial(self.backend.refresh, record),
                    self._check_registry,
                    self._remove_stale,
                ):
                    try:
                        await step()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        logger.debug("cluster: refresh step failed: %s", exc)
            await asyncio.sleep(self.node_refresh)

    async def _check_registry(self) -> None:
        """Heal what a lost message or a NATS failover may have left wrong: re-read the
        registry if our own fresh record is not in it; register a local client that is
        missing (a node that thought us dead deleted it); close a local session that a
        newer registration on another node superseded (a kick that never arrived)."""
        backend = self.backend
        view = backend.view
        now = backend.now()
        if not backend.in_sync:
            return
        if not view.is_live(self.node_id, now):
            # Our refresh succeeded but our watch did not show it: the watch is stale.
            await asyncio.sleep(self.node_refresh / 2)
            if not backend.view.is_live(self.node_id, backend.now()):
                await backend.resync()
            return
        for session in self.server.sessions:
            client_id = session.client_id
            if client_id in self._chains or session.conn.is_closed:
                continue
            entry = view.get(client_id)
            mine = self._epochs.get(client_id)
            if entry is None:
                self._chain(client_id, self._up)
            elif entry.registration.node_id != self.node_id and (
                mine is None or entry.epoch > mine
            ):
                self._kicked(client_id, entry.epoch - 1)

    async def _remove_stale(self) -> None:
        view = self.backend.view
        for entry in view.stale_registrations(self.backend.now()):
            if entry.registration.node_id == self.node_id:
                continue
            with contextlib.suppress(Exception):
                if await self.backend.unregister(entry.client_id, entry.epoch):
                    self.stats.stale_removed += 1

    # -- node inbox --

    def node_message(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        try:
            if kind == _KICK:
                obj = json.loads(body)
                self._kicked(str(obj["client"]), int(obj["epoch"]))
            elif kind == _ANSWER:
                outcome = CallOutcome.decode(body)
                future = self._answers.get(outcome.message_id)
                if future is not None and not future.done():
                    future.set_result(outcome)
        except (ValueError, KeyError) as exc:
            logger.warning("cluster: bad node message: %s", exc)

    def _kicked(self, client_id: str, superseded: int) -> None:
        session = self.server.sessions.get(client_id)
        if session is None or session.state is SessionState.CLOSED:
            return
        if not kick_applies(self._epochs.get(client_id), superseded):
            return
        self.stats.kicks_applied += 1
        logger.info("cluster: client %s reconnected on another node: closing here", client_id)
        session.conn.close(ErrorCode.SESSION_REPLACED, "replaced by a newer connection")

    # -- serving routed calls --

    async def routed_call(self, client_id: str, call: RoutedCall) -> CallOutcome:
        if not self.is_local(client_id):
            return CallOutcome(
                StatusCode.UNAVAILABLE, f"client {client_id!r} is not on this node", not_here=True
            )
        if self._serving >= self.max_in_flight:
            self.stats.routed_in_refused += 1
            return CallOutcome(StatusCode.RESOURCE_EXHAUSTED, "node busy: too many routed calls")
        self._serving += 1
        self.stats.routed_in += 1
        try:
            return await self._call_local(client_id, call)
        finally:
            self._serving -= 1

    async def _call_local(self, client_id: str, call: RoutedCall) -> CallOutcome:
        channel = ClientChannel(self.server, client_id, call.message_id)
        try:
            pending = channel.unary_unary(
                raw_method(call.route), call.payload, timeout=call.timeout, metadata=call.metadata
            )
            reply = await pending
        except ClientNotConnected as exc:
            return CallOutcome(exc.code, exc.message, not_here=True, message_id=call.message_id)
        except RpcError as exc:
            return CallOutcome(
                exc.code, exc.message, b"", exc.trailing_metadata, message_id=call.message_id
            )
        return CallOutcome(
            StatusCode.OK,
            payload=reply,
            trailing_metadata=await pending.trailing_metadata(),
            message_id=call.message_id,
        )

    async def stream_opened(self, client_id: str, data: bytes, reply: str) -> None:
        """Serve a routed stream opened by another node (until it ends)."""
        try:
            open_ = StreamOpen.decode(data)
        except ValueError as exc:
            logger.warning("cluster: undecodable stream open: %s", exc)
            return
        await ServedStream(self, client_id, open_, reply).run()

    async def broadcast_call(self, call: BroadcastCall) -> NodeAnswer:
        method = raw_method(call.call.route)
        routed = call.call
        result = await broadcast(
            self.server,
            lambda ch: ch.unary_unary(
                method, routed.payload, timeout=routed.timeout, metadata=routed.metadata
            ),
            labels=call.labels or None,
            client_timeout=routed.timeout,
            max_in_flight=call.max_in_flight,
        )
        return NodeAnswer(
            self.node_id,
            tuple(
                ClientOutcome(
                    d.client_id,
                    d.status.value,
                    CallOutcome(d.code, d.message, d.reply or b""),
                )
                for d in result.deliveries.values()
            ),
        )

    # -- routing out --

    def _gate(self, client_id: str) -> asyncio.Semaphore:
        entry = self.backend.view.lookup(client_id, self.backend.now())
        node = entry.registration.node_id if entry is not None else "?"
        gate = self._gates.get(node)
        if gate is None:
            gate = self._gates[node] = asyncio.Semaphore(self.max_in_flight)
        return gate

    async def route(self, client_id: str, call: RoutedCall, deadline: float) -> CallOutcome:
        """Route ``call`` to ``client_id``'s node until answered or ``deadline`` (loop time).

        Raises:
            ClientNotConnected: no node holds the client (and the call may not be held).
            Timeout: no answer by the deadline.
            BackendUnavailable: NATS is not reachable.
        """
        loop = asyncio.get_running_loop()
        self.stats.routed_out += 1
        try:
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise Timeout(message="deadline exceeded routing to another node")
                if self.is_local(client_id):  # it moved here meanwhile
                    return await self._call_local(client_id, call)
                if not self.backend.connected:
                    raise BackendUnavailable()
                try:
                    async with asyncio.timeout(left):
                        async with self._gate(client_id):
                            outcome = await self._call_watching(client_id, call, left)
                except _NodeDied as died:
                    if not call.message_id:
                        raise ConnectionClosed(
                            message=f"node {died.node_id} died while the call was in flight"
                        ) from None
                    self.stats.retried_stale += 1  # an acked send: go again, same id
                    continue
                except NotReachable:
                    if call.holdable:
                        return await self._hold(client_id, call, deadline)
                    raise ClientNotConnected(
                        message=f"client {client_id!r} is not connected to any node"
                    ) from None
                except TimeoutError:
                    raise Timeout(message="no answer from the client's node in time") from None
                if not outcome.not_here:
                    return outcome
                self.stats.retried_stale += 1
                await asyncio.sleep(min(0.01, max(left, 0)))
        except (RpcError, asyncio.CancelledError):
            self.stats.routed_out_failed += 1
            raise
        except Exception as exc:
            # NATS went away mid-call (nats-py raises its own errors then): the caller
            # sees UNAVAILABLE, like any other failure to reach the cluster.
            self.stats.routed_out_failed += 1
            raise BackendUnavailable(f"the cluster backend failed: {exc!r}") from exc

    async def _call_watching(self, client_id: str, call: RoutedCall, left: float) -> CallOutcome:
        """`backend.call`, abandoned (`_NodeDied`) if the client's node is declared dead
        while it waits: a killed node never answers, and waiting for the deadline would
        hide that the client has moved on. The hot path only files the waiting task under
        its node; the refresh loop (`_abandon_dead`) cancels the tasks of dead nodes."""
        entry = self.backend.view.lookup(client_id, self.backend.now())
        task = asyncio.current_task()
        if entry is None or task is None:
            return await self.backend.call(client_id, call, left)
        node_id = entry.registration.node_id
        waiting = self._waiting_on.setdefault(node_id, set())
        waiting.add(task)
        try:
            return await self.backend.call(client_id, call, left)
        except asyncio.CancelledError:
            if task in self._abandoned:
                self._abandoned.discard(task)
                task.uncancel()
                raise _NodeDied(node_id) from None
            raise
        finally:
            waiting.discard(task)
            if not waiting:
                self._waiting_on.pop(node_id, None)

    def _abandon_dead(self) -> None:
        """Cancel routed calls waiting on nodes that are no longer live; end the routed
        streams whose other node is no longer live."""
        view = self.backend.view
        now = self.backend.now()
        for out in list(self.streams_out):
            owner = out.owner_node
            if owner is not None and not view.is_live(owner, now):
                out.fail(StatusCode.UNAVAILABLE, f"node {owner} died mid-stream")
        for served in list(self.streams_in):
            if served.origin and not view.is_live(served.origin, now):
                served.abort(StatusCode.CANCELLED, f"the calling node {served.origin} died")
        self._abandoned = {t for t in self._abandoned if not t.done()}
        for node_id, tasks in list(self._waiting_on.items()):
            if not view.is_live(node_id, now):
                for task in tasks:
                    if task not in self._abandoned:
                        self._abandoned.add(task)
                        task.cancel()

    async def _hold(self, client_id: str, call: RoutedCall, deadline: float) -> CallOutcome:
        """Keep the send in JetStream until the client is back (anywhere), for at most
        ``hold_max_age`` and never past the deadline; at most ``hold_max_count`` sends are
        held per client, cluster-wide (the stream refuses one more)."""
        loop = asyncio.get_running_loop()
        max_age = self.server.config.hold_max_age
        until_age = loop.time() + max_age
        future: asyncio.Future[CallOutcome] = loop.create_future()
        self._answers[call.message_id] = future
        try:
            try:
                seq = await self.backend.hold(
                    client_id, call, min(deadline, until_age) - loop.time()
                )
            except HoldFull:
                raise HoldRefused(
                    message=f"client {client_id!r} is not connected and its hold slots are full"
                ) from None
            self.stats.held += 1
            # It may have connected between "no responders" and the hold: try once more.
            with contextlib.suppress(NotReachable, TimeoutError):
                async with asyncio.timeout(max(deadline - loop.time(), 0)):
                    outcome = await self.backend.call(client_id, call, deadline - loop.time())
                if not outcome.not_here:
                    with contextlib.suppress(Exception):
                        await self.backend.drop_held(seq)
                    return outcome
            try:
                async with asyncio.timeout(max(min(deadline, until_age) - loop.time(), 0)):
                    return await future
            except TimeoutError:
                pass
            if until_age < deadline and await self.backend.take_back(seq):
                self.stats.held_expired += 1
                raise HoldRefused(
                    message=f"client {client_id!r} did not come back within {max_age} s"
                ) from None
            # Already being delivered (or the deadline came first): wait for the answer.
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0)):
                    return await future
            except TimeoutError:
                raise Timeout(message="the client did not come back before the deadline") from None
        finally:
            self._answers.pop(call.message_id, None)

    async def _deliver_held(self, client_id: str) -> None:
        """Deliver what was held for a client that just connected here."""
        try:
            held = await self.backend.held_for(client_id)
        except Exception as exc:
            logger.debug("cluster: could not read held sends for %r: %s", client_id, exc)
            return
        for seq, call in held:
            outcome = await self._call_local(client_id, call)
            if outcome.not_here:
                return  # gone again: the rest stay held for its next connection
            self.stats.held_delivered += 1
            with contextlib.suppress(Exception):
                await self.backend.drop_held(seq)
                if call.origin:
                    await self.backend.send_to_node(call.origin, _ANSWER + outcome.encode())

    # -- the Server API, cluster-wide --

    def channel(self, client_id: str) -> ClientChannel:
        return ClusterChannel(self, client_id)

    def reachable(self, client_id: str) -> bool:
        """True if the client is connected here or registered on a live node."""
        if self.is_local(client_id):
            return True
        return self.backend.view.lookup(client_id, self.backend.now()) is not None

    def async_send(
        self,
        client_id: str,
        send: Callable[[ClientChannel], Awaitable[T]],
        timeout: float,
        callback: Callable[[Promise[T]], object] | None,
    ) -> Promise[T]:
        """`Server.async_send` for a client that may be on any node."""
        config = self.server.config
        holdable = config.hold_max_count > 0
        if not holdable and not self.reachable(client_id):
            raise ClientNotConnected(message=f"client {client_id!r} is not connected")
        if self.server.pending_promises >= config.max_pending_promises:
            raise PromiseCapacityFull(
                message=f"{config.max_pending_promises} acked sends are pending"
            )
        loop = asyncio.get_running_loop()
        message_id = uuid.uuid4().bytes
        deadline = loop.time() + timeout
        future: asyncio.Future[T] = loop.create_future()
        promise = Promise(message_id, future)
        self._promises += 1
        task = self.spawn(self._attempts(client_id, send, message_id, deadline, holdable))

        def settle(t: asyncio.Task[T]) -> None:
            self._promises -= 1
            metrics = self.server.metrics
            if metrics is not None:  # counted like the server's own acked sends
                if not t.cancelled() and isinstance(t.exception(), Timeout):
                    metrics.promises_timed_out += 1
                elif t.cancelled() or t.exception() is not None:
                    metrics.promises_failed += 1
                else:
                    metrics.promises_resolved += 1
            if future.done():
                return
            if t.cancelled():
                future.set_exception(ConnectionClosed(message="the server is shutting down"))
            elif (exc := t.exception()) is not None:
                if isinstance(exc, ConnectionClosed):
                    exc = ClientNotConnected(message=f"client disconnected: {exc.message}")
                future.set_exception(exc)
            else:
                future.set_result(t.result())

        task.add_done_callback(settle)
        future.add_done_callback(lambda f: task.cancel() if f.cancelled() else None)
        if callback is not None:
            promise.add_done_callback(callback)
        return promise

    async def _attempts(
        self,
        client_id: str,
        send: Callable[[ClientChannel], Awaitable[T]],
        message_id: bytes,
        deadline: float,
        holdable: bool,
    ) -> T:
        """Send until acked or the deadline, wherever the client is, under one message id
        (the client answers a repeat from its reply cache)."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(max(deadline - loop.time(), 0)):
                while True:
                    channel = ClusterChannel(self, client_id, message_id, holdable=holdable)
                    try:
                        return await send(channel)
                    except HoldRefused:
                        raise
                    except (ConnectionClosed, ClientNotConnected) as exc:
                        if not holdable and not self.reachable(client_id):
                            raise
                        logger.debug("cluster: retrying a send to %r: %s", client_id, exc)
                    await asyncio.sleep(0.02)
        except TimeoutError:
            raise Timeout(
                message=f"no ack within the promise timeout ({message_id.hex()})"
            ) from None

    async def broadcast(
        self,
        send: Callable[[ClientChannel], Awaitable[T]],
        *,
        labels: Mapping[str, str] | None,
        client_timeout: float | None,
        max_in_flight: int,
    ) -> ClusterBroadcastResult[T]:
        """`Server.broadcast` across every node."""
        self.stats.broadcasts += 1
        local = self.spawn(
            broadcast(
                self.server,
                send,
                labels=labels,
                client_timeout=client_timeout,
                max_in_flight=max_in_flight,
            )
        )
        deliveries: dict[str, Delivery[T]] = {}
        nodes: dict[str, NodeOutcome] = {}
        now = self.backend.now()
        view = self.backend.view
        expected = {n for n in view.live_nodes(now) if n != self.node_id}
        # Who each node had when we asked: a node that dies meanwhile leaves the view.
        registered = [
            e
            for e in view.clients(now)
            if e.registration.node_id in expected
            and (not labels or all(e.registration.labels.get(k) == v for k, v in labels.items()))
        ]
        answers: list[NodeAnswer] = []
        capture = _CaptureChannel(self)
        with contextlib.suppress(_Captured, _NotUnary):
            await send(capture)
        timeout = client_timeout if client_timeout is not None else self.call_timeout
        if capture.call is not None and expected and self.backend.connected:
            method, payload, md, call_timeout = capture.call
            bcall = BroadcastCall(
                RoutedCall(
                    method.route,
                    payload,
                    md,
                    timeout if call_timeout is None else min(call_timeout, timeout),
                    b"",
                    self.node_id,
                ),
                uuid.uuid4().bytes,
                dict(labels or {}),
                max_in_flight,
            )
            try:
                answers = await self.backend.broadcast(
                    bcall, expected, timeout + self.broadcast_grace
                )
            except Exception as exc:  # NATS away or failing: the other nodes are reported
                logger.debug("cluster: broadcast could not ask the other nodes: %s", exc)
        for answer in answers:
            nodes[answer.node_id] = NodeOutcome(answer.node_id, True, len(answer.results))
            for result in answer.results:
                channel = ClusterChannel(self, result.client_id, outcome=result.outcome)
                try:
                    reply = await send(channel)
                except RpcError as exc:
                    status = (
                        DeliveryStatus.TIMED_OUT
                        if exc.code is StatusCode.DEADLINE_EXCEEDED
                        else DeliveryStatus.FAILED
                    )
                    deliveries[result.client_id] = Delivery(
                        result.client_id, status, None, exc.code, exc.message
                    )
                else:
                    deliveries[result.client_id] = Delivery(
                        result.client_id, DeliveryStatus.DELIVERED, reply
                    )
        if capture.call is None:
            # A streaming send is not one request to fan out: each remote client gets
            # its own routed stream, with the broadcast's window and per-client timeout.
            routed = await self._broadcast_routed(send, registered, timeout, max_in_flight)
            deliveries.update(routed)
            now = self.backend.now()
            for node_id in expected:
                mine = [e for e in registered if e.registration.node_id == node_id]
                nodes[node_id] = NodeOutcome(node_id, view.is_live(node_id, now), len(mine))
        for node_id in expected - nodes.keys():
            missing = [e for e in registered if e.registration.node_id == node_id]
            nodes[node_id] = NodeOutcome(node_id, False, len(missing))
            if not answers and not self.backend.connected:
                status, code, why = (
                    DeliveryStatus.FAILED,
                    StatusCode.UNAVAILABLE,
                    "the cluster backend is unreachable",
                )
            else:
                self.stats.broadcast_missing_nodes += 1
                status, code, why = (
                    DeliveryStatus.TIMED_OUT,
                    StatusCode.DEADLINE_EXCEEDED,
                    f"node {node_id} did not answer in time",
                )
            for entry in missing:
                deliveries[entry.client_id] = Delivery(entry.client_id, status, None, code, why)
        mine = await local
        nodes[self.node_id] = NodeOutcome(self.node_id, True, len(mine))
        deliveries.update(mine.deliveries)
        return ClusterBroadcastResult(deliveries, nodes)

    async def _broadcast_routed(
        self,
        send: Callable[[ClientChannel], Awaitable[T]],
        entries: list[Entry],
        timeout: float,
        max_in_flight: int,
    ) -> dict[str, Delivery[T]]:
        gate = asyncio.Semaphore(max(max_in_flight, 1))

        async def one(client_id: str) -> Delivery[T]:
            async with gate:
                return await deliver_one(
                    client_id, send, ClusterChannel(self, client_id), asyncio.timeout(timeout)
                )

        results = await asyncio.gather(*(one(e.client_id) for e in entries))
        return {d.client_id: d for d in results}

    def list_clients(self, local: list[ClientInfo]) -> list[ClientInfo]:
        """Local snapshots plus every client registered on another live node."""
        here = {info.client_id for info in local}
        out = [_with_node(info, self.node_id) for info in local]
        if self.backend.connected:
            for entry in self.backend.view.clients(self.backend.now()):
                if entry.client_id not in here and entry.registration.node_id != self.node_id:
                    out.append(_remote_info(entry.client_id, entry.registration))
        return sorted(out, key=lambda i: i.client_id)

    def local_infos(self, client_id: str | None) -> list[ClientInfo]:
        if client_id is None:
            sessions = list(self.server.sessions)
        else:
            one = self.server.sessions.get(client_id)
            sessions = [] if one is None or one.conn.is_closed else [one]
        return [_with_node(s.info(), self.node_id) for s in sessions]

    async def fetch_client_info(self, client_id: str, timeout: float | None = None) -> ClientInfo:
        """A live snapshot of a client on any node: a remote one's node is asked (heartbeat,
        RTT, call and byte counts as that node sees them).

        Raises:
            ClientNotConnected: not connected to any node.
            Timeout: its node did not answer within ``timeout`` (default: the broadcast
                grace).
            BackendUnavailable: NATS is not reachable.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self.broadcast_grace if timeout is None else timeout)
        while True:
            local = self.local_infos(client_id)
            if local:
                return local[0]
            left = deadline - loop.time()
            if left <= 0:
                raise Timeout(message=f"no live info for {client_id!r} in time")
            if not self.backend.connected:
                raise BackendUnavailable()
            try:
                infos = await self.backend.client_info(client_id, left)
            except NotReachable:
                raise ClientNotConnected(message=f"client {client_id!r} is not connected") from None
            except TimeoutError:
                raise Timeout(message=f"the node of {client_id!r} did not answer in time") from None
            except RpcError:
                raise
            except Exception as exc:
                raise BackendUnavailable(f"the cluster backend failed: {exc!r}") from exc
            if infos:
                return infos[0]
            await asyncio.sleep(0.01)  # it moved meanwhile: ask again where it is now

    async def fetch_clients(self, local: list[ClientInfo]) -> list[ClientInfo]:
        """`list_clients` with live rows from every node that answers within the broadcast
        grace; the clients of a node that does not are listed from the registry."""
        now = self.backend.now()
        expected = {n for n in self.backend.view.live_nodes(now) if n != self.node_id}
        answers: dict[str, list[ClientInfo]] = {}
        if expected and self.backend.connected:
            with contextlib.suppress(Exception):
                answers = await self.backend.all_client_infos(expected, self.broadcast_grace)
        listed = {info.client_id: _with_node(info, self.node_id) for info in local}
        for node_id, infos in answers.items():
            if node_id == self.node_id:
                continue
            for info in infos:
                listed.setdefault(info.client_id, info)
        for info in self.list_clients([]):
            if info.node not in answers:
                listed.setdefault(info.client_id, info)
        return sorted(listed.values(), key=lambda i: i.client_id)

    def client_info(self, client_id: str) -> ClientInfo:
        """A remote client's snapshot from the registry.

        Raises:
            ClientNotConnected: not registered on any live node.
        """
        entry = self.backend.view.lookup(client_id, self.backend.now())
        if entry is None or not self.backend.connected:
            raise ClientNotConnected(message=f"client {client_id!r} is not connected")
        return _remote_info(client_id, entry.registration)

    def nodes(self) -> list[dict[str, Any]]:
        """Live nodes as plain dicts (for the status page and the CLI)."""
        view = self.backend.view
        now = self.backend.now()
        counts = view.clients_per_node(now)
        return [
            {
                "node": r.node_id,
                "address": r.address,
                "started": r.started,
                "clients": counts.get(r.node_id, 0),
                "self": r.node_id == self.node_id,
            }
            for r in sorted(view.live_nodes(now).values(), key=lambda r: r.node_id)
        ]


def _with_node(info: ClientInfo, node_id: str) -> ClientInfo:
    return replace(info, node=node_id)


def _remote_info(client_id: str, reg: Registration) -> ClientInfo:
    return ClientInfo(
        client_id=client_id,
        remote_address=reg.remote_address,
        connected_since=reg.connected_since,
        last_heartbeat=None,
        missed_heartbeats=0,
        rtt=None,
        heartbeat_interval=reg.heartbeat_interval,
        calls_in=0,
        calls_out=0,
        bytes_in=0,
        bytes_out=0,
        labels=dict(reg.labels),
        node=reg.node_id,
    )


async def join(server: ClusterHost) -> ClusterNode:
    """Build ``server``'s cluster membership from its config and start it (NATS backend)."""
    import os
    import socket

    try:
        from .nats_backend import NatsBackend
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "cluster_nats_urls is set but nats-py is missing: pip install 'quicflow[cluster]'"
        ) from exc
    from .subjects import Names

    config = server.config
    node_id = config.cluster_node_id or (
        f"{socket.gethostname()}-{server.port}-{os.urandom(3).hex()}"
    )
    backend = NatsBackend(
        Names(config.cluster_name),
        node_id,
        list(config.cluster_nats_urls),
        node_ttl=config.cluster_node_ttl,
        replicas=config.cluster_replicas,
        held_per_client=config.hold_max_count if config.hold_max_count > 0 else -1,
    )
    node = ClusterNode(
        server,
        backend,
        node_id,
        address=config.cluster_advertise or f"{config.host}:{server.port}",
        node_refresh=config.cluster_node_refresh,
        call_timeout=config.cluster_call_timeout,
        broadcast_grace=config.cluster_broadcast_grace,
        max_in_flight=config.cluster_max_in_flight,
    )
    await node.start()
    return node
