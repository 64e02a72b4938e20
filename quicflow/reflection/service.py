"""The answering side of server reflection: an index of descriptors and the bidi handler.

`ReflectionIndex` is pure (no event loop): it is built from the routes a
server serves and answers one `ServerReflectionRequest` at a time, so its
rules are tested without a connection. `ReflectionService` wraps it in the
``ServerReflectionInfo`` stream, once for ``grpc.reflection.v1`` and once for
``v1alpha`` (the same messages on the wire).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, cast

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import Descriptor, FileDescriptor
from google.protobuf.message import Message

from ..rpc import Cardinality, Handler, Method, Service, stream_stream_handler
from ..status import StatusCode
from .reflection_pb2 import (
    DESCRIPTOR as _V1_FILE,
)
from .reflection_pb2 import (
    ErrorResponse,
    ExtensionNumberResponse,
    FileDescriptorResponse,
    ListServiceResponse,
    ServerReflectionRequest,
    ServerReflectionResponse,
    ServiceResponse,
)

if TYPE_CHECKING:
    from ..context import ServicerContext

__all__ = [
    "INFO",
    "INFO_V1ALPHA",
    "SERVICE_NAME",
    "V1ALPHA_SERVICE_NAME",
    "ReflectionIndex",
    "ReflectionService",
]

SERVICE_NAME = "grpc.reflection.v1.ServerReflection"
V1ALPHA_SERVICE_NAME = "grpc.reflection.v1alpha.ServerReflection"
V1ALPHA_FILE_NAME = "grpc_reflection/v1alpha/reflection.proto"
"""The name grpcio-reflection registers v1alpha under; our private copy uses it too."""


def _info_method(service: str) -> Method[ServerReflectionRequest, ServerReflectionResponse]:
    """The ``ServerReflectionInfo`` method of ``service`` (v1 and v1alpha share messages)."""
    return Method(
        f"/{service}/ServerReflectionInfo",
        Cardinality.STREAM_STREAM,
        ServerReflectionRequest.SerializeToString,
        ServerReflectionRequest.FromString,
        ServerReflectionResponse.SerializeToString,
        ServerReflectionResponse.FromString,
    )


INFO = _info_method(SERVICE_NAME)
"""``/grpc.reflection.v1.ServerReflection/ServerReflectionInfo``."""

INFO_V1ALPHA = _info_method(V1ALPHA_SERVICE_NAME)
"""``/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo``: v1alpha's messages
have v1's fields and numbers, so v1's classes read and write them unchanged."""


def _v1alpha_pool() -> descriptor_pool.DescriptorPool:
    """A private pool holding v1alpha's file, derived from v1's (same messages and numbers).

    It stays out of the default pool: grpcio-reflection registers the same
    symbols there, and a second definition would clash when both are imported.
    """
    proto = descriptor_pb2.FileDescriptorProto.FromString(_V1_FILE.serialized_pb)
    proto.name = V1ALPHA_FILE_NAME
    proto.package = "grpc.reflection.v1alpha"
    proto.options.java_package = "io.grpc.reflection.v1alpha"
    proto.options.ClearField("go_package")
    old, new = ".grpc.reflection.v1.", ".grpc.reflection.v1alpha."
    for message in proto.message_type:
        for fld in message.field:
            if fld.HasField("type_name"):
                fld.type_name = fld.type_name.replace(old, new)
    for service in proto.service:
        for method in service.method:
            method.input_type = method.input_type.replace(old, new)
            method.output_type = method.output_type.replace(old, new)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return pool


_V1ALPHA_POOL = _v1alpha_pool()


def _message_class(func: Any) -> type[Message] | None:
    """The protobuf message class behind a (de)serializer such as ``Foo.FromString``."""
    owner = getattr(func, "__self__", None)
    if isinstance(owner, type) and issubclass(owner, Message):
        return owner
    return None


def _service_of(route: str) -> str:
    """``/pkg.Service/Method`` -> ``pkg.Service``."""
    return route.lstrip("/").partition("/")[0]


class ReflectionIndex:
    """What reflection can tell about a set of served routes.

    Services are listed from the routes themselves. Descriptors are looked up
    in the descriptor pools of the served services' protobuf message classes
    (normally the default pool, which every ``_pb2`` module registers into),
    then in a private pool holding v1alpha's file. Services served with
    betterproto messages are listed, but their files cannot be described:
    betterproto keeps no descriptors.

    Example::

        index = ReflectionIndex(server_handlers)
        reply = index.answer(ServerReflectionRequest(list_services=""), sent=set())
    """

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        pools: dict[int, descriptor_pool.DescriptorPool] = {}
        default = descriptor_pool.Default()
        pools[id(default)] = default
        self.services: tuple[str, ...] = tuple(sorted({_service_of(r) for r in handlers}))
        """The full names of the served services, sorted."""
        without: set[str] = set()
        for route, handler in handlers.items():
            classes = [
                _message_class(handler.method.deserialize_request),
                _message_class(handler.method.deserialize_response),
            ]
            found = [c for c in classes if c is not None]
            for cls in found:
                # The stubs type upb's pool apart from the pure-Python class it stands for.
                pool = cast(descriptor_pool.DescriptorPool, cls.DESCRIPTOR.file.pool)
                pools.setdefault(id(pool), pool)
            if not found:
                without.add(_service_of(route))
        pools.setdefault(id(_V1ALPHA_POOL), _V1ALPHA_POOL)
        self._pools = tuple(pools.values())
        self._without_descriptors = frozenset(without)

    # -- lookups (each returns None when nothing matches) --

    def file_by_name(self, name: str) -> FileDescriptor | None:
        """The file registered as ``name`` (e.g. ``echo/echo.proto``)."""
        for pool in self._pools:
            try:
                return pool.FindFileByName(name)
            except KeyError:
                continue
        return None

    def file_containing_symbol(self, symbol: str) -> FileDescriptor | None:
        """The file declaring ``symbol``: a service, method, message, enum, field or extension."""
        for pool in self._pools:
            try:
                return pool.FindFileContainingSymbol(symbol)
            except KeyError:
                pass
            # protobuf's pool does not index methods (pkg.Service.Method): find the service.
            parent, _, name = symbol.rpartition(".")
            try:
                service = pool.FindServiceByName(parent)
            except KeyError:
                continue
            if name in service.methods_by_name:
                return service.file
        return None

    def _message_type(self, name: str) -> Descriptor | None:
        for pool in self._pools:
            try:
                return pool.FindMessageTypeByName(name)
            except KeyError:
                continue
        return None

    def file_containing_extension(self, type_name: str, number: int) -> FileDescriptor | None:
        """The file declaring extension ``number`` of message type ``type_name``."""
        message = self._message_type(type_name)
        if message is None:
            return None
        try:
            extension = message.file.pool.FindExtensionByNumber(message, number)
        except KeyError:
            return None
        file: FileDescriptor = extension.file  # type: ignore[attr-defined]  # not in the stubs
        return file

    def extension_numbers(self, type_name: str) -> list[int] | None:
        """Every known extension number of ``type_name``, sorted; None for an unknown type."""
        message = self._message_type(type_name)
        if message is None:
            return None
        return sorted(ext.number for ext in message.file.pool.FindAllExtensions(message))

    # -- answering --

    def answer(self, request: ServerReflectionRequest, sent: set[str]) -> ServerReflectionResponse:
        """The response to one request. ``sent`` holds the names of files already sent on
        this stream: they are left out of later answers (allowed by the protocol) and the
        names of the files sent now are added to it.

        Never raises for a bad request: a missing symbol, file or extension is
        an ``error_response`` with NOT_FOUND, a request that sets no question
        one with INVALID_ARGUMENT, and the stream goes on.
        """
        reply = ServerReflectionResponse(valid_host=request.host, original_request=request)
        kind = request.WhichOneof("message_request")
        if kind == "list_services":
            reply.list_services_response.CopyFrom(
                ListServiceResponse(service=[ServiceResponse(name=n) for n in self.services])
            )
        elif kind == "file_by_filename":
            found = self.file_by_name(request.file_by_filename)
            if found is None:
                return self._error(reply, f"file not found: {request.file_by_filename!r}")
            self._files(reply, found, sent)
        elif kind == "file_containing_symbol":
            symbol = request.file_containing_symbol.lstrip(".")
            found = self.file_containing_symbol(symbol)
            if found is None:
                return self._error(reply, self._symbol_missing(symbol))
            self._files(reply, found, sent)
        elif kind == "file_containing_extension":
            ext = request.file_containing_extension
            found = self.file_containing_extension(
                ext.containing_type.lstrip("."), ext.extension_number
            )
            if found is None:
                return self._error(
                    reply,
                    f"extension {ext.extension_number} of {ext.containing_type!r} not found",
                )
            self._files(reply, found, sent)
        elif kind == "all_extension_numbers_of_type":
            type_name = request.all_extension_numbers_of_type.lstrip(".")
            numbers = self.extension_numbers(type_name)
            if numbers is None:
                return self._error(reply, f"message type not found: {type_name!r}")
            reply.all_extension_numbers_response.CopyFrom(
                ExtensionNumberResponse(base_type_name=type_name, extension_number=numbers)
            )
        else:
            return self._error(
                reply,
                "the request asks nothing: set one of message_request's fields",
                StatusCode.INVALID_ARGUMENT,
            )
        return reply

    def _symbol_missing(self, symbol: str) -> str:
        service = symbol if symbol in self._without_descriptors else symbol.rpartition(".")[0]
        if service in self._without_descriptors:
            return (
                f"symbol not found: {symbol!r} (service {service} is served with betterproto "
                "messages, which carry no descriptors; describe it with its .proto)"
            )
        return f"symbol not found: {symbol!r}"

    @staticmethod
    def _error(
        reply: ServerReflectionResponse,
        message: str,
        code: StatusCode = StatusCode.NOT_FOUND,
    ) -> ServerReflectionResponse:
        reply.error_response.CopyFrom(ErrorResponse(error_code=int(code), error_message=message))
        return reply

    @staticmethod
    def _files(reply: ServerReflectionResponse, file: FileDescriptor, sent: set[str]) -> None:
        """The file first, then its imports (transitively) not yet sent on this stream.

        The file asked for is always sent, even if sent before: a client that
        asks again has lost it.
        """
        out = [file.serialized_pb]
        sent.add(file.name)
        for dep in _dependencies(file):
            if dep.name not in sent:
                sent.add(dep.name)
                out.append(dep.serialized_pb)
        reply.file_descriptor_response.CopyFrom(FileDescriptorResponse(file_descriptor_proto=out))


def _dependencies(file: FileDescriptor) -> Iterator[FileDescriptor]:
    """Every file ``file`` imports, transitively, each once, depth first."""
    seen = {file.name}
    stack = list(reversed(file.dependencies))
    while stack:
        dep = stack.pop()
        if dep.name in seen:
            continue
        seen.add(dep.name)
        yield dep
        stack.extend(reversed(dep.dependencies))


class ReflectionService(Service):
    """Serves ``grpc.reflection.v1`` (and ``v1alpha``) for the routes of one server.

    A `Server` with ``ServerConfig.reflection`` on makes one over its own
    route table, so services added later are listed too.

    Example::

        server = Server(ServerConfig(..., reflection=True))
        server.add_service(MyEcho())  # now listed by `quicflow list`
    """

    SERVICE_NAME: ClassVar[str] = SERVICE_NAME

    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handlers = handlers

    async def server_reflection_info(
        self, requests: AsyncIterator[ServerReflectionRequest], context: ServicerContext
    ) -> AsyncIterator[ServerReflectionResponse]:
        """Answer each request in order, until the caller half-closes."""
        index = ReflectionIndex(self._handlers)
        sent: set[str] = set()
        async for request in requests:
            yield index.answer(request, sent)

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        """Map both versions' ``ServerReflectionInfo`` to the one handler."""
        return {
            INFO.route: stream_stream_handler(INFO, self.server_reflection_info),
            INFO_V1ALPHA.route: stream_stream_handler(INFO_V1ALPHA, self.server_reflection_info),
        }
