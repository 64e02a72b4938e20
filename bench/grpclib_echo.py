"""The Echo service for grpclib, written by hand with its ``Handler`` API.

Only the two methods the benchmark calls (Say and Stream); same paths and
protobuf messages as proto/echo/echo.proto, so the wire traffic is what
grpclib's own generated code would send.
"""

from __future__ import annotations

import abc

import grpclib.client
import grpclib.const
import grpclib.server
from echo.echo_pb2 import EchoReply, EchoRequest

SAY = "/echo.Echo/Say"
STREAM = "/echo.Echo/Stream"


class EchoGrpclibBase(abc.ABC):
    """Subclass with ``say`` and ``stream``; pass an instance to ``grpclib.server.Server``."""

    @abc.abstractmethod
    async def say(self, stream: grpclib.server.Stream[EchoRequest, EchoReply]) -> None:
        """Answer one request with one reply."""

    @abc.abstractmethod
    async def stream(self, stream: grpclib.server.Stream[EchoRequest, EchoReply]) -> None:
        """Answer one request with ``repeat`` replies."""

    def __mapping__(self) -> dict[str, grpclib.const.Handler]:
        return {
            SAY: grpclib.const.Handler(
                self.say, grpclib.const.Cardinality.UNARY_UNARY, EchoRequest, EchoReply
            ),
            STREAM: grpclib.const.Handler(
                self.stream, grpclib.const.Cardinality.UNARY_STREAM, EchoRequest, EchoReply
            ),
        }


class EchoGrpclibStub:
    """Calls Echo through a ``grpclib.client.Channel``."""

    def __init__(self, channel: grpclib.client.Channel) -> None:
        self.say: grpclib.client.UnaryUnaryMethod[EchoRequest, EchoReply] = (
            grpclib.client.UnaryUnaryMethod(channel, SAY, EchoRequest, EchoReply)
        )
        self.stream: grpclib.client.UnaryStreamMethod[EchoRequest, EchoReply] = (
            grpclib.client.UnaryStreamMethod(channel, STREAM, EchoRequest, EchoReply)
        )
