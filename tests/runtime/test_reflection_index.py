"""`ReflectionIndex` without a connection: the answers' rules, one request at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest

from quicflow import ServicerContext
from quicflow.health import HealthService
from quicflow.reflection import ReflectionIndex, ServerReflectionRequest
from quicflow.rpc import Cardinality, Handler, Method, unary_unary_handler
from quicflow.status import StatusCode


async def _say(request: Any, context: ServicerContext) -> Any:
    return request  # never called: the index only reads the handlers' methods


def handlers(route: str, deserialize: Any) -> Mapping[str, Handler]:
    """One unary handler at ``route`` whose request/response decode with ``deserialize``."""
    method: Method[Any, Any] = Method(
        route, Cardinality.UNARY_UNARY, bytes, deserialize, bytes, deserialize
    )
    return {route: unary_unary_handler(method, _say)}


def test_the_asked_file_is_always_sent_and_imports_only_once() -> None:
    """Check that a file asked twice is sent twice, and `sent` collects the files sent."""
    index = ReflectionIndex(
        {
            **handlers("/echo.Echo/Say", EchoRequest.FromString),
            **HealthService().__quicflow_handlers__(),
        }
    )
    sent: set[str] = set()
    ask = ServerReflectionRequest(file_containing_symbol=".echo.EchoReply")
    first = index.answer(ask, sent)
    second = index.answer(ask, sent)
    assert len(first.file_descriptor_response.file_descriptor_proto) == 1
    assert second.file_descriptor_response == first.file_descriptor_response
    assert sent == {"echo/echo.proto"}
    assert (
        EchoReply.DESCRIPTOR.file.serialized_pb
        in first.file_descriptor_response.file_descriptor_proto
    )
    assert index.services == ("echo.Echo", "grpc.health.v1.Health")


def test_v1alpha_is_described_from_its_private_pool() -> None:
    """Check that the v1alpha service is found under grpcio-reflection's file name."""
    index = ReflectionIndex({})
    reply = index.answer(
        ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1alpha.ServerReflection"),
        set(),
    )
    found = index.file_containing_symbol("grpc.reflection.v1alpha.ServerReflectionRequest")
    assert found is not None
    assert found.name == "grpc_reflection/v1alpha/reflection.proto"
    assert reply.file_descriptor_response.file_descriptor_proto == [found.serialized_pb]


def test_services_without_descriptors_say_why() -> None:
    """Check that a service whose messages are no protobuf classes (betterproto) is listed,
    and asking for it answers NOT_FOUND naming betterproto."""
    index = ReflectionIndex(handlers("/bp.Thing/Do", lambda data: data))
    assert index.services == ("bp.Thing",)
    for symbol in ("bp.Thing", "bp.Thing.Do"):
        reply = index.answer(ServerReflectionRequest(file_containing_symbol=symbol), set())
        assert reply.error_response.error_code == StatusCode.NOT_FOUND
        assert reply.error_response.error_message == (
            f"symbol not found: {symbol!r} (service bp.Thing is served with betterproto "
            "messages, which carry no descriptors; describe it with its .proto)"
        )
