"""The server endpoint's datagram intake: batches per loop pass, connections' datagrams
before new handshakes, and at most `HANDSHAKES_PER_PASS` new connections per pass."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicErrorCode

from quicflow.certs import write_dev_certs
from quicflow.protocol.admission import HandshakeAdmission
from quicflow.transport import QuicFlowProtocol, TransportSettings, server_endpoint
from quicflow.transport.server_endpoint import (
    HANDSHAKES_PER_PASS,
    QuicFlowServer,
    destination_cid,
    serve,
)
from quicflow.transport.settings import ALPN
from quicflow.transport.tls import server_configuration


def _initial() -> tuple[bytes, bytes]:
    """A fresh client's first datagram (a padded Initial) and its Destination CID."""
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN]))
    conn.connect(("127.0.0.1", 9), now=0.0)
    datagram = conn.datagrams_to_send(now=0.0)[0][0]
    return datagram, conn.original_destination_connection_id


def test_destination_cid_of_long_and_short_headers() -> None:
    """Check that destination_cid reads an Initial's DCID from its long header, a 1-RTT
    packet's from the host's CID length, and gives b"" for what is too short."""
    datagram, dcid = _initial()
    assert destination_cid(datagram, 8) == dcid
    assert destination_cid(b"\x40" + b"abcdefgh" + b"payload", 8) == b"abcdefgh"
    assert destination_cid(b"", 8) == b""
    assert destination_cid(b"\xc0\x00\x00", 8) == b""


class Recorder:
    """Stands in for an established connection: notes how many connections existed when
    each of its datagrams arrived."""

    def __init__(self, endpoint: QuicFlowServer) -> None:
        self.endpoint = endpoint
        self.cids: set[bytes] = set()
        self.seen: list[int] = []
        self.runs: list[int] = []
        """The length of each run of datagrams handed over at once (`datagrams_received`)."""

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.seen.append(len(self.endpoint.connections))

    def datagrams_received(self, datagrams: list[tuple[bytes, Any]]) -> None:
        self.runs.append(len(datagrams))
        self.seen.append(len(self.endpoint.connections))


@pytest.fixture
async def endpoint(tmp_path: Path) -> AsyncIterator[QuicFlowServer]:
    certs = write_dev_certs(tmp_path)
    configuration = server_configuration(
        cert_file=str(certs.cert_file), key_file=str(certs.key_file)
    )
    server = await serve("127.0.0.1", 0, configuration, TransportSettings(), lambda _p: None)
    try:
        yield server
    finally:
        server.close()


def _burst(port: int, datagrams: list[bytes]) -> None:
    """Send every datagram before the loop can read any (no await in between)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for datagram in datagrams:
            sock.sendto(datagram, ("127.0.0.1", port))


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0.01)


async def test_a_burst_of_initials_is_served_a_budget_per_pass(endpoint: QuicFlowServer) -> None:
    """Check that 20 Initials read at once start HANDSHAKES_PER_PASS connections in that
    pass and the rest over the next passes, none dropped."""
    _burst(endpoint.port, [_initial()[0] for _ in range(19)])
    # On loopback they are in the server's socket now, and the loop has read none (no
    # await since): this pass reads them all.
    endpoint.datagram_received(_initial()[0], ("127.0.0.1", 9))
    assert len(endpoint.connections) == HANDSHAKES_PER_PASS
    await _settle()
    assert len(endpoint.connections) == 20
    assert endpoint.handshakes_shed == 0


async def test_initials_beyond_the_backlog_are_shed(
    endpoint: QuicFlowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that Initials overflowing the backlog are dropped oldest first, and that
    Initials which waited longer than HANDSHAKE_BACKLOG_AGE are dropped too."""
    monkeypatch.setattr(server_endpoint, "HANDSHAKE_BACKLOG", 5)
    endpoint.handshakes_per_pass = 1
    _burst(endpoint.port, [_initial()[0] for _ in range(9)])
    await _settle()
    assert (len(endpoint.connections), endpoint.handshakes_shed) == (5, 4)
    monkeypatch.setattr(server_endpoint, "HANDSHAKE_BACKLOG_AGE", -1.0)
    _burst(endpoint.port, [_initial()[0] for _ in range(3)])
    await _settle()
    assert (len(endpoint.connections), endpoint.handshakes_shed) == (5, 7)


async def test_established_connections_go_before_new_handshakes(
    endpoint: QuicFlowServer,
) -> None:
    """Check that a connection's datagram queued behind Initials in the socket is handed to
    its connection before any of those Initials starts a connection."""
    recorder = Recorder(endpoint)
    endpoint.connection_id_issued(cast(QuicFlowProtocol, recorder), b"known-01")
    short = b"\x40known-01" + bytes(40)
    _burst(endpoint.port, [_initial()[0] for _ in range(3)] + [short] + [_initial()[0]])
    await _settle()
    assert recorder.seen == [0]
    assert len(endpoint.connections) == 4


async def test_datagrams_of_one_connection_back_to_back_are_one_run(
    endpoint: QuicFlowServer,
) -> None:
    """Check that a connection's datagrams read back to back reach it as one run (one
    transmit answers them), and that a datagram of another connection in between ends the
    run: a, a, b, a, a, a is a run of 2, b alone, a run of 3."""
    a, b = Recorder(endpoint), Recorder(endpoint)
    endpoint.connection_id_issued(cast(QuicFlowProtocol, a), b"known-0a")
    endpoint.connection_id_issued(cast(QuicFlowProtocol, b), b"known-0b")
    short_a, short_b = b"\x40known-0a" + bytes(40), b"\x40known-0b" + bytes(40)
    _burst(endpoint.port, [short_a, short_a, short_b, short_a, short_a, short_a])
    await _settle()
    assert a.runs == [2, 3] and b.runs == []
    assert len(a.seen) == 2 and len(b.seen) == 1  # b's one datagram: datagram_received


async def test_only_connections_past_their_handshake_count_as_ended(
    endpoint: QuicFlowServer,
) -> None:
    """Check that a connection ending mid-handshake leaves connections_ended alone (a storm's
    failed handshakes are not churn of long-lived connections)."""
    _burst(endpoint.port, [_initial()[0]])
    await _settle()
    [protocol] = list(endpoint.connections)
    endpoint.connection_ended(protocol)
    assert (len(endpoint.connections), endpoint.connections_ended) == (0, 0)


async def test_while_initials_overflow_the_backlog_the_socket_is_read_on(
    endpoint: QuicFlowServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Check that with the backlog full, a connection's datagram queued behind more
    Initials than one batch holds is still served in that pass, and the Initials read past
    the batch are dropped."""
    monkeypatch.setattr(server_endpoint, "INTAKE_BATCH", 4)
    monkeypatch.setattr(server_endpoint, "HANDSHAKE_BACKLOG", 3)
    endpoint.handshakes_per_pass = 1
    recorder = Recorder(endpoint)
    endpoint.connection_id_issued(cast(QuicFlowProtocol, recorder), b"known-01")
    _burst(endpoint.port, [_initial()[0] for _ in range(12)] + [b"\x40known-01" + bytes(40)])
    endpoint.datagram_received(_initial()[0], ("127.0.0.1", 9))
    assert recorder.seen == [0]  # served in this pass, behind 12 Initials and a batch of 4
    assert len(endpoint.connections) == 1
    assert endpoint.handshakes_shed == 13 - 3  # the backlog keeps the newest 3


def _clients(count: int) -> list[tuple[QuicConnection, socket.socket]]:
    """Fresh clients, each with its own UDP socket (to read what the server answers it)."""
    out = []
    for _ in range(count):
        conn = QuicConnection(
            configuration=QuicConfiguration(is_client=True, alpn_protocols=[ALPN])
        )
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        out.append((conn, sock))
    return out


def _answers(conn: QuicConnection, sock: socket.socket, addr: Any) -> list[Any]:
    """What ``conn`` makes of the datagrams waiting on ``sock``: its events, the close
    among them (aioquic reports a received CONNECTION_CLOSE once its draining ends)."""
    while True:
        try:
            data = sock.recv(65535)
        except BlockingIOError:
            break
        conn.receive_datagram(data, addr, now=0.1)
    timer = conn.get_timer()
    if timer is not None:
        conn.handle_timer(now=timer)
    found = []
    while (event := conn.next_event()) is not None:
        found.append(event)
    return found


async def test_initials_the_backlog_has_no_time_for_get_a_busy_answer(
    endpoint: QuicFlowServer,
) -> None:
    """Check that with a 10 ms pace and 25 ms of patience, of 5 Initials read at once the
    first 3 wait (0, 10 and 20 ms of backlog ahead of them) and start connections, and the
    4th and 5th are answered at once, without a connection, with
    CONNECTION_CLOSE(CONNECTION_REFUSED) "server busy, retry in 30 ms" and "40 ms" (the
    next slots), which the clients' own QUIC stacks read as the end of the attempt."""
    endpoint.admission = HandshakeAdmission(max_wait=0.025, initial_cost=0.01)
    clients = _clients(5)
    for conn, sock in clients:
        conn.connect(("127.0.0.1", endpoint.port), now=0.0)
        for data, _ in conn.datagrams_to_send(now=0.0):
            sock.sendto(data, ("127.0.0.1", endpoint.port))
    await _settle()
    try:
        assert (len(endpoint.connections), endpoint.busy_sent) == (3, 2)
        assert endpoint.handshakes_started == 3
        server = ("127.0.0.1", endpoint.port)
        closes = [
            [
                (e.error_code, e.reason_phrase)
                for e in _answers(conn, sock, server)
                if isinstance(e, events.ConnectionTerminated)
            ]
            for conn, sock in clients
        ]
        assert closes == [
            [],
            [],
            [],
            [(QuicErrorCode.CONNECTION_REFUSED, "server busy, retry in 30 ms")],
            [(QuicErrorCode.CONNECTION_REFUSED, "server busy, retry in 40 ms")],
        ]
    finally:
        for _, sock in clients:
            sock.close()


async def test_an_initial_sent_again_while_it_waits_keeps_its_one_place(
    endpoint: QuicFlowServer,
) -> None:
    """Check that an Initial repeated (its client's probe timeout) while the first copy
    waits in the backlog is dropped as it comes: one connection, no busy answer to the
    copy even when the backlog is past its patience (before, the copy took a second place and
    a busy answer to it would have turned away a client about to be served)."""
    endpoint.admission = HandshakeAdmission(max_wait=0.025, initial_cost=0.01)
    endpoint.handshakes_per_pass = 1
    first, _ = _initial()
    others = [_initial()[0] for _ in range(3)]
    # first waits (0 ms ahead), two others wait (10, 20 ms), the third is turned away
    # (30 ms), and the copies of first find it still waiting (one start per pass).
    _burst(endpoint.port, [first, *others, first, first])
    await _settle()
    assert endpoint.initials_repeated == 2
    assert (endpoint.busy_sent, len(endpoint.connections)) == (1, 3)
