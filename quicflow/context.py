"""`ServicerContext`: a handler's view of its call, and what its outgoing calls inherit.

While a handler runs, its context is the *current call* of its task (a context
variable, so tasks the handler starts see it too). A call made there, to another
server or as a push to a client, inherits two things from it (docs/overview.md,
"Deadline propagation"):

* the deadline: with no ``timeout=`` of its own, the call's timeout is the
  handler's time remaining (or the channel's ``default_timeout`` if that is
  shorter); an explicit ``timeout=`` replaces it;
* cancellation: when the handler is cancelled (its caller cancelled, its
  deadline passed, the connection was lost, the server stops), every call it
  made that is still in flight is cancelled too (CANCELLED).

``with quicflow.detached():`` opts the calls made (and tasks created) inside
the block out of both.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import NoReturn, Protocol

from .clock import Clock
from .errors import ArgumentError, RpcError, UsageError
from .metadata import Metadata, MetadataLike, normalize_metadata
from .status import StatusCode
from .wire.compression import check_compression

__all__ = ["Cancellable", "ServicerContext", "current_call", "detached"]


class Cancellable(Protocol):
    """An outgoing call a handler made: cancelled with the handler."""

    def cancel(self) -> bool:
        """Cancel it; False if it had already ended."""
        ...


class ServicerContext:
    """What a handler knows about its call, and what it may change.

    Every handler receives one as its second argument::

        async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
            user = dict(context.invocation_metadata()).get("user", "anonymous")
            if context.time_remaining() is not None and context.time_remaining() < 0.01:
                await context.abort(StatusCode.DEADLINE_EXCEEDED, "no time left")
            context.set_trailing_metadata([("served-by", "a")])
            return EchoReply(text=f"hi {user}")
    """

    __slots__ = (
        "__weakref__",  # the current call is held by weak reference (_CURRENT)
        "_cancelled",
        "_clock",
        "_compression",
        "_deadline",
        "_done_callbacks",
        "_ended",
        "_initial_metadata_sent",
        "_invocation_metadata",
        "_message_id",
        "_outgoing",
        "_pending_initial_metadata",
        "_trailing_metadata",
        "method",
    )

    def __init__(self, clock: Clock) -> None:
        self.method = ""
        """The route being called, ``/package.Service/Method``."""
        self._clock = clock
        self._message_id = b""
        self._invocation_metadata: Metadata = ()
        self._trailing_metadata: Metadata = ()
        self._pending_initial_metadata: Metadata | None = None
        self._initial_metadata_sent = False
        self._deadline: float | None = None
        self._cancelled = False
        self._compression: str | None = None
        self._ended = False
        self._outgoing: set[Cancellable] | None = None
        self._done_callbacks: list[Callable[[ServicerContext], None]] | None = None

    def invocation_metadata(self) -> Metadata:
        """The metadata the client sent with the call."""
        return self._invocation_metadata

    @property
    def message_id(self) -> str | None:
        """The id the caller gave this message (a UUID string, set by the server's
        ``async_send``), or None. Use it to drop duplicates of a retried message."""
        if len(self._message_id) != 16:
            return None
        import uuid

        return str(uuid.UUID(bytes=self._message_id))

    @property
    def client_id(self) -> str:
        """Who is calling: the client's id on the server, ``"server"`` on a client."""
        return ""

    def peer(self) -> str:
        """The client's address as ``host:port`` (empty if unknown)."""
        return ""

    def time_remaining(self) -> float | None:
        """Seconds left before the call's deadline (never negative); None without a deadline."""
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - self._clock.time())

    def set_trailing_metadata(self, metadata: MetadataLike) -> None:
        """Set the metadata sent with the final status (replaces any set before).

        Raises:
            ValueError: a key or value is malformed.
        """
        self._trailing_metadata = normalize_metadata(metadata)

    def trailing_metadata(self) -> Metadata:
        """The trailing metadata set so far."""
        return self._trailing_metadata

    async def send_initial_metadata(self, metadata: MetadataLike) -> None:
        """Send response headers now, before the first response message.

        Raises:
            UsageError: headers or a message were already sent.
        """
        if self._initial_metadata_sent:
            raise UsageError("initial metadata was already sent for this call")
        self._pending_initial_metadata = normalize_metadata(metadata)
        self._flush_initial_metadata()

    def _flush_initial_metadata(self) -> None:
        raise NotImplementedError

    def set_compression(self, encoding: str) -> None:
        """Compress this call's responses with ``encoding`` (``"gzip"``, ``"zstd"``;
        ``"identity"``: none), instead of the config's ``compression``. Used only if
        the caller accepts it; messages under ``compression_threshold`` stay plain.
        Call it before the first response (or initial metadata) is sent.

        Raises:
            ArgumentError: not an encoding this process supports.
            UsageError: response headers or a message were already sent.
        """
        check_compression("encoding", encoding, ArgumentError)
        if self._initial_metadata_sent:
            raise UsageError("set_compression() must come before the first response")
        self._compression = encoding

    async def abort(
        self, code: StatusCode, message: str = "", trailing_metadata: MetadataLike = ()
    ) -> NoReturn:
        """End the call now with ``code`` and ``message`` (grpc.aio's spelling of raising
        `RpcError`).

        Raises:
            RpcError: always; let it propagate out of the handler.
            UsageError: ``code`` is OK.
        """
        if code == StatusCode.OK:
            raise UsageError("abort() needs a non-OK status code")
        raise RpcError(code, message, normalize_metadata(trailing_metadata))

    def cancelled(self) -> bool:
        """True when the client cancelled, the deadline passed, or the connection was lost."""
        return self._cancelled

    def add_done_callback(self, callback: Callable[[ServicerContext], None]) -> None:
        """Call ``callback(context)`` once when the call ends, however it ends."""
        if self._done_callbacks is None:
            self._done_callbacks = []
        self._done_callbacks.append(callback)

    # -- outgoing calls (deadline and cancellation propagation) --

    def attach_call(self, call: Cancellable) -> bool:
        """Record an outgoing call made by this handler, to be cancelled with it.

        The runtime calls this for every call made while the handler is the
        current call; you need not. Returns False when the handler is already
        cancelled (the caller then cancels ``call`` itself).
        """
        if self._cancelled:
            return False
        if self._outgoing is None:
            self._outgoing = set()
        self._outgoing.add(call)
        return True

    def detach_call(self, call: Cancellable) -> None:
        """Forget an outgoing call that ended (see `attach_call`)."""
        if self._outgoing is not None:
            self._outgoing.discard(call)

    def _cancel_outgoing(self) -> None:
        """The handler is cancelled: cancel every call it made that is still in flight."""
        outgoing = self._outgoing
        if outgoing:
            self._outgoing = None
            for call in list(outgoing):
                call.cancel()


_CURRENT: ContextVar[weakref.ref[ServicerContext] | None] = ContextVar(
    "quicflow_current_call", default=None
)
"""The running handler's call, by weak reference: a task's context holds it, and so does
every context copied from it (a child task's, a timer's, a long-lived worker's that the
handler happened to start), so a strong reference would keep each call, and its
connection, for as long as the longest of them lives, and the handler task's own
context holding its call would be a reference cycle (docs/scale.md "Garbage
collection")."""


def current_call() -> ServicerContext | None:
    """The context of the handler running in this task (or in the task that started
    this one), while its call is still in progress; None elsewhere or inside
    `detached`."""
    ref = _CURRENT.get()
    if ref is None:
        return None
    ctx = ref()
    if ctx is None or ctx._ended:
        return None
    return ctx


set_current_call: Callable[[weakref.ref[ServicerContext]], object] = _CURRENT.set
"""Make the call ``ref`` refers to the current call of the running task (the runtime does
this when a handler starts: ``set_current_call(weakref.ref(ctx))``). The context
variable's own ``set``: no Python frame per call."""


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Opt out of deadline and cancellation propagation inside the block.

    Calls made inside it, and tasks created inside it, do not inherit the
    handler's deadline and are not cancelled with it (e.g. a notification that
    must outlive the call that caused it)::

        with quicflow.detached():
            asyncio.create_task(audit_stub.record(entry, timeout=30.0))
    """
    token = _CURRENT.set(None)
    try:
        yield
    finally:
        _CURRENT.reset(token)
