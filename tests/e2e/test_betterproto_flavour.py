"""The betterproto flavour of the generated code, called over real QUIC."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from betterproto_flavour.echo import EchoReply, EchoRequest
from betterproto_flavour.echo.echo_quicflow import EchoBase, EchoStub

from quicflow import RpcError, ServicerContext, StatusCode
from quicflow.testing import ClientFor


class DataclassEcho(EchoBase):
    """Echo on betterproto dataclasses; Collect is left unimplemented on purpose."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text, payload=request.payload)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        for i in range(request.repeat):
            yield EchoReply(text=request.text, index=i)

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        async for request in requests:
            yield EchoReply(text=request.text[::-1])


async def test_betterproto_flavour_end_to_end() -> None:
    """Check that betterproto-generated stubs and bases work for every call kind."""
    async with ClientFor([DataclassEcho()]) as client:
        stub = EchoStub(client)
        reply = await stub.say(EchoRequest(text="dc", payload=b"\x00\x01"))
        assert (reply.text, reply.payload) == ("dc", b"\x00\x01")
        assert [r.index async for r in stub.stream(EchoRequest(text="s", repeat=3))] == [0, 1, 2]
        assert [r.text async for r in stub.chat([EchoRequest(text="abc")])] == ["cba"]
        with pytest.raises(RpcError) as info:
            await stub.collect([EchoRequest(text="x")])
        assert info.value.code is StatusCode.UNIMPLEMENTED


async def test_flavours_interoperate_on_the_wire() -> None:
    """Check that a protobuf-flavour client talks to a betterproto-flavour server."""
    from echo.echo_pb2 import EchoRequest as PbRequest
    from echo.echo_quicflow import EchoStub as PbStub

    async with ClientFor([DataclassEcho()]) as client:
        reply = await PbStub(client).say(PbRequest(text="mixed"))
        assert reply.text == "mixed"
