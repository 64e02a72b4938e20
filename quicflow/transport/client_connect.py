"""The client side: open a QUIC connection to a server (`connect`)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hmac
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import Any, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.packet import QuicErrorCode
from cryptography.hazmat.primitives import hashes

from ..errors import ConnectionClosed
from ..protocol.admission import parse_busy
from .engine import make_connection, resolve_engine
from .quic import QuicFlowProtocol
from .reset import RESET_TOKEN_SIZE, SMALLEST_RESET
from .settings import TransportSettings, datagram_size_for, grow_buffers
from .tls import ClientTicketCache

__all__ = ["ServerBusy", "connect"]

READ_BATCH = 64
"""Datagrams a client reads at most per loop pass beyond the one the loop handed it."""
_LARGEST_DATAGRAM = 65535

logger = logging.getLogger("quicflow.transport")


class _ClientProtocol(QuicFlowProtocol):
    """A client connection on its own connected UDP socket.

    A connected socket hears the ICMP errors about its peer: the kernel answers
    a datagram to a port nobody listens on with "port unreachable", which the
    socket reports as ECONNREFUSED (at once on loopback, one round trip
    elsewhere). Before the handshake completes that ends the attempt (`connect`
    says "nothing answers"); afterwards it is ignored: the heartbeat, not one
    ICMP message (which anyone on the path could forge), decides that a
    connection is dead.
    """

    refused: ConnectionRefusedError | None = None
    """Set when the peer's host refused a datagram before the handshake completed."""

    _reader: socket.socket | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            # Our own handle on the socket, to read what else has arrived in one go: the
            # loop hands over one datagram per pass (asyncio) or per read (uvloop), and a
            # transmit (an ACK) followed each; a burst of them now gets one.
            with contextlib.suppress(OSError, ValueError):
                reader = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
                reader.setblocking(False)
                self._reader = reader

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader is not None:
            self._reader.close()  # our duplicate would keep the port bound
            self._reader = None
        super().connection_lost(exc)

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        if not self.connect_started:
            # The socket is bound and read from before `connect` starts the handshake (a
            # loop turn later): a datagram then is not for this connection (a server still
            # answering the port's previous user, in a reconnect storm), and the engine,
            # holding no keys nor path yet, cannot be asked what to send or when.
            logger.debug("datagram from %s before the handshake started: dropped", addr)
            return
        if isinstance(data, bytes) and self._is_reset(data):
            logger.info("stateless reset from %s: the server lost this connection", addr)
            self.reset_by_peer()
            return
        super().datagram_received(data, addr)

    def receive_more(self, now: float) -> None:
        reader = self._reader
        if reader is None:
            return
        quic = self._quic
        for _ in range(READ_BATCH):
            if self.closed_error is not None:
                return
            try:
                data, addr = reader.recvfrom(_LARGEST_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued on the socket
                self.error_received(exc)
                return
            if self._is_reset(data):
                self.reset_by_peer()
                return
            quic.receive_datagram(data, addr, now=now)
            self._process_events()

    def _is_reset(self, data: bytes) -> bool:
        # A stateless reset: a short-header datagram ending with the token the server
        # announced for the connection ID we send to (RFC 9000 §10.3). aioquic does not
        # look for them; qh3's core does (its engine returns no token).
        if len(data) < SMALLEST_RESET or data[0] & 0x80:
            return False
        token = self._quic.peer_reset_token()
        return token is not None and hmac.compare_digest(data[-RESET_TOKEN_SIZE:], token)

    def error_received(self, exc: Exception) -> None:
        if self._connected or not isinstance(exc, ConnectionRefusedError):
            logger.debug("socket error on a client connection ignored: %s", exc)
            return
        if self.refused is None:
            self.refused = exc
        waiter = self._connected_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)


class ServerBusy(ConnectionClosed):
    """The server turned the attempt away in its handshake because it is busy (a reconnect
    storm) and said when to come back (docs/wire-protocol.md §2)."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message=message, may_have_run=False)
        self.retry_after = retry_after
        """Seconds the server asked the client to wait before its next attempt."""


# aioquic's hostname check names the certificate's identities as service_identity reprs:
# "hostname 'x' doesn't match either of DNSPattern(pattern=b'localhost'),
# IPAddressPattern(pattern=IPv4Address('127.0.0.1'))": the names are the quoted parts.
_NAME_MISMATCH = re.compile(r"hostname '(?P<name>[^']*)' doesn't match")
_QUOTED = re.compile(r"'([^']+)'")


def explain_handshake_failure(reason: str, *, server_name: str) -> str:
    """``reason`` (a TLS failure as the QUIC stack words it) with what to do about it."""
    mismatch = _NAME_MISMATCH.search(reason)
    if mismatch is not None:
        rest = reason[mismatch.end() :]
        names = _QUOTED.findall(rest)
        carries = f"is for {', '.join(names)}" if names else "does not name it"
        return (
            f"the server's certificate {carries}, not {mismatch['name']!r}: connect by one of "
            "its names or set server_name (--server-name) to one of them"
        )
    lowered = reason.lower()
    if any(
        s in lowered
        for s in ("unable to get local issuer", "self-signed certificate", "self signed certif")
    ):
        return (
            f"{reason}: the server's certificate does not chain to a CA this client trusts; "
            "give the CA that signed it with ca_file (--ca FILE), e.g. certs/ca.pem from "
            "`quicflow certs`"
        )
    if "certificate" in lowered and ("expired" in lowered or "no longer valid" in lowered):
        return f"{reason}: the server's certificate has expired; the server needs a new one"
    if "certificate" in lowered and any(s in lowered for s in ("unacceptable", "bad cert")):
        return (
            f"{reason}: check that ca_file (--ca FILE) holds the CA that signed the server's "
            f"certificate and that the certificate names {server_name!r} (else set "
            "server_name, --server-name, to a name it carries)"
        )
    return reason


async def connect(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    *,
    connect_timeout: float,
    tickets: ClientTicketCache | None = None,
    on_handshake: Callable[[QuicFlowProtocol], None] | None = None,
) -> QuicFlowProtocol:
    """Open a QUIC connection and finish the TLS 1.3 handshake.

    With ``tickets``, a session ticket from an earlier connection to the same
    server (same engine, address, server name, trust anchors and client
    certificate) is offered, so the handshake resumes that session (no
    certificate sent or verified); the ticket the server issues on this
    connection is kept there for the next one. Nothing is ever sent as 0-RTT
    early data (docs/security.md).

    ``on_handshake(protocol)`` runs as the handshake completes, inside the
    handling of the datagram that completes it: what it writes (HELLO) leaves
    in the same datagram as the client's Finished.

    The UDP socket is connected to the server's address, so a port nobody
    listens on fails the attempt as soon as the OS reports it (ICMP port
    unreachable), not after ``connect_timeout``. A failed attempt leaves
    nothing behind: no socket, no timer. A handshake that completes in the loop turn
    the timeout fires in (handled first: I/O comes before timers) counts as done.

    Raises:
        ServerBusy: the server is busy and said when to come back.
        ConnectionClosed: nothing answers at that address ("nothing answers at
            HOST:PORT"), the handshake failed (its reason is in the message, with
            what to do for certificate problems), or it did not finish within
            ``connect_timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    settings.apply(configuration)
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConnectionClosed(message=f"cannot resolve {host!r}: {exc}") from exc
    where = f"{host}:{port}"
    deadline = loop.time() + connect_timeout
    # Every address the name has, in the resolver's order: a server on 127.0.0.1 only is
    # reached as "localhost" even where that resolves to ::1 first (refused at once).
    addresses = list(dict.fromkeys((info[0], str(info[4][0]), int(info[4][1])) for info in infos))
    for family, ip, ip_port in addresses:
        size = datagram_size_for(ip, settings.max_datagram_size)
        attempt = configuration
        if size != configuration.max_datagram_size:
            attempt = dataclasses.replace(configuration, max_datagram_size=size)
        protocol = await _attempt(
            family,
            ip,
            ip_port,
            attempt,
            settings,
            where,
            deadline,
            connect_timeout,
            host,
            tickets,
            on_handshake,
        )
        if protocol is not None:
            return protocol
    tried = f"; tried {', '.join(a[1] for a in addresses)}" if len(addresses) > 1 else ""
    raise ConnectionClosed(
        message=f"nothing answers at {where} (no server listens on that UDP port{tried})"
    )


async def _attempt(
    family: int,
    ip: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    where: str,
    deadline: float,
    connect_timeout: float,
    host: str,
    tickets: ClientTicketCache | None,
    on_handshake: Callable[[QuicFlowProtocol], None] | None,
) -> QuicFlowProtocol | None:
    """One handshake with ``ip:port`` until the loop time ``deadline``: the connection, or
    None if the OS reported the port closed (ICMP port unreachable) before an answer."""
    loop = asyncio.get_running_loop()
    ticket = None
    extra: dict[str, Any] = {}
    if tickets is not None:
        key = (
            resolve_engine(settings.quic_engine),
            ip,
            port,
            configuration.server_name,
            configuration.verify_mode,
            configuration.cafile,
            configuration.capath,
            configuration.cadata,
            configuration.certificate.fingerprint(hashes.SHA256())
            if configuration.certificate is not None
            else None,
        )
        ticket = tickets.take(key)
        extra["session_ticket_handler"] = lambda new: tickets.put(key, new)
    connection = make_connection(configuration, settings, session_ticket=ticket, **extra)
    try:
        # remote_addr connects the socket. Both asyncio and uvloop then accept the peer
        # address aioquic passes to sendto (uvloop refuses it, EISCONN, on a socket
        # connected by hand), as long as it is the address the loop connected to.
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _ClientProtocol(connection, settings=settings, on_handshake=on_handshake),
            remote_addr=(ip, port),
            family=family,
        )
    except OSError as exc:
        raise ConnectionClosed(message=f"cannot reach {where}: {exc.strerror or exc}") from exc
    sock = transport.get_extra_info("socket")
    if sock is not None:
        grow_buffers(sock)
    peer = transport.get_extra_info("peername") or (ip, port)
    try:
        protocol.connect(cast(NetworkAddress, peer))
        if protocol.refused is None:  # not refused while the first datagram was sent
            async with asyncio.timeout_at(deadline):
                await protocol.wait_connected()
    except TimeoutError:
        if protocol.handshake_done and protocol.closed_error is None:
            # The server's last flight was handled in the loop turn the timeout fired (a
            # loop lagging in a reconnect storm handles I/O before timers): the handshake
            # the server finished is not thrown away (docs/connections.md).
            return protocol
        protocol.discard("connect timeout")
        raise ConnectionClosed(
            message=f"could not connect to {where}: no answer within {connect_timeout:.3g} s"
        ) from None
    except ConnectionError as exc:
        why = protocol.closed_error.message if protocol.closed_error else "handshake failed"
        busy = None
        if protocol.close_code == QuicErrorCode.CONNECTION_REFUSED and protocol.close_reason:
            busy = parse_busy(protocol.close_reason)
        protocol.discard("connect failed")
        if busy is not None:
            raise ServerBusy(
                f"could not connect to {where}: {protocol.close_reason}", retry_after=busy
            ) from exc
        if protocol.refused is None:
            server_name = configuration.server_name or host
            why = explain_handshake_failure(why, server_name=server_name)
            raise ConnectionClosed(message=f"could not connect to {where}: {why}") from exc
    except BaseException:
        protocol.discard("connect cancelled")
        raise
    if protocol.refused is not None:
        protocol.discard("connect refused")
        return None
    return protocol
