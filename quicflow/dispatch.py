"""The dispatcher: runs handlers for untyped messages on a bounded worker pool.

Untyped messages are the raw path beside generated services: a type string,
payload bytes and metadata (``client.send_message(type, payload)``,
``server.send_to(client_id, ...)``). Each side registers one handler per
message type and hands every received message to `Dispatcher.dispatch`,
which answers with the reply bytes or raises the `RpcError` to send back.

Theory of operation:

- ``workers`` tasks run handlers, one message each at a time. Up to
  ``queue_size`` more messages wait, first come first served. A message that
  finds every worker busy and the queue full is refused at once with
  RESOURCE_EXHAUSTED and never queued: the sender learns about the overload
  instead of waiting for it.
- A message handed to an idle worker does not count against the queue, so
  ``workers + queue_size`` messages are accepted before the first refusal.
- Each handler runs in a task of its own under ``handler_timeout``. Its
  outcome becomes the result of ``dispatch``: the reply bytes (``None`` means
  ``b""``), the handler's own `RpcError` unchanged, DEADLINE_EXCEEDED when it
  ran too long, or UNKNOWN for any other exception. The exception's text is
  logged (logger ``quicflow.dispatch``) but not sent: it may hold secrets.
- ``dispatch`` owns its message: cancelling the caller removes a queued
  message (its handler never starts) or cancels a running handler.
- The workers start on the first ``dispatch``, bound to the loop running it;
  `Dispatcher.close` fails every accepted message with UNAVAILABLE, cancels
  running handlers and the workers, and waits for all of them to end.

A handler may be a coroutine function or a plain function. A plain function
runs on the event loop itself, where ``handler_timeout`` cannot interrupt it:
keep it short, or make it ``async`` and move blocking work to a thread. When
a worker is idle and nothing is queued, a plain function runs right inside
``dispatch`` (no task, no timer: it counts as a busy worker while it runs);
otherwise it waits its turn on a worker like any other.

Example::

    dispatcher = Dispatcher(workers=16, queue_size=1000, handler_timeout=30.0)

    async def on_chat(message: Message) -> bytes:
        return b"got " + message.payload

    dispatcher.register_handler("chat.post", on_chat)
    reply = await dispatcher.dispatch(received)   # b"got ..."
    await dispatcher.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from .clock import Clock, Deadline, LoopClock, timeout
from .errors import RpcError, UsageError
from .metadata import Metadata
from .protocol.numbers import positive_seconds
from .status import StatusCode

__all__ = ["Dispatcher", "Handler", "Message"]

logger = logging.getLogger("quicflow.dispatch")


@dataclass(frozen=True, slots=True)
class Message:
    """One untyped message as a handler receives it."""

    type: str
    """The message type the sender chose; it selects the handler."""
    payload: bytes
    """The body, exactly as sent."""
    metadata: Metadata
    """The sender's metadata pairs, in order."""
    message_id: bytes
    """The sender's id for this message (16 bytes, a UUID); the same on a retry."""
    sender: str
    """The client id that sent it, or ``"server"`` when the server did."""


Handler: TypeAlias = Callable[[Message], Awaitable[bytes | None] | bytes | None]
"""What `Dispatcher.register_handler` accepts: a (coroutine) function from a
`Message` to reply bytes, or None for an empty reply."""


class _Job:
    """One accepted message on its way through the pool."""

    __slots__ = ("busy", "future", "handler", "message", "task")

    def __init__(self, message: Message, handler: Handler, future: asyncio.Future[bytes]) -> None:
        self.message = message
        self.handler = handler
        self.future = future  # what dispatch() awaits; cancelled if its caller is
        self.task: asyncio.Task[None] | None = None  # the handler's task, once started
        self.busy = False  # counted in Dispatcher.busy_workers


def _is_async(handler: Handler) -> bool:
    """True for a coroutine function (or a callable object whose __call__ is one)."""
    return inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(
        getattr(handler, "__call__", None)  # noqa: B004
    )


def _returning(awaitable: Awaitable[object]) -> Handler:
    """A handler that returns ``awaitable`` (for a plain function that returned one)."""

    async def handler(message: Message) -> object:
        return await awaitable

    return handler  # type: ignore[return-value]


def _count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int of at least 1, got {value!r}")
    return value


class Dispatcher:
    """Runs registered handlers for untyped messages: bounded workers, queue and time.

    Args:
        workers: handlers that may run at once (an int of at least 1).
        queue_size: messages that may wait for a worker (an int of at least 1).
        handler_timeout: seconds a handler may run before its message fails
            with DEADLINE_EXCEEDED (a positive finite number).
        clock: the clock ``handler_timeout`` runs on (tests: a `FakeClock`);
            None: the running event loop's.

    Raises:
        ValueError: an argument is out of range; the message names it.

    Example::

        dispatcher = Dispatcher(workers=4)
        dispatcher.register_handler("ping", lambda message: b"pong")
        message = Message("ping", b"", (), uuid.uuid4().bytes, "server")
        assert await dispatcher.dispatch(message) == b"pong"
        await dispatcher.close()
    """

    def __init__(
        self,
        workers: int = 16,
        queue_size: int = 1000,
        handler_timeout: float = 30.0,
        *,
        clock: Clock | None = None,
    ) -> None:
        self._worker_count = _count("workers", workers)
        self._queue_size = _count("queue_size", queue_size)
        positive_seconds("handler_timeout", handler_timeout)
        self._handler_timeout = float(handler_timeout)
        self.clock = clock
        """The clock ``handler_timeout`` runs on (None: the running event loop's); the
        endpoint that owns the dispatcher sets its own."""
        self._handlers: dict[str, Handler] = {}
        self._async_types: set[str] = set()  # types whose handler is a coroutine function
        # Bound on the first dispatch(), never here: the dispatcher may be built
        # before any loop runs.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._workers: list[asyncio.Task[None]] = []
        self._idle: deque[asyncio.Future[_Job]] = deque()  # one waiter per idle worker
        self._queue: deque[_Job] = deque()  # accepted, waiting for a worker
        self._jobs: set[_Job] = set()  # accepted and not finished: queued, handed or running
        self._busy = 0
        self._closed = False
        self._room: asyncio.Future[None] | None = None  # wait_room() waiters share one

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._workers else "idle"
        return (
            f"<Dispatcher {state} busy={self._busy}/{self._worker_count} "
            f"queued={len(self._queue)}/{self._queue_size}>"
        )

    @property
    def workers(self) -> int:
        """Handlers that may run at once."""
        return self._worker_count

    @property
    def queue_size(self) -> int:
        """Messages that may wait for a worker."""
        return self._queue_size

    @property
    def handler_timeout(self) -> float:
        """Seconds a handler may run."""
        return self._handler_timeout

    @property
    def queue_depth(self) -> int:
        """Messages waiting for a worker right now."""
        return len(self._queue)

    @property
    def busy_workers(self) -> int:
        """Workers holding a message right now (running, or about to run, its handler)."""
        return self._busy

    @property
    def has_room(self) -> bool:
        """True if `post` would accept a message now (a worker idle, or queue space)."""
        return self._closed or bool(self._idle) or len(self._queue) < self._queue_size

    async def wait_room(self) -> None:
        """Wait until `has_room` (a worker took a queued message or went idle; or closed)."""
        while not self.has_room:
            room = self._room
            if room is None or room.done():
                room = self._room = asyncio.get_running_loop().create_future()
            await asyncio.shield(room)

    def _wake_room(self) -> None:
        room, self._room = self._room, None
        if room is not None and not room.done():
            room.set_result(None)

    @property
    def closed(self) -> bool:
        """True once `close` was called."""
        return self._closed

    def register_handler(self, message_type: str, handler: Handler) -> None:
        """Run ``handler`` for every message of ``message_type``.

        Messages already accepted keep the handler they were accepted with.

        Raises:
            UsageError: ``message_type`` already has a handler (unregister it first).
            ValueError: ``message_type`` is not a non-empty str.
            TypeError: ``handler`` is not callable.
        """
        if not isinstance(message_type, str) or not message_type:
            raise ValueError(f"message_type must be a non-empty str, got {message_type!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        if message_type in self._handlers:
            raise UsageError(f"message type {message_type!r} already has a handler")
        self._handlers[message_type] = handler
        if _is_async(handler):  # decided once here, not per message
            self._async_types.add(message_type)

    def unregister_handler(self, message_type: str) -> None:
        """Stop handling ``message_type``; later messages of it get UNIMPLEMENTED.

        Messages already accepted still run with the handler they were accepted with.

        Raises:
            UsageError: ``message_type`` has no handler.
        """
        if self._handlers.pop(message_type, None) is None:
            raise UsageError(f"message type {message_type!r} has no handler")
        self._async_types.discard(message_type)

    async def dispatch(self, message: Message) -> bytes:
        """Run the handler for ``message`` on a worker and return its reply.

        Returns once the handler has finished, with its reply (``b""`` when it
        returned None). Cancelling the caller cancels the handler, or keeps it
        from ever starting if the message is still queued.

        Raises:
            RpcError: UNIMPLEMENTED when no handler is registered for the type;
                RESOURCE_EXHAUSTED at once, without queuing, when every worker
                is busy and the queue is full; DEADLINE_EXCEEDED when the
                handler ran longer than ``handler_timeout``; the handler's own
                `RpcError` unchanged; UNKNOWN when it raised anything else or
                returned something other than bytes or None; UNAVAILABLE when
                the dispatcher is or gets closed.
            UsageError: the dispatcher was started on another event loop.
        """
        if self._closed:
            raise RpcError(StatusCode.UNAVAILABLE, "dispatcher is closed")
        handler = self._handlers.get(message.type)
        if handler is None:
            raise RpcError(
                StatusCode.UNIMPLEMENTED, f"no handler for message type {message.type!r}"
            )
        loop = self._bind()
        if not self._queue and self._idle and message.type not in self._async_types:
            # A plain function with a worker free and nobody queued: run it right here.
            # On a worker it would run on this same loop, uninterruptible all the
            # same, only after two task switches and a timer (most of the cost of a
            # small message).
            self._busy += 1
            try:
                raw = handler(message)
            except RpcError:
                raise
            except Exception as exc:
                raise self._unknown(message, exc) from None
            finally:
                self._busy -= 1
            if not inspect.isawaitable(raw):
                return self._reply_bytes(message, raw)
            handler = _returning(raw)  # it returned an awaitable: a worker awaits it
        job = _Job(message, handler, loop.create_future())
        self._submit(job)
        try:
            return await job.future
        except asyncio.CancelledError:
            # Our caller gave up (the future was cancelled with it): stop the handler,
            # or make sure it never starts.
            if job.task is not None:
                job.task.cancel()
            elif job in self._jobs:
                self._jobs.discard(job)
                # O(queue_size), and frees the slot at once. Not found: it was handed
                # to a worker that has not woken yet, and that worker will skip it.
                with contextlib.suppress(ValueError):
                    self._queue.remove(job)
            raise

    def post(self, message: Message, done: Callable[[bytes | RpcError], None]) -> bool:
        """Accept ``message`` without waiting for its handler (one-way messages).

        ``done`` is called once with the outcome `dispatch` would have returned
        or raised (at once for an unknown type or a closed dispatcher, else when
        the handler ends). Returns False, accepting nothing and calling nothing,
        when every worker is busy and the queue is full: the caller keeps the
        message and offers it again after `wait_room`.

        Raises:
            UsageError: the dispatcher was started on another event loop.
        """
        if self._closed:
            done(RpcError(StatusCode.UNAVAILABLE, "dispatcher is closed"))
            return True
        handler = self._handlers.get(message.type)
        if handler is None:
            done(
                RpcError(StatusCode.UNIMPLEMENTED, f"no handler for message type {message.type!r}")
            )
            return True
        loop = self._bind()
        if not self._queue and self._idle and message.type not in self._async_types:
            self._busy += 1  # run a plain function right here, as dispatch() does
            try:
                raw = handler(message)
            except RpcError as exc:
                done(exc)
                return True
            except Exception as exc:
                done(self._unknown(message, exc))
                return True
            finally:
                self._busy -= 1
            if raw is None or type(raw) is bytes:
                done(raw or b"")
                return True
            if not inspect.isawaitable(raw):
                try:
                    done(self._reply_bytes(message, raw))
                except RpcError as exc:
                    done(exc)
                return True
            handler = _returning(raw)  # it returned an awaitable: a worker awaits it
        job = _Job(message, handler, loop.create_future())
        try:
            self._submit(job)
        except RpcError:
            return False

        def settled(future: asyncio.Future[bytes]) -> None:
            if future.cancelled():
                done(RpcError(StatusCode.CANCELLED, f"message {message.type} was cancelled"))
            else:
                error = future.exception()
                done(error if isinstance(error, RpcError) else future.result())

        job.future.add_done_callback(settled)
        return True

    async def close(self) -> None:
        """Stop: fail accepted messages, cancel handlers and workers, wait for them.

        Every message not yet answered fails with UNAVAILABLE, whether it was
        queued or running; later ``dispatch`` calls fail the same way.
        Returns once every worker and handler task has ended. Idempotent.
        """
        self._closed = True
        tasks: list[asyncio.Task[None]] = []
        for job in self._jobs:
            if not job.future.done():
                job.future.set_exception(RpcError(StatusCode.UNAVAILABLE, "dispatcher closed"))
            if job.task is not None and not job.task.done():
                job.task.cancel()
                tasks.append(job.task)
        self._jobs.clear()
        self._queue.clear()
        self._idle.clear()
        for worker in self._workers:
            worker.cancel()
        tasks.extend(self._workers)
        self._workers = []
        self._wake_room()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._busy = 0

    # -- internals ---------------------------------------------------------------

    def _bind(self) -> asyncio.AbstractEventLoop:
        """The loop the workers run on, starting them on the first call."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
            for index in range(self._worker_count):
                # Each worker starts idle, waiting on its own future, so a burst of
                # messages right after start is handed out rather than queued.
                waiter: asyncio.Future[_Job] = loop.create_future()
                self._idle.append(waiter)
                self._workers.append(
                    loop.create_task(self._work(waiter), name=f"quicflow-dispatch-{index}")
                )
        elif self._loop is not loop:
            raise UsageError("dispatcher is bound to another event loop")
        return loop

    def _submit(self, job: _Job) -> None:
        """Hand ``job`` to an idle worker, else queue it, else refuse it."""
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                self._hold(job)
                self._jobs.add(job)
                waiter.set_result(job)
                return
        if len(self._queue) >= self._queue_size:
            raise RpcError(
                StatusCode.RESOURCE_EXHAUSTED, f"dispatcher queue full ({self._queue_size})"
            )
        self._jobs.add(job)
        self._queue.append(job)

    def _next_job(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[_Job]:
        """A future for this worker's next job: done at once if one is queued."""
        waiter: asyncio.Future[_Job] = loop.create_future()
        if self._queue:
            job = self._queue.popleft()
            self._hold(job)
            waiter.set_result(job)
        else:
            self._idle.append(waiter)
        if self._room is not None:
            self._wake_room()  # a queue slot freed, or this worker is idle
        return waiter

    async def _work(self, waiter: asyncio.Future[_Job]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            job = await waiter
            try:
                await self._run(job, loop)
            finally:
                self._release(job)
                self._jobs.discard(job)
            waiter = self._next_job(loop)

    async def _run(self, job: _Job, loop: asyncio.AbstractEventLoop) -> None:
        if job.future.done():
            return  # the caller gave up before a worker got to it
        task = job.task = loop.create_task(
            self._call_handler(job), name=f"quicflow-handler-{job.message.type}"
        )
        try:
            # wait() rather than await: the handler's cancellation must not end the worker.
            await asyncio.wait((task,))
        except asyncio.CancelledError:
            task.cancel()  # the worker is being stopped: stop its handler with it
            raise

    async def _call_handler(self, job: _Job) -> None:
        """Run the handler and settle ``job.future``; only cancellation escapes."""
        message = job.message
        future = job.future
        outcome: bytes | RpcError
        deadline: Deadline | None = None
        try:
            async with timeout(self.clock or LoopClock(), self._handler_timeout) as deadline:
                raw = job.handler(message)
                reply: object = await raw if inspect.isawaitable(raw) else raw
        except asyncio.CancelledError:
            if not future.done():
                # Not our caller and not close() (they settle the future first):
                # the handler itself raised CancelledError.
                future.set_exception(
                    RpcError(StatusCode.CANCELLED, f"handler for {message.type} was cancelled")
                )
            raise
        except RpcError as exc:
            outcome = exc
        except TimeoutError as exc:
            if deadline is not None and deadline.expired:
                logger.warning(
                    "handler for %s took longer than %g s (message %s from %s)",
                    message.type,
                    self._handler_timeout,
                    message.message_id.hex(),
                    message.sender,
                )
                outcome = RpcError(
                    StatusCode.DEADLINE_EXCEEDED,
                    f"handler for {message.type} took longer than {self._handler_timeout:g} s",
                )
            else:
                outcome = self._unknown(message, exc)
        except Exception as exc:
            outcome = self._unknown(message, exc)
        else:
            try:
                outcome = self._reply_bytes(message, reply)
            except RpcError as exc:
                outcome = exc
        # Free the worker in the count before the caller wakes, so busy_workers is
        # already right when dispatch() returns.
        self._release(job)
        if future.done():
            return  # the caller was cancelled meanwhile: nobody is waiting
        if isinstance(outcome, RpcError):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)

    def _hold(self, job: _Job) -> None:
        job.busy = True
        self._busy += 1

    def _release(self, job: _Job) -> None:
        if job.busy:
            job.busy = False
            self._busy -= 1

    @staticmethod
    def _reply_bytes(message: Message, reply: object) -> bytes:
        """A handler's return value as reply bytes; raises UNKNOWN if it is not bytes-like
        or None."""
        if reply is None:
            return b""
        if isinstance(reply, (bytes, bytearray, memoryview)):
            return bytes(reply)
        logger.error(
            "handler for %s returned %s, not bytes or None (message %s from %s)",
            message.type,
            type(reply).__name__,
            message.message_id.hex(),
            message.sender,
        )
        raise RpcError(
            StatusCode.UNKNOWN, f"handler for {message.type} returned {type(reply).__name__}"
        )

    @staticmethod
    def _unknown(message: Message, exc: Exception) -> RpcError:
        logger.error(
            "handler for %s raised (message %s from %s)",
            message.type,
            message.message_id.hex(),
            message.sender,
            exc_info=exc,
        )
        # The exception's text stays in the log: it may carry secrets or internals.
        return RpcError(
            StatusCode.UNKNOWN, f"handler for {message.type} raised {type(exc).__name__}"
        )
