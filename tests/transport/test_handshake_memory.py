"""What a connection keeps from its handshake (aioquic engine): crypto buffers given back
once TLS is done writing each epoch, one frame-handler table per class, one spare
connection ID per side.

Two `AioquicFlowConnection`s talk in memory, no sockets. docs/limits.md has the
figures (a half-open connection: 39 KiB traced, was 99).
"""

from __future__ import annotations

import pytest
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.packet import pull_quic_header

from quicflow.testing import ClientFor, dev_certs
from quicflow.transport import engine_aioquic
from quicflow.transport.engine_aioquic import (
    ACTIVE_CONNECTION_ID_LIMIT,
    AioquicFlowConnection,
    FrameHandlers,
)
from quicflow.transport.tls import client_configuration, server_configuration
from tests.e2e.service import TestEcho

CLIENT, SERVER = ("127.0.0.1", 1000), ("127.0.0.1", 2000)
EPOCHS = (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT)


def _capacities(conn: AioquicFlowConnection) -> list[int]:
    """The capacity of each epoch's crypto buffer; -1 for the shared empty one."""
    buffers: dict[tls.Epoch, Buffer] = conn._crypto_buffers
    return [-1 if buffers[e] is engine_aioquic._NO_CRYPTO else buffers[e].capacity for e in EPOCHS]


def _pair() -> tuple[AioquicFlowConnection, AioquicFlowConnection]:
    """A client that sent its first flight and a server that answered it."""
    certs = dev_certs()
    client_config = client_configuration(server_name="localhost", ca_file=str(certs.ca_file))
    server_config = server_configuration(
        cert_file=str(certs.cert_file), key_file=str(certs.key_file)
    )
    for config in (client_config, server_config):
        config.alpn_protocols = ["quicflow/1"]
    client = AioquicFlowConnection(configuration=client_config, window=1 << 20)
    client.connect(SERVER, now=1.0)
    first = client.datagrams_to_send(now=1.0)
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = AioquicFlowConnection(
        configuration=server_config,
        window=1 << 20,
        original_destination_connection_id=header.destination_cid,
    )
    for data, _ in first:
        server.receive_datagram(data, CLIENT, now=1.0)
    return client, server


def _exchange(client: AioquicFlowConnection, server: AioquicFlowConnection, now: float) -> None:
    for data, _ in server.datagrams_to_send(now=now):
        client.receive_datagram(data, SERVER, now=now)
    for data, _ in client.datagrams_to_send(now=now):
        server.receive_datagram(data, CLIENT, now=now)


def test_crypto_buffers_are_given_back_as_each_epoch_is_done() -> None:
    """Check that a server waiting for the client's second flight (a handshake flood's
    half-open connection) holds only a 1 KiB 1-RTT buffer, not aioquic's three 16 KiB
    ones; that after the handshake neither side holds any; and that data still flows."""
    client, server = _pair()
    assert server.tls.state is tls.State.SERVER_EXPECT_FINISHED
    assert _capacities(server) == [-1, -1, 1024]
    assert _capacities(client) == [16384, 16384, 1024]  # the ServerHello not seen yet
    for step in range(4):
        _exchange(client, server, 1.0 + step / 10)
    assert (client.tls.state, server.tls.state) == (
        tls.State.CLIENT_POST_HANDSHAKE,
        tls.State.SERVER_POST_HANDSHAKE,
    )
    assert _capacities(client) == [-1, -1, -1] and _capacities(server) == [-1, -1, -1]
    stream_id = client.reserve_stream()
    client.send_stream_data(stream_id, b"ping", end_stream=True)
    _exchange(client, server, 2.0)
    got = [e for e in iter(server.next_event, None) if isinstance(e, events.StreamDataReceived)]
    assert [(e.stream_id, e.data, e.end_stream) for e in got] == [(stream_id, b"ping", True)]
    server.send_stream_data(stream_id, b"pong", end_stream=True)
    _exchange(client, server, 3.0)
    got = [e for e in iter(client.next_event, None) if isinstance(e, events.StreamDataReceived)]
    assert [(e.data, e.end_stream) for e in got] == [(b"pong", True)]


def test_frame_handlers_are_one_table_bound_on_lookup() -> None:
    """Check that connections share one frame-handler table, a lookup gives the handler
    bound to the connection asking, and an unknown frame type is a KeyError (aioquic
    turns that into FRAME_ENCODING_ERROR)."""
    client, server = _pair()
    tables = [conn._QuicConnection__frame_handlers for conn in (client, server)]
    assert all(isinstance(t, FrameHandlers) for t in tables)
    assert tables[0].table is tables[1].table
    handler, epochs = tables[1][0x06]  # CRYPTO
    assert handler == server._handle_crypto_frame and tls.Epoch.INITIAL in epochs
    assert 0x1E in tables[0] and 0x7F not in tables[0]
    with pytest.raises(KeyError):
        tables[0][0x7F]


def test_each_side_issues_one_spare_connection_id() -> None:
    """Check that a QuicFlow client and server announce active_connection_id_limit 2, so
    after the handshake each holds the peer's ID in use and one spare (aioquic's default
    of 8 made each side issue 7 NEW_CONNECTION_ID frames, and a server keep 8 of its own
    IDs per connection)."""
    client, server = _pair()
    for now in (1.1, 1.2, 1.3):
        _exchange(client, server, now)
    assert client._handshake_complete and server._handshake_complete
    for conn in (client, server):
        assert conn._local_active_connection_id_limit == ACTIVE_CONNECTION_ID_LIMIT == 2
        assert len(conn._host_cids) == 2
        assert conn._remote_active_connection_id_limit == 2


async def test_server_routes_three_ids_per_connection() -> None:
    """Check on real loopback that the server's routing table holds three IDs for a
    QuicFlow client's connection (the client's first destination ID and the server's
    two), not nine, on both engines."""
    for engine in ("aioquic", "qh3"):
        harness = ClientFor([TestEcho()], server_options={"quic_engine": engine})
        async with harness:
            listener = harness.server._listener
            assert listener is not None
            [conn] = listener.connections
            assert len(conn.cids) <= 3, engine
