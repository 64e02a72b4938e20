"""One-way messages on message lanes (wire-protocol.md §11.1), over real QUIC."""

from __future__ import annotations

import asyncio

import pytest

import quicflow.client
from quicflow import RpcError, StatusCode
from quicflow.dispatch import Message
from quicflow.hooks import MessageInfo
from quicflow.interceptors import ServerInterceptor
from quicflow.messaging import ROUTE
from quicflow.testing import ClientFor

from .service import TestEcho

N = 200


async def test_one_way_both_directions_in_order_with_exact_metrics_and_hooks() -> None:
    """Check that wait_ack=False messages travel on the lanes both ways, arrive in order with
    metadata and sender, send no reply, and count in metrics and hooks once each."""
    harness = ClientFor([TestEcho()], client_options={"client_id": "l1"})
    up: list[Message] = []
    down: list[Message] = []
    server_got: list[MessageInfo] = []
    client_sent: list[MessageInfo] = []
    harness.server.register_handler("up", up.append)
    harness.server.hooks.on_message_received(server_got.append)
    async with harness as client:
        client.register_handler("down", down.append)
        client.hooks.on_message_sent(client_sent.append)
        for i in range(N):
            md = [("seq", str(i))]
            assert await client.send_message("up", b"%d" % i, metadata=md, wait_ack=False) is None
        for i in range(N):
            await harness.server.send_to("l1", "down", b"%d" % i, wait_ack=False)
        assert client._link is not None and client._link.message_lane is not None
        assert harness.server.sessions.get("l1").message_lane is not None  # type: ignore[union-attr]
        for _ in range(500):
            if len(up) == N and len(down) == N:
                break
            await asyncio.sleep(0.01)
        assert [m.payload for m in up] == [b"%d" % i for i in range(N)]
        assert [m.payload for m in down] == [b"%d" % i for i in range(N)]
        assert up[7].metadata == (("seq", "7"),) and up[7].sender == "l1"
        assert down[0].sender == "server" and down[0].message_id == b""
        size = len(b"\x0a\x02up\x12\x01" + b"7")
        assert server_got[7] == MessageInfo("l1", ROUTE, "up", size)
        assert len(server_got) == N and len(client_sent) == N
        handled = harness.server.get_metrics().handled[ROUTE]
        assert (handled.started, handled.messages_received, handled.messages_sent) == (N, N, 0)
        assert handled.finished == {"OK": N}
        made = client.get_metrics().made[ROUTE]
        assert (made.started, made.messages_sent, made.messages_received) == (N, N, 0)
        assert made.finished == {"OK": N}
        assert client.get_metrics().handled[ROUTE].messages_received == N
        assert harness.server.get_metrics().made[ROUTE].messages_sent == N
        # Acked sends still go as calls, beside the lane.
        harness.server.register_handler("acked", lambda m: b"ack")
        assert await client.send_message("acked", b"") == b"ack"


async def test_peers_without_lanes_fall_back_to_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that a client announcing no lane feature (an older peer) and a server whose
    interceptors must see every message get no lane, and one-way messages still arrive."""
    seen: list[str] = []

    class Spy(ServerInterceptor):
        async def on_start(self, context: object) -> None:
            seen.append("call")

    monkeypatch.setattr(quicflow.client, "LANE_FEATURE", "not-lane")  # HELLO lacks "lane"
    harness = ClientFor([TestEcho()], client_options={"client_id": "old"})
    arrived: list[bytes] = []
    harness.server.register_handler("up", lambda m: arrived.append(m.payload))
    async with harness as client:
        client.register_handler("down", lambda m: arrived.append(m.payload))
        await client.send_message("up", b"u", wait_ack=False)
        await harness.server.send_to("old", "down", b"d", wait_ack=False)
        assert client._link is not None and client._link.message_lane is None
        assert harness.server.sessions.get("old").message_lane is None  # type: ignore[union-attr]
        for _ in range(300):
            if len(arrived) == 2:
                break
            await asyncio.sleep(0.01)
        assert sorted(arrived) == [b"d", b"u"]
    monkeypatch.undo()
    harness = ClientFor([TestEcho()], server_options={"interceptors": [Spy()]})
    harness.server.register_handler("up", lambda m: arrived.append(m.payload))
    async with harness as client:
        await client.send_message("up", b"x", wait_ack=False)
        assert client._link is not None and client._link.message_lane is None
        for _ in range(300):
            if b"x" in arrived:
                break
            await asyncio.sleep(0.01)
        assert seen == ["call"]


async def test_full_dispatcher_holds_back_the_lane_then_delivers_everything() -> None:
    """Check that a full receiving dispatcher stops reading the lane (no message refused or
    dropped), the sender then waits and times out, and all accepted messages run after."""
    harness = ClientFor(
        [TestEcho()],
        server_options={
            "dispatcher_workers": 1,
            "dispatcher_queue_size": 1,
            "stream_receive_window": 16 << 10,
        },
        client_options={"send_buffer_limit": 16 << 10},
    )
    gate = asyncio.Event()
    ran: list[bytes] = []

    async def slow(message: Message) -> None:
        await gate.wait()
        ran.append(message.payload[:4])

    harness.server.register_handler("slow", slow)
    async with harness as client:
        body = bytes(4096)
        sent = 0
        with pytest.raises(RpcError) as info:
            for i in range(1000):
                await client.send_message("slow", b"%04d" % i + body, wait_ack=False, timeout=0.3)
                sent += 1
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert 2 < sent < 100  # about two windows' worth, then the sender had to wait
        metrics = harness.server.get_metrics()
        assert metrics.handled[ROUTE].started == 2  # one running, one queued; the rest held
        gate.set()
        for _ in range(500):
            if len(ran) == sent:
                break
            await asyncio.sleep(0.01)
        assert ran == [b"%04d" % i for i in range(sent)]
        assert harness.server.get_metrics().handled[ROUTE].finished == {"OK": sent}


async def test_on_qh3_an_overrun_lane_drops_and_counts_resource_exhausted() -> None:
    """Check that where the engine grants credit by itself (qh3), a receiver holding more than
    one window plus one message drops further messages and counts each RESOURCE_EXHAUSTED."""
    engine = {"quic_engine": "qh3"}
    harness = ClientFor(
        [TestEcho()],
        server_options={
            **engine,
            "dispatcher_workers": 1,
            "dispatcher_queue_size": 1,
            "stream_receive_window": 16 << 10,
            "max_message_size": 8 << 10,
        },
        client_options=engine,
    )
    gate = asyncio.Event()
    ran: list[bytes] = []

    async def slow(message: Message) -> None:
        await gate.wait()
        ran.append(message.payload[:4])

    harness.server.register_handler("slow", slow)
    async with harness as client:
        body = bytes(4096)
        for i in range(50):
            await client.send_message("slow", b"%04d" % i + body, wait_ack=False)

        def dropped() -> int:
            stats = harness.server.get_metrics().handled.get(ROUTE)
            return 0 if stats is None else stats.finished.get("RESOURCE_EXHAUSTED", 0)

        for _ in range(500):
            if dropped() > 30:  # held at most (16 KiB + 8 KiB) / 4 KiB, the rest dropped
                break
            await asyncio.sleep(0.01)
        assert dropped() > 30
        gate.set()
        for _ in range(500):
            if len(ran) + dropped() == 50:
                break
            await asyncio.sleep(0.01)
        assert len(ran) + dropped() == 50 and ran == sorted(ran)
        stats = harness.server.get_metrics().handled[ROUTE]
        assert stats.started == 50
        assert stats.finished == {"OK": len(ran), "RESOURCE_EXHAUSTED": dropped()}
