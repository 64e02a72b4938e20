"""The Echo service the end-to-end tests run, with knobs for odd behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from quicflow import RpcError, ServicerContext, StatusCode


class Probe:
    """What handlers observed, for the test to assert on."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.cancelled = asyncio.Event()
        self.finished = asyncio.Event()
        self.time_remaining: float | None = None
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.received: list[str] = []
        self.got_request = asyncio.Event()
        self.upload_ended_normally = False
        self.context_cancelled_seen = False
        self.done_callbacks = 0
        self.active = 0
        self.max_active = 0
        self.yielded = 0


class TestEcho(EchoBase):
    """Echo with behaviours chosen by the request text.

    * ``abort:<CODE>`` aborts with that status and trailing metadata;
    * ``raise`` raises an unexpected exception;
    * ``sleep`` waits ``delay_ms`` before answering;
    * ``meta`` answers with initial and trailing metadata.
    """

    __test__ = False

    def __init__(self) -> None:
        self.probe = Probe()

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        probe = self.probe
        probe.metadata = context.invocation_metadata()
        probe.time_remaining = context.time_remaining()
        probe.active += 1
        probe.max_active = max(probe.max_active, probe.active)
        context.add_done_callback(
            lambda _: setattr(probe, "done_callbacks", probe.done_callbacks + 1)
        )
        probe.started.set()
        try:
            text = request.text
            if text.startswith("abort:"):
                await context.abort(
                    StatusCode[text[6:]], "aborted on request", [("why-bin", b"\x00\x01")]
                )
            if text == "raise":
                raise ValueError("secret internal detail")
            if request.delay_ms:
                await asyncio.sleep(request.delay_ms / 1000)
            if text == "meta":
                await context.send_initial_metadata([("initial", "yes")])
                context.set_trailing_metadata([("trailing", "yes"), ("trail-bin", b"\xff")])
            return EchoReply(text=text, payload=request.payload)
        except asyncio.CancelledError:
            probe.context_cancelled_seen = context.cancelled()
            probe.cancelled.set()
            raise
        finally:
            probe.active -= 1
            probe.finished.set()

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        try:
            for i in range(request.repeat):
                if request.delay_ms:
                    await asyncio.sleep(request.delay_ms / 1000)
                yield EchoReply(text=request.text, index=i, payload=request.payload)
                self.probe.yielded = i + 1
        except asyncio.CancelledError:
            self.probe.cancelled.set()
            raise

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        self.probe.started.set()
        texts: list[str] = []
        try:
            async for request in requests:
                texts.append(request.text)
                self.probe.received.append(request.text)
                self.probe.got_request.set()
            self.probe.upload_ended_normally = True
        except asyncio.CancelledError:
            self.probe.cancelled.set()
            raise
        return EchoReply(text=",".join(texts))

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        i = 0
        async for request in requests:
            if request.text == "stop":
                raise RpcError(StatusCode.FAILED_PRECONDITION, "told to stop")
            yield EchoReply(text=request.text.upper(), index=i)
            i += 1


class PartialEcho(EchoBase):
    """Implements only Say: the other rpcs must answer UNIMPLEMENTED."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text)
