"""Client-side calls: the objects a stub method returns.

A call starts as soon as it is created (like grpc.aio): its stream is opened
and its HEADERS (plus, for a single request, the message and FIN) are queued
right away, without a task. Awaiting or iterating the call reads the answer.
Streaming requests are pulled from your iterator by one sender task, which
waits whenever the stream's unacknowledged bytes pass ``send_buffer_limit``.

Every way a call can end sets one final status exactly once: trailers from
the server, a stream reset, the deadline, ``cancel()``, cancellation of the
awaiting task, or the connection's loss (UNAVAILABLE at once).
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import random
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Generator, Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar, cast

from .clock import Clock, TimerHandleLike
from .clock import timeout as clock_timeout
from .context import ServicerContext, current_call
from .errors import ArgumentError, ConnectionClosed, PayloadTooLarge, RpcError, fresh
from .hooks import Hooks, MessageInfo, message_info
from .interceptors import ClientCallInfo, ClientInterceptor
from .metadata import Metadata, MetadataLike, normalize_metadata
from .protocol.call import CallProtocol, Role, reset_status
from .protocol.events import (
    EndOfStream,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from .protocol.lane import ROUTE as LANE_ROUTE
from .protocol.lane import encode_lane_message, raw_size
from .protocol.numbers import MAX_DURATION
from .retry import PREVIOUS_ATTEMPTS, RetryPolicy
from .rpc import Method
from .status import StatusCode
from .wire.codec import ErrorCode
from .wire.compression import ENCODINGS as _ENCODINGS
from .wire.compression import check_compression

if TYPE_CHECKING:
    from .lane import SendLane
    from .metrics import MethodStats, Metrics
    from .transport import QuicFlowProtocol

__all__ = [
    "MAX_CALL_TIMEOUT",
    "Channel",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "check_timeout",
]

logger = logging.getLogger("quicflow.client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")

_REQUEST_STREAMING = 1
_RESPONSE_STREAMING = 2

MAX_CALL_TIMEOUT = MAX_DURATION
"""The longest per-call ``timeout``, seconds: ten years, the bound of every duration in
the configs. A longer one is a mistake (pass None for no deadline), and up to it the
deadline travels exactly in the wire's microseconds (docs/limits.md)."""


def check_timeout(timeout: float | None, argument: str = "timeout") -> float | None:
    """Validate a per-call timeout (seconds) where the call is made; return it as a float.

    None means no deadline. Zero and negative timeouts are allowed: the call
    then fails DEADLINE_EXCEEDED without being sent (wire-protocol.md §6.2).

    Raises:
        ArgumentError: not a number, NaN, or over `MAX_CALL_TIMEOUT` (infinity included).
    """
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise ArgumentError(argument, f"must be a number of seconds or None, got {timeout!r}")
    if math.isnan(timeout):
        raise ArgumentError(argument, "must be a number of seconds, got nan")
    if timeout > MAX_CALL_TIMEOUT:
        raise ArgumentError(
            argument,
            f"{timeout!r} s is over the limit of {MAX_CALL_TIMEOUT:.0f} s (ten years); "
            "pass None for no deadline",
        )
    return float(timeout)


class CallTarget(Protocol):
    """What a call needs from the `Client` (or a server's view of a client)."""

    @property
    def max_message_size(self) -> int: ...

    @property
    def max_metadata_size(self) -> int: ...

    @property
    def default_timeout(self) -> float | None: ...

    @property
    def default_compression(self) -> str | None:
        """The encoding of calls that pass no ``compression=`` (None: none; §4.4)."""
        ...

    @property
    def compression_threshold(self) -> int:
        """Messages shorter than this (bytes) go uncompressed."""
        ...

    @property
    def interceptors(self) -> tuple[ClientInterceptor, ...]: ...

    @property
    def ready(self) -> bool:
        """True when `connection_for_call` would return a live connection now."""
        ...

    @property
    def wait_for_ready_default(self) -> bool: ...

    @property
    def message_id(self) -> bytes:
        """Sent in every call's HEADERS (empty: none; wire-protocol.md §4.2)."""
        ...

    @property
    def hooks(self) -> Hooks:
        """Where ``message_sent`` is reported."""
        ...

    @property
    def peer_name(self) -> str:
        """The other side, for `MessageInfo.peer`."""
        ...

    @property
    def metrics(self) -> Metrics | None:
        """Where calls are counted (None: metrics are off)."""
        ...

    @property
    def clock(self) -> Clock:
        """Where deadlines are armed and call durations read."""
        ...

    def connection_for_call(self) -> QuicFlowProtocol:
        """The live connection, or raise `RpcError` (UNAVAILABLE) at once."""
        ...

    def retry_policy(self, route: str) -> RetryPolicy | None:
        """How calls to ``route`` are retried (None: they are not; quicflow/retry.py)."""
        ...

    def lane_for_call(self) -> SendLane | None:
        """This side's message lane on the connection `connection_for_call` returns, once
        negotiated (None: there is none; one-way messages then go as calls)."""
        ...

    def encodings_for_call(self) -> frozenset[str]:
        """Message encodings the peer accepts on the connection `connection_for_call`
        returns (its HELLO or WELCOME, wire-protocol.md §4.4): calls compress only with
        these."""
        ...

    async def wait_ready(self) -> None:
        """Wait until `ready`; raise `RpcError` if that can no longer happen."""
        ...


_NO_RESPONSE: Any = object()
"""A single-response call's ``_response`` until it has one."""


class _Call(Generic[Req, Resp]):
    """Machinery shared by the four call kinds (also the stream's `StreamHandler`)."""

    # Slots: a call sets some forty attributes, past what a shared-key instance dict
    # holds, so every call object built a plain dict of its own (and grew it twice).
    __slots__ = (
        "_attempt",
        "_clock",
        "_code",
        "_committed",
        "_compression",
        "_conn",
        "_created",
        "_deadline",
        "_deadline_at",
        "_deferred",
        "_details",
        "_ended",
        "_error",
        "_final",
        "_finished",
        "_info",
        "_initial_metadata",
        "_input",
        "_interceptors",
        "_local_closed",
        "_loop",
        "_machine",
        "_messages",
        "_metadata",
        "_method",
        "_mstats",
        "_parent",
        "_policy",
        "_response",
        "_retry_request",
        "_retry_timer",
        "_sender",
        "_sent_metadata",
        "_sid",
        "_started",
        "_starting",
        "_target",
        "_timeout",
        "_trailers_seen",
        "_trailing_metadata",
        "_wait_for_ready",
        "_waiter",
        "unread_bytes",
    )

    _kind = 0

    def __init__(
        self,
        target: CallTarget,
        method: Method[Req, Resp],
        request_or_requests: Any,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> None:
        timeout = check_timeout(timeout)  # before anything is counted or sent
        if compression is None:
            compression = target.default_compression
        elif compression not in _ENCODINGS:
            check_compression("compression", compression, ArgumentError)
        self._compression = compression
        self._input: Any = request_or_requests
        """The request (single-request kinds) or the request iterable (streaming kinds)."""
        self._target = target
        self._method = method
        self._loop = asyncio.get_running_loop()
        self._clock = target.clock
        parent = current_call()  # made inside a handler: inherit (quicflow/context.py)
        self._parent: ServicerContext | None = parent
        if timeout is None:
            timeout = target.default_timeout
            inherited = parent.time_remaining() if parent is not None else None
            if inherited is not None and (timeout is None or inherited < timeout):
                timeout = inherited
        self._timeout = timeout
        self._metadata = normalize_metadata(metadata)
        self._conn: QuicFlowProtocol | None = None
        self._sid = -1
        self._machine: CallProtocol | None = None
        self._messages: deque[bytes] = deque()
        self.unread_bytes = 0
        self._waiter: asyncio.Future[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        self._initial_metadata: Metadata = ()
        self._trailing_metadata: Metadata = ()
        self._code: StatusCode | None = None
        self._details = ""
        self._error: RpcError | None = None
        self._trailers_seen = False
        self._local_closed = False
        self._deadline: TimerHandleLike | None = None
        self._deadline_at: float | None = None
        policy = None if self._kind & _REQUEST_STREAMING else target.retry_policy(method.route)
        self._policy = policy
        """Retries (unary and server-streaming calls only: their one request can be sent
        again); None: one attempt."""
        self._retry_request: Any = request_or_requests if policy is not None else None
        self._attempt = 1
        self._retry_timer: TimerHandleLike | None = None
        self._committed = False  # response HEADERS or a message arrived: no more retries
        self._final = False  # ended by the caller (cancel, its deadline): no more retries
        self._sent_metadata: Metadata = ()
        self._sender: asyncio.Task[None] | None = None
        self._response: Any = _NO_RESPONSE
        """The decoded response, once a single-response call has it."""
        self._info: ClientCallInfo | None = None
        self._started = False
        self._deferred: tuple[Metadata, float | None] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._ended = False
        self._wait_for_ready = (
            target.wait_for_ready_default if wait_for_ready is None else wait_for_ready
        )
        self._created = self._clock.time()
        metrics = target.metrics
        stats: MethodStats | None = None
        if metrics is not None:
            stats = metrics.made.method(method.route)
            stats.started += 1
        self._mstats = stats
        interceptors = target.interceptors
        self._interceptors = interceptors
        if parent is not None and not parent.attach_call(self):
            self._parent = None
            self.cancel()  # made by a handler already cancelled
            return
        if not interceptors and (not self._wait_for_ready or target.ready):
            self._start(self._metadata, self._timeout)

    # -- starting --

    async def _ensure_started(self) -> None:
        if self._started:
            return
        starting = self._starting
        if starting is not None:  # another task is starting this call: wait for it
            await asyncio.shield(starting)
            return
        self._starting = self._loop.create_future()
        try:
            await self._start_when_possible()
        finally:
            self._starting.set_result(None)
            self._starting = None

    async def _start_when_possible(self) -> None:
        if self._deferred is not None:
            # Created while the peer's stream credit was used up (wire-protocol.md §8).
            metadata, timeout = self._deferred
            self._deferred = None
            try:
                timeout = await self._wait_for_stream_credit(timeout)
            except RpcError as exc:
                self._started = True
                self._finish(exc.code, exc.message, exc.trailing_metadata, error=exc)
                return
            self._start(metadata, timeout)
            return
        info = ClientCallInfo(
            self._method.route, self._method.cardinality, list(self._metadata), self._timeout
        )
        self._info = info
        try:
            for interceptor in self._interceptors:
                await interceptor.on_start(info)
            metadata = normalize_metadata(info.metadata)
            timeout = check_timeout(info.timeout)
            if self._wait_for_ready and not self._target.ready:
                timeout = await self._wait_until_ready(timeout)
            timeout = await self._wait_for_stream_credit(timeout)
        except RpcError as exc:
            self._started = True
            self._finish(exc.code, exc.message, exc.trailing_metadata, error=exc)
            return
        except Exception as exc:
            logger.exception("client interceptor failed in on_start")
            self._started = True
            err = RpcError(StatusCode.UNKNOWN, f"client interceptor raised {type(exc).__name__}")
            self._finish(err.code, err.message, (), error=err)
            return
        self._start(metadata, timeout)

    async def _wait_until_ready(self, budget: float | None) -> float | None:
        """Wait for a connection (wait_for_ready) within the call's deadline (``budget``
        seconds from its creation); return the time left."""
        return await self._wait_within(budget, self._target.wait_ready, "a connection")

    async def _wait_for_stream_credit(self, budget: float | None) -> float | None:
        """Wait until the connection may open one more stream, within the call's deadline
        (``budget`` seconds from its creation); return the time left."""
        while not (conn := self._target.connection_for_call()).can_open_stream():
            if budget is None:  # no deadline: no timeout to arm around the wait
                await conn.wait_stream_credit()
            else:
                await self._wait_within(budget, conn.wait_stream_credit, "a stream")
        return None if budget is None else self._time_left(budget)

    async def _wait_within(
        self, budget: float | None, wait: Callable[[], Awaitable[None]], what: str
    ) -> float | None:
        """Await ``wait()`` within the call's deadline (``budget`` seconds from its
        creation; None: no deadline, no timeout armed); return the time left."""
        if budget is None:
            await wait()
            return None
        try:
            left = budget - (self._clock.time() - self._created)
            async with clock_timeout(self._clock, max(left, 0.0)):
                await wait()
        except TimeoutError:
            raise RpcError(
                StatusCode.DEADLINE_EXCEEDED, f"deadline exceeded while waiting for {what}"
            ) from None
        return self._time_left(budget)

    def _time_left(self, budget: float | None) -> float | None:
        """Seconds left of ``budget`` (counted from the call's creation); None: no deadline."""
        return None if budget is None else budget - (self._clock.time() - self._created)

    def _start(self, metadata: Metadata, timeout: float | None) -> None:
        if self._ended:
            return  # cancelled (or failed) while it waited to start: send nothing
        self._started = True
        target = self._target
        try:
            conn = target.connection_for_call()
        except RpcError as exc:
            self._finish(exc.code, exc.message, exc.trailing_metadata, error=exc)
            return
        if not conn.can_open_stream():
            # Beyond the peer's stream credit: start when a slot frees (_ensure_started).
            self._started = False
            self._deferred = (metadata, timeout)
            return
        if timeout is not None and timeout <= 0:
            self._finish(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded before the call started")
            return
        machine = CallProtocol(
            Role.CALLER,
            max_message_size=target.max_message_size,
            max_metadata_size=target.max_metadata_size,
            compression_threshold=target.compression_threshold,
        )
        self._machine = machine
        self._conn = conn
        self._sid = conn.open_stream(self)
        encoding = self._compression
        # Compress only with an encoding the peer accepts (wire-protocol.md §4.4).
        if encoding is not None and encoding not in target.encodings_for_call():
            encoding = None
        if self._attempt == 1:
            self._sent_metadata = metadata
        else:  # a retry says how many attempts went before it (as gRPC does)
            metadata = (*metadata, (PREVIOUS_ATTEMPTS, str(self._attempt - 1)))
        out = machine.send_headers(
            self._method.route,
            metadata,
            timeout=timeout,
            message_id=target.message_id,
            message_encoding=encoding or "",
        )
        if timeout is not None and self._deadline is None:  # once: it bounds every attempt
            clock = self._clock
            self._deadline_at = clock.time() + timeout
            self._deadline = clock.call_at(self._deadline_at, self._on_deadline)
        if self._kind & _REQUEST_STREAMING:
            conn.write(self._sid, out)
            self._sender = self._loop.create_task(self._pump(self._input))
        else:
            self._write_single(out)
        self._input = None  # the call no longer holds the user's request

    def _write_single(self, header: bytes) -> None:
        """HEADERS, the one request and FIN in a single write."""
        data = self._encode_request(self._input)
        if data is None:
            return
        machine = self._machine
        conn = self._conn
        assert machine is not None and conn is not None
        out = header + machine.send_message(data)
        machine.half_close()
        self._local_closed = True
        conn.write(self._sid, out, end_stream=True)

    def _encode_request(self, request: Req) -> bytes | None:
        """Serialize one request; fails the call (returns None) if it is over the limit."""
        try:
            data = self._method.serialize_request(request)
        except Exception as exc:
            self._abort(
                RpcError(StatusCode.INTERNAL, f"could not serialize the request: {exc}"),
                ErrorCode.CANCELLED,
            )
            return None
        limit = self._target.max_message_size
        if len(data) > limit:
            self._abort(
                PayloadTooLarge(
                    message=f"request of {len(data)} bytes exceeds max_message_size ({limit})"
                ),
                ErrorCode.CANCELLED,
            )
            return None
        stats = self._mstats
        if stats is not None:
            stats.messages_sent += 1
            stats.bytes_sent += len(data)
        if self._info is not None:
            for interceptor in self._interceptors:
                interceptor.on_message_sent(self._info, request)
        hooks = self._target.hooks
        if hooks.wants("message_sent"):
            hooks.fire(
                "message_sent",
                message_info(self._target.peer_name, self._method.route, request, len(data)),
            )
        return data

    async def _pump(self, requests: AsyncIterable[Req] | Iterable[Req]) -> None:
        conn = self._conn
        machine = self._machine
        assert conn is not None and machine is not None
        sid = self._sid
        limit = conn.settings.send_buffer_limit
        try:
            if isinstance(requests, AsyncIterable):
                async for request in requests:
                    if self._code is not None or self._local_closed:
                        return
                    data = self._encode_request(request)
                    if data is None:
                        return
                    conn.write(sid, machine.send_message(data))
                    if conn.send_buffered(sid) > limit:
                        await conn.drain(sid)
            else:
                for request in requests:
                    if self._code is not None or self._local_closed:
                        return
                    data = self._encode_request(request)
                    if data is None:
                        return
                    conn.write(sid, machine.send_message(data))
                    if conn.send_buffered(sid) > limit:
                        await conn.drain(sid)
        except asyncio.CancelledError:
            raise
        except RpcError as exc:
            self._abort(exc, ErrorCode.CANCELLED)
            return
        except Exception as exc:
            self._abort(
                RpcError(StatusCode.UNKNOWN, f"request iterator raised {type(exc).__name__}"),
                ErrorCode.CANCELLED,
            )
            return
        if self._code is None and not self._local_closed:
            self._local_closed = True
            machine.half_close()
            conn.write(sid, b"", end_stream=True)

    # -- StreamHandler (called by the transport) --

    def data_received(self, data: bytes, end_stream: bool) -> None:
        machine = self._machine
        if machine is None or self._ended:
            return
        for event in machine.receive_data(data, end_stream):
            match event:
                case MessageReceived(data=payload):
                    self._messages.append(payload)
                    self.unread_bytes += len(payload)
                    self._committed = True
                case TrailersReceived():
                    self._trailers_seen = True
                    # final: resets after it are ignored
                    self._code = StatusCode.from_wire(event.status)
                    self._details = event.message
                    self._trailing_metadata = event.metadata
                case EndOfStream():
                    self._complete()
                case HeadersReceived():
                    self._initial_metadata = event.metadata
                    self._committed = True
                case ProtocolViolation(error=err):
                    error = RpcError(err.status, f"bad response from the server: {err}")
                    if self._trailers_seen:
                        # Junk after complete trailers: the call's outcome stands as sent,
                        # but the stream is done.
                        self._abort_after_trailers(error, err.error_code)
                    else:
                        self._abort(error, err.error_code)
                    return
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def stream_reset(self, error_code: int) -> None:
        if self._trailers_seen:
            # A reset after complete trailers changes nothing (QUIC may reorder them).
            self._complete()
            return
        code, message = reset_status(error_code)
        # REFUSED: the server did not process the stream at all (wire-protocol.md §6.1).
        self._finish(code, message, not_run=error_code == ErrorCode.REFUSED)

    def stop_sending(self, error_code: int) -> None:
        # The server needs no more requests (it has answered, or will shortly).
        self._local_closed = True

    def connection_lost(self, exc: RpcError) -> None:
        if self._trailers_seen:
            self._complete()
        else:
            self._finish(exc.code, exc.message, error=exc)

    # -- ending --

    def _on_deadline(self) -> None:
        self._deadline = None
        self._final = True
        self._abort(
            RpcError(StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
            ErrorCode.DEADLINE_EXCEEDED,
        )

    def _abort(self, error: RpcError, reset_code: int) -> None:
        """End the call locally with ``error`` and reset the stream."""
        if self._code is not None and self._trailers_seen:
            return
        conn = self._conn
        if conn is not None and self._sid >= 0:
            conn.reset(self._sid, reset_code)
        self._finish(error.code, error.message, error.trailing_metadata, error=error)

    def _abort_after_trailers(self, error: RpcError, reset_code: int) -> None:
        """The server broke the protocol after its trailers: report that instead of them."""
        if self._ended:
            return
        conn = self._conn
        if conn is not None:
            conn.reset(self._sid, reset_code)
        self._code = error.code
        self._details = error.message
        self._error = error
        self._done()

    def _complete(self) -> None:
        """Trailers and FIN arrived: the call ended with the server's status."""
        if self._ended:
            return
        code = self._code if self._code is not None else StatusCode.INTERNAL
        if code is not StatusCode.OK:
            self._error = RpcError(code, self._details, self._trailing_metadata)
        self._done()

    def _finish(
        self,
        code: StatusCode,
        message: str,
        trailing_metadata: Metadata = (),
        *,
        error: RpcError | None = None,
        not_run: bool = False,
    ) -> None:
        if self._ended or (self._code is not None and self._trailers_seen):
            return
        self._code = code
        self._details = message
        self._trailing_metadata = tuple(trailing_metadata)
        if code is not StatusCode.OK:
            if error is None:
                error = RpcError(code, message, trailing_metadata)
            if (not_run or self._sid < 0) and error.may_have_run:
                # Never opened on the wire, or refused unprocessed: safe to retry. (A copy:
                # one ConnectionClosed may be shared by every call of a connection.)
                error = copy.copy(error)
                error.may_have_run = False
            self._error = error
        self._done()

    def _done(self) -> None:
        if self._ended:
            return
        if self._policy is not None and self._retry_due():
            return  # the next attempt is scheduled; the call goes on
        self._ended = True
        if self._retry_timer is not None:
            self._retry_timer.cancel()
            self._retry_timer = None
        parent = self._parent
        if parent is not None:
            self._parent = None
            parent.detach_call(self)
        stats = self._mstats
        if stats is not None:
            code = self._code
            stats.finished(
                StatusCode.INTERNAL if code is None else code, self._clock.time() - self._created
            )
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        conn = self._conn
        if conn is not None:
            if not self._local_closed and self._kind & _REQUEST_STREAMING:
                # The server ended the call while we were still sending: stop our side.
                self._local_closed = True
                conn.reset(self._sid, ErrorCode.NO_ERROR, stop=False)
            conn.release(self._sid)
            self._conn = None
        sender = self._sender
        if sender is not None and not sender.done() and sender is not asyncio.current_task():
            sender.cancel()
        self._sender = None
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        finished = self._finished
        if finished is not None and not finished.done():
            finished.set_result(None)
        if self._info is not None and (self._error is not None or not self._messages):
            self._fire_end()

    # -- retrying (quicflow/retry.py) --

    def _retry_due(self) -> bool:
        """If this attempt's failure is to be retried, clear it and schedule the next
        attempt; True when one is scheduled."""
        policy = self._policy
        error = self._error
        code = self._code
        if (
            policy is None
            or error is None
            or code is None
            or self._final
            or self._committed
            or self._attempt >= policy.max_attempts
            or not policy.retries(code)
            or (policy.only_if_not_run and error.may_have_run)
        ):
            return False
        clock = self._clock
        delay = policy.delay(self._attempt, random.random())
        if self._deadline_at is not None and clock.time() + delay >= self._deadline_at:
            return False  # never start an attempt past the deadline
        self._clear_attempt()
        if self._mstats is not None:
            self._mstats.retries += 1
        info = self._info
        if info is not None:
            for interceptor in self._interceptors:
                try:
                    interceptor.on_retry(info, self._attempt, code, error.message)
                except Exception:
                    logger.exception("client interceptor failed in on_retry")
        self._attempt += 1
        self._retry_timer = clock.call_at(clock.time() + delay, self._next_attempt)
        return True

    def _clear_attempt(self) -> None:
        """Forget the failed attempt: its stream, its answer so far, its status."""
        conn = self._conn
        if conn is not None:
            conn.release(self._sid)
        self._conn = None
        self._sid = -1
        self._machine = None
        self._messages.clear()
        self.unread_bytes = 0
        self._initial_metadata = ()
        self._trailing_metadata = ()
        self._code = None
        self._details = ""
        self._error = None
        self._trailers_seen = False
        self._local_closed = False

    def _next_attempt(self) -> None:
        self._retry_timer = None
        if self._ended:
            return
        if self._wait_for_ready and not self._target.ready:
            # Disconnected since the failed attempt: wait_for_ready holds for every
            # attempt, so this one waits for the connection (within the deadline) too.
            self._sender = self._loop.create_task(self._next_attempt_when_ready())
            return
        self._start_next_attempt()

    async def _next_attempt_when_ready(self) -> None:
        budget = None if self._deadline_at is None else self._deadline_at - self._created
        try:
            await self._wait_until_ready(budget)
        except RpcError as exc:
            self._finish(exc.code, exc.message, exc.trailing_metadata, error=exc)
            return
        if not self._ended:
            self._start_next_attempt()

    def _start_next_attempt(self) -> None:
        timeout = None
        if self._deadline_at is not None:
            timeout = self._deadline_at - self._clock.time()
        self._input = self._retry_request
        self._start(self._sent_metadata, timeout)
        deferred = self._deferred
        if deferred is not None:
            # No stream credit now: wait for it in a task (the caller awaits the answer),
            # within the deadline, which _start_when_possible counts from the creation.
            budget = None if self._deadline_at is None else self._deadline_at - self._created
            self._deferred = (deferred[0], budget)
            self._sender = self._loop.create_task(self._ensure_started())  # kept; ends with us

    @property
    def attempts(self) -> int:
        """Attempts made so far (1 without retries; quicflow/retry.py)."""
        return self._attempt

    def _fire_end(self) -> None:
        """Tell interceptors the call ended: once, after the last message was handed out."""
        info = self._info
        if info is None or self._code is None:
            return
        self._info = None
        for interceptor in reversed(self._interceptors):
            try:
                interceptor.on_end(info, self._code, self._details)
            except Exception:
                logger.exception("client interceptor failed in on_end")

    # -- reading --

    async def _recv(self) -> bytes | None:
        """The next response message; None at a clean end; raises the call's error."""
        while True:
            messages = self._messages
            if messages:
                data = messages.popleft()
                self.unread_bytes -= len(data)
                stats = self._mstats
                if stats is not None:
                    stats.messages_received += 1
                    stats.bytes_received += len(data)
                conn = self._conn
                if conn is not None:
                    conn.credit_released(self._sid)
                return data
            if self._error is not None:
                raise fresh(self._error)
            if self._code is not None:
                return None
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            except asyncio.CancelledError:
                self._final = True
                self._abort(RpcError(StatusCode.CANCELLED, "call cancelled"), ErrorCode.CANCELLED)
                raise
            finally:
                self._waiter = None

    def _decode(self, data: bytes) -> Resp:
        try:
            message = self._method.deserialize_response(data)
        except Exception as exc:
            err = RpcError(StatusCode.INTERNAL, f"could not parse the response: {exc}")
            self._abort(err, ErrorCode.CANCELLED)
            raise err from exc
        info = self._info
        if info is not None:
            for interceptor in self._interceptors:
                interceptor.on_message_received(info, message)
            if self._ended and not self._messages:
                self._fire_end()
        return message

    async def _wait_finished(self) -> None:
        await self._ensure_started()
        if self._ended:
            return
        if self._finished is None:
            self._finished = self._loop.create_future()
        await asyncio.shield(self._finished)

    # -- public --

    async def initial_metadata(self) -> Metadata:
        """Metadata the server sent before its first message (empty if none).

        Returns once the first message, the trailers or an error has arrived.
        """
        await self._ensure_started()
        while (
            not self._initial_metadata
            and not self._messages
            and self._code is None
            and self._error is None
        ):
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._initial_metadata

    async def trailing_metadata(self) -> Metadata:
        """Metadata sent with the final status; waits for the call to end."""
        await self._wait_finished()
        return self._trailing_metadata

    async def code(self) -> StatusCode:
        """The final status code; waits for the call to end."""
        await self._wait_finished()
        assert self._code is not None
        return self._code

    async def details(self) -> str:
        """The final status message; waits for the call to end."""
        await self._wait_finished()
        return self._details

    def cancel(self) -> bool:
        """Cancel the call: reset its stream (the server's handler is cancelled).

        Returns False if the call had already ended. Idempotent.
        """
        if self._ended:
            return False
        self._started = True
        self._final = True
        self._abort(RpcError(StatusCode.CANCELLED, "call cancelled"), ErrorCode.CANCELLED)
        return True

    def done(self) -> bool:
        """True once the call has ended, in success or failure."""
        return self._ended

    def __repr__(self) -> str:
        state = self._code.name if self._code is not None else "in flight"
        return f"<{type(self).__name__} {self._method.route} {state}>"


class _SingleResponse(_Call[Req, Resp]):
    __slots__ = ()

    def __await__(self) -> Generator[Any, None, Resp]:
        return self._result().__await__()

    async def _result(self) -> Resp:
        if self._response is not _NO_RESPONSE:
            return cast(Resp, self._response)
        if not self._started:
            await self._ensure_started()
        data = await self._recv()
        if data is None:
            raise self._cardinality_error("the server ended the call without a response")
        response = self._decode(data)
        if self._messages or self._code is None or self._error is not None:
            # Not cleanly over yet (the usual end, trailers with the response, needs
            # no second read): a second response or the call's error may follow.
            extra = await self._recv()
            if extra is not None:
                raise self._cardinality_error("the server sent more than one response")
        self._response = response
        return response

    def _cardinality_error(self, message: str) -> RpcError:
        """A unary response broke its cardinality: the call ends INTERNAL, whatever the
        trailers said (so ``code()`` agrees with what ``await`` raised)."""
        err = RpcError(StatusCode.INTERNAL, message)
        if self._ended:
            self._code, self._details, self._error = err.code, message, err
            self._messages.clear()
        else:
            self._abort(err, ErrorCode.PROTOCOL_ERROR)
        return err


class _StreamResponse(_Call[Req, Resp]):
    __slots__ = ()

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self

    async def __anext__(self) -> Resp:
        await self._ensure_started()
        data = await self._recv()
        if data is None:
            raise StopAsyncIteration
        return self._decode(data)

    async def read(self) -> Resp | None:
        """The next response, or None when the stream has ended cleanly."""
        await self._ensure_started()
        data = await self._recv()
        return None if data is None else self._decode(data)


class UnaryUnaryCall(_SingleResponse[Any, Resp]):
    """One request, one response: ``reply = await call``.

    Example::

        call = stub.say(EchoRequest(text="hi"), timeout=2.0)
        reply = await call
        print(await call.trailing_metadata())
    """

    __slots__ = ()


class UnaryStreamCall(_StreamResponse[Any, Resp]):
    """One request, a stream of responses: ``async for reply in call``."""

    __slots__ = ()

    _kind = _RESPONSE_STREAMING


class StreamUnaryCall(_SingleResponse[Any, Resp]):
    """A stream of requests (async or plain iterable), one response: ``reply = await call``."""

    __slots__ = ()

    _kind = _REQUEST_STREAMING


class StreamStreamCall(_StreamResponse[Any, Resp]):
    """Streams both ways: ``async for reply in call`` while your iterator feeds requests."""

    __slots__ = ()

    _kind = _REQUEST_STREAMING | _RESPONSE_STREAMING


async def send_one_way(
    target: CallTarget,
    message_type: str,
    payload: bytes,
    metadata: MetadataLike | None,
    timeout: float | None,
) -> bool:
    """Send one message on the target's lane; False (nothing done) when there is none.

    Returns True once the frame is handed to QUIC. Waits first while the lane
    holds more than ``send_buffer_limit`` unacknowledged bytes (the receiver is
    behind), at most ``timeout`` (default: the target's default timeout).

    Raises:
        PayloadTooLarge: the message is over the sender's ``max_message_size``.
        ArgumentError: bad metadata.
        RpcError: DEADLINE_EXCEEDED while waiting; UNAVAILABLE when the
            connection ends meanwhile.
    """
    if target.interceptors or not target.ready:
        return False
    if timeout is None:
        timeout = target.default_timeout
    if timeout is not None and timeout <= 0:
        return False  # the call path fails it exactly as before
    conn = target.connection_for_call()
    lane = target.lane_for_call()
    if lane is None or lane.closed:
        return False
    md = normalize_metadata(metadata) if metadata else ()
    frame = encode_lane_message(message_type, payload, md, target.message_id)
    limit = target.max_message_size
    if len(frame) - 5 > limit:
        raise PayloadTooLarge(
            message=f"message of {len(frame) - 5} bytes exceeds max_message_size ({limit})"
        )
    metrics = target.metrics
    stats = metrics.made.method(LANE_ROUTE) if metrics is not None else None
    if stats is not None:
        stats.started += 1
    clock = target.clock
    start = clock.time()
    if lane.over_limit():
        try:
            async with clock_timeout(clock, timeout):
                while lane.over_limit():
                    await conn.drain(lane.stream_id)
                    if lane.closed:
                        raise ConnectionClosed(message="message lane closed", may_have_run=False)
        except TimeoutError:
            error: RpcError = RpcError(
                StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded waiting for the message lane",
                may_have_run=False,  # nothing was sent
            )
            if stats is not None:
                stats.finished(error.code, clock.time() - start)
            raise error from None
        except RpcError as exc:
            if stats is not None:
                stats.finished(exc.code, clock.time() - start)
            raise
    lane.write(frame)
    size = raw_size(len(message_type.encode()), len(payload))
    if stats is not None:
        stats.messages_sent += 1
        stats.bytes_sent += size
        stats.finished(StatusCode.OK, clock.time() - start)
    hooks = target.hooks
    if hooks.wants("message_sent"):
        hooks.fire("message_sent", MessageInfo(target.peer_name, LANE_ROUTE, message_type, size))
    return True


class Channel(Protocol):
    """What a generated stub calls through.

    Every method returns at once with a call object; the call starts on the
    event loop right away. ``timeout`` is seconds from now (None: no
    deadline); ``metadata`` is validated by `normalize_metadata`;
    ``wait_for_ready`` (None: the channel's default) makes a call made while
    disconnected wait for the connection instead of failing UNAVAILABLE;
    ``compression`` (None: the channel's default; ``"identity"``: none) names
    the encoding of the call's requests, used where the peer accepts it
    (wire-protocol.md §4.4).
    """

    def unary_unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryUnaryCall[Resp]: ...

    def unary_stream(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryStreamCall[Resp]: ...

    def stream_unary(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> StreamUnaryCall[Resp]: ...

    def stream_stream(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> StreamStreamCall[Resp]: ...


class ChannelMethods:
    """The four `Channel` methods for any `CallTarget` (mixed into `Client` and the
    server's per-client channel)."""

    def _as_target(self) -> CallTarget:
        return cast(CallTarget, self)

    def unary_unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryUnaryCall[Resp]:
        """Start a unary call; await the result for the response."""
        return UnaryUnaryCall(
            self._as_target(),
            method,
            request,
            timeout,
            metadata,
            wait_for_ready,
            compression,
        )

    def unary_stream(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> UnaryStreamCall[Resp]:
        """Start a server-streaming call; iterate the result for responses."""
        return UnaryStreamCall(
            self._as_target(),
            method,
            request,
            timeout,
            metadata,
            wait_for_ready,
            compression,
        )

    def stream_unary(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> StreamUnaryCall[Resp]:
        """Start a client-streaming call; await the result for the response."""
        return StreamUnaryCall(
            self._as_target(),
            method,
            requests,
            timeout,
            metadata,
            wait_for_ready,
            compression,
        )

    def stream_stream(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
        compression: str | None = None,
    ) -> StreamStreamCall[Resp]:
        """Start a bidirectional call; iterate the result for responses."""
        return StreamStreamCall(
            self._as_target(),
            method,
            requests,
            timeout,
            metadata,
            wait_for_ready,
            compression,
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
        """Send an untyped message (docs/push.md, quicflow/messaging.py).

        With ``wait_ack`` (the default) returns the receiver's ack payload; a
        failed handler raises its `RpcError`. With ``wait_ack=False`` returns
        None as soon as the message is handed to QUIC (at most once, errors
        unseen): on the connection's message lane when both sides support it
        (quicflow/lane.py), else as a call whose reply is not awaited.
        """
        timeout = check_timeout(timeout)
        target = self._as_target()
        if not wait_ack and await send_one_way(target, message_type, payload, metadata, timeout):
            return None  # on the connection's message lane (negotiated)
        from .messaging import DELIVER
        from .wire.v1.frames_pb2 import RawMessage

        call = self.unary_unary(
            DELIVER,
            RawMessage(type=message_type, payload=payload),
            timeout=timeout,
            metadata=metadata,
        )
        if not wait_ack:
            await call._ensure_started()
            if call._error is not None and call._ended:
                raise call._error
            return None
        ack = await call
        return ack.payload
