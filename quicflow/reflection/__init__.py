"""Server reflection, compatible with gRPC's ``grpc.reflection.v1`` (and ``v1alpha``).

A server with ``ServerConfig.reflection = True`` (``quicflow serve`` turns it
on) answers ``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo``: a
bidirectional stream on which each request gets one response, in order. It
lists the served services and sends the ``FileDescriptorProto`` of the file
declaring a symbol, a file by name or an extension, with the files it imports
(transitively, leaving out files already sent on the stream). A question
it cannot answer (an unknown symbol) gets an ``error_response`` with
NOT_FOUND, and the stream goes on. ``v1alpha`` (older tools such as grpcurl
ask it first) is served by the same handler: its messages have v1's fields.

The messages come from ``proto/grpc/reflection/v1/reflection.proto``,
registered under gRPC's canonical file name
(``grpc/reflection/v1/reflection.proto``) with the canonical descriptor, so a
process may import another copy registered the same way. v1alpha's
descriptor lives in a private pool, never in the default one, so
grpcio-reflection's v1alpha module can be imported beside QuicFlow.

Descriptors come from the descriptor pools of the served services' protobuf
message classes (the default pool, for generated ``_pb2`` modules). Services
generated with betterproto messages are listed, but their files cannot be
described: betterproto keeps no descriptors (docs/reflection.md).

`ReflectionClient` asks the questions from a `Client`::

    async with ReflectionClient(client) as reflection:
        print(await reflection.list_services())
        pool = await reflection.pool_for_symbol("echo.Echo")
"""

from __future__ import annotations

from .client import ReflectionClient
from .reflection_pb2 import (
    ErrorResponse,
    ExtensionNumberResponse,
    ExtensionRequest,
    FileDescriptorResponse,
    ListServiceResponse,
    ServerReflectionRequest,
    ServerReflectionResponse,
    ServiceResponse,
)
from .service import (
    INFO,
    INFO_V1ALPHA,
    SERVICE_NAME,
    V1ALPHA_SERVICE_NAME,
    ReflectionIndex,
    ReflectionService,
)

__all__ = [
    "INFO",
    "INFO_V1ALPHA",
    "SERVICE_NAME",
    "V1ALPHA_SERVICE_NAME",
    "ErrorResponse",
    "ExtensionNumberResponse",
    "ExtensionRequest",
    "FileDescriptorResponse",
    "ListServiceResponse",
    "ReflectionClient",
    "ReflectionIndex",
    "ReflectionService",
    "ServerReflectionRequest",
    "ServerReflectionResponse",
    "ServiceResponse",
]
