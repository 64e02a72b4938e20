"""Handshake floods: Initials that never finish, with and without address validation."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

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
