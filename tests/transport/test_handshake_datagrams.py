"""Handshake flights use 1,200-byte datagrams whatever the configured size, and
PADDING is skipped without a per-byte loop (aioquic engine, sans-IO)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client
from quicflow.certs import write_dev_certs
from quicflow.testing import ClientFor
from quicflow.transport.engine_aioquic import HANDSHAKE_DATAGRAM_SIZE, AioquicFlowConnection
from quicflow.transport.quic import QuicFlowProtocol
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
    """Check that the server gets the client's Finished and HELLO in one datagram
    (before, HELLO left a loop turn later, a datagram and a round trip more), for a full
    and a resumed handshake: the server's HandshakeCompleted and the control stream's
    first data come out of the same received datagram."""
    seen: list[tuple[int, str]] = []
    received = [0]
    receive = AioquicFlowConnection.receive_datagram
    next_event = AioquicFlowConnection.next_event

    def counting_receive(self: AioquicFlowConnection, data: bytes, addr: Any, now: float) -> None:
        if not self._is_client:
            received[0] += 1
        receive(self, data, addr, now)

    def recording_next(self: AioquicFlowConnection) -> Any:
        event = next_event(self)
        if not self._is_client and event is not None:
            seen.append((received[0], type(event).__name__))
        return event

    harness = ClientFor([TestEcho()], server_options={"quic_engine": "aioquic"})
    async with harness:
        for resumption in (False, True):
            monkeypatch.setattr(AioquicFlowConnection, "receive_datagram", counting_receive)
            monkeypatch.setattr(AioquicFlowConnection, "next_event", recording_next)
            seen.clear()
            config = harness.client_config(tls_resumption=resumption, quic_engine="aioquic")
            client = Client(config)
            await client.connect()
            monkeypatch.undo()
            try:
                [done] = [n for n, kind in seen if kind == "HandshakeCompleted"]
                first_data = next(n for n, kind in seen if kind == "StreamDataReceived")
                assert first_data == done, seen
            finally:
                await client.close()


def test_datagrams_above_16_kib_carry_stream_data_intact(tmp_path: Path) -> None:
    """Check that with 65,000-byte datagrams a 300 KB write leaves in datagrams above
    16 KiB, each packet holding several STREAM frames (one frame's length cannot exceed
    16,383), and the peer receives every byte in order (aioquic's own writer put one
    frame per packet and overflowed its 2-byte length)."""
    certs = write_dev_certs(tmp_path / "certs")
    configs: list[Any] = [
        client_configuration(server_name="localhost", ca_file=str(certs.ca_file)),
        server_configuration(cert_file=str(certs.cert_file), key_file=str(certs.key_file)),
    ]
    for config in configs:
        config.alpn_protocols = ["quicflow"]
        config.max_datagram_size = 65000
    client = AioquicFlowConnection(configuration=configs[0], window=1 << 20)
    client.connect(SERVER_ADDR, now=0.0)
    [(first, _)] = client.datagrams_to_send(0.0)
    server = AioquicFlowConnection(
        configuration=configs[1],
        window=1 << 20,
        original_destination_connection_id=first[6 : 6 + first[5]],
    )
    server.receive_datagram(first, CLIENT_ADDR, 0.0)
    _exchange(client, server, 0.0, [])
    while client.next_event() is not None:
        pass
    payload = bytes(range(256)) * 1200  # 307,200 bytes
    stream_id = client.get_next_available_stream_id()
    client.send_stream_data(stream_id, payload, end_stream=True)
    received = bytearray()
    sizes: list[int] = []
    now = 0.01
    for _ in range(50):
        for data, _ in client.datagrams_to_send(now):
            sizes.append(len(data))
            server.receive_datagram(data, CLIENT_ADDR, now)
        for data, _ in server.datagrams_to_send(now):
            client.receive_datagram(data, SERVER_ADDR, now)
        while (event := server.next_event()) is not None:
            if isinstance(event, events.StreamDataReceived):
                received += event.data
        now += 0.01
        if len(received) == len(payload):
            break
    assert bytes(received) == payload
    assert max(sizes) > 3 * 16384


async def test_client_reads_a_burst_then_transmits_once(monkeypatch: Any) -> None:
    """Check that a client receiving a burst (a 2 MiB reply in 1,200-byte datagrams)
    feeds the engine what has arrived and answers with one transmit: fewer than one
    transmit per two datagrams received (one per datagram before, each an ACK)."""
    received = [0]
    transmits = [0]
    receive = AioquicFlowConnection.receive_datagram
    transmit = QuicFlowProtocol.transmit

    def counting_receive(self: AioquicFlowConnection, data: bytes, addr: Any, now: float) -> None:
        if self._is_client:
            received[0] += 1
        receive(self, data, addr, now)

    def counting_transmit(self: QuicFlowProtocol) -> None:
        if self._quic.configuration.is_client:
            transmits[0] += 1
        transmit(self)

    options = {"max_datagram_size": 1200, "max_message_size": 4 << 20, "quic_engine": "aioquic"}
    harness = ClientFor([TestEcho()], server_options=options, client_options=options)
    async with harness as client:
        text = "z" * (2 << 20)
        monkeypatch.setattr(AioquicFlowConnection, "receive_datagram", counting_receive)
        monkeypatch.setattr(QuicFlowProtocol, "transmit", counting_transmit)
        reply = await EchoStub(client).say(EchoRequest(text=text), timeout=30)
        monkeypatch.undo()
        assert reply.text == text
    assert received[0] > 1000
    assert transmits[0] < received[0] / 2, (transmits[0], received[0])


async def test_a_run_of_datagrams_of_one_connection_gets_one_answer(monkeypatch: Any) -> None:
    """Check that the server handles the datagrams of one connection that it reads back to
    back as one run with one transmit after the last: a qh3 client sends its second
    flight (Initial ACK, Finished, HELLO) as three datagrams, and the server answers the
    connect with fewer transmits than datagrams received (one transmit per datagram
    before, each an ACK of its own)."""
    counts = {"received": 0, "runs": 0, "transmits": 0}
    single = QuicFlowProtocol.datagram_received
    several = QuicFlowProtocol.datagrams_received
    transmit = QuicFlowProtocol.transmit

    def server_side(protocol: QuicFlowProtocol) -> bool:
        return not protocol._quic.configuration.is_client

    def counting_single(self: QuicFlowProtocol, data: bytes, addr: Any) -> None:
        if server_side(self) and not self._more:  # a run counts its datagrams itself
            counts["received"] += 1
        single(self, data, addr)

    def counting_several(self: QuicFlowProtocol, datagrams: list[tuple[bytes, Any]]) -> None:
        counts["received"] += len(datagrams)
        counts["runs"] += 1
        several(self, datagrams)

    def counting_transmit(self: QuicFlowProtocol) -> None:
        if server_side(self):
            counts["transmits"] += 1
        transmit(self)

    options = {"quic_engine": "qh3"}
    harness = ClientFor([TestEcho()], server_options=options, client_options=options)
    async with harness:
        monkeypatch.setattr(QuicFlowProtocol, "datagram_received", counting_single)
        monkeypatch.setattr(QuicFlowProtocol, "datagrams_received", counting_several)
        monkeypatch.setattr(QuicFlowProtocol, "transmit", counting_transmit)
        for i in range(3):
            client = Client(harness.client_config(tls_resumption=False, client_id=f"run-{i}"))
            await client.connect()
            await client.close()
        monkeypatch.undo()
    assert counts["runs"] >= 3, counts
    assert counts["transmits"] < counts["received"], counts
