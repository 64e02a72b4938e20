"""Untyped messages and the dispatcher, both directions, over real QUIC."""

from __future__ import annotations

import asyncio

import pytest

from quicflow import Client, RpcError, StatusCode
from quicflow.dispatch import Message
from quicflow.testing import ClientFor, FakeClock

from .service import TestEcho


async def test_messages_both_ways_with_acks_metadata_and_sender() -> None:
    """Check that client->server and server->client messages reach their handlers with type,
    payload, metadata and sender, and the handler's reply comes back as the ack."""
    harness = ClientFor([TestEcho()], client_options={"client_id": "m1"})
    seen: list[Message] = []

    async def on_alert(message: Message) -> bytes:
        seen.append(message)
        return b"seen " + message.payload

    harness.server.register_handler("alert", on_alert)
    async with harness as client:

        def on_reboot(message: Message) -> bytes:
            seen.append(message)
            return b"rebooting"

        client.register_handler("reboot", on_reboot)
        ack = await client.send_message("alert", b"disk full", metadata=[("zone", "eu")])
        assert ack == b"seen disk full"
        assert (seen[0].type, seen[0].payload, seen[0].sender) == ("alert", b"disk full", "m1")
        assert seen[0].metadata == (("zone", "eu"),)
        assert await harness.server.send_to("m1", "reboot", b"now") == b"rebooting"
        assert (seen[1].type, seen[1].sender) == ("reboot", "server")
        result = await harness.server.broadcast(lambda ch: ch.send_message("reboot", b"all"))
        assert result.delivered == 1 and result.deliveries["m1"].reply == b"rebooting"


async def test_unknown_type_and_failing_handler() -> None:
    """Check that an unregistered type answers UNIMPLEMENTED and a handler's RpcError
    reaches the sender."""
    harness = ClientFor([TestEcho()])

    def refuse(message: Message) -> bytes:
        raise RpcError(StatusCode.PERMISSION_DENIED, "not you")

    harness.server.register_handler("secret", refuse)
    async with harness as client:
        with pytest.raises(RpcError) as info:
            await client.send_message("nope", b"")
        assert info.value.code is StatusCode.UNIMPLEMENTED
        with pytest.raises(RpcError) as info:
            await client.send_message("secret", b"")
        assert info.value.code is StatusCode.PERMISSION_DENIED


async def test_full_dispatcher_queue_answers_resource_exhausted() -> None:
    """Check that when the dispatcher's workers and queue are full the sender gets
    RESOURCE_EXHAUSTED at once, and the queued messages still complete."""
    harness = ClientFor(
        [TestEcho()], server_options={"dispatcher_workers": 1, "dispatcher_queue_size": 2}
    )
    gate = asyncio.Event()
    started = asyncio.Event()

    async def slow(message: Message) -> bytes:
        started.set()
        await gate.wait()
        return message.payload

    harness.server.register_handler("slow", slow)
    async with harness as client:
        held = [asyncio.ensure_future(client.send_message("slow", bytes([i]))) for i in range(3)]
        await asyncio.wait_for(started.wait(), 2.0)
        # one runs; the other two are in the queue once their calls have arrived
        async with asyncio.timeout(2.0):
            while harness.server.dispatcher.queue_depth < 2:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.01)
        with pytest.raises(RpcError) as info:
            await client.send_message("slow", b"x")
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        gate.set()
        acks = [ack or b"" for ack in await asyncio.gather(*held)]
        assert sorted(acks) == [b"\x00", b"\x01", b"\x02"]


async def test_fire_and_forget_returns_once_sent() -> None:
    """Check that wait_ack=False returns None at once and the message still arrives."""
    harness = ClientFor([TestEcho()])
    arrived = asyncio.Event()
    harness.server.register_handler("ping", lambda m: arrived.set())
    async with harness as client:
        assert await client.send_message("ping", b"", wait_ack=False) is None
        await asyncio.wait_for(arrived.wait(), 2.0)


async def test_handler_timeout_is_deadline_exceeded() -> None:
    """Check that a handler running past handler_timeout (on the server's virtual clock:
    exactly 0.1 s, not 0.099) fails the send DEADLINE_EXCEEDED."""
    clock = FakeClock()
    harness = ClientFor([TestEcho()], server_options={"handler_timeout": 0.1}, clock=clock)
    started = asyncio.Event()

    async def stuck(message: Message) -> bytes:
        started.set()
        await asyncio.Event().wait()  # never set: only handler_timeout ends it
        return b""

    harness.server.register_handler("stuck", stuck)
    async with harness as client:
        sent = asyncio.ensure_future(client.send_message("stuck", b""))
        await asyncio.wait_for(started.wait(), 5.0)
        clock.advance(0.099)
        await asyncio.sleep(0.02)
        assert not sent.done()
        clock.advance(0.001)
        with pytest.raises(RpcError) as info:
            await sent
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_client_close_stops_its_dispatcher() -> None:
    """Check that a closed client leaves no dispatcher workers behind."""
    harness = ClientFor([TestEcho()], client_options={"client_id": "w"})
    async with harness:
        client = Client(harness.client_config(client_id="w2"))
        client.register_handler("job", lambda m: b"ok")
        await client.connect()
        assert await harness.server.send_to("w2", "job") == b"ok"
        await client.close()
        assert client.dispatcher.closed


async def test_message_hooks_fire_with_method_type_size_and_peer() -> None:
    """Check that message_sent/message_received hooks fire on both sides for typed calls,
    pushes and untyped messages, and that a raising message hook breaks nothing."""
    from echo.echo_pb2 import EchoRequest
    from echo.echo_quicflow import EchoStub

    from quicflow.hooks import MessageInfo

    harness = ClientFor([TestEcho()], client_options={"client_id": "h1"})
    server_seen: list[tuple[str, MessageInfo]] = []
    client_seen: list[tuple[str, MessageInfo]] = []
    harness.server.hooks.on_message_received(lambda i: server_seen.append(("recv", i)))
    harness.server.hooks.on_message_sent(lambda i: server_seen.append(("sent", i)))

    def broken(info: MessageInfo) -> None:
        raise RuntimeError("hook bug")

    harness.server.hooks.on_message_received(broken)
    harness.server.register_handler("alert", lambda m: b"")
    async with harness as client:
        client.hooks.on_message_sent(lambda i: client_seen.append(("sent", i)))
        client.hooks.on_message_received(lambda i: client_seen.append(("recv", i)))
        client.register_handler("reboot", lambda m: b"")
        await EchoStub(client).say(EchoRequest(text="abc"))
        await client.send_message("alert", b"12345")
        await harness.server.send_to("h1", "reboot", b"xy")
    from quicflow.wire.v1.frames_pb2 import RawMessage

    say = EchoRequest(text="abc").ByteSize()
    alert = RawMessage(type="alert", payload=b"12345").ByteSize()
    reboot = RawMessage(type="reboot", payload=b"xy").ByteSize()
    assert [(d, i.peer, i.method, i.message_type, i.size) for d, i in server_seen] == [
        ("recv", "h1", "/echo.Echo/Say", None, say),
        ("recv", "h1", "/quicflow.wire.v1.Messaging/Deliver", "alert", alert),
        ("sent", "h1", "/quicflow.wire.v1.Messaging/Deliver", "reboot", reboot),
    ]
    assert [(d, i.peer, i.message_type) for d, i in client_seen] == [
        ("sent", "server", None),
        ("sent", "server", "alert"),
        ("recv", "server", "reboot"),
    ]
