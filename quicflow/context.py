"""`ServicerContext`: a handler's view of its call."""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from .clock import Clock
from .errors import RpcError, UsageError
from .metadata import Metadata, MetadataLike, normalize_metadata
from .status import StatusCode

__all__ = ["ServicerContext"]


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
        "_cancelled",
        "_clock",
        "_deadline",
        "_done_callbacks",
        "_initial_metadata_sent",
        "_invocation_metadata",
        "_message_id",
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
