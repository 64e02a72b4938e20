"""Server push: typed calls from the server to connected clients.

A client registers generated service implementations with
``client.add_service(...)``; the server calls them on server-opened streams
with the same framing, deadlines, metadata and status codes as
client-to-server calls (docs/wire-protocol.md §2, §5), through a stub bound
to one client::

    reply = await NotifyStub(server.client("sensor-1")).deliver(Event(text="hi"))

Three ways to reach clients (docs/push.md):

* **unicast**: ``server.client(client_id)`` is a `Channel`; an unknown or
  disconnected id fails at once with `ClientNotConnected`.
* **broadcast**: ``await server.broadcast(send)`` runs ``send(channel)`` for
  every connected client (optionally filtered by labels), at most
  ``max_in_flight`` at a time, and reports per client: delivered (with the
  reply), failed (with the status) or timed out.
* **acked send**: ``server.async_send(client_id, send)`` returns a `Promise`
  at once; it resolves with the client's reply (its ack), fails with the
  client's status, fails with `Timeout` after its timeout, or with
  UNAVAILABLE when the client disconnects. A `PendingTable` caps how many
  are outstanding (50,000 by default): one more raises `PromiseCapacityFull`
  without sending anything.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import uuid
from collections.abc import Awaitable, Callable, Generator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from .calls import ChannelMethods
from .clock import Clock, PolicyTimer, timeout
from .errors import ClientNotConnected, ConnectionClosed, RpcError, Timeout, fresh
from .hooks import Hooks
from .interceptors import ClientInterceptor
from .protocol.pending import PendingTable
from .retry import RetryPolicy
from .status import StatusCode

if TYPE_CHECKING:
    from .config import ServerConfig
    from .lane import SendLane
    from .metrics import Metrics
    from .sessions import SessionRegistry
    from .transport import QuicFlowProtocol

__all__ = [
    "BroadcastResult",
    "ClientChannel",
    "Delivery",
    "DeliveryStatus",
    "Promise",
    "PushHost",
]

logger = logging.getLogger("quicflow.push")

T = TypeVar("T")


class PushHost(Protocol):
    """What push needs of the server (the `Server` is one): its settings, its sessions,
    where to report, and the clock its timeouts run on. The seam push (and anything
    built on sessions) reaches the server through; nothing here imports server.py."""

    @property
    def config(self) -> ServerConfig: ...

    @property
    def sessions(self) -> SessionRegistry: ...

    @property
    def hooks(self) -> Hooks: ...

    @property
    def metrics(self) -> Metrics | None: ...

    @property
    def clock(self) -> Clock: ...


class ClientChannel(ChannelMethods):
    """A `Channel` to one connected client: pass it to any generated stub.

    Calls fail at once with `ClientNotConnected` (UNAVAILABLE) when no client
    is connected under the id. A channel follows the id: if the client
    reconnects, later calls go to its new connection.
    """

    def __init__(self, server: PushHost, client_id: str, message_id: bytes = b"") -> None:
        self._server = server
        self.client_id = client_id
        self.message_id = message_id
        """Sent in the HEADERS of calls made through this channel (acks, dedup)."""

    # CallTarget

    @property
    def max_message_size(self) -> int:
        return self._server.config.max_message_size

    @property
    def max_metadata_size(self) -> int:
        return self._server.config.max_metadata_size

    @property
    def default_timeout(self) -> float | None:
        return self._server.config.push_timeout

    @property
    def default_compression(self) -> str | None:
        return self._server.config.compression

    @property
    def compression_threshold(self) -> int:
        return self._server.config.compression_threshold

    def retry_policy(self, route: str) -> RetryPolicy | None:
        return None  # pushes are not retried: the application decides (acked sends, holds)

    @property
    def interceptors(self) -> tuple[ClientInterceptor, ...]:
        return tuple(self._server.config.push_interceptors)

    @property
    def wait_for_ready_default(self) -> bool:
        return False

    @property
    def hooks(self) -> Hooks:
        return self._server.hooks

    @property
    def peer_name(self) -> str:
        return self.client_id

    @property
    def metrics(self) -> Metrics | None:
        return self._server.metrics

    @property
    def clock(self) -> Clock:
        return self._server.clock

    @property
    def ready(self) -> bool:
        session = self._server.sessions.get(self.client_id)
        return session is not None and not session.conn.is_closed

    def connection_for_call(self) -> QuicFlowProtocol:
        session = self._server.sessions.get(self.client_id)
        if session is None or session.conn.is_closed:
            raise ClientNotConnected(message=f"client {self.client_id!r} is not connected")
        session.calls_out += 1
        return session.conn

    def lane_for_call(self) -> SendLane | None:
        session = self._server.sessions.get(self.client_id)
        return session.message_lane if session is not None else None

    def encodings_for_call(self) -> frozenset[str]:
        session = self._server.sessions.get(self.client_id)
        return session.peer_encodings if session is not None else frozenset()

    async def wait_ready(self) -> None:
        self.connection_for_call()  # raises: push does not wait for a client to come back

    def __repr__(self) -> str:
        return f"<ClientChannel {self.client_id}>"


class DeliveryStatus(enum.Enum):
    """How one client fared in a broadcast."""

    DELIVERED = "delivered"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True, slots=True)
class Delivery(Generic[T]):
    """One client's outcome in a broadcast."""

    client_id: str
    status: DeliveryStatus
    reply: T | None = None
    """The client's reply when DELIVERED."""
    code: StatusCode = StatusCode.OK
    message: str = ""


@dataclass(frozen=True, slots=True)
class BroadcastResult(Generic[T]):
    """Per-client outcomes of a broadcast, with counts."""

    deliveries: Mapping[str, Delivery[T]] = field(default_factory=dict)

    @property
    def delivered(self) -> int:
        """Clients that answered OK."""
        return self._count(DeliveryStatus.DELIVERED)

    @property
    def failed(self) -> int:
        """Clients that answered with an error status or could not be reached."""
        return self._count(DeliveryStatus.FAILED)

    @property
    def timed_out(self) -> int:
        """Clients that did not answer in time."""
        return self._count(DeliveryStatus.TIMED_OUT)

    def _count(self, status: DeliveryStatus) -> int:
        return sum(1 for d in self.deliveries.values() if d.status is status)

    def __len__(self) -> int:
        return len(self.deliveries)

    def __repr__(self) -> str:
        return (
            f"<BroadcastResult {len(self)} clients: {self.delivered} delivered, "
            f"{self.failed} failed, {self.timed_out} timed out>"
        )


async def deliver_one(
    client_id: str,
    send: Callable[[ClientChannel], Awaitable[T]],
    channel: ClientChannel,
    deadline: AbstractAsyncContextManager[object],
) -> Delivery[T]:
    """One client's part of a broadcast: ``send(channel)`` within ``deadline`` (which
    raises `TimeoutError` when it expires), as a `Delivery`."""
    try:
        async with deadline:
            reply = await send(channel)
    except TimeoutError:
        return Delivery(
            client_id,
            DeliveryStatus.TIMED_OUT,
            None,
            StatusCode.DEADLINE_EXCEEDED,
            "no reply in time",
        )
    except RpcError as exc:
        status = (
            DeliveryStatus.TIMED_OUT
            if exc.code is StatusCode.DEADLINE_EXCEEDED
            else DeliveryStatus.FAILED
        )
        return Delivery(client_id, status, None, exc.code, exc.message)
    return Delivery(client_id, DeliveryStatus.DELIVERED, reply)


async def broadcast(
    server: PushHost,
    send: Callable[[ClientChannel], Awaitable[T]],
    *,
    labels: Mapping[str, str] | None = None,
    client_timeout: float | None,
    max_in_flight: int,
) -> BroadcastResult[T]:
    """See `Server.broadcast`."""
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    targets = [
        s.client_id
        for s in server.sessions
        if not labels or all(s.labels.get(k) == v for k, v in labels.items())
    ]
    gate = asyncio.Semaphore(max_in_flight)

    async def one(client_id: str) -> Delivery[T]:
        async with gate:
            return await deliver_one(
                client_id,
                send,
                ClientChannel(server, client_id),
                timeout(server.clock, client_timeout),
            )

    metrics = server.metrics
    if metrics is not None:
        metrics.broadcasts += 1
    outcomes = await asyncio.gather(*(one(cid) for cid in targets))
    if metrics is not None:
        counts = metrics.broadcast_deliveries
        for delivery in outcomes:
            counts[delivery.status.value] += 1
    return BroadcastResult({d.client_id: d for d in outcomes})


class Promise(Generic[T]):
    """The pending acknowledgement of one `Server.async_send`.

    Await it for the client's reply, or register ``add_done_callback``. It
    never reports an error as success: a non-OK status from the client
    raises that `RpcError`; no reply in time raises `Timeout`; a client that
    disconnects raises UNAVAILABLE.
    """

    __slots__ = ("_future", "message_id")

    def __init__(self, message_id: bytes, future: asyncio.Future[T]) -> None:
        self.message_id = str(uuid.UUID(bytes=message_id))
        """The id sent with the message (a UUID), also in the call's HEADERS."""
        self._future = future

    def __await__(self) -> Generator[Any, None, T]:
        return self._wait().__await__()

    async def _wait(self) -> T:
        future = self._future
        if not future.done():
            await asyncio.wait((future,))  # cancelling the awaiter leaves the send alone
        return self.result()

    def done(self) -> bool:
        """True once resolved or failed."""
        return self._future.done()

    def result(self) -> T:
        """The reply; raises the failure, or `asyncio.InvalidStateError` if not done."""
        future = self._future
        error = future.exception()
        if error is not None:
            # A copy: the stored failure raised as itself would carry a traceback holding
            # the awaiting frame, which holds this promise (a reference cycle).
            raise fresh(error) if isinstance(error, RpcError) else error
        return future.result()

    def exception(self) -> BaseException | None:
        """The failure, or None if it resolved."""
        return self._future.exception()

    def add_done_callback(self, callback: Callable[[Promise[T]], object]) -> None:
        """Call ``callback(promise)`` once it is resolved or failed (at once if it is)."""
        self._future.add_done_callback(lambda _: callback(self))

    def cancel(self) -> bool:
        """Stop waiting (the call is cancelled); False if already done."""
        return self._future.cancel()

    def __repr__(self) -> str:
        state = "pending"
        if self._future.done():
            state = (
                "cancelled"
                if self._future.cancelled()
                else ("failed" if self._future.exception() else "resolved")
            )
        return f"<Promise {self.message_id} {state}>"


class PromiseManager:
    """Tracks acked sends by message id with a capacity and one timer for all timeouts."""

    def __init__(self, server: PushHost, capacity: int) -> None:
        self._server = server
        self.table = PendingTable(capacity)
        self._tasks: dict[bytes, asyncio.Task[Any]] = {}
        self._timer: PolicyTimer | None = None
        self._held: dict[str, list[asyncio.Future[None]]] = {}
        self._reserved: dict[str, int] = {}
        self._timed_out: set[bytes] = set()

    def __len__(self) -> int:
        return len(self.table)

    def send(
        self,
        client_id: str,
        send: Callable[[ClientChannel], Awaitable[T]],
        timeout: float,
        callback: Callable[[Promise[T]], object] | None,
    ) -> Promise[T]:
        loop = asyncio.get_running_loop()
        message_id = uuid.uuid4().bytes
        now = self._server.clock.time()
        self.table.add(message_id, now, timeout)  # PromiseCapacityFull: nothing sent
        # A send to an absent client takes a hold slot now (so the next one over
        # hold_max_count fails at once), or fails at once when holding is off.
        reserved = False
        if not self._reachable(client_id):
            if not self._reserve(client_id):
                self.table.fail(message_id)
                raise ClientNotConnected(message=f"client {client_id!r} is not connected")
            reserved = True
        task: asyncio.Task[T] = loop.create_task(
            self._attempts(client_id, message_id, send, reserved)
        )
        self._tasks[message_id] = task
        future: asyncio.Future[T] = loop.create_future()
        promise = Promise(message_id, future)
        task.add_done_callback(lambda t: self._settle(message_id, t, future))
        future.add_done_callback(lambda f: self._abandoned(message_id, f))
        if callback is not None:
            promise.add_done_callback(callback)
        self._arm()
        return promise

    # -- hold and redeliver (ServerConfig.hold_max_count > 0) --

    def _reserve(self, client_id: str) -> bool:
        """Take one of the client's hold slots; False when holding is off or they are full."""
        count = self._reserved.get(client_id, 0)
        if count >= self._server.config.hold_max_count:
            return False
        self._reserved[client_id] = count + 1
        return True

    def _unreserve(self, client_id: str) -> None:
        count = self._reserved.get(client_id, 0) - 1
        if count > 0:
            self._reserved[client_id] = count
        else:
            self._reserved.pop(client_id, None)

    def _reachable(self, client_id: str) -> bool:
        session = self._server.sessions.get(client_id)
        return session is not None and not session.conn.is_closed

    def _current_conn(self, client_id: str) -> object | None:
        session = self._server.sessions.get(client_id)
        return session.conn if session is not None else None

    async def _attempts(
        self,
        client_id: str,
        message_id: bytes,
        send: Callable[[ClientChannel], Awaitable[T]],
        reserved: bool,
    ) -> T:
        """Send until acked. With holding on, a send whose client is away (or goes away
        before acking) waits for the client to come back, then goes again under the same
        message id; the receiver answers a repeat from its reply cache."""
        server = self._server
        if reserved:
            await self._hold(client_id)
        while True:
            used = self._current_conn(client_id)
            try:
                return await send(ClientChannel(server, client_id, message_id))
            except (ConnectionClosed, ClientNotConnected):
                if server.config.hold_max_count <= 0:
                    raise
            if self._reachable(client_id) and self._current_conn(client_id) is not used:
                continue  # already back on a new connection (e.g. a replaced session)
            if not self._reserve(client_id):
                raise ClientNotConnected(
                    message=f"client {client_id!r} went away and its hold slots are full"
                )
            await self._hold(client_id)

    async def _hold(self, client_id: str) -> None:
        """Wait (holding one reserved slot) until the client is back, at most hold_max_age."""
        config = self._server.config
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        held = self._held.setdefault(client_id, [])
        held.append(waiter)
        try:
            if self._reachable(client_id):
                return  # it came back between the failure and now
            async with timeout(self._server.clock, config.hold_max_age):
                await waiter
        except TimeoutError:
            raise ClientNotConnected(
                message=f"client {client_id!r} did not come back within {config.hold_max_age} s"
            ) from None
        finally:
            self._unreserve(client_id)
            if waiter in held:
                held.remove(waiter)
            if not held:
                self._held.pop(client_id, None)

    def client_connected(self, client_id: str) -> None:
        """A client (re)connected: release the sends held for it."""
        for waiter in self._held.pop(client_id, []):
            if not waiter.done():
                waiter.set_result(None)

    @property
    def held(self) -> int:
        """Sends waiting (or about to wait) for their client to come back."""
        return sum(self._reserved.values())

    def _settle(
        self, message_id: bytes, task: asyncio.Task[Any], future: asyncio.Future[Any]
    ) -> None:
        self._tasks.pop(message_id, None)
        metrics = self._server.metrics
        if metrics is not None:
            if task.cancelled() and message_id in self._timed_out:
                metrics.promises_timed_out += 1
            elif task.cancelled() or task.exception() is not None:
                metrics.promises_failed += 1
            else:
                metrics.promises_resolved += 1
        if message_id in self.table:
            if task.cancelled() or task.exception() is not None:
                self.table.fail(message_id)
            else:
                self.table.resolve(message_id)
        if future.done():
            return
        if task.cancelled():
            if message_id in self._timed_out:
                self._timed_out.discard(message_id)
                future.set_exception(
                    Timeout(message=f"no ack within the promise timeout ({message_id.hex()})")
                )
            else:
                future.set_exception(ConnectionClosed(message="the server is shutting down"))
        elif (exc := task.exception()) is not None:
            if isinstance(exc, ConnectionClosed):
                exc = ClientNotConnected(message=f"client disconnected: {exc.message}")
            future.set_exception(exc)
        else:
            future.set_result(task.result())

    def _abandoned(self, message_id: bytes, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            task = self._tasks.get(message_id)
            if task is not None:
                task.cancel()

    def _arm(self) -> None:
        if self._timer is None:
            self._timer = PolicyTimer(self._server.clock, self.table.get_timer, self._expire)
        self._timer.arm()

    def _expire(self, now: float) -> None:
        for expired in self.table.poll(now):
            task = self._tasks.get(expired.message_id)
            if task is not None:
                self._timed_out.add(expired.message_id)
                task.cancel()  # _settle turns this cancellation into Timeout

    def close(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._timer is not None:
            self._timer.stop()
            self._timer = None
