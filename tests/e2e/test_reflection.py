"""Server reflection (grpc.reflection.v1 and v1alpha) over real QUIC, and the CLI on top of it.

The served schema is compiled here by the real protoc from small .proto files
with imports two deep (a well-known type among them) and a proto2 extension,
so file answers must carry transitive dependencies.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from quicflow import RpcError, ServicerContext, StatusCode
from quicflow.reflection import (
    INFO,
    INFO_V1ALPHA,
    ExtensionRequest,
    ReflectionClient,
    ServerReflectionRequest,
    ServerReflectionResponse,
)
from quicflow.rpc import Cardinality, Handler, Method, Service, unary_unary_handler
from quicflow.testing import ClientFor

from .service import TestEcho

ROOT = Path(__file__).resolve().parent.parent.parent

PROTOS = {
    "refltest/v1/base.proto": """
        syntax = "proto2";
        package refltest.v1;
        message Base {
          optional string id = 1;
          extensions 100 to 199;
        }
    """,
    "refltest/v1/ext.proto": """
        syntax = "proto2";
        package refltest.v1;
        import "refltest/v1/base.proto";
        extend Base {
          optional string note = 100;
          optional int32 rank = 101;
        }
    """,
    "refltest/v1/types.proto": """
        syntax = "proto3";
        package refltest.v1;
        import "google/protobuf/timestamp.proto";
        message Item {
          string name = 1;
          google.protobuf.Timestamp created = 2;
          message Tag { string value = 1; }
          repeated Tag tags = 3;
        }
    """,
    "refltest/v1/catalog.proto": """
        syntax = "proto3";
        package refltest.v1;
        import "refltest/v1/types.proto";
        import "refltest/v1/ext.proto";
        message GetRequest { string name = 1; }
        service Catalog {
          rpc Get(GetRequest) returns (Item);
        }
    """,
}
CATALOG_FILES = [
    "refltest/v1/catalog.proto",
    "refltest/v1/types.proto",
    "google/protobuf/timestamp.proto",
    "refltest/v1/ext.proto",
    "refltest/v1/base.proto",
]
"""What file_containing_symbol("refltest.v1.Catalog") sends first: the file, then its
imports depth first."""


@pytest.fixture(scope="module")
def catalog_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real protoc's modules for `PROTOS`, imported (they register the default pool):
    ``GetRequest`` and ``Item``."""
    root = tmp_path_factory.mktemp("refl")
    for name, text in PROTOS.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(line.strip() for line in text.strip().splitlines()) + "\n")
    done = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{root}", f"--python_out={root}", *PROTOS],
        cwd=root,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    sys.path.insert(0, str(root))
    try:
        importlib.import_module("refltest.v1.ext_pb2")
        catalog = importlib.import_module("refltest.v1.catalog_pb2")
        types = importlib.import_module("refltest.v1.types_pb2")
        yield SimpleNamespace(GetRequest=catalog.GetRequest, Item=types.Item)
    finally:
        sys.path.remove(str(root))


class Catalog(Service):
    """``refltest.v1.Catalog`` written by hand over protoc's classes (no plugin needed)."""

    SERVICE_NAME = "refltest.v1.Catalog"

    def __init__(self, pb: Any) -> None:
        self.pb = pb
        self.method: Method[Any, Any] = Method(
            "/refltest.v1.Catalog/Get",
            Cardinality.UNARY_UNARY,
            pb.GetRequest.SerializeToString,
            pb.GetRequest.FromString,
            pb.Item.SerializeToString,
            pb.Item.FromString,
        )

    async def get(self, request: Any, context: ServicerContext) -> Any:
        return self.pb.Item(name=request.name)

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        return {self.method.route: unary_unary_handler(self.method, self.get)}


def served(catalog_module: Any, **server_options: Any) -> ClientFor:
    """A real server with Catalog and Echo, reflection on unless told otherwise."""
    options = {"reflection": True, **server_options}
    return ClientFor([Catalog(catalog_module), TestEcho()], server_options=options)


async def test_list_services_on_v1_and_v1alpha(catalog_module: Any) -> None:
    """Check that both versions list every served service, built-ins and reflection included."""
    async with served(catalog_module) as client:
        expected = [
            "echo.Echo",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
            "quicflow.admin.v1.Admin",
            "quicflow.wire.v1.Messaging",
            "refltest.v1.Catalog",
        ]
        async with ReflectionClient(client) as reflection:
            assert await reflection.list_services() == expected
        call = client.stream_stream(INFO_V1ALPHA, [ServerReflectionRequest(list_services="*")])
        replies = [reply async for reply in call]
        assert [s.name for s in replies[0].list_services_response.service] == expected
        assert replies[0].original_request.list_services == "*"


async def test_file_containing_symbol_sends_transitive_imports_once(catalog_module: Any) -> None:
    """Check that the file declaring a service comes with every import, two deep, and that a
    later answer on the same stream leaves out files already sent."""
    async with served(catalog_module) as client:
        async with ReflectionClient(client) as reflection:
            files = await reflection.file_containing_symbol("refltest.v1.Catalog")
            assert [f.name for f in files] == CATALOG_FILES
            again = await reflection.file_containing_symbol("refltest.v1.Item.Tag")
            assert [f.name for f in again] == ["refltest/v1/types.proto"]
            method = await reflection.file_containing_symbol("refltest.v1.Catalog.Get")
            assert [f.name for f in method] == ["refltest/v1/catalog.proto"]
        async with ReflectionClient(client) as fresh:  # a new stream starts from nothing
            pool = await fresh.pool_for_symbol("refltest.v1.Item")
            item: Any = message_factory.GetMessageClass(
                pool.FindMessageTypeByName("refltest.v1.Item")
            )
            built = item(name="x", tags=[{"value": "a"}])
            built.created.seconds = 5
            assert item.FromString(built.SerializeToString()).created.seconds == 5
            assert sorted(f.name for f in fresh.files.file) == sorted(
                ["refltest/v1/types.proto", "google/protobuf/timestamp.proto"]
            )


async def test_file_by_name_and_extensions(catalog_module: Any) -> None:
    """Check file_by_filename, file_containing_extension and all_extension_numbers_of_type."""
    async with served(catalog_module) as client, ReflectionClient(client) as reflection:
        files = await reflection.file_by_filename("refltest/v1/ext.proto")
        assert [f.name for f in files] == ["refltest/v1/ext.proto", "refltest/v1/base.proto"]
        ext = await reflection.file_containing_extension("refltest.v1.Base", 101)
        assert [f.name for f in ext] == ["refltest/v1/ext.proto"]
        assert await reflection.extension_numbers("refltest.v1.Base") == [100, 101]
        assert await reflection.extension_numbers("refltest.v1.Item") == []


async def test_missing_symbols_get_not_found_and_the_stream_and_connection_go_on(
    catalog_module: Any,
) -> None:
    """Check that each unanswerable question gets an error_response (NOT_FOUND, or
    INVALID_ARGUMENT for an empty request) on the same stream, which then answers again, and
    the connection keeps serving calls."""
    async with served(catalog_module) as client:
        questions = [
            ServerReflectionRequest(file_containing_symbol="no.such.Symbol"),
            ServerReflectionRequest(file_containing_symbol="refltest.v1.Catalog.Nope"),
            ServerReflectionRequest(file_by_filename="no/such.proto"),
            ServerReflectionRequest(
                file_containing_extension=ExtensionRequest(
                    containing_type="refltest.v1.Base", extension_number=150
                )
            ),
            ServerReflectionRequest(all_extension_numbers_of_type="no.Such"),
            ServerReflectionRequest(host="h"),
            ServerReflectionRequest(file_containing_symbol="refltest.v1.GetRequest"),
        ]
        call = client.stream_stream(INFO, questions)
        replies: list[ServerReflectionResponse] = [reply async for reply in call]
        assert await call.code() is StatusCode.OK
        errors = [
            (r.error_response.error_code, r.error_response.error_message) for r in replies[:-1]
        ]
        assert errors == [
            (StatusCode.NOT_FOUND, "symbol not found: 'no.such.Symbol'"),
            (StatusCode.NOT_FOUND, "symbol not found: 'refltest.v1.Catalog.Nope'"),
            (StatusCode.NOT_FOUND, "file not found: 'no/such.proto'"),
            (StatusCode.NOT_FOUND, "extension 150 of 'refltest.v1.Base' not found"),
            (StatusCode.NOT_FOUND, "message type not found: 'no.Such'"),
            (
                StatusCode.INVALID_ARGUMENT,
                "the request asks nothing: set one of message_request's fields",
            ),
        ]
        assert replies[5].valid_host == "h"
        assert replies[-1].WhichOneof("message_response") == "file_descriptor_response"
        async with ReflectionClient(client) as reflection:
            with pytest.raises(RpcError) as info:
                await reflection.pool_for_symbol("no.Such")
            assert info.value.code is StatusCode.NOT_FOUND
            assert "echo.Echo" in await reflection.list_services()  # the same stream goes on
        get = Catalog(catalog_module).method
        reply = await client.unary_unary(get, catalog_module.GetRequest(name="still"))
        assert reply.name == "still"


async def test_a_request_that_does_not_parse_fails_that_call_only(catalog_module: Any) -> None:
    """Check that bytes that are no ServerReflectionRequest end that stream with INTERNAL
    naming the parse failure, and the connection keeps serving reflection."""
    raw: Method[bytes, bytes] = Method(
        INFO.route, Cardinality.STREAM_STREAM, bytes, bytes, bytes, bytes
    )
    async with served(catalog_module) as client:
        call = client.stream_stream(raw, [b"\xff\xff\xff"])
        with pytest.raises(RpcError) as info:
            async for _ in call:
                pass
        assert info.value.code is StatusCode.INTERNAL
        assert "could not parse the request" in info.value.message
        async with ReflectionClient(client) as reflection:
            assert "refltest.v1.Catalog" in await reflection.list_services()


async def test_reflection_is_off_unless_the_server_opts_in(catalog_module: Any) -> None:
    """Check that a server without ServerConfig.reflection answers UNIMPLEMENTED."""
    async with (
        served(catalog_module, reflection=False) as client,
        ReflectionClient(client) as reflection,
    ):
        with pytest.raises(RpcError) as info:
            await reflection.list_services()
        assert info.value.code is StatusCode.UNIMPLEMENTED


def test_descriptors_coexist_with_other_copies() -> None:
    """Check that the v1 file is registered under gRPC's canonical name (so an identical copy
    registers beside it) and that v1alpha stays out of the default pool (grpcio-reflection
    registers its own there)."""
    from quicflow.reflection import reflection_pb2

    pool = descriptor_pool.Default()
    file = pool.FindFileByName("grpc/reflection/v1/reflection.proto")
    assert file is reflection_pb2.DESCRIPTOR
    assert pool.AddSerializedFile(file.serialized_pb) is not None
    proto = descriptor_pb2.FileDescriptorProto.FromString(file.serialized_pb)
    assert (proto.package, proto.options.java_package) == (
        "grpc.reflection.v1",
        "io.grpc.reflection.v1",
    )
    with pytest.raises(KeyError):
        pool.FindServiceByName("grpc.reflection.v1alpha.ServerReflection")


# -- the CLI ----------------------------------------------------------------------


def quicflow(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quicflow ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "quicflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])},
    )


def error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command."""
    assert result.returncode == 1, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


async def cli(harness: ClientFor, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI against ``harness``'s server while this loop keeps serving."""
    connection = ["--address", f"127.0.0.1:{harness.server.port}", "--ca"]
    connection += [str(harness.certs.ca_file), "--server-name", "localhost"]
    return await asyncio.to_thread(quicflow, *args, *connection)


async def test_cli_list_describe_and_call_without_a_proto(catalog_module: Any) -> None:
    """Check `list`, `list SERVICE`, `describe` and `call` with no .proto, end to end."""
    harness = served(catalog_module)
    async with harness:
        listed = await cli(harness, "list")
        assert listed.returncode == 0, listed.stderr
        assert "refltest.v1.Catalog" in listed.stdout.splitlines()
        methods = await cli(harness, "list", "echo.Echo")
        assert methods.stdout.splitlines() == [
            "echo.Echo.Say",
            "echo.Echo.Stream",
            "echo.Echo.Collect",
            "echo.Echo.Chat",
        ]
        described = await cli(harness, "describe", "refltest.v1.Catalog", "refltest.v1.Item")
        assert described.returncode == 0, described.stderr
        assert described.stdout == (
            "refltest.v1.Catalog is a service (refltest/v1/catalog.proto):\n"
            "service Catalog {\n"
            "  rpc Get(refltest.v1.GetRequest) returns (refltest.v1.Item);\n"
            "}\n"
            "\n"
            "refltest.v1.Item is a message (refltest/v1/types.proto):\n"
            "message Item {\n"
            "  message Tag {\n"
            "    string value = 1;\n"
            "  }\n"
            "  string name = 1;\n"
            "  google.protobuf.Timestamp created = 2;\n"
            "  repeated refltest.v1.Item.Tag tags = 3;\n"
            "}\n"
        )
        called = await cli(harness, "call", "refltest.v1.Catalog/Get", '{"name": "lamp"}')
        assert called.returncode == 0, called.stderr
        assert called.stdout == '{"name": "lamp"}\n'
        streamed = await cli(harness, "call", "echo.Echo.Stream", '{"text": "a", "repeat": 2}')
        assert streamed.stdout.splitlines() == ['{"text": "a"}', '{"text": "a", "index": 1}']


async def test_cli_reflection_errors_are_one_clear_line(catalog_module: Any) -> None:
    """Check an unknown symbol for `describe` and `call`, and a server without reflection."""
    harness = served(catalog_module)
    async with harness:
        unknown = error_line(await cli(harness, "describe", "no.Such"))
        assert unknown.startswith("quicflow describe: unknown symbol 'no.Such' (services: ")
        call = error_line(await cli(harness, "call", "no.Svc/M", "{}"))
        assert call.startswith("quicflow call: unknown service 'no.Svc' (services: echo.Echo, ")
        method = error_line(await cli(harness, "call", "echo.Echo/Shout", "{}"))
        assert "has no method 'Shout'" in method
    harness = served(catalog_module, reflection=False)
    async with harness:
        off = error_line(await cli(harness, "call", "echo.Echo/Say", "{}"))
        assert off == (
            "quicflow call: the server does not serve reflection (it needs "
            "ServerConfig.reflection = true); or give the schema with --proto FILE or "
            "--descriptor-set FILE"
        )
        listing = error_line(await cli(harness, "list"))
        assert "does not serve reflection" in listing
