"""Streaming calls routed across nodes: server-, client- and bidirectional streaming.

A streaming call from ``server.client(id)`` to a client on another node runs as
a *routed stream* over core NATS (no JetStream):

1. The calling node allocates a subject in its own reply inbox
   (``_QF.{nuid}.{token}``) and publishes a `StreamOpen` to the client's
   subject ``qf.{cluster}.c.{client}`` with the header ``Qf-Stream: 1`` and
   that subject as the reply. "No responders" means the client is on no node:
   UNAVAILABLE at once.
2. The owning node answers on the caller's subject with an OPENED frame that
   names its own per-stream subject (in its own inbox) and the request credit,
   or with END ``not here`` (the client just moved: the caller opens again,
   nothing was sent) or END RESOURCE_EXHAUSTED (too many streams served).
3. Then frames flow both ways (codec.py has the layout): HEADERS and MESSAGE
   and one END from the owner; MESSAGE, HALF_CLOSE or CANCEL from the caller;
   CREDIT both ways. Messages queued together go as one MESSAGES frame (one
   NATS message, up to `BATCH_BYTES` of messages).

Bounds: credit counts bytes, each message costing its length plus
`MESSAGE_OVERHEAD` (64). A side may send a MESSAGE while what it sent is below
what the receiver granted (``window`` at first, then each CREDIT); the
receiver grants back what its side consumed (the user reading on the caller,
the QUIC call on the owner) once that reaches half the window. So a routed
stream buffers at most ``window`` bytes plus one message per direction on
each node, and a slow reader slows the client down through QUIC flow control
rather than growing a queue.

Failure, never false success: frames are numbered per direction; a gap (a
frame NATS lost, e.g. across a reconnect) ends the stream UNAVAILABLE on both
sides. The caller's deadline travels in the open (the owner's QUIC call gets
it as its timeout) and is also enforced on the caller, which then sends
CANCEL. Cancelling on the caller sends CANCEL, and the owner resets the QUIC
stream (the client's handler is cancelled). The owning node declared dead
(its record not refreshed for the node TTL) or NATS lost ends the caller's
streams UNAVAILABLE; the calling node declared dead, or NATS lost, makes the
owner cancel the streams it serves for it. Streams are never retried once
OPENED (requests may have been consumed).
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
)
from typing import Any, Protocol, TypeVar

from ..calls import StreamStreamCall, StreamUnaryCall, UnaryStreamCall
from ..errors import ClientNotConnected, RpcError
from ..metadata import Metadata, MetadataLike, normalize_metadata
from ..push import ClientChannel, PushHost
from ..rpc import Cardinality, Method
from ..status import StatusCode
from .backend import BackendUnavailable, ClusterBackend
from .codec import STREAM_REQUESTS, STREAM_RESPONSES, Frame, FrameType, RoutedCall, StreamOpen

__all__ = [
    "RemoteStreamStreamCall",
    "RemoteStreamUnaryCall",
    "RemoteUnaryStreamCall",
    "RoutedStream",
    "ServedStream",
]

logger = logging.getLogger("quicflow.cluster")

Resp = TypeVar("Resp")


class StreamStats(Protocol):
    """The counters a routed stream keeps (`node.ClusterStats` has them)."""

    retried_stale: int
    streams_out: int
    streams_out_failed: int
    streams_in: int
    streams_in_refused: int


class StreamNode(Protocol):
    """What a routed stream needs of its node (`node.ClusterNode`): the seam that keeps
    this module from importing node.py, which imports it."""

    @property
    def backend(self) -> ClusterBackend: ...
    @property
    def server(self) -> PushHost: ...
    @property
    def node_id(self) -> str: ...
    @property
    def call_timeout(self) -> float: ...
    @property
    def stream_window(self) -> int: ...
    @property
    def max_in_flight(self) -> int: ...
    @property
    def stats(self) -> StreamStats: ...
    @property
    def streams_out(self) -> set[RoutedStream]: ...
    @property
    def streams_in(self) -> set[ServedStream]: ...
    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]: ...
    def is_local(self, client_id: str) -> bool: ...


_CARDINALITY = {
    STREAM_RESPONSES: Cardinality.UNARY_STREAM,
    STREAM_REQUESTS: Cardinality.STREAM_UNARY,
    STREAM_REQUESTS | STREAM_RESPONSES: Cardinality.STREAM_STREAM,
}


def _identity(data: bytes) -> bytes:
    return data


MESSAGE_OVERHEAD = 64
"""Bytes of credit a message costs beyond its own length (what holding it costs Python),
so a window also bounds how many tiny messages wait."""


def message_cost(payload: bytes) -> int:
    """The credit one MESSAGE frame uses."""
    return len(payload) + MESSAGE_OVERHEAD


BATCH_BYTES = 64 * 1024
"""MESSAGEs queued together are sent as one MESSAGES frame of at most this many bytes
of messages (a larger message goes alone)."""


def coalesce(frames: list[Frame]) -> list[Frame]:
    """``frames`` with each run of MESSAGE frames merged into MESSAGES frames of at most
    `BATCH_BYTES` (one NATS message each), order kept."""
    out: list[Frame] = []
    run: list[bytes] = []
    size = 0

    def close_run() -> None:
        nonlocal size
        if len(run) == 1:
            out.append(Frame(FrameType.MESSAGE, 0, payload=run[0]))
        elif run:
            out.append(Frame(FrameType.MESSAGES, 0, payloads=tuple(run)))
        run.clear()
        size = 0

    for frame in frames:
        if frame.type is not FrameType.MESSAGE:
            close_run()
            out.append(frame)
            continue
        if run and size + len(frame.payload) > BATCH_BYTES:
            close_run()
        run.append(frame.payload)
        size += len(frame.payload)
    close_run()
    return out


class _Outgoing:
    """Send credit (sans-IO): a MESSAGE may go while what was sent is below what the peer
    granted, so at most the window plus one message is ever unconsumed."""

    __slots__ = ("granted", "sent")

    def __init__(self, window: int = 0) -> None:
        self.granted = window
        self.sent = 0

    def open(self) -> bool:
        return self.sent < self.granted


class _Incoming:
    """Receive credit (sans-IO): checks the peer kept to it, grants back as consumed."""

    __slots__ = ("granted", "pending", "received", "window")

    def __init__(self, window: int) -> None:
        self.window = window
        self.granted = window
        self.received = 0
        self.pending = 0

    def accept(self, cost: int) -> bool:
        """Count an arriving message; False if the peer had no credit to send it."""
        if self.received >= self.granted:
            return False
        self.received += cost
        return True

    def consumed(self, cost: int) -> int:
        """Count a consumed message; the credit to grant back now (0: not yet)."""
        self.pending += cost
        if self.pending < max(self.window // 2, 1):
            return 0
        grant, self.pending = self.pending, 0
        self.granted += grant
        return grant


class _FrameLink:
    """What both ends of a routed stream share: frames out are numbered and queued, one
    flusher task per stream publishes the queue in order; frames in must come in order."""

    _node: StreamNode
    _send_seq: int
    _recv_seq: int
    _outbox: list[Frame]
    _flusher: asyncio.Task[None] | None

    def _send(self, frame: Frame) -> None:
        """Number ``frame`` and queue it for the other node."""
        self._outbox.append(frame)
        if self._flusher is None:
            self._flusher = self._node.spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._outbox:
                batch, self._outbox = self._outbox, []
                for frame in coalesce(batch):
                    data = frame.encode(self._send_seq)
                    self._send_seq += 1
                    await self._publish(data)
        finally:
            self._flusher = None

    async def _publish(self, data: bytes) -> None:
        """Send one encoded frame to the other node (failing the stream if it cannot)."""
        raise NotImplementedError

    def _in_order(self, frame: Frame, stop: Callable[[StatusCode, str], None]) -> bool:
        """Whether ``frame`` is the next one expected; if not, ``stop`` the stream
        UNAVAILABLE (a frame was lost between nodes)."""
        if frame.seq != self._recv_seq:
            stop(
                StatusCode.UNAVAILABLE,
                f"frames lost between nodes (expected {self._recv_seq}, got {frame.seq})",
            )
            return False
        self._recv_seq += 1
        return True


class RoutedStream(_FrameLink):
    """The calling node's side of one routed stream (see the module docstring)."""

    def __init__(
        self,
        node: StreamNode,
        client_id: str,
        method: Method[Any, Any],
        kind: int,
        request_or_requests: Any,
        timeout: float | None,
        metadata: MetadataLike | None,
        message_id: bytes,
    ) -> None:
        self._node = node
        self._backend = node.backend
        self.client_id = client_id
        self.method = method
        self.kind = kind
        self._loop = asyncio.get_running_loop()
        self._window = node.stream_window
        self._messages: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[None] = self._loop.create_future()
        self._initial: Metadata = ()
        self._trailing: Metadata = ()
        self._code: StatusCode | None = None
        self._details = ""
        self._error: RpcError | None = None
        self._token: str | None = None
        self._owner_subject: str | None = None
        self.owner_node: str | None = None
        self._opening: asyncio.Future[Frame | None] | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._out = _Outgoing()
        self._in = _Incoming(self._window)
        self._outbox: list[Frame] = []
        self._flusher: asyncio.Task[None] | None = None
        self._credit_changed = asyncio.Event()
        self._buffered_bytes = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        requests: AsyncIterable[Any] | Iterable[Any] | None = None
        try:
            if kind & STREAM_REQUESTS:
                requests = request_or_requests
                payload = b""
            else:
                payload = method.serialize_request(request_or_requests)
            md = normalize_metadata(metadata)
        except Exception as exc:
            self._end(StatusCode.INTERNAL, f"could not serialize the request: {exc}")
            return
        if timeout is None:
            timeout = node.server.config.push_timeout
        if timeout is None:
            timeout = node.call_timeout
        self._deadline = self._loop.call_later(max(timeout, 0.0), self._on_deadline)
        self._open = StreamOpen(
            RoutedCall(method.route, payload, md, timeout, message_id, node.node_id),
            kind,
            self._window,
        )
        node.stats.streams_out += 1
        node.streams_out.add(self)
        self._task = node.spawn(self._run(requests))

    # -- opening --

    async def _run(self, requests: AsyncIterable[Any] | Iterable[Any] | None) -> None:
        backend = self._backend
        try:
            while self._code is None:
                if not backend.connected:
                    raise BackendUnavailable()
                opening = self._opening = self._loop.create_future()
                self._recv_seq = 0
                self._token, subject = backend.stream_inbox(self._on_data)
                await backend.open_stream(self.client_id, self._open.encode(), subject)
                first = await opening
                if first is None:
                    raise ClientNotConnected(
                        message=f"client {self.client_id!r} is not connected to any node"
                    )
                if first.type is FrameType.OPENED:
                    break
                if not first.not_here:
                    self._end(first.code, first.message, first.metadata)
                    return
                self._node.stats.retried_stale += 1
                backend.close_stream_inbox(self._token)
                self._token = None
                await asyncio.sleep(0.01)  # the client moved: open again where it is now
            if self._code is None and requests is not None:
                self._pump = self._node.spawn(self._send_requests(requests))
        except asyncio.CancelledError:
            raise
        except RpcError as exc:
            self.fail(exc.code, exc.message)
        except Exception as exc:  # NATS failed mid-open
            self.fail(StatusCode.UNAVAILABLE, f"the cluster backend failed: {exc!r}")

    async def _send_requests(self, requests: AsyncIterable[Any] | Iterable[Any]) -> None:
        try:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    if not await self._send_request(request):
                        return
            else:
                for request in requests:
                    if not await self._send_request(request):
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.fail(StatusCode.UNKNOWN, f"request iterator raised {type(exc).__name__}")
            return
        if self._code is None:
            self._send(Frame(FrameType.HALF_CLOSE, 0))

    async def _send_request(self, request: Any) -> bool:
        if self._code is not None:
            return False
        try:
            data = self.method.serialize_request(request)
        except Exception as exc:
            self.fail(StatusCode.INTERNAL, f"could not serialize the request: {exc}")
            return False
        while not self._out.open():
            if self._code is not None:
                return False
            self._credit_changed.clear()
            await self._credit_changed.wait()
        if self._code is not None:
            return False
        self._out.sent += message_cost(data)
        self._send(Frame(FrameType.MESSAGE, 0, payload=data))
        return True

    # -- frames --

    def _send(self, frame: Frame) -> None:
        """Number ``frame`` and queue it for the owner (nothing before it is known)."""
        if self._owner_subject is not None:
            super()._send(frame)

    async def _publish(self, data: bytes) -> None:
        subject = self._owner_subject
        assert subject is not None
        try:
            await self._backend.send_frame(subject, data)
        except Exception as exc:
            self.fail(StatusCode.UNAVAILABLE, f"could not reach the client's node: {exc!r}")

    def _on_data(self, data: bytes | None) -> None:
        """A frame from the owning node (None: nobody serves the client's subject)."""
        opening = self._opening
        if data is None:
            if opening is not None and not opening.done():
                opening.set_result(None)
            return
        try:
            frame = Frame.decode(data)
        except ValueError as exc:
            self.fail(StatusCode.INTERNAL, f"bad frame from the client's node: {exc}")
            return
        if self._code is not None:
            if frame.type is FrameType.OPENED and self._owner_subject is None:
                # Ended while opening (cancel, deadline): reset it on the owner too.
                self._owner_subject = frame.subject
                self._send_seq = 0
                self._send(Frame(FrameType.CANCEL, 0, code=self._code, message=self._details))
                if self._token is not None:
                    self._backend.close_stream_inbox(self._token)
            return
        if not self._in_order(frame, self.fail):
            return
        kind = frame.type
        if opening is not None and not opening.done():
            if kind is FrameType.OPENED:
                self._owner_subject = frame.subject
                self.owner_node = frame.node
                self._out.granted = frame.credit
                opening.set_result(frame)
            elif kind is FrameType.END:
                opening.set_result(frame)
            else:
                self.fail(StatusCode.INTERNAL, f"unexpected {kind.name} before OPENED")
            return
        if kind is FrameType.HEADERS:
            self._initial = frame.metadata
        elif kind is FrameType.MESSAGE or kind is FrameType.MESSAGES:
            for payload in frame.payloads if kind is FrameType.MESSAGES else (frame.payload,):
                if not self._in.accept(message_cost(payload)):
                    self.fail(StatusCode.INTERNAL, "the client's node sent past its credit")
                    return
                self._messages.append(payload)
                self._buffered_bytes += len(payload)
        elif kind is FrameType.CREDIT:
            self._out.granted += frame.credit
            self._credit_changed.set()
        elif kind is FrameType.END:
            self._end(frame.code, frame.message, frame.metadata)
            return
        else:
            self.fail(StatusCode.INTERNAL, f"unexpected {kind.name} from the client's node")
            return
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- ending --

    def _end(self, code: StatusCode, message: str, trailing: Metadata = ()) -> None:
        if self._code is not None:
            return
        self._code, self._details, self._trailing = code, message, trailing
        if code is not StatusCode.OK:
            self._error = RpcError(code, message, trailing)
            self._node.stats.streams_out_failed += 1
        if self._deadline is not None:
            self._deadline.cancel()
        token = self._token
        opening = self._opening
        if opening is not None and not opening.done():
            opening.cancel()
            if token is not None:
                # An OPENED may still come: keep listening a while to cancel it there.
                self._loop.call_later(
                    self._node.call_timeout, self._backend.close_stream_inbox, token
                )
        elif token is not None:
            self._backend.close_stream_inbox(token)
        current = asyncio.current_task()
        for task in (self._task, self._pump):
            if task is not None and task is not current and not task.done():
                task.cancel()
        self._credit_changed.set()
        self._node.streams_out.discard(self)
        if not self._finished.done():
            self._finished.set_result(None)
        self._wake()

    def fail(self, code: StatusCode, message: str) -> None:
        """End the stream here with ``code``, and tell the owning node to reset it."""
        if self._code is not None:
            return
        self._send(Frame(FrameType.CANCEL, 0, code=code, message=message))
        self._end(code, message)

    def _on_deadline(self) -> None:
        self._deadline = None
        self.fail(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded (routed stream)")

    # -- what the call objects use --

    async def recv(self) -> bytes | None:
        """The next response message; None at a clean end; raises the stream's error."""
        while True:
            if self._messages:
                data = self._messages.popleft()
                self._buffered_bytes -= len(data)
                grant = self._in.consumed(message_cost(data))
                if grant and self._code is None:
                    self._send(Frame(FrameType.CREDIT, 0, credit=grant))
                return data
            if self._error is not None:
                raise self._error
            if self._code is not None:
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self.fail(StatusCode.CANCELLED, "call cancelled")
                raise
            finally:
                self._waiter = None

    async def initial_metadata(self) -> Metadata:
        while not self._initial and not self._messages and self._code is None:
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._initial

    async def finished(self) -> None:
        await asyncio.shield(self._finished)

    @property
    def code(self) -> StatusCode | None:
        return self._code

    @property
    def details(self) -> str:
        return self._details

    @property
    def trailing(self) -> Metadata:
        return self._trailing

    def cancel(self) -> bool:
        if self._code is not None:
            return False
        self.fail(StatusCode.CANCELLED, "call cancelled")
        return True

    def done(self) -> bool:
        return self._code is not None

    @property
    def buffered(self) -> int:
        """Response messages received and not read yet."""
        return len(self._messages)

    @property
    def buffered_bytes(self) -> int:
        """Their bytes: with the per-message overhead, at most the window plus one message."""
        return self._buffered_bytes


class _RemoteStreamMixin:
    """The public call API over a `RoutedStream` (no QUIC machinery runs here)."""

    _rs: RoutedStream

    async def initial_metadata(self) -> Metadata:
        return await self._rs.initial_metadata()

    async def trailing_metadata(self) -> Metadata:
        await self._rs.finished()
        return self._rs.trailing

    async def code(self) -> StatusCode:
        await self._rs.finished()
        code = self._rs.code
        return StatusCode.UNKNOWN if code is None else code

    async def details(self) -> str:
        await self._rs.finished()
        return self._rs.details

    def cancel(self) -> bool:
        return self._rs.cancel()

    def done(self) -> bool:
        return self._rs.done()

    @property
    def attempts(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._rs.method.route} -> {self._rs.client_id}>"


class _RemoteStreamResponses(_RemoteStreamMixin):
    _rs: RoutedStream

    def __aiter__(self) -> AsyncIterator[Any]:
        return self

    async def __anext__(self) -> Any:
        data = await self._rs.recv()
        if data is None:
            raise StopAsyncIteration
        return self._decode(data)

    async def read(self) -> Any:
        data = await self._rs.recv()
        return None if data is None else self._decode(data)

    def _decode(self, data: bytes) -> Any:
        try:
            return self._rs.method.deserialize_response(data)
        except Exception as exc:
            self._rs.fail(StatusCode.INTERNAL, f"could not parse the response: {exc}")
            raise RpcError(StatusCode.INTERNAL, f"could not parse the response: {exc}") from exc


class RemoteUnaryStreamCall(_RemoteStreamResponses, UnaryStreamCall[Resp]):
    """A server-streaming call to a client on another node (a `UnaryStreamCall`)."""

    def __init__(self, stream: RoutedStream) -> None:
        self._rs = stream


class RemoteStreamStreamCall(_RemoteStreamResponses, StreamStreamCall[Resp]):
    """A bidirectional call to a client on another node (a `StreamStreamCall`)."""

    def __init__(self, stream: RoutedStream) -> None:
        self._rs = stream


class RemoteStreamUnaryCall(_RemoteStreamMixin, StreamUnaryCall[Resp]):
    """A client-streaming call to a client on another node (a `StreamUnaryCall`)."""

    def __init__(self, stream: RoutedStream) -> None:
        self._rs = stream

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._single().__await__()

    async def _single(self) -> Resp:
        rs = self._rs
        data = await rs.recv()
        if data is None:
            raise RpcError(StatusCode.INTERNAL, "the client ended the call without a response")
        if await rs.recv() is not None:
            raise RpcError(StatusCode.INTERNAL, "the client sent more than one response")
        try:
            reply: Resp = rs.method.deserialize_response(data)
        except Exception as exc:
            raise RpcError(StatusCode.INTERNAL, f"could not parse the response: {exc}") from exc
        return reply


class ServedStream(_FrameLink):
    """The owning node's side of one routed stream: runs it as a local QUIC call."""

    def __init__(self, node: StreamNode, client_id: str, open_: StreamOpen, reply: str) -> None:
        self._node = node
        self._backend = node.backend
        self.client_id = client_id
        self.origin = open_.call.origin
        self._open = open_
        self._reply = reply
        self._window = node.stream_window
        self._send_seq = 0
        self._recv_seq = 0
        self._requests: deque[bytes] = deque()
        self._requests_changed = asyncio.Event()
        self._half_closed = False
        self._out = _Outgoing(open_.window)
        self._in = _Incoming(self._window)
        self._outbox: list[Frame] = []
        self._flusher: asyncio.Task[None] | None = None
        self._credit_changed = asyncio.Event()
        self._token: str | None = None
        self._call: Any = None
        self._over: RpcError | None = None
        """Why the stream ended early (cancel from the caller, lost frames, caller gone)."""

    async def _publish(self, data: bytes) -> None:
        try:
            await self._backend.send_frame(self._reply, data)
        except Exception as exc:
            self.abort(StatusCode.UNAVAILABLE, f"could not reach the calling node: {exc!r}")

    def abort(self, code: StatusCode, message: str) -> None:
        """End the stream early: reset the local QUIC call (the client's handler is
        cancelled). The END that follows tells the caller, if it still listens."""
        if self._over is not None:
            return
        self._over = RpcError(code, message)
        self._requests_changed.set()
        self._credit_changed.set()
        call = self._call
        if call is not None:
            call.cancel()

    def _on_data(self, data: bytes | None) -> None:
        if data is None or self._over is not None:
            return
        try:
            frame = Frame.decode(data)
        except ValueError as exc:
            self.abort(StatusCode.INTERNAL, f"bad frame from the calling node: {exc}")
            return
        if not self._in_order(frame, self.abort):
            return
        kind = frame.type
        if kind is FrameType.MESSAGE or kind is FrameType.MESSAGES:
            for payload in frame.payloads if kind is FrameType.MESSAGES else (frame.payload,):
                if self._half_closed or not self._in.accept(message_cost(payload)):
                    self.abort(StatusCode.INTERNAL, "the calling node sent past its credit")
                    return
                self._requests.append(payload)
            self._requests_changed.set()
        elif kind is FrameType.HALF_CLOSE:
            self._half_closed = True
            self._requests_changed.set()
        elif kind is FrameType.CREDIT:
            self._out.granted += frame.credit
            self._credit_changed.set()
        elif kind is FrameType.CANCEL:
            self.abort(frame.code, frame.message or "cancelled by the calling node")
        else:
            self.abort(StatusCode.INTERNAL, f"unexpected {kind.name} from the calling node")

    async def _request_stream(self) -> AsyncIterator[bytes]:
        while True:
            while not self._requests:
                if self._half_closed or self._over is not None:
                    return
                self._requests_changed.clear()
                await self._requests_changed.wait()
            if self._over is not None:
                return
            data = self._requests.popleft()
            grant = self._in.consumed(message_cost(data))
            if grant:
                self._send(Frame(FrameType.CREDIT, 0, credit=grant))
            yield data

    async def _reply_credit(self, reply: bytes) -> None:
        while not self._out.open() and self._over is None:
            self._credit_changed.clear()
            await self._credit_changed.wait()
        self._out.sent += message_cost(reply)

    async def run(self) -> None:
        """Serve the stream to its end (the caller hears END in every case)."""
        node = self._node
        if not node.is_local(self.client_id):
            self._send(
                Frame(
                    FrameType.END,
                    0,
                    code=StatusCode.UNAVAILABLE,
                    message=f"client {self.client_id!r} is not on this node",
                    not_here=True,
                )
            )
            return
        if len(node.streams_in) >= node.max_in_flight:
            node.stats.streams_in_refused += 1
            self._send(
                Frame(
                    FrameType.END,
                    0,
                    code=StatusCode.RESOURCE_EXHAUSTED,
                    message="node busy: too many routed streams",
                )
            )
            return
        node.stats.streams_in += 1
        node.streams_in.add(self)
        self._token, subject = self._backend.stream_inbox(self._on_data)
        try:
            self._send(
                Frame(FrameType.OPENED, 0, node=node.node_id, subject=subject, credit=self._window)
            )
            end = await self._serve()
            if self._over is not None and end.code is not StatusCode.OK:
                end = Frame(FrameType.END, 0, code=self._over.code, message=self._over.message)
            self._send(end)
        finally:
            node.streams_in.discard(self)
            self._backend.close_stream_inbox(self._token)

    async def _serve(self) -> Frame:
        open_ = self._open
        routed = open_.call
        method: Method[bytes, bytes] = Method(
            routed.route, _CARDINALITY[open_.kind], _identity, _identity, _identity, _identity
        )
        channel = ClientChannel(self._node.server, self.client_id, routed.message_id)
        options: dict[str, Any] = {"timeout": routed.timeout, "metadata": routed.metadata}
        call: Any
        try:
            if open_.kind == STREAM_RESPONSES:
                call = channel.unary_stream(method, routed.payload, **options)
            elif open_.kind == STREAM_REQUESTS:
                call = channel.stream_unary(method, self._request_stream(), **options)
            else:
                call = channel.stream_stream(method, self._request_stream(), **options)
            self._call = call
            if self._over is not None:
                call.cancel()
            if open_.kind & STREAM_RESPONSES:
                # Returns at the first message (not consumed), the trailers or an error.
                self._send(Frame(FrameType.HEADERS, 0, metadata=await call.initial_metadata()))
                async for reply in call:
                    await self._reply_credit(reply)
                    if self._over is not None:
                        break
                    self._send(Frame(FrameType.MESSAGE, 0, payload=reply))
            else:
                reply = await call
                self._send(Frame(FrameType.HEADERS, 0, metadata=await call.initial_metadata()))
                self._send(Frame(FrameType.MESSAGE, 0, payload=reply))
            if self._over is not None:
                raise self._over
            return Frame(FrameType.END, 0, metadata=await call.trailing_metadata())
        except RpcError as exc:
            return Frame(
                FrameType.END, 0, code=exc.code, message=exc.message, metadata=exc.trailing_metadata
            )
        except Exception:
            logger.exception("cluster: serving a routed stream to %r failed", self.client_id)
            if self._call is not None:
                self._call.cancel()
            return Frame(
                FrameType.END,
                0,
                code=StatusCode.INTERNAL,
                message="the client's node failed the stream",
            )
