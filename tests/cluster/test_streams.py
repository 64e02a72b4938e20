"""Streaming calls routed across nodes (in-process nodes on one real nats-server).

Node a calls a client connected to node b through ``a.client(id)``: the four
call kinds, metadata and deadlines carried across, the credit window bounding
what is buffered, cancellation resetting the client's handler, and broadcast
of a streaming send reaching every node's clients.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, RpcError, Server, StatusCode
from quicflow.cluster.streams import ServedStream
from quicflow.push import DeliveryStatus

from .nodes import StreamEcho, client_config, registered, until

WINDOW = 256 * 1024  # ClusterNode.stream_window's default (bytes)


async def _echo_client(server: Server, client_id: str) -> tuple[Client, StreamEcho]:
    echo = StreamEcho()
    client = Client(client_config(server.port, client_id))
    client.add_service(echo)
    await client.connect()
    return client, echo


async def test_server_streaming_to_a_client_on_another_node(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that a server-streaming call from a reaches b's client and every reply comes
    back in order, with initial and trailing metadata and the call's metadata and deadline
    carried across."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-1")
    try:
        await until(lambda: registered(a, "s-1", "b"))
        call = EchoStub(a.client("s-1")).stream(
            EchoRequest(text="hi", repeat=40), timeout=4.0, metadata=[("who", "node-a")]
        )
        replies = [r async for r in call]
        assert [(r.text, r.index) for r in replies] == [("hi", i) for i in range(40)]
        assert await call.code() is StatusCode.OK
        assert await call.initial_metadata() == (("from", "client"),)
        assert ("count", "40") in await call.trailing_metadata()
        assert ("who", "node-a") in echo.metadata
        assert echo.time_remaining is not None and 3.0 < echo.time_remaining <= 4.0
        assert a.cluster is not None and a.cluster.stats.streams_out == 1
        assert b.cluster is not None and b.cluster.stats.streams_in == 1
        assert not a.cluster.streams_out and not b.cluster.streams_in
    finally:
        await client.close()


async def test_client_streaming_and_bidi_to_a_client_on_another_node(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that client-streaming (async and plain iterables) and bidirectional calls from
    a reach b's client, more requests than the window included, and that the client's
    error status comes back as the call's status."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-2")
    try:
        await until(lambda: registered(a, "s-2", "b"))
        stub = EchoStub(a.client("s-2"))
        texts = [f"t{i}" for i in range(100)]  # 100 x 10 kB: the window ~4 times over
        reply = await stub.collect(EchoRequest(text=t, payload=bytes(10_000)) for t in texts)
        assert reply.text == ",".join(texts)

        async def requests() -> AsyncIterator[EchoRequest]:
            for text in ("x", "y", "z"):
                yield EchoRequest(text=text)

        echo.received.clear()
        chat = stub.chat(requests())
        assert [r.text async for r in chat] == ["X", "Y", "Z"]
        assert await chat.code() is StatusCode.OK

        stopped = stub.chat(iter([EchoRequest(text="ok"), EchoRequest(text="stop")]))
        with pytest.raises(RpcError) as failed:
            async for _ in stopped:
                pass
        assert failed.value.code is StatusCode.FAILED_PRECONDITION
        assert failed.value.message == "told to stop"
    finally:
        await client.close()


async def test_bidi_turn_by_turn(two_nodes: tuple[Server, Server]) -> None:
    """Check that a bidirectional call answers each request before the next one is made
    (requests are forwarded as they come, not gathered first)."""
    a, b = two_nodes
    client, _ = await _echo_client(b, "s-3")
    try:
        await until(lambda: registered(a, "s-3", "b"))
        queue: asyncio.Queue[EchoRequest | None] = asyncio.Queue()

        async def requests() -> AsyncIterator[EchoRequest]:
            while (item := await queue.get()) is not None:
                yield item

        chat = EchoStub(a.client("s-3")).chat(requests())
        for text in ("one", "two", "three"):
            await queue.put(EchoRequest(text=text))
            reply = await chat.read()
            assert reply is not None and reply.text == text.upper()
        await queue.put(None)
        assert await chat.read() is None
        assert await chat.code() is StatusCode.OK
    finally:
        await client.close()


async def test_a_slow_reader_holds_at_most_the_window(two_nodes: tuple[Server, Server]) -> None:
    """Check that while the caller on a does not read, b's client gets no further than the
    credit window plus what QUIC buffers, and resumes when the caller reads."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-4")
    try:
        await until(lambda: registered(a, "s-4", "b"))
        call = EchoStub(a.client("s-4")).stream(
            EchoRequest(text="x" * 20_000, repeat=10_000), timeout=10.0
        )
        first = await call.read()
        assert first is not None and first.index == 0
        await asyncio.sleep(0.5)
        stalled = echo.yielded
        await asyncio.sleep(0.3)
        # Not running ahead: the window, plus what QUIC flow control lets b buffer.
        assert echo.yielded == stalled < 1_000
        assert a.cluster is not None
        (routed,) = a.cluster.streams_out
        # One read, no CREDIT yet (under half the window consumed): the owner stopped at
        # the window (each message costs its ~20 kB + 64).
        cost = 20_000 + 64 + 8
        assert WINDOW - 2 * cost <= routed.buffered_bytes <= WINDOW + cost
        for _ in range(40):
            assert await call.read() is not None
        await until(lambda: echo.yielded > stalled)
        call.cancel()
    finally:
        await client.close()


async def test_cancel_mid_stream_resets_the_clients_handler(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that cancelling a routed stream on a cancels the handler on b's client, and
    that the call reports CANCELLED."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-5")
    try:
        await until(lambda: registered(a, "s-5", "b"))
        call = EchoStub(a.client("s-5")).stream(
            EchoRequest(text="x", repeat=1000, delay_ms=20), timeout=10.0
        )
        assert (await call.read()) is not None
        assert call.cancel()
        assert await call.code() is StatusCode.CANCELLED
        async with asyncio.timeout(2.0):
            await echo.cancelled.wait()
        assert b.cluster is not None
        await until(lambda: not b.cluster.streams_in if b.cluster else False)
    finally:
        await client.close()


async def test_deadline_travels_and_ends_the_stream(two_nodes: tuple[Server, Server]) -> None:
    """Check that a routed stream that outlives its deadline ends DEADLINE_EXCEEDED on a
    and its handler on b's client is cancelled."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-6")
    try:
        await until(lambda: registered(a, "s-6", "b"))
        call = EchoStub(a.client("s-6")).stream(
            EchoRequest(text="x", repeat=1000, delay_ms=50), timeout=0.4
        )
        with pytest.raises(RpcError) as failed:
            async for _ in call:
                pass
        assert failed.value.code is StatusCode.DEADLINE_EXCEEDED
        async with asyncio.timeout(2.0):
            await echo.cancelled.wait()
        assert 0 < echo.yielded < 20
    finally:
        await client.close()


async def test_streams_to_nobody_fail_unavailable(two_nodes: tuple[Server, Server]) -> None:
    """Check that a streaming call to a client connected nowhere fails UNAVAILABLE."""
    a, _ = two_nodes
    call = EchoStub(a.client("nobody")).stream(EchoRequest(text="x", repeat=1), timeout=2.0)
    with pytest.raises(RpcError) as failed:
        await call.read()
    assert failed.value.code is StatusCode.UNAVAILABLE


async def test_broadcast_of_a_streaming_send_reaches_every_node(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that a broadcast whose send is a client-streaming call reaches the clients of
    both nodes."""
    a, b = two_nodes
    here, _ = await _echo_client(a, "here")
    there, _ = await _echo_client(b, "there")
    try:
        await until(lambda: len(a.list_clients()) == 2)
        result = await a.broadcast(
            lambda ch: EchoStub(ch).collect(iter([EchoRequest(text="p"), EchoRequest(text="q")]))
        )
        assert {c: d.status for c, d in result.deliveries.items()} == {
            "here": DeliveryStatus.DELIVERED,
            "there": DeliveryStatus.DELIVERED,
        }
        reply = result.deliveries["there"].reply
        assert reply is not None and reply.text == "p,q"
    finally:
        await here.close()
        await there.close()


async def test_a_lost_frame_fails_the_stream_unavailable(
    two_nodes: tuple[Server, Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that a frame lost between the nodes (the owner's fifth frame dropped before
    NATS) ends the stream UNAVAILABLE on a, never a silently short success, and that the
    client's handler on b is cancelled."""
    a, b = two_nodes
    client, echo = await _echo_client(b, "s-7")
    published = 0
    original = ServedStream._publish

    async def lossy(self: ServedStream, data: bytes) -> None:
        nonlocal published
        published += 1
        if published != 5:  # OPENED, HEADERS, 3 MESSAGEs: the third reply is lost
            await original(self, data)

    monkeypatch.setattr(ServedStream, "_publish", lossy)
    try:
        await until(lambda: registered(a, "s-7", "b"))
        call = EchoStub(a.client("s-7")).stream(
            EchoRequest(text="x", repeat=1000, delay_ms=5), timeout=5.0
        )
        got = []
        with pytest.raises(RpcError) as failed:
            async for reply in call:
                got.append(reply.index)
        assert failed.value.code is StatusCode.UNAVAILABLE
        assert "frames lost" in failed.value.message
        assert got == [0, 1]
        async with asyncio.timeout(2.0):
            await echo.cancelled.wait()
    finally:
        await client.close()
