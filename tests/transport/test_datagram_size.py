"""Datagram size "auto": large to a loopback peer, 1200 to anything else."""

from __future__ import annotations

from typing import Any

from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow.testing import ClientFor
from quicflow.transport.settings import (
    LOOPBACK_DATAGRAM_SIZE,
    PATH_DATAGRAM_SIZE,
    datagram_size_for,
)
from tests.e2e.service import TestEcho


def test_auto_picks_by_peer_address() -> None:
    """Check loopback (v4, v6, v4-mapped) gets the large size, other hosts 1200,
    and an explicit size always wins."""
    for host in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert datagram_size_for(host, 0) == LOOPBACK_DATAGRAM_SIZE, host
    for host in ("10.0.0.1", "192.168.1.2", "2001:db8::1", "::ffff:10.0.0.1", "not-an-ip"):
        assert datagram_size_for(host, 0) == PATH_DATAGRAM_SIZE, host
    assert datagram_size_for("127.0.0.1", 1350) == 1350
    assert datagram_size_for("10.0.0.1", 9000) == 9000


async def test_loopback_connection_uses_large_datagrams_both_ways() -> None:
    """Check that with the default (auto) both ends of a loopback connection send
    16 KiB datagrams and a 1 MiB message still round-trips; with an explicit 1200
    both stay at 1200."""
    for configured, expected in ((0, LOOPBACK_DATAGRAM_SIZE), (1200, 1200)):
        options = {
            "max_datagram_size": configured,
            "max_message_size": 2 << 20,
            "quic_engine": "aioquic",  # reads aioquic's own state below, whatever the env says
        }
        harness = ClientFor([TestEcho()], server_options=options, client_options=options)
        async with harness as client:
            text = "x" * (1 << 20)
            reply = await EchoStub(client).say(EchoRequest(text=text), timeout=10)
            assert reply.text == text
            conn = client.connection
            assert conn is not None
            [server_conn] = harness.server.connections
            for end in (conn, server_conn):
                quic: Any = end._quic  # the engine's own state (aioquic's, by default)
                assert quic._max_datagram_size == expected
