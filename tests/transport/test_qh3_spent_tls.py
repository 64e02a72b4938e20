"""A qh3 server sheds its TLS state once the handshake is over (engine_qh3.SpentTls)."""

from __future__ import annotations

from typing import Any

from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow.testing import ClientFor
from quicflow.transport.engine_qh3 import SpentTls
from tests.e2e.service import TestEcho

QH3 = {"quic_engine": "qh3"}


async def test_a_qh3_server_keeps_only_what_the_handshake_settled() -> None:
    """Check that after the handshake the server's qh3 connection holds a SpentTls with
    the cipher suite and version the handshake settled (the client keeps its real TLS:
    it still reads the server's NewSessionTicket), that calls go on over it, and that
    the connection closes cleanly."""
    harness = ClientFor([TestEcho()], server_options=QH3, client_options=QH3)
    async with harness as client:
        stub = EchoStub(client)
        assert (await stub.say(EchoRequest(text="one"))).text == "one"
        [server_conn] = harness.server.connections
        server_quic: Any = server_conn._quic
        spent = server_quic._tls
        assert isinstance(spent, SpentTls)
        assert spent.cipher_suite is not None and spent.version == server_quic._version
        assert spent.remote_transport_parameters is server_quic._applied_transport_parameters
        conn = client.connection
        assert conn is not None
        client_quic: Any = conn._quic
        assert not isinstance(client_quic._tls, SpentTls)
        for text in ("two", "three"):
            assert (await stub.say(EchoRequest(text=text))).text == text
        assert server_quic._tls is spent  # shed once
    assert harness.server.connections == []
