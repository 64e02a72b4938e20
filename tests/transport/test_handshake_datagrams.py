"""Handshake flights use 1,200-byte datagrams whatever the configured size, and
PADDING is skipped without a per-byte loop (aioquic engine, sans-IO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events

from quicflow import Client
from quicflow.certs import write_dev_certs
from quicflow.testing import ClientFor
from quicflow.transport.engine_aioquic import HANDSHAKE_DATAGRAM_SIZE, AioquicFlowConnection
from quicflow.transport.tls import client_configuration, server_configuration
from tests.e2e.service import TestEcho

SERVER_ADDR = ("127.0.0.1", 4433)
CLIENT_ADDR = ("127.0.0.1", 50000)


def _exchange(
    client: AioquicFlowConnection, server: AioquicFlowConnection, now: float, sizes: list[int]
) -> None:
    """Deliver datagrams both ways until neither side has any to send."""
    for _ in range(20):
        moved = False
        for sender, receiver, addr in (
            (client, server, CLIENT_ADDR),
            (server, client, SERVER_ADDR),
        ):
            initial_live = sender._cryptos[tls.Epoch.INITIAL].send.is_valid()
            for data, _ in sender.datagrams_to_send(now):
                moved = True
                if initial_live:
                    sizes.append(len(data))
                receiver.receive_datagram(data, addr, now)
        if not moved:
            return


def test_handshake_datagrams_stay_small_then_grow(tmp_path: Path) -> None:
    """Check that with 16 KiB datagrams configured, every datagram sent while Initial
    keys are live is at most 1,200 bytes (the client's first is exactly 1,200, the
    padding RFC 9000 asks for), and after the handshake a large write leaves in
    datagrams above 1,200 bytes."""
    certs = write_dev_certs(tmp_path / "certs")
    configs: list[Any] = [
        client_configuration(server_name="localhost", ca_file=str(certs.ca_file)),
        server_configuration(cert_file=str(certs.cert_file), key_file=str(certs.key_file)),
    ]
    for config in configs:
        config.alpn_protocols = ["quicflow"]
        config.max_datagram_size = 16384
    client = AioquicFlowConnection(configuration=configs[0], window=1 << 20)
    client.connect(SERVER_ADDR, now=0.0)
    [(first, _)] = client.datagrams_to_send(0.0)
    assert len(first) == HANDSHAKE_DATAGRAM_SIZE
    server = AioquicFlowConnection(
        configuration=configs[1],
        window=1 << 20,
        original_destination_connection_id=first[6 : 6 + first[5]],
    )
    server.receive_datagram(first, CLIENT_ADDR, 0.0)
    sizes: list[int] = []
    _exchange(client, server, 0.0, sizes)
    kinds = []
    while (event := client.next_event()) is not None:
        kinds.append(type(event))
    assert events.HandshakeCompleted in kinds
    assert sizes and max(sizes) <= HANDSHAKE_DATAGRAM_SIZE
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, b"x" * 100_000)
    big = [len(data) for data, _ in client.datagrams_to_send(0.01)]
    assert max(big) > HANDSHAKE_DATAGRAM_SIZE


def test_padding_is_skipped_up_to_the_next_frame(tmp_path: Path) -> None:
    """Check the PADDING handler stops at the first non-zero byte, and at the end of
    the packet when only zeros follow."""
    certs = write_dev_certs(tmp_path / "certs")
    config = client_configuration(server_name="localhost", ca_file=str(certs.ca_file))
    conn = AioquicFlowConnection(configuration=config, window=1 << 20)
    buf = Buffer(data=b"\x00" * 5000 + b"\x01\x00\x00")
    buf.seek(1)
    conn._handle_padding_frame(None, 0, buf)
    assert buf.tell() == 5000
    buf = Buffer(data=b"\x00" * 300)
    conn._handle_padding_frame(None, 0, buf)
    assert buf.tell() == 300


async def test_hello_leaves_with_the_clients_finished(monkeypatch: Any) -> None:
    """Check that connect() takes two client datagrams, the Initial and one carrying both
    the client's Finished and HELLO, and that the server answers with one datagram that
    brings WELCOME: four datagrams until WELCOME (fresh or resumed), not six."""
    sent: list[tuple[AioquicFlowConnection, bool]] = []
    original = AioquicFlowConnection.datagrams_to_send

    def counting(self: AioquicFlowConnection, now: float) -> list[tuple[bytes, Any]]:
        out = original(self, now)
        sent.extend((self, self._is_client) for _ in out)
        return out

    harness = ClientFor([TestEcho()], server_options={"quic_engine": "aioquic"})
    async with harness:
        for resumption in (False, True):
            monkeypatch.setattr(AioquicFlowConnection, "datagrams_to_send", counting)
            sent.clear()
            client = Client(harness.client_config(tls_resumption=resumption, quic_engine="aioquic"))
            await client.connect()
            monkeypatch.undo()
            try:
                conn = client.connection
                assert conn is not None
                transport = conn._transport
                assert transport is not None
                port = transport.get_extra_info("sockname")[1]
                [server_conn] = [
                    c for c in harness.server.connections if (c.peer_address or ("", 0))[1] == port
                ]
                ours = (conn._quic, server_conn._quic)
                assert [is_client for engine, is_client in sent if engine in ours] == [
                    True,
                    False,
                    True,
                    False,
                ]
            finally:
                await client.close()
