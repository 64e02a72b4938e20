"""The example Echo service: the four call kinds in a few lines each."""

from __future__ import annotations

from collections.abc import AsyncIterator

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from quicflow import ServicerContext


class Echo(EchoBase):
    """Implements every rpc of echo.Echo (proto/echo/echo.proto)."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        """Answer one request with one reply."""
        return EchoReply(text=request.text)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        """Answer one request with ``repeat`` replies."""
        for i in range(request.repeat):
            yield EchoReply(text=request.text, index=i)

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        """Read every request, answer once with their texts joined."""
        texts = [request.text async for request in requests]
        return EchoReply(text=" ".join(texts))

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        """Answer each request as it arrives."""
        i = 0
        async for request in requests:
            yield EchoReply(text=request.text.upper(), index=i)
            i += 1
