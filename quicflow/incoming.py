"""The answering side: calls the peer makes to us (the mirror of calls.py).

Each stream the peer opens becomes an `IncomingCall`, which is both the
stream's handler (fed by the transport) and the handler's `ServicerContext`.
The call reads HEADERS, finds the route, and starts the handler task; the
task writes responses and the final status. A reset from the caller, its
connection's loss, the deadline or the endpoint's stop cancels the task; in
every case the stream's state is dropped when the call ends.

Both faces answer calls: the `Server` its clients' calls, a `Client` the
server's push calls. Each call is typed against two seams, both public:

* `Answerer`: what answers (the `quicflow.endpoint.Endpoint` both faces
  compose): the routes, the callee interceptors, the set of calls in flight,
  hooks, metrics, the reply cache and the clock every call timer is armed on.
* `CallerLink`: the connection the call came in on, as the callee sees it:
  the transport connection, the caller's session (server side) and whether a
  call needs one.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

from .clock import Clock, TimerHandleLike
from .config import ClientConfig, ServerConfig
from .context import ServicerContext, set_current_call
from .errors import ConnectionClosed, FrameTooLarge, RpcError
from .hooks import Hooks, message_info
from .interceptors import ServerInterceptor
from .metadata import Metadata
from .metrics import MethodStats, Metrics
from .protocol.call import CallProtocol, Role, SideState
from .protocol.dedup import RecentReplies
from .protocol.events import (
    EndOfStream,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from .rpc import Cardinality, Handler
from .sessions import Session
from .status import StatusCode
from .transport import QuicFlowProtocol
from .transport.inflow import FrameWatch
from .wire.codec import ErrorCode
from .wire.compression import ENCODINGS, IDENTITY

__all__ = ["Answerer", "CallerLink", "IncomingCall"]

_weak = weakref.ref

logger = logging.getLogger("quicflow.server")

_UNARY_UNARY = Cardinality.UNARY_UNARY
_UNARY_STREAM = Cardinality.UNARY_STREAM
_STREAM_UNARY = Cardinality.STREAM_UNARY


class Answerer(Protocol):
    """What answers calls: the endpoint a `Server` or a `Client` composes."""

    @property
    def config(self) -> ServerConfig | ClientConfig:
        """Limits (``max_message_size``, ``max_metadata_size``) and ``header_timeout``."""
        ...

    @property
    def handlers(self) -> Mapping[str, Handler]:
        """Route -> handler, for every route answered."""
        ...

    @property
    def interceptors(self) -> tuple[ServerInterceptor, ...]:
        """Callee interceptors, in order."""
        ...

    @property
    def calls(self) -> set[IncomingCall]:
        """Calls whose handler runs: a call adds itself at start and leaves at its end."""
        ...

    @property
    def hooks(self) -> Hooks:
        """Where ``message_received`` is reported."""
        ...

    @property
    def metrics(self) -> Metrics | None:
        """Where calls are counted (None: metrics are off)."""
        ...

    @property
    def replies(self) -> RecentReplies | None:
        """Replies by message id, to answer a repeated message without running it again."""
        ...

    @property
    def clock(self) -> Clock:
        """Where deadlines and ``header_timeout`` are read and armed."""
        ...


class CallerLink(Protocol):
    """The connection a call arrived on, as the callee sees it."""

    @property
    def conn(self) -> QuicFlowProtocol:
        """The transport connection the call's stream belongs to."""
        ...

    @property
    def session(self) -> Session | None:
        """The caller's session (server side, once HELLO is accepted), else None."""
        ...

    @property
    def peer_encodings(self) -> frozenset[str]:
        """Message encodings the caller accepts (its HELLO or WELCOME, wire-protocol.md
        §4.4): responses compress only with these."""
        ...

    @property
    def requires_session(self) -> bool:
        """True on the server: a call needs an accepted HELLO (wire-protocol.md §9.2)."""
        ...


class IncomingCall(ServicerContext):
    """One incoming call: the stream's handler and the handler's context.

    Used on the server for client calls, and on the client for the calls the
    server makes to it (push); ``endpoint`` is whichever answers.
    """

    __slots__ = (
        "_cancel_status",
        "_config_compression",
        "_conn",
        "_deadline_handle",
        "_eager",
        "_endpoint",
        "_frames",
        "_handler",
        "_last_bytes",
        "_link",
        "_machine",
        "_messages",
        "_mstats",
        "_reply_key",
        "_request_done",
        "_sid",
        "_start_timer",
        "_status",
        "_t0",
        "_task",
        "_waiter",
        "unread_bytes",
    )

    def __init__(self, endpoint: Answerer, link: CallerLink, stream_id: int) -> None:
        super().__init__(endpoint.clock)
        conn = link.conn
        self._endpoint = endpoint
        self._link = link
        self._conn = conn
        self._sid = stream_id
        config = endpoint.config
        self._machine = CallProtocol(
            Role.CALLEE,
            max_message_size=config.max_message_size,
            max_metadata_size=config.max_metadata_size,
            compression_threshold=config.compression_threshold,
        )
        self._config_compression = config.compression
        self._messages: deque[bytes] = deque()
        self.unread_bytes = 0
        self._request_done = False
        self._waiter: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._eager = False
        self._handler: Handler | None = None
        self._deadline_handle: TimerHandleLike | None = None
        self._start_timer: TimerHandleLike | None = None
        self._frames: FrameWatch | None = None  # once a frame arrived in pieces
        self._cancel_status: tuple[StatusCode, str] | None = None
        self._status: tuple[StatusCode, str] | None = None
        self._last_bytes = b""
        self._reply_key = b""
        self._mstats: MethodStats | None = None
        self._t0 = 0.0

    @property
    def client_id(self) -> str:
        session = self._link.session
        return session.client_id if session is not None else "server"

    def peer(self) -> str:
        addr = self._conn.peer_address
        return f"{addr[0]}:{addr[1]}" if addr else ""

    @property
    def handler_task(self) -> asyncio.Task[None] | None:
        """The task running the handler (None before it starts)."""
        return self._task

    def cancel_with(self, code: StatusCode, message: str) -> None:
        """Cancel the handler and end the call with ``code`` (e.g. the endpoint stops)."""
        self._cancel((code, message))

    # -- StreamHandler --

    def data_received(self, data: bytes, end_stream: bool) -> None:
        session = self._link.session
        if session is not None:
            session.bytes_in += len(data)
        events = self._machine.receive_data(data, end_stream)
        for event in events:
            match event:
                case MessageReceived(data=payload):
                    self._messages.append(payload)
                    self.unread_bytes += len(payload)
                case EndOfStream():
                    self._request_done = True
                case HeadersReceived():
                    self._on_headers(event)
                case ProtocolViolation() if self._status is not None:
                    return  # already answered (e.g. refused at its HEADERS)
                case ProtocolViolation(error=FrameTooLarge() as err):
                    self._refuse(StatusCode.RESOURCE_EXHAUSTED, str(err), ErrorCode.EXCESSIVE_LOAD)
                    return
                case ProtocolViolation(error=err):
                    self._refuse(
                        StatusCode.INTERNAL, f"malformed request: {err}", ErrorCode.PROTOCOL_ERROR
                    )
                    return
                case TrailersReceived():  # the call machine refuses trailers from a caller
                    pass
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
                clock = self._clock
                self._start_timer = clock.call_at(
                    clock.time() + self._endpoint.config.header_timeout, self._on_header_timeout
                )
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self._eager:
            self._eager = False
            _run_first_step(self._task)

    def _on_header_timeout(self) -> None:
        self._start_timer = None
        timeout = self._endpoint.config.header_timeout
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
        endpoint = self._endpoint
        handler = endpoint.handlers.get(headers.method)
        self.method = headers.method
        metrics = endpoint.metrics
        if metrics is not None:
            # Routes nobody serves share one label, so a peer cannot grow the label set.
            stats = self._mstats = (
                metrics.handled.method(headers.method)
                if handler is not None
                else metrics.handled.unknown
            )
            stats.started += 1
            self._t0 = self._clock.time()
        session = self._link.session
        if session is not None:
            session.calls_in += 1
        elif self._link.requires_session:
            # No HELLO accepted on this connection: nobody to serve (wire-protocol.md §9).
            self._refuse(StatusCode.UNAUTHENTICATED, "no session: send HELLO first")
            return
        if handler is None:
            self._refuse(StatusCode.UNIMPLEMENTED, f"unknown method {headers.method}")
            return
        encoding = headers.message_encoding
        if encoding and encoding != IDENTITY and encoding not in ENCODINGS:
            self._refuse(
                StatusCode.UNIMPLEMENTED,
                f"message encoding {encoding!r} is not supported "
                f"(accepted: {', '.join(ENCODINGS)})",
            )
            return
        self._handler = handler
        self._invocation_metadata = headers.metadata
        self._message_id = headers.message_id
        if headers.timeout is not None:
            self._deadline = self._clock.time() + headers.timeout
            self._deadline_handle = self._clock.call_at(self._deadline, self._on_deadline)
        if handler.method.cardinality in (_UNARY_UNARY, _UNARY_STREAM):
            return  # started once the request is complete (`data_received`)
        self._start(handler)

    def _start(self, handler: Handler) -> None:
        """Run the handler: a task, counted in the server's calls."""
        if self._start_timer is not None:  # the header_timeout timer
            self._start_timer.cancel()
            self._start_timer = None
        self._endpoint.calls.add(self)
        self._task = asyncio.get_running_loop().create_task(self._run(handler))
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
        self._cancel_outgoing()
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
        if self in self._endpoint.calls:
            if self._cancel_status is not None:
                self._send_status(*self._cancel_status, ())
            self._handler = None  # no interceptor saw on_start, so none sees on_end
            self._end()

    async def _run(self, handler: Handler) -> None:
        endpoint = self._endpoint
        set_current_call(_weak(self))  # outgoing calls inherit the deadline (quicflow/context.py)
        try:
            for interceptor in endpoint.interceptors:
                await interceptor.on_start(self)
            kind = handler.method.cardinality
            func: Any = handler.func
            if kind is _UNARY_UNARY:
                request = await self._read_single()
                if self._message_id and endpoint.replies is not None:
                    self._reply_key = _reply_key(self._message_id, self.method, self._last_bytes)
                    cached = endpoint.replies.get(self._reply_key, self._clock.time())
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
        self._ended = True
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
            self._deadline_handle = None
        if self._start_timer is not None:
            self._start_timer.cancel()
            self._start_timer = None
        self._conn.release(self._sid)
        self._endpoint.calls.discard(self)
        status = self._status or (StatusCode.UNKNOWN, "")
        stats = self._mstats
        if stats is not None:
            self._mstats = None  # count each call once, however many ways it ends
            stats.finished(status[0], self._clock.time() - self._t0)
        started = self._handler is not None and self._task is not None  # on_start was due
        for interceptor in reversed(self._endpoint.interceptors) if started else ():
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
            if self._messages:
                return self._pop_request()
            if self._request_done:
                raise StopAsyncIteration
            if self._cancelled:
                raise asyncio.CancelledError
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _pop_request(self) -> Any:
        """Decode the oldest buffered request message (there is one)."""
        data = self._messages.popleft()
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
            raise RpcError(StatusCode.INTERNAL, f"could not parse the request: {exc}") from exc
        for interceptor in self._endpoint.interceptors:
            interceptor.on_message_received(self, request)
        hooks = self._endpoint.hooks
        if hooks.wants("message_received"):
            hooks.fire(
                "message_received",
                message_info(self.client_id, self.method, request, len(data)),
            )
        return request

    async def _read_single(self) -> Any:
        # The request is usually whole when the handler starts (it starts once it is):
        # take it, and see the half-close, without a coroutine or StopAsyncIteration.
        if self._messages:
            request = self._pop_request()
        else:
            try:
                request = await self._next_request()
            except StopAsyncIteration:
                raise RpcError(StatusCode.INTERNAL, "the client sent no request") from None
        if self._request_done and not self._messages:
            return request
        try:
            await self._next_request()
        except StopAsyncIteration:
            return request
        raise RpcError(StatusCode.INTERNAL, "the client sent more than one request")

    # -- responses --

    def _encode_response(self, response: Any) -> bytes:
        assert self._handler is not None
        data: bytes = self._handler.method.serialize_response(response)
        limit = self._endpoint.config.max_message_size
        if len(data) > limit:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED,
                f"response of {len(data)} bytes exceeds max_message_size ({limit})",
            )
        for interceptor in self._endpoint.interceptors:
            interceptor.on_message_sent(self, response)
        stats = self._mstats
        if stats is not None:
            stats.messages_sent += 1
            stats.bytes_sent += len(data)
        return data

    def _headers_prefix(self, messages: bool = True) -> bytes:
        """Response HEADERS if due before what is written next: initial metadata, and
        (``messages``: response messages may follow) the encoding that compresses them
        (wire-protocol.md §4.4)."""
        if self._initial_metadata_sent:
            return b""
        self._initial_metadata_sent = True
        pending = self._pending_initial_metadata
        encoding = (
            self._response_encoding()
            if messages and (self._compression is not None or self._config_compression)
            else ""  # no encoding chosen: nothing to look up
        )
        if not pending and not encoding:
            return b""
        self._pending_initial_metadata = None
        return self._machine.send_headers("", pending or (), message_encoding=encoding)

    def _response_encoding(self) -> str:
        """The encoding of our responses: the handler's choice, else the config's, if the
        caller accepts it; "" for none."""
        encoding = self._compression
        if encoding is None:
            encoding = self._config_compression
        if encoding is None or encoding not in self._link.peer_encodings:
            return ""
        return encoding

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
        replies = self._endpoint.replies
        if self._reply_key and replies is not None:
            replies.put(self._reply_key, data, self._clock.time())
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
        out = self._headers_prefix(messages=False)
        out += self._machine.send_trailers(int(code), message, metadata)
        self._write(out, end_stream=True)
        self._after_status()

    def _write(self, out: bytes, end_stream: bool = False) -> None:
        session = self._link.session
        if session is not None:
            session.bytes_out += len(out)
        self._conn.write(self._sid, out, end_stream)

    def _after_status(self) -> None:
        # The answer is complete; if the client is still sending, tell it to stop.
        if self._machine.peer_state is not SideState.CLOSED and not self._request_done:
            self._conn.stop_reading(self._sid, ErrorCode.NO_ERROR)


def _run_first_step(task: asyncio.Task[Any] | None) -> None:
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
    if task is None:
        return
    loop = task.get_loop()
    ready = getattr(loop, "_ready", None)  # asyncio's queue of callbacks (uvloop has none)
    if not ready or asyncio.current_task(loop) is not None:
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

    def __init__(self, call: IncomingCall) -> None:
        self._call = call

    def __aiter__(self) -> _RequestIterator:
        return self

    async def __anext__(self) -> Any:
        return await self._call._next_request()
