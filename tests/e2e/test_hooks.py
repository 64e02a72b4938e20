"""The six hooks end to end: when each fires, with which arguments, sync and async, and
that a raising or slow hook never breaks or stalls a call (nor shutdown)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientInfo, ClientState
from quicflow.hooks import MessageInfo
from quicflow.testing import ClientFor

from .service import TestEcho
from .test_lifecycle import FAST_CLIENT, FAST_SERVER, _kill, _restart, _wait_state

SAY = "/echo.Echo/Say"
COLLECT = "/echo.Echo/Collect"


async def test_client_hooks_connect_heartbeat_timeout_disconnect_reconnect() -> None:
    """Check that a client's connect, heartbeat_timeout, disconnect and reconnect hooks fire
    once each, in order, with their arguments, when its server vanishes and comes back;
    sync and async hooks alike."""
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={**FAST_CLIENT, "client_id": "k1", "backoff_jitter": 0.0},
    )
    events: list[tuple[object, ...]] = []
    async_events: list[tuple[object, ...]] = []

    async def async_connect(client_id: str) -> None:
        await asyncio.sleep(0)
        async_events.append(("connect", client_id))

    async def async_disconnect(reason: str) -> None:
        async_events.append(("disconnect", reason))

    async with harness as client:
        server2 = None
        try:
            hooks = client.hooks
            hooks.on_connect(lambda cid: events.append(("connect", cid)))
            hooks.on_heartbeat_timeout(lambda: events.append(("heartbeat_timeout",)))
            hooks.on_disconnect(lambda reason: events.append(("disconnect", reason)))
            hooks.on_reconnect(lambda attempt, delay: events.append(("reconnect", attempt, delay)))
            hooks.on_connect(async_connect)
            hooks.on_disconnect(async_disconnect)
            port = _kill(harness.server)  # silent: only the heartbeat can tell
            await _wait_state(client, ClientState.RECONNECTING, within=3.0)
            server2 = await _restart(harness, port)
            await _wait_state(client, ClientState.CONNECTED, within=5.0)
            await hooks.drain()
            names = [e[0] for e in events]
            assert names[:3] == ["heartbeat_timeout", "disconnect", "reconnect"]
            assert names[-1] == "connect"
            assert names.count("heartbeat_timeout") == 1 and names.count("disconnect") == 1
            assert events[1] == ("disconnect", "heartbeat timeout")
            assert events[2] == ("reconnect", 1, FAST_CLIENT["backoff_initial"])
            assert events[-1] == ("connect", "k1")
            reconnects = [e for e in events if e[0] == "reconnect"]
            assert [e[1] for e in reconnects] == list(range(1, len(reconnects) + 1))
            assert async_events == [("disconnect", "heartbeat timeout"), ("connect", "k1")]
            assert client.get_metrics().heartbeat_timeouts == 1
            assert client.get_metrics().reconnects == len(reconnects)
        finally:
            await client.close()
            if server2 is not None:
                await server2.stop()
    assert [e[0] for e in events].count("disconnect") == 1  # close() after loss: no second


async def test_server_hooks_connect_disconnect_heartbeat_timeout_async() -> None:
    """Check that async server hooks get the ClientInfo on connect, disconnect (with the
    reason) and heartbeat_timeout, once each, when a client goes silent and is evicted."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    seen: list[tuple[str, str, str]] = []

    async def on_connect(info: ClientInfo) -> None:
        seen.append(("connect", info.client_id, info.remote_address))

    async def on_timeout(info: ClientInfo) -> None:
        seen.append(("heartbeat_timeout", info.client_id, ""))

    async def on_disconnect(info: ClientInfo, reason: str) -> None:
        seen.append(("disconnect", info.client_id, reason))

    server = harness.server
    server.hooks.on_connect(on_connect)
    server.hooks.on_heartbeat_timeout(on_timeout)
    server.hooks.on_disconnect(on_disconnect)
    async with harness:
        mute = Client(harness.client_config(client_id="mute", reconnect=False))
        await mute.connect()
        try:
            address = server.get_client_info("mute").remote_address
            link = mute._link
            assert link is not None
            link.stop()  # the client stops pinging; the server must evict it
            await _wait_state(mute, ClientState.CLOSED, within=3.0)
            await server.hooks.drain()
        finally:
            await mute.close()
    mine = [event for event in seen if event[1] == "mute"]
    assert mine == [
        ("connect", "mute", address),
        ("heartbeat_timeout", "mute", ""),
        ("disconnect", "mute", "no heartbeat: session expired"),
    ]
    assert server.get_metrics().heartbeat_timeouts == 1


async def test_message_hooks_fire_once_per_request_message_sync_and_async() -> None:
    """Check that message_sent (client) and message_received (server) fire exactly once per
    request message, with peer, method and size; responses do not fire them."""
    harness = ClientFor([TestEcho()], client_options={"client_id": "m1"})
    sent: list[MessageInfo] = []
    received: list[MessageInfo] = []

    async def on_received(info: MessageInfo) -> None:
        received.append(info)

    harness.server.hooks.on_message_received(on_received)
    async with harness as client:
        client.hooks.on_message_sent(sent.append)
        stub = EchoStub(client)
        requests = [EchoRequest(text=t) for t in ("a", "bb", "ccc")]
        await stub.collect(requests)
        replies = [r async for r in stub.stream(EchoRequest(text="s", repeat=4))]
        assert len(replies) == 4
        await harness.server.hooks.drain()
    sizes = [r.ByteSize() for r in requests]
    stream_size = EchoRequest(text="s", repeat=4).ByteSize()
    assert [(i.peer, i.method, i.message_type, i.size) for i in sent] == [
        ("server", COLLECT, None, sizes[0]),
        ("server", COLLECT, None, sizes[1]),
        ("server", COLLECT, None, sizes[2]),
        ("server", "/echo.Echo/Stream", None, stream_size),
    ]
    assert [(i.peer, i.method, i.size) for i in received] == [
        ("m1", COLLECT, sizes[0]),
        ("m1", COLLECT, sizes[1]),
        ("m1", COLLECT, sizes[2]),
        ("m1", "/echo.Echo/Stream", stream_size),
    ]


async def test_raising_and_hung_hooks_neither_break_calls_nor_stall_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that calls succeed while a sync hook raises on every message and an async hook
    never returns, and that stop()/close() end anyway (hung hooks cancelled after
    drain_timeout, with a warning)."""
    harness = ClientFor([TestEcho()])
    hung = 0
    release = asyncio.Event()

    def raising(info: MessageInfo) -> None:
        raise RuntimeError("hook bug")

    async def never_returns(info: MessageInfo) -> None:
        nonlocal hung
        hung += 1
        await release.wait()  # never set

    server = harness.server
    server.hooks.on_message_received(raising)
    server.hooks.on_message_received(never_returns)
    server.hooks.drain_timeout = 0.1
    async with harness as client:
        client.hooks.on_message_sent(raising)
        client.hooks.on_message_sent(never_returns)
        client.hooks.drain_timeout = 0.1

        async def feed() -> AsyncIterator[EchoRequest]:
            for i in range(3):
                yield EchoRequest(text=str(i))

        stub = EchoStub(client)
        for i in range(10):
            reply = await asyncio.wait_for(stub.say(EchoRequest(text=f"x{i}")), 2.0)
            assert reply.text == f"x{i}"
        assert (await asyncio.wait_for(stub.collect(feed()), 2.0)).text == "0,1,2"
        assert hung == 26  # 13 request messages, each seen by both hung hooks
        with caplog.at_level(logging.WARNING, logger="quicflow.hooks"):
            async with asyncio.timeout(5.0):
                await client.close()
        assert len(client.hooks._tasks) == 0
    assert len(server.hooks._tasks) == 0
    assert "hook bug" in caplog.text
    assert "still running after 0.1 s: cancelled" in caplog.text
