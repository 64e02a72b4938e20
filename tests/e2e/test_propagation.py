"""Deadline and cancellation propagation: a handler's outgoing calls inherit its
deadline and are cancelled with it (quicflow/context.py), over real QUIC.

The chain is client -> server A -> A's handler -> server B. Deadlines are asserted
on a shared `FakeClock`, exactly.
"""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub

import quicflow
from quicflow import Client, RpcError, ServicerContext, StatusCode
from quicflow.testing import ClientFor, FakeClock

from .service import TestEcho


class Relay(EchoBase):
    """Say forwards to server B through ``downstream``; the request text says how.

    * ``inherit``: no timeout of its own;
    * ``own``: ``timeout=10.0``;
    * ``detached``: inside `quicflow.detached`;
    * ``background``: starts the call, does not await it, then waits forever.
    """

    def __init__(self, downstream: Client) -> None:
        self.downstream = downstream
        self.gate = asyncio.Event()
        self.entered = asyncio.Event()

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        self.entered.set()
        await self.gate.wait()
        stub = EchoStub(self.downstream)
        forward = EchoRequest(text=request.text, delay_ms=request.delay_ms)
        match request.text:
            case "own":
                return await stub.say(forward, timeout=10.0)
            case "detached":
                with quicflow.detached():
                    return await stub.say(forward)
            case "background":
                stub.say(forward)  # in flight while the handler waits
                await asyncio.Event().wait()
                raise AssertionError("unreachable")
            case _:
                return await stub.say(forward)


async def _chain(clock: FakeClock | None = None) -> tuple[ClientFor, TestEcho, ClientFor, Relay]:
    leaf = TestEcho()
    b = ClientFor([leaf], clock=clock)
    await b.server.start()
    downstream = b.new_client()
    await downstream.connect()
    b.client = downstream
    relay = Relay(downstream)
    a = ClientFor([relay], clock=clock)
    return a, leaf, b, relay


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("inherit", 3.0), ("own", 10.0), ("detached", None)],
    ids=["inherits-the-rest", "own-timeout-replaces-it", "detached-has-none"],
)
async def test_a_handlers_call_inherits_its_remaining_deadline(
    mode: str, expected: float | None
) -> None:
    """Check that A's handler, 2 s into a 5 s call, calls B with exactly 3 s left (on
    virtual time), that an explicit timeout replaces the inherited one, and that
    `quicflow.detached` sends no deadline at all."""
    clock = FakeClock()
    a, leaf, b, relay = await _chain(clock)
    try:
        async with a as client:
            call = EchoStub(client).say(EchoRequest(text=mode), timeout=5.0)
            await asyncio.wait_for(relay.entered.wait(), 5.0)
            clock.advance(2.0)
            relay.gate.set()
            reply = await call
            assert reply.text == mode
            assert leaf.probe.time_remaining == expected
    finally:
        await b.__aexit__()


async def test_the_channel_default_timeout_bounds_an_inherited_deadline() -> None:
    """Check that a channel default_timeout shorter than the handler's remaining time
    wins, and a longer one does not."""
    clock = FakeClock()
    leaf = TestEcho()
    async with ClientFor([leaf], clock=clock) as b_client:
        for default, expected in ((1.5, 1.5), (60.0, 5.0)):
            relay = Relay(Client(_with_default(b_client, default), clock=clock))
            await relay.downstream.connect()
            harness = ClientFor([relay], clock=clock)
            try:
                async with harness as client:
                    relay.gate.set()
                    await EchoStub(client).say(EchoRequest(text="inherit"), timeout=5.0)
                    assert leaf.probe.time_remaining == expected
            finally:
                await relay.downstream.close()


def _with_default(client: Client, default: float) -> quicflow.ClientConfig:
    from dataclasses import replace

    return replace(client.config, default_timeout=default)


async def test_cancelling_the_outer_call_cancels_the_inner_call_on_b() -> None:
    """Check that cancelling the client's call to A cancels the call A's handler had in
    flight to B (one it never awaited), so B's handler is cancelled too."""
    a, leaf, b, relay = await _chain()
    try:
        async with a as client:
            relay.gate.set()
            call = EchoStub(client).say(EchoRequest(text="background", delay_ms=60_000))
            await asyncio.wait_for(leaf.probe.started.wait(), 5.0)
            assert call.cancel()
            await asyncio.wait_for(leaf.probe.cancelled.wait(), 5.0)
            with pytest.raises(RpcError) as info:
                await call
            assert info.value.code is StatusCode.CANCELLED
    finally:
        await b.__aexit__()


async def test_the_outer_deadline_cancels_the_inner_call_on_b() -> None:
    """Check that when A's deadline passes (virtual time), the call its handler made to
    B ends too: B's handler is cancelled, the client sees DEADLINE_EXCEEDED."""
    clock = FakeClock()
    a, leaf, b, relay = await _chain(clock)
    try:
        async with a as client:
            relay.gate.set()
            call = EchoStub(client).say(
                EchoRequest(text="background", delay_ms=60_000), timeout=3.0
            )
            await asyncio.wait_for(leaf.probe.started.wait(), 5.0)
            assert leaf.probe.time_remaining == 3.0
            clock.advance(3.0)  # short of the heartbeat's timers
            await asyncio.wait_for(leaf.probe.cancelled.wait(), 5.0)
            with pytest.raises(RpcError) as info:
                await call
            assert info.value.code is StatusCode.DEADLINE_EXCEEDED
    finally:
        await b.__aexit__()


class Pusher(EchoBase):
    """Say pushes an event back to the calling client once the clock has moved."""

    def __init__(self, server: quicflow.Server, clock: FakeClock) -> None:
        self.server = server
        self.clock = clock

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        self.clock.advance(1.25)
        ack = await NotifyStub(self.server.client(context.client_id)).deliver(Event(seq=1))
        return EchoReply(text=ack.client_id)


class Inbox(NotifyBase):
    def __init__(self) -> None:
        self.time_remaining: float | None = None

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        self.time_remaining = context.time_remaining()
        return Ack(client_id="pushed", seq=request.seq)


async def test_a_push_made_by_a_handler_inherits_its_deadline() -> None:
    """Check that a push to a client from inside a handler carries the handler's
    remaining deadline (virtual time: 4 s call, 1.25 s spent, 2.75 s pushed)."""
    clock = FakeClock()
    harness = ClientFor([], clock=clock)
    harness.server.add_service(Pusher(harness.server, clock))
    inbox = Inbox()
    async with harness:
        client = harness.new_client(client_id="c1")
        client.add_service(inbox)
        await client.connect()
        try:
            reply = await EchoStub(client).say(EchoRequest(), timeout=4.0)
            assert reply.text == "pushed"
            assert inbox.time_remaining == 2.75
        finally:
            await client.close()


async def test_no_current_call_outside_a_handler() -> None:
    """Check that current_call() is None outside handlers and inside detached()."""
    assert quicflow.current_call() is None
    with quicflow.detached():
        assert quicflow.current_call() is None
