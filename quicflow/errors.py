"""Errors, one story told at the edges.

::

    Exception
    ├── RpcError                 a call ended with a non-OK status
    │   ├── ConnectionClosed     UNAVAILABLE: the connection went away
    │   ├── ClientNotConnected   UNAVAILABLE: the server has no session for that client id
    │   ├── PayloadTooLarge      RESOURCE_EXHAUSTED: a message over max_message_size
    │   ├── PromiseCapacityFull  RESOURCE_EXHAUSTED: too many acked sends pending
    │   └── Timeout              DEADLINE_EXCEEDED: the deadline or ack timeout passed
    ├── UsageError               the API was used in a way it does not allow (names the state)
    │   └── ArgumentError (ValueError)  an argument's value is not allowed (names it)
    ├── ConfigError (ValueError) a config field is out of range (names the field)
    └── ProtocolError            the core found bytes that break docs/wire-protocol.md
        ├── LocalProtocolError   we were about to break the protocol (a bug or misuse)
        └── RemoteProtocolError  the peer broke it: the stream or connection is ended

Users see `RpcError`. Handlers raise it to choose a status (or call
``await context.abort(code, message)``, the grpc.aio spelling). The sans-IO
core raises `ProtocolError` internally; the runtime turns it into a status or
a stream reset, never a crash.

A call that fails ``RpcError.may_have_run`` says whether the server may have
run it: False only when QuicFlow knows it did not (the call never left the
client, or the server refused its stream unprocessed), so retrying it cannot
run the handler twice (docs/connections.md "Retrying a failed call").
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import TypeVar

from .status import StatusCode

# quicflow.metadata's aliases, spelled out: metadata.py raises ArgumentError, so it
# imports this module and not the other way round.
_Metadata = tuple[tuple[str, str | bytes], ...]

__all__ = [
    "ArgumentError",
    "ClientNotConnected",
    "ConfigError",
    "ConnectionClosed",
    "LocalProtocolError",
    "PayloadTooLarge",
    "PromiseCapacityFull",
    "ProtocolError",
    "RemoteProtocolError",
    "RpcError",
    "Timeout",
    "UsageError",
]


class RpcError(Exception):
    """A call ended with a non-OK status.

    Raised on the client for every non-OK status. A handler raises it to end
    its call with ``code`` and ``message``.

    Example::

        try:
            await stub.say(EchoRequest(text="hi"))
        except RpcError as e:
            print(e.code.name, e.message)
    """

    default_code: StatusCode = StatusCode.UNKNOWN

    def __init__(
        self,
        code: StatusCode | None = None,
        message: str = "",
        trailing_metadata: Sequence[tuple[str, str | bytes]] = (),
        *,
        may_have_run: bool = True,
    ) -> None:
        self.code: StatusCode = StatusCode(code) if code is not None else self.default_code
        """The status code (never OK)."""
        self.message: str = message
        """Human-readable detail from the side that ended the call."""
        self.trailing_metadata: _Metadata = tuple(trailing_metadata)
        """Trailing metadata that came with the status."""
        self.may_have_run: bool = may_have_run
        """False only when the server certainly did not run the call: it never left this
        side (not connected, its deadline passed before it was sent, an interceptor
        refused it) or the server refused its stream unprocessed (UNAVAILABLE, "the peer
        refused the call; safe to retry", e.g. while stopping). Such a call is safe to
        retry even if it is not idempotent. True (the default) means it may have run: a
        connection lost mid-call is UNAVAILABLE with ``may_have_run`` True."""
        super().__init__(code, message)

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}" if self.message else self.code.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code.name}, {self.message!r})"


_E = TypeVar("_E", bound="RpcError")


def fresh(error: _E) -> _E:
    """A copy of a stored ``error`` to raise (or to fail a future with), not the error
    itself.

    Raising an exception gives it a traceback, which holds the frames it passed
    through, whose locals usually hold the object that stored the exception (a call,
    a connection's stream registry): a reference cycle that only the cyclic garbage
    collector frees, with everything the object holds. One stored error raised to many
    waiters would also collect all their tracebacks. The copy carries the traceback
    instead, and goes away with whoever caught it (docs/scale.md "Garbage
    collection")."""
    copied = copy.copy(error)
    copied.__traceback__ = None
    return copied


class ConnectionClosed(RpcError):
    """The connection was lost or closed while the call was in flight (UNAVAILABLE)."""

    default_code = StatusCode.UNAVAILABLE


class ClientNotConnected(RpcError):
    """The server has no connected session for that client id (UNAVAILABLE)."""

    default_code = StatusCode.UNAVAILABLE


class PayloadTooLarge(RpcError):
    """A message is larger than the configured limit (RESOURCE_EXHAUSTED)."""

    default_code = StatusCode.RESOURCE_EXHAUSTED


class PromiseCapacityFull(RpcError):
    """Too many acknowledged sends are pending (RESOURCE_EXHAUSTED)."""

    default_code = StatusCode.RESOURCE_EXHAUSTED


class Timeout(RpcError):
    """A deadline or acknowledgement timeout passed (DEADLINE_EXCEEDED)."""

    default_code = StatusCode.DEADLINE_EXCEEDED


class UsageError(Exception):
    """The API was used in a state that does not allow it; the message names the state."""


class ArgumentError(UsageError, ValueError):
    """An argument's value is not allowed (bad metadata, a NaN or too long timeout);
    ``argument`` names it. Raised where the call is made, before anything is sent. A
    `UsageError`, and a `ValueError` as Python's own argument errors are."""

    def __init__(self, argument: str, message: str) -> None:
        self.argument = argument
        """The argument's name, e.g. ``"timeout"`` or ``"metadata"``."""
        super().__init__(f"{argument}: {message}")


class ConfigError(ValueError):
    """A configuration value is invalid; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


class ProtocolError(Exception):
    """Bytes or events that break docs/wire-protocol.md.

    ``error_code`` is the QUIC application error code (wire-protocol.md §6)
    used when this error ends a stream; ``status`` the status reported for it.
    """

    error_code: int = 0x05  # PROTOCOL_ERROR
    status: StatusCode = StatusCode.INTERNAL


class LocalProtocolError(ProtocolError):
    """We were about to break the protocol (a bug or API misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer broke the protocol."""


class FrameTooLarge(RemoteProtocolError):
    """A length prefix announced more bytes than the limit allows (RESOURCE_EXHAUSTED)."""

    error_code = 0x04  # EXCESSIVE_LOAD
    status = StatusCode.RESOURCE_EXHAUSTED
