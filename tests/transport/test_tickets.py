"""Sealed TLS session tickets (``tls_ticket_key_file``): the key file, sealing and opening,
rotation, expiry, and resumption across two Server objects on real loopback."""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientConfig, ConfigError, Server, ServerConfig
from quicflow.testing import dev_certs
from quicflow.transport.tickets import SealedTickets, load_ticket_keys
from quicflow.transport.tls import CLIENT_TICKETS
from tests.e2e.service import TestEcho

KEY_A, KEY_B = b"a" * 32, b"b" * 32
T0 = 1_800_000_000.0


class _Ticket:
    """What the TLS hands the ticket handler (aioquic's SessionTicket, the fields read)."""

    def __init__(self, secret: bytes = b"s" * 32, lifetime: float = 86400.0) -> None:
        self.ticket = b"r" * 64
        self.cipher_suite = 0x1301
        self.resumption_secret = secret
        self.not_valid_before = datetime.datetime.fromtimestamp(T0, datetime.UTC)
        self.not_valid_after = datetime.datetime.fromtimestamp(T0 + lifetime, datetime.UTC)


def test_key_file_is_created_private_and_read_back(tmp_path: Path) -> None:
    """Check that a missing key file is created with one 32-byte secret, mode 0600, that
    the same secret is read back, and that several secrets are read in order."""
    path = tmp_path / "ticket.key"
    [key] = load_ticket_keys(str(path))
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) == 32 and path.read_bytes() == key
    assert load_ticket_keys(str(path)) == [key]
    path.write_bytes(KEY_A + KEY_B)
    assert load_ticket_keys(str(path)) == [KEY_A, KEY_B]


@pytest.mark.parametrize("size", [0, 16, 31, 33, 63])
def test_key_file_of_wrong_length_is_a_config_error(tmp_path: Path, size: int) -> None:
    """Check that a key file that is not whole 32-byte secrets is refused, naming the field."""
    path = tmp_path / "ticket.key"
    path.write_bytes(b"x" * size)
    with pytest.raises(ConfigError) as refused:
        load_ticket_keys(str(path))
    assert refused.value.field == "tls_ticket_key_file"
    assert f"holds {size} bytes" in str(refused.value)


def test_key_file_that_cannot_be_created_is_a_config_error(tmp_path: Path) -> None:
    """Check that a key file in a directory that does not exist is refused, naming the
    field, and that a bad file stops Server.start() before it listens."""
    with pytest.raises(ConfigError) as refused:
        load_ticket_keys(str(tmp_path / "missing-dir" / "ticket.key"))
    assert refused.value.field == "tls_ticket_key_file"


def test_sealed_ticket_opens_to_its_state() -> None:
    """Check that `add` seals the ticket's state into its label (also left in `pending`
    for the NewSessionTicket) and `pop` opens it again, any number of times."""
    tickets = SealedTickets([KEY_A], now=lambda: T0 + 10)
    ticket = _Ticket()
    tickets.add(ticket)
    assert tickets.pending == ticket.ticket and ticket.ticket != b"r" * 64
    assert b"s" * 32 not in ticket.ticket  # the secret is encrypted
    for _ in range(2):
        opened = tickets.pop(ticket.ticket)
        assert opened is not None and opened.is_valid
        assert opened.cipher_suite == 0x1301 and opened.resumption_secret == b"s" * 32
    assert (tickets.issued, tickets.resumed, tickets.refused) == (1, 2, 0)


def test_another_key_or_a_damaged_label_does_not_open() -> None:
    """Check that a ticket sealed under another key, a label with one byte changed, a
    truncated one, or the engine's own random label opens to None (a full handshake)."""
    ticket = _Ticket()
    SealedTickets([KEY_A], now=lambda: T0).add(ticket)
    other = SealedTickets([KEY_B], now=lambda: T0)
    assert other.pop(ticket.ticket) is None
    mine = SealedTickets([KEY_A], now=lambda: T0)
    damaged = bytearray(ticket.ticket)
    damaged[30] ^= 1
    assert mine.pop(bytes(damaged)) is None
    assert mine.pop(ticket.ticket[:40]) is None
    assert mine.pop(b"r" * 64) is None
    assert mine.pop(ticket.ticket) is not None
    assert (other.refused, mine.refused, mine.resumed) == (1, 3, 1)


def test_rotation_opens_with_the_old_key_and_seals_with_the_new() -> None:
    """Check that with keys [B, A] a ticket sealed under A still opens, a new one is sealed
    under B (a server with only A cannot open it), and dropping A ends A's tickets."""
    old = _Ticket()
    SealedTickets([KEY_A], now=lambda: T0).add(old)
    rotated = SealedTickets([KEY_B, KEY_A], now=lambda: T0)
    assert rotated.pop(old.ticket) is not None
    new = _Ticket()
    rotated.add(new)
    assert SealedTickets([KEY_A], now=lambda: T0).pop(new.ticket) is None
    assert SealedTickets([KEY_B], now=lambda: T0).pop(new.ticket) is not None
    assert SealedTickets([KEY_B], now=lambda: T0).pop(old.ticket) is None


def test_expired_ticket_does_not_open() -> None:
    """Check a ticket opens until the end of its lifetime (to the second) and not after,
    nor more than a minute before it was issued (clocks of two hosts may differ a little)."""
    ticket = _Ticket(lifetime=100.0)
    SealedTickets([KEY_A], now=lambda: T0).add(ticket)

    def at(now: float) -> Any:
        return SealedTickets([KEY_A], now=lambda: now).pop(ticket.ticket)

    assert at(T0 + 100.0) is not None
    assert at(T0 + 100.5) is None
    assert at(T0 - 60.0) is not None
    assert at(T0 - 61.0) is None


def _server(port: int, key_file: Path, engine: str) -> Server:
    certs = dev_certs()
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=port,
            cert_file=str(certs.cert_file),
            key_file=str(certs.key_file),
            tls_ticket_key_file=str(key_file),
            quic_engine=engine,
        )
    )
    server.add_service(TestEcho())
    return server


async def _connect_and_call(port: int, engine: str) -> None:
    config = ClientConfig(
        host="127.0.0.1",
        port=port,
        ca_file=str(dev_certs().ca_file),
        server_name="localhost",
        quic_engine=engine,
    )
    async with Client(config) as client:
        reply = await EchoStub(client).say(EchoRequest(text="hi"), timeout=5)
        assert reply.text == "hi"


@pytest.mark.parametrize("engine", ["aioquic", "qh3"])
async def test_a_new_server_with_the_key_file_resumes_the_old_ones_sessions(
    tmp_path: Path, engine: str
) -> None:
    """Check that a client's ticket from one Server resumes on a new Server object with the
    same key file on the same port (the ticket opened and the handshake, whose PSK
    binder proves the secret, completed), and that a server with another key file makes
    a full handshake for it, without failing the connect."""
    CLIENT_TICKETS.clear()
    key_file = tmp_path / "ticket.key"
    first = _server(0, key_file, engine)
    await first.start()
    port = first.port
    try:
        await _connect_and_call(port, engine)
    finally:
        await first.stop(grace=0.5)
    tickets = first._listener.tickets if first._listener else None
    assert isinstance(tickets, SealedTickets) and (tickets.issued, tickets.resumed) == (1, 0)

    second = _server(port, key_file, engine)
    await second.start()
    try:
        await _connect_and_call(port, engine)
        tickets = second._listener.tickets if second._listener else None
        assert isinstance(tickets, SealedTickets)
        assert (tickets.resumed, tickets.refused, tickets.issued) == (1, 0, 1)
    finally:
        await second.stop(grace=0.5)

    other_key = tmp_path / "other.key"
    third = _server(port, other_key, engine)
    await third.start()
    try:
        await _connect_and_call(port, engine)  # the second's ticket: another key
        tickets = third._listener.tickets if third._listener else None
        assert isinstance(tickets, SealedTickets)
        assert (tickets.resumed, tickets.refused, tickets.issued) == (0, 1, 1)
    finally:
        await third.stop(grace=0.5)


async def test_bad_key_file_stops_the_server_from_starting(tmp_path: Path) -> None:
    """Check that Server.start() refuses a key file of the wrong length with a ConfigError
    naming tls_ticket_key_file, before it listens."""
    key_file = tmp_path / "ticket.key"
    key_file.write_bytes(b"short")
    server = _server(0, key_file, "aioquic")
    with pytest.raises(ConfigError) as refused:
        await server.start()
    assert refused.value.field == "tls_ticket_key_file"
    assert server._listener is None


async def test_the_ticket_on_the_wire_is_sealed_and_allows_no_early_data(tmp_path: Path) -> None:
    """Check with a raw aioquic client that the NewSessionTicket a key-file server sends
    carries the sealed label (it opens under the file's key to the session's resumption
    secret) and no early_data extension (the client will not offer 0-RTT with it)."""
    from tests.e2e.test_resumption import _flush, _pump_until, _raw_client

    key_file = tmp_path / "ticket.key"
    server = _server(0, key_file, "aioquic")
    await server.start()
    try:
        received: list[Any] = []
        quic, transport, udp = await _raw_client(
            server.port, str(dev_certs().ca_file), handler=received.append
        )
        quic.connect(transport.get_extra_info("peername"), now=time.monotonic())
        _flush(quic, transport)
        await _pump_until(quic, transport, udp, lambda: bool(received))
        transport.close()
    finally:
        await server.stop(grace=0.5)
    [ticket] = received
    assert ticket.max_early_data_size is None
    opened = SealedTickets(load_ticket_keys(str(key_file))).open(ticket.ticket)
    assert opened is not None
    assert opened.resumption_secret == ticket.resumption_secret
    assert opened.cipher_suite == ticket.cipher_suite
