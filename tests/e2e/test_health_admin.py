"""The built-in health (grpc.health.v1) and admin services, through their typed stubs."""

from __future__ import annotations

import asyncio

import pytest

from quicflow import RpcError, StatusCode
from quicflow.admin import ADMIN_TOKEN_KEY, AdminStub, ListClientsRequest
from quicflow.health import HealthCheckRequest, HealthListRequest, HealthStub, ServingStatus
from quicflow.testing import ClientFor

from .service import TestEcho

TOKEN = "admin-token-0123456789"


async def test_check_overall_and_per_service_status() -> None:
    """Check that Check answers SERVING for "", the status an application set, and NOT_FOUND
    for a service never set; List answers them all."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        stub = HealthStub(client)
        reply = await stub.check(HealthCheckRequest())
        assert ServingStatus(reply.status) is ServingStatus.SERVING
        with pytest.raises(RpcError) as info:
            await stub.check(HealthCheckRequest(service="echo.Echo"))
        assert info.value.code is StatusCode.NOT_FOUND
        server = harness.server
        server.health.set("echo.Echo", ServingStatus.NOT_SERVING)
        reply = await stub.check(HealthCheckRequest(service="echo.Echo"))
        assert ServingStatus(reply.status) is ServingStatus.NOT_SERVING
        listed = await stub.list(HealthListRequest())
        assert {name: ServingStatus(r.status) for name, r in listed.statuses.items()} == {
            "": ServingStatus.SERVING,
            "echo.Echo": ServingStatus.NOT_SERVING,
        }
        with pytest.raises(ValueError, match="SERVICE_UNKNOWN"):
            server.health.set("echo.Echo", ServingStatus.SERVICE_UNKNOWN)


async def test_watch_sends_current_status_then_changes_then_not_serving_at_stop() -> None:
    """Check that Watch sends SERVICE_UNKNOWN for an unknown service, then each change (no
    repeats), and NOT_SERVING when the server stops."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        health = harness.server.health
        call = HealthStub(client).watch(HealthCheckRequest(service="echo.Echo"))
        seen: list[int] = []
        stream = call.__aiter__()
        seen.append((await stream.__anext__()).status)
        health.set("echo.Echo", ServingStatus.SERVING)
        seen.append((await stream.__anext__()).status)
        health.set("echo.Echo", ServingStatus.SERVING)  # no change: nothing sent
        health.set("echo.Echo", ServingStatus.NOT_SERVING)
        seen.append((await stream.__anext__()).status)
        health.set("echo.Echo", ServingStatus.SERVING)
        seen.append((await stream.__anext__()).status)
        stopping = asyncio.ensure_future(harness.server.stop(grace=1.0))
        seen.append((await stream.__anext__()).status)
        await stopping
        assert seen == [
            ServingStatus.SERVICE_UNKNOWN,
            ServingStatus.SERVING,
            ServingStatus.NOT_SERVING,
            ServingStatus.SERVING,
            ServingStatus.NOT_SERVING,
        ]
        assert health.get("") is ServingStatus.NOT_SERVING
        health.set("", ServingStatus.SERVING)  # ignored after shutdown
        assert health.get("") is ServingStatus.NOT_SERVING


async def test_admin_is_closed_without_a_configured_token() -> None:
    """Check that ListClients fails PERMISSION_DENIED when the server has no admin_token."""
    async with ClientFor([TestEcho()]) as client:
        with pytest.raises(RpcError) as info:
            await AdminStub(client).list_clients(
                ListClientsRequest(), metadata=[(ADMIN_TOKEN_KEY, TOKEN)]
            )
        assert info.value.code is StatusCode.PERMISSION_DENIED
        assert "admin_token" in info.value.message


async def test_admin_lists_clients_only_for_the_right_token() -> None:
    """Check that ListClients needs the admin token (missing: UNAUTHENTICATED, wrong:
    PERMISSION_DENIED) and then lists the connected client with its labels."""
    harness = ClientFor(
        [TestEcho()],
        server_options={"admin_token": TOKEN},
        client_options={"client_id": "ops-1", "labels": {"zone": "a"}},
    )
    async with harness as client:
        stub = AdminStub(client)
        with pytest.raises(RpcError) as info:
            await stub.list_clients(ListClientsRequest())
        assert info.value.code is StatusCode.UNAUTHENTICATED
        with pytest.raises(RpcError) as info:
            await stub.list_clients(ListClientsRequest(), metadata=[(ADMIN_TOKEN_KEY, "x" * 22)])
        assert info.value.code is StatusCode.PERMISSION_DENIED
        reply = await stub.list_clients(ListClientsRequest(), metadata=[(ADMIN_TOKEN_KEY, TOKEN)])
        assert [c.client_id for c in reply.clients] == ["ops-1"]
        entry = reply.clients[0]
        assert dict(entry.labels) == {"zone": "a"}
        assert entry.address.startswith("127.0.0.1:")
        assert entry.connected_since > 0
        assert entry.state == "active"
        assert entry.calls_in >= 3


def test_health_descriptor_is_grpcs() -> None:
    """Check that the health messages have gRPC's own file name, package and Go package,
    with gRPC's three rpcs, in a pool of their own (tests/e2e/test_health_own.py)."""
    from google.protobuf import descriptor_pool

    from quicflow.health import health_pb2

    file = health_pb2.DESCRIPTOR
    assert file.name == "grpc/health/v1/health.proto"
    assert file.pool is not descriptor_pool.Default()
    assert file.package == "grpc.health.v1"
    assert file.GetOptions().go_package == "google.golang.org/grpc/health/grpc_health_v1"
    assert list(file.services_by_name["Health"].methods_by_name) == ["Check", "List", "Watch"]
