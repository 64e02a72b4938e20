"""The surface that generated code is written against.

Generated modules (``<file>_quicflow.py``) use only the names here:

* `Method` describes one rpc: its route, cardinality and (de)serializers. The
  runtime never imports a message library; the generated code hands it the
  functions (DESIGN.md "Message classes").
* `Channel` (in quicflow/calls.py, with the call objects it returns) is what
  a stub calls through: a `Client`, or a server's view of one client (push).
* `Service` is the base of every generated ``FooBase``; the four
  ``*_handler`` helpers bind a handler method to its `Method`.
* `RequestIterable` is what a client-streaming stub method takes; generated
  code spells it out (``AsyncIterable[X] | Iterable[X]``) where that fits a line.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Generic, NoReturn, TypeAlias, TypeVar

from .status import StatusCode

if TYPE_CHECKING:
    from .context import ServicerContext

__all__ = [
    "Cardinality",
    "Handler",
    "Method",
    "RequestIterable",
    "Service",
    "stream_stream_handler",
    "stream_unary_handler",
    "unary_stream_handler",
    "unary_unary_handler",
]

Req = TypeVar("Req")
Resp = TypeVar("Resp")

RequestIterable: TypeAlias = AsyncIterable[Req] | Iterable[Req]
"""The requests of a client-streaming call: ``RequestIterable[X]`` is
``AsyncIterable[X] | Iterable[X]`` (generated stubs use it when the union does not fit a line)."""


class Cardinality(enum.Enum):
    """How many messages each side of a call sends."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @property
    def client_streams(self) -> bool:
        """True when the caller sends a stream of requests."""
        return self in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

    @property
    def server_streams(self) -> bool:
        """True when the callee answers with a stream of responses."""
        return self in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)


@dataclass(frozen=True, slots=True)
class Method(Generic[Req, Resp]):
    """One rpc, as generated code describes it to the runtime.

    Example::

        SAY = Method("/echo.Echo/Say", Cardinality.UNARY_UNARY,
                     EchoRequest.SerializeToString, EchoRequest.FromString,
                     EchoReply.SerializeToString, EchoReply.FromString)
    """

    route: str
    """``/package.Service/Method``, in the proto's spelling."""
    cardinality: Cardinality
    serialize_request: Callable[[Req], bytes]
    deserialize_request: Callable[[bytes], Req]
    serialize_response: Callable[[Resp], bytes]
    deserialize_response: Callable[[bytes], Resp]


# Handler side -------------------------------------------------------------

UnaryUnaryFunc = Callable[[Req, "ServicerContext"], Awaitable[Resp]]
UnaryStreamFunc = Callable[[Req, "ServicerContext"], AsyncIterator[Resp]]
StreamUnaryFunc = Callable[[AsyncIterator[Req], "ServicerContext"], Awaitable[Resp]]
StreamStreamFunc = Callable[[AsyncIterator[Req], "ServicerContext"], AsyncIterator[Resp]]


@dataclass(frozen=True, slots=True)
class Handler:
    """A handler function bound to its `Method`; built by the ``*_handler`` helpers."""

    method: Method[Any, Any]
    func: Callable[..., Any]


def unary_unary_handler(method: Method[Req, Resp], func: UnaryUnaryFunc[Req, Resp]) -> Handler:
    """Bind an ``async def f(request, context) -> Response`` handler."""
    return Handler(method, func)


def unary_stream_handler(method: Method[Req, Resp], func: UnaryStreamFunc[Req, Resp]) -> Handler:
    """Bind an async-generator ``f(request, context)`` handler."""
    return Handler(method, func)


def stream_unary_handler(method: Method[Req, Resp], func: StreamUnaryFunc[Req, Resp]) -> Handler:
    """Bind an ``async def f(requests, context) -> Response`` handler."""
    return Handler(method, func)


def stream_stream_handler(method: Method[Req, Resp], func: StreamStreamFunc[Req, Resp]) -> Handler:
    """Bind an async-generator ``f(requests, context)`` handler."""
    return Handler(method, func)


class Service:
    """Base of every generated ``FooBase``.

    A generated base names its service and lists its handlers; a handler it
    does not override answers UNIMPLEMENTED, so a server may implement part of
    a large service.
    """

    SERVICE_NAME: ClassVar[str] = ""
    """The full proto name, e.g. ``echo.Echo``."""

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        """Map each route (``/pkg.Service/Method``) to its handler."""
        raise NotImplementedError


async def unimplemented(route: str) -> NoReturn:
    """Body of a generated unary/client-streaming default handler."""
    from .errors import RpcError

    raise RpcError(StatusCode.UNIMPLEMENTED, f"method {route} is not implemented")


async def unimplemented_stream(route: str) -> AsyncIterator[Any]:
    """Body of a generated server-streaming/bidi default handler."""
    from .errors import RpcError

    raise RpcError(StatusCode.UNIMPLEMENTED, f"method {route} is not implemented")
    yield  # pragma: no cover  (makes this an async generator)
