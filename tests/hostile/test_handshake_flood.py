"""Handshake floods: Initials that never finish, with and without address validation."""

from __future__ import annotations

import asyncio
import gc
import socket
import tracemalloc

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client
from quicflow.transport import QuicFlowProtocol
from quicflow.wire import ErrorCode

from .harness import Figures, attack_setup, server_state, settled_state, wait_state

# Figures for make chaos's table (it runs -m 'chaos or faults'); short versions run in make test.
pytestmark = pytest.mark.faults

ALPN = "quicflow/1"


def _initials(count: int) -> list[bytes]:
    """The first datagram (a padded Initial) of ``count`` fresh client handshakes."""
    out = []
    for _ in range(count):
        conn = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        )
        conn.connect(("127.0.0.1", 9), now=0.0)
        out.append(conn.datagrams_to_send(now=0.0)[0][0])
    return out


async def _flood(port: int, datagrams: list[bytes], listen: float = 0.3) -> int:
    """Send the datagrams from one socket that never answers; return how many came back
    within ``listen`` seconds of the last one."""
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.0.1", 0))
        for i, datagram in enumerate(datagrams):
            await loop.sock_sendto(sock, datagram, ("127.0.0.1", port))
            if i % 50 == 49:
                await asyncio.sleep(0.01)  # let the server read: this is about state, not drops
        received = 0
        while True:
            try:
                async with asyncio.timeout(listen):
                    await loop.sock_recv(sock, 65536)
            except TimeoutError:
                return received
            received += 1


async def test_handshake_flood_with_retry_keeps_no_state(figures: Figures) -> None:
    """Check that with retry=True, 300 Initials that never come back create no connection
    (each gets one stateless Retry), while real clients connect through the Retry and call."""
    async with attack_setup(retry=True) as (harness, bystander, _peer):
        endpoint = harness.server._listener
        assert endpoint is not None
        before = server_state(harness.server)
        retries = endpoint.retries_sent
        bystander.start()
        answered = await _flood(harness.server.port, _initials(300))
        await bystander.stop()
        bystander.report("handshake flood x300, retry on", figures)
        assert endpoint.retries_sent - retries == 300
        assert answered == 300  # exactly one Retry each, nothing else
        assert server_state(harness.server)["connections"] == before["connections"]


async def test_handshake_flood_without_retry_is_cleaned_up(figures: Figures) -> None:
    """Check that without retry each abandoned handshake holds a connection only until
    hello_timeout, after which every one is gone and a bystander never failed."""
    async with attack_setup(hello_timeout=1.0) as (harness, bystander, peer):
        # The hostile peer's own connection never sends HELLO: it is closed first.
        code, reason = await peer.wait_closed()
        assert (code, reason) == (ErrorCode.HELLO_TIMEOUT, "no HELLO in time")
        baseline = {**await settled_state(harness.server), "connections": 1}  # the bystander
        await wait_state(harness.server, baseline, timeout=10.0)
        endpoint = harness.server._listener
        assert endpoint is not None
        accepted: list[QuicFlowProtocol] = []
        on_connection = endpoint._on_connection

        def counting(conn: QuicFlowProtocol) -> None:
            accepted.append(conn)
            on_connection(conn)

        endpoint._on_connection = counting
        bystander.start()
        await _flood(harness.server.port, _initials(100))
        await bystander.stop()
        bystander.report("handshake flood x100, retry off", figures)
        assert len(accepted) == 100  # each Initial cost a connection, until hello_timeout
        await wait_state(harness.server, baseline, timeout=10.0)


async def test_retry_turns_itself_on_past_the_threshold(figures: Figures) -> None:
    """Check that with retry off and retry_threshold 40, a flood of 200 Initials creates
    exactly 40 half-open connections and answers the other 160 with one Retry each; that a
    real client connecting meanwhile passes its Retry and calls; and that once the
    half-open connections are gone (hello_timeout) new clients connect without one."""
    async with attack_setup(hello_timeout=2.0, retry_threshold=40) as (harness, bystander, peer):
        code, _ = await peer.wait_closed()  # the peer's own connection never sends HELLO
        assert code == ErrorCode.HELLO_TIMEOUT
        endpoint = harness.server._listener
        assert endpoint is not None
        baseline = {**await settled_state(harness.server), "connections": 1}  # the bystander
        await wait_state(harness.server, baseline, timeout=10.0)
        accepted: list[QuicFlowProtocol] = []
        on_connection = endpoint._on_connection

        def counting(conn: QuicFlowProtocol) -> None:
            accepted.append(conn)
            on_connection(conn)

        endpoint._on_connection = counting
        retries = endpoint.retries_sent
        bystander.start()
        answered = await _flood(harness.server.port, _initials(200))
        await bystander.stop()
        bystander.report("handshake flood x200, retry_threshold 40", figures)
        assert (len(accepted), endpoint.retries_sent - retries) == (40, 160)
        assert endpoint.handshakes == 40
        assert answered >= 160  # the Retries (and the 40 handshakes' own packets)
        # A real client now: its first Initial gets a Retry, it follows it and calls.
        async with Client(harness.client_config()) as late:
            reply = await EchoStub(late).say(EchoRequest(text="through the retry"))
            assert reply.text == "through the retry"
        assert endpoint.retries_sent - retries == 161
        await wait_state(harness.server, baseline, timeout=10.0)  # hello_timeout ended them
        assert endpoint.handshakes == 0
        async with Client(harness.client_config()) as later:
            await EchoStub(later).say(EchoRequest(text="no retry"))
        assert endpoint.retries_sent - retries == 161  # below the threshold: no Retry


async def test_memory_per_half_open_connection_is_bounded(figures: Figures) -> None:
    """Check with tracemalloc that a handshake that never completes costs the server under
    64 KiB (aioquic's defaults cost ~100 KiB: three 16 KiB crypto buffers, a frame-handler
    table per connection, Initial keys for QUIC v2 too), and that all of it is gone after
    hello_timeout."""
    async with attack_setup(hello_timeout=3.0, retry_threshold=0) as (harness, _bystander, peer):
        await peer.hello("flooded")  # keep the attack_setup peer past hello_timeout
        endpoint = harness.server._listener
        assert endpoint is not None
        datagrams = _initials(100)
        before = len(harness.server.connections)
        gc.collect()
        tracemalloc.start()
        try:
            start = tracemalloc.get_traced_memory()[0]
            await _flood(harness.server.port, datagrams, listen=0.2)
            half_open = len(harness.server.connections) - before
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - start
        finally:
            tracemalloc.stop()
        assert half_open >= 50  # under load the kernel may drop a few Initials: not the point
        per_connection = held / half_open
        figures.add("half-open connection, traced memory", round(per_connection / 1024, 1), "KiB")
        assert per_connection < 64 << 10, f"{per_connection:.0f} bytes per half-open connection"
        assert endpoint.handshakes == half_open
