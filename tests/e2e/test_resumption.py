"""TLS session resumption: a client's next connection to the same server resumes its
session (no certificate sent or verified), never with 0-RTT; none under mutual TLS."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, HelloInfo, PeerInfo
from quicflow.protocol.call import Role
from quicflow.protocol.control import ControlProtocol
from quicflow.testing import ClientFor
from quicflow.transport.settings import ALPN
from quicflow.transport.tls import CLIENT_TICKETS, ClientTicketCache, ServerTicketStore

from .service import TestEcho


async def _call(client: Client) -> None:
    reply = await EchoStub(client).say(EchoRequest(text="hi"), timeout=5)
    assert reply.text == "hi"


async def test_a_second_connection_resumes_the_session() -> None:
    """Check that a client's second connection to a server resumes the TLS session the
    first one got a ticket for (the server finds the ticket: `resumed` counts it), that
    calls work on it, and that a client with tls_resumption=False does a full handshake."""
    harness = ClientFor([TestEcho()])
    async with harness as first:
        await _call(first)
        listener = harness.server._listener
        assert listener is not None
        store = listener.tickets
        assert store is not None
        assert store.resumed == 0 and store.issued == 1
        second = Client(harness.client_config())
        async with second:
            await _call(second)
        assert store.resumed == 1
        assert store.issued == 2  # the resumed connection got a fresh ticket
        third = Client(harness.client_config(tls_resumption=False))
        async with third:
            await _call(third)
        assert store.resumed == 1
        fourth = Client(harness.client_config())
        async with fourth:  # takes the ticket second or third left
            await _call(fourth)
        assert store.resumed == 2


async def test_a_resumed_session_still_authenticates_the_hello() -> None:
    """Check that resumption skips only the TLS certificate: the HELLO of a resumed
    connection goes through the server's authenticator like any other."""
    seen: list[str] = []

    def authenticator(hello: HelloInfo, peer: PeerInfo) -> str:
        seen.append(hello.client_id)
        return hello.client_id or "anon"

    harness = ClientFor([TestEcho()], server_options={"authenticator": authenticator})
    async with harness:
        async with Client(harness.client_config(client_id="again")) as second:
            await _call(second)
        listener = harness.server._listener
        assert listener is not None and listener.tickets is not None
        assert listener.tickets.resumed == 1
    assert seen[-1] == "again" and len(seen) == 2


async def test_no_resumption_when_disabled_on_the_server() -> None:
    """Check that tls_session_tickets=0 issues no tickets and keeps no store."""
    harness = ClientFor([TestEcho()], server_options={"tls_session_tickets": 0})
    async with harness:
        listener = harness.server._listener
        assert listener is not None and listener.tickets is None
        async with Client(harness.client_config()) as second:
            await _call(second)


class _Ticket:
    def __init__(self, label: bytes, valid: bool = True) -> None:
        self.ticket = label
        self.is_valid = valid


def test_server_store_is_bounded_and_single_use() -> None:
    """Check the server store keeps at most `capacity` tickets (oldest dropped first),
    hands each out once, and never an expired one."""
    store = ServerTicketStore(2)
    for label in (b"a", b"b", b"c"):
        store.add(_Ticket(label))
    assert len(store) == 2 and store.issued == 3
    assert store.pop(b"a") is None  # dropped: the oldest
    assert store.pop(b"b") is not None
    assert store.pop(b"b") is None  # used once
    store.add(_Ticket(b"old", valid=False))
    assert store.pop(b"old") is None
    assert store.resumed == 1


def test_client_cache_keys_take_once_and_bound() -> None:
    """Check the client cache gives a ticket only for its own key, once each, keeps at
    most `per_key` per key (newest first) and `capacity` keys."""
    cache = ClientTicketCache(capacity=2, per_key=2)
    cache.put("s1", _Ticket(b"1"))
    cache.put("s1", _Ticket(b"2"))
    cache.put("s1", _Ticket(b"3"))
    assert cache.take("s2") is None
    taken = [cache.take("s1"), cache.take("s1"), cache.take("s1")]
    assert [t.ticket if t else None for t in taken] == [b"3", b"2", None]
    cache.put("s1", _Ticket(b"x", valid=False))
    assert cache.take("s1") is None
    cache.put("s1", _Ticket(b"1"))
    cache.put("s2", _Ticket(b"2"))
    cache.put("s3", _Ticket(b"3"))
    assert cache.take("s1") is None  # least recently used key dropped
    assert cache.take("s3") is not None
    assert CLIENT_TICKETS is not cache


async def test_no_resumption_under_mutual_tls() -> None:
    """Check that a server asking for client certificates keeps no tickets, so every
    connection, the second too, presents and verifies the client's certificate."""
    seen: list[str | None] = []

    def authenticator(hello: HelloInfo, peer: PeerInfo) -> str:
        seen.append(peer.certificate_client_id)
        return peer.certificate_client_id or "anon"

    harness = ClientFor([TestEcho()])
    certs = harness.certs
    harness = ClientFor(
        [TestEcho()],
        server_options={
            "client_ca_file": str(certs.ca_file),
            "client_cert_mode": "required",
            "quic_engine": "aioquic",  # a qh3 server cannot ask for client certificates
            "authenticator": authenticator,
        },
        client_options={
            "cert_file": str(certs.client_cert_file),
            "key_file": str(certs.client_key_file),
        },
    )
    async with harness:
        listener = harness.server._listener
        assert listener is not None and listener.tickets is None
        async with Client(harness.client_config()) as second:
            await _call(second)
    assert len(seen) == 2 and seen[0] is not None and seen[1] == seen[0]


class _Udp(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received.put_nowait(data)


async def _raw_client(
    port: int, ca_file: str, ticket: Any = None, handler: Any = None
) -> tuple[QuicConnection, asyncio.DatagramTransport, _Udp]:
    config = QuicConfiguration(is_client=True, server_name="localhost", alpn_protocols=[ALPN])
    config.load_verify_locations(cafile=ca_file)
    config.session_ticket = ticket
    quic = QuicConnection(configuration=config, session_ticket_handler=handler)
    loop = asyncio.get_running_loop()
    transport, udp = await loop.create_datagram_endpoint(_Udp, remote_addr=("127.0.0.1", port))
    return quic, transport, udp


def _flush(quic: QuicConnection, transport: asyncio.DatagramTransport) -> list[bytes]:
    sent = [data for data, _ in quic.datagrams_to_send(now=time.monotonic())]
    for data in sent:
        transport.sendto(data)
    return sent


async def _pump_until(quic: QuicConnection, transport: Any, udp: _Udp, done: Any) -> None:
    async with asyncio.timeout(5):
        while not done():
            data = await udp.received.get()
            if data:
                quic.receive_datagram(data, transport.get_extra_info("peername"), time.monotonic())
            _flush(quic, transport)


async def test_zero_rtt_hello_is_held_until_the_handshake_completes() -> None:
    """Check the server acts on nothing sent as 0-RTT before the handshake completes: a
    HELLO sent as early data opens no session while the handshake is unfinished, and
    does once the client finishes it (a replayed flight never can). Tickets being single
    use (test_server_store_is_bounded_and_single_use) a replay elsewhere also finds its
    ticket gone.

    QuicFlow's own client never sends early data; this peer does, on purpose."""
    harness = ClientFor([TestEcho()], server_options={"quic_engine": "aioquic"})
    async with harness as first:
        ca_file = str(harness.certs.ca_file)
        port = harness.server.port
        tickets: list[Any] = []
        quic, transport, udp = await _raw_client(port, ca_file, handler=tickets.append)
        quic.connect(transport.get_extra_info("peername"), now=time.monotonic())
        _flush(quic, transport)
        await _pump_until(quic, transport, udp, lambda: bool(tickets))
        transport.close()
        assert tickets[0].max_early_data_size is not None  # the ticket allows 0-RTT

        quic, transport, udp = await _raw_client(port, ca_file, ticket=tickets[0])
        quic.connect(transport.get_extra_info("peername"), now=time.monotonic())
        hello = ControlProtocol(Role.CALLER, max_frame_size=1 << 16).send_hello("early", [])
        quic.send_stream_data(0, hello)
        _flush(quic, transport)
        async with asyncio.timeout(5):
            answer = await udp.received.get()  # the server answered: it has handled it
        await udp.received.put(answer)
        for _ in range(5):  # the turns a HELLO's task would take
            await asyncio.sleep(0)
        listener = harness.server._listener
        assert listener is not None
        mine = transport.get_extra_info("sockname")[1]
        [held] = [c for c in listener.connections if c.peer_address and c.peer_address[1] == mine]
        assert held.stream_count == 0  # the early stream reached no handler
        assert "early" not in {s.client_id for s in harness.server.sessions}
        # The original client finishes its handshake: now its HELLO counts.
        kinds: list[type] = []

        def welcomed() -> bool:
            while (event := quic.next_event()) is not None:
                kinds.append(type(event))
            return events.StreamDataReceived in kinds

        await udp.received.put(b"")  # nothing: start the pump with what is queued
        await _pump_until(quic, transport, udp, welcomed)
        transport.close()
        assert quic.tls.session_resumed and quic.tls.early_data_accepted
        assert {s.client_id for s in harness.server.sessions} == {first.client_id, "early"}
