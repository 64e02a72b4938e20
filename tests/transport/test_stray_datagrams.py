"""A datagram that reaches a client's freshly bound socket before `connect` started the
handshake (in a reconnect storm: a server still answering the port's previous user).

aioquic's engine holds no keys nor path until ``connect()``: asked what to send then,
it raised ``KeyError: Epoch.INITIAL`` (our `datagrams_to_send` override) inside the
socket's read callback, which logged it and closed the socket under the attempt.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from quicflow.testing import dev_certs
from quicflow.transport.client_connect import _ClientProtocol
from quicflow.transport.engine import make_connection
from quicflow.transport.engine_aioquic import AioquicFlowConnection
from quicflow.transport.settings import TransportSettings
from quicflow.transport.tls import client_configuration
from tests.transport.test_handshake_memory import SERVER, _pair


def _client_config() -> Any:
    config = client_configuration(server_name="localhost", ca_file=str(dev_certs().ca_file))
    config.alpn_protocols = ["quicflow/1"]
    return config


def test_an_unconnected_aioquic_client_has_nothing_to_send() -> None:
    """Check that an aioquic client connection not yet connected, fed a server's Initial
    flight meant for another connection, has nothing to send (it raised KeyError)."""
    _, server = _pair()
    stray = server.datagrams_to_send(now=1.0)
    config = _client_config()
    config.max_datagram_size = 16384  # as on loopback (`datagram_size_for`)
    fresh = AioquicFlowConnection(configuration=config, window=1 << 20)
    for data, _ in stray:
        fresh.receive_datagram(data, SERVER, now=1.0)
    assert fresh.datagrams_to_send(now=1.0) == []


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
async def test_a_datagram_before_connect_is_dropped_and_the_socket_stays(engine: str) -> None:
    """Check that a datagram reaching a client's connected socket before `connect`
    (from the server's address) is dropped: no error reaches the loop, the socket stays
    open, and the connection still starts its handshake afterwards."""
    if engine == "qh3":
        pytest.importorskip("qh3")
    loop = asyncio.get_running_loop()
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    settings = TransportSettings(quic_engine=engine)
    config = _client_config()
    settings.apply(config)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        peer.settimeout(5.0)
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(make_connection(config, settings), settings=settings),
            remote_addr=peer.getsockname(),
        )
        try:
            # What a server sends a client it lost: a short-header packet, 1-RTT.
            peer.sendto(bytes([0x40]) + bytes(60), transport.get_extra_info("sockname"))
            for _ in range(5):
                await asyncio.sleep(0.01)
            assert [e.get("message") for e in errors] == []
            assert not transport.is_closing()
            protocol.connect(peer.getsockname())
            first, _ = peer.recvfrom(65535)
            assert first[0] & 0xF0 == 0xC0  # a long-header Initial packet
        finally:
            protocol.discard("test over")
            loop.set_exception_handler(None)
