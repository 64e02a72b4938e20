"""The server side: the UDP endpoint that accepts QUIC connections (`QuicFlowServer`,
`serve`), with address validation by Retry and connection-id routing."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any, cast

from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress
from aioquic.quic.crypto import CryptoPair
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    QuicProtocolVersion,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.retry import QuicRetryTokenHandler

from ..protocol.admission import HandshakeAdmission, busy_reason
from ..protocol.budget import ByteBudget
from ..wire.codec import ErrorCode
from .engine import make_connection, resolve_engine
from .quic import QuicFlowProtocol
from .reset import ResetLimiter, load_reset_key, stateless_reset
from .settings import TransportSettings, bind_error, datagram_size_for, grow_buffers
from .tickets import SealedTickets
from .tls import ServerTicketStore

logger = logging.getLogger("quicflow.transport")

__all__ = ["QuicFlowServer", "serve"]

_SMALLEST_INITIAL = 1200  # RFC 9000 §14.1: a client Initial is padded to at least this

INTAKE_BATCH = 256
"""Datagrams `QuicFlowServer` reads from its socket per loop pass at most (docs/scale.md
"Datagram intake")."""
HANDSHAKES_PER_PASS = 8
"""New connections `QuicFlowServer` starts per loop pass at most (0: no limit); further
Initials wait in its backlog (docs/scale.md "Datagram intake")."""
SHED_READS = 4096
"""Datagrams `QuicFlowServer` reads past `INTAKE_BATCH` in a loop pass at most, while
Initials overflow its handshake backlog (they are dropped as read)."""
HANDSHAKE_BACKLOG = 512
"""Initials waiting for a loop pass with room for a new connection, at most; beyond it
the oldest is dropped."""
HANDSHAKE_BACKLOG_AGE = 2.0
"""Seconds an Initial may wait in the backlog; an older one is dropped (its client's probe
timeout has sent it again by then)."""
BUSY_RATE = 2000.0
"""Busy answers (CONNECTION_CLOSE "server busy, retry in N ms") sent per second at most,
with a burst of as many; beyond it an Initial the backlog has no room for is dropped."""
_LARGEST_DATAGRAM = 65535


def destination_cid(data: bytes, cid_length: int) -> bytes:
    """The Destination Connection ID of a QUIC packet (RFC 9000 §17), without checking the
    rest of the header; b"" when too short to hold one."""
    if not data:
        return b""
    if data[0] & 0x80:  # long header: version (4), DCID length (1), DCID
        if len(data) < 6:
            return b""
        return data[6 : 6 + data[5]]
    return data[1 : 1 + cid_length]


class QuicFlowServer(asyncio.DatagramProtocol):
    """The UDP endpoint that demultiplexes datagrams to many connections.

    Each new connection is a `QuicFlowProtocol`; ``on_connection`` sees it
    before its first stream arrives. With ``retry``, a client's first Initial
    is answered with a stateless Retry carrying an address-bound token, and
    only an Initial that returns a valid token creates a connection (RFC 9000
    §8.1.2): a flood from spoofed addresses costs one datagram each, no state.
    Without ``retry``, the same happens by itself while ``retry_threshold``
    handshakes or more are in progress (0: never), as QUIC servers under load do.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        settings: TransportSettings,
        on_connection: Callable[[QuicFlowProtocol], None],
        *,
        retry: bool = False,
        retry_threshold: int = 0,
        tickets: ServerTicketStore | SealedTickets | None = None,
        reset_key: bytes | None = None,
        max_connections: int = 0,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        self.max_connections = max_connections
        """Connections at most (0: no cap); one more is refused in its handshake."""
        self.connections_refused = 0
        """Connections refused at ``max_connections``."""
        self._on_refused = on_refused
        self._always_retry = retry
        self.retry_threshold = retry_threshold
        """Handshakes in progress from which every new connection must pass a Retry."""
        # The token key is made on first use (an RSA key: ~0.1 s of CPU).
        self._retry = QuicRetryTokenHandler() if retry else None
        self.tickets = tickets
        """Session tickets issued, for clients that resume (None: no resumption)."""
        self.reset_key = reset_key if reset_key is not None else load_reset_key(None)
        """The key stateless reset tokens derive from (`quicflow.transport.reset`)."""
        self._reset_limiter = ResetLimiter()
        self._busy_limiter = ResetLimiter(BUSY_RATE)
        self.admission: HandshakeAdmission | None = HandshakeAdmission()
        """Which Initials wait in the backlog and which clients are told to come back
        later (`quicflow.protocol.admission`); None: every Initial waits (or is shed)."""
        self.busy_sent = 0
        """Initials answered "server busy, retry in N ms" (docs/wire-protocol.md §2)."""
        self.resets_sent = 0
        """Stateless resets sent (datagrams for connections this server does not know)."""
        self._handshaking: set[QuicFlowProtocol] = set()
        self._retrying: int | None = None
        """`retries_sent` when automatic Retry last turned on; None: not since handshakes in
        progress fell below half ``retry_threshold`` (so an episode is logged once)."""
        self.receive_budget = ByteBudget(settings.receive_limit)
        """Bytes of large unfinished frames all connections may hold (each connection's
        `QuicFlowProtocol.receive_budget` has this one as its parent)."""
        self.retries_sent = 0
        """Retry packets sent (address validations asked for)."""
        self._configuration = configuration
        self._settings = settings
        self._on_connection = on_connection
        self._protocols: dict[bytes, QuicFlowProtocol] = {}
        self._sized: dict[int, QuicConfiguration] = {}
        self._transport: asyncio.DatagramTransport | None = None
        self._reader: socket.socket | None = None
        self._in_pass = False
        self._read = self._started = 0
        self._backlog: deque[tuple[float, bytes, NetworkAddress]] = deque()
        self._queued: set[bytes] = set()
        """Destination Connection IDs of the Initials in the backlog (one each)."""
        self.initials_repeated = 0
        """Initials dropped as they came because one with the same Destination Connection
        ID was already waiting in the backlog (a client's probe timeout sent it again)."""
        self.connections_ended = 0
        """Connections that ended after their handshake completed, since the endpoint
        started (handshakes that never finish are not counted)."""
        self.handshakes_per_pass = HANDSHAKES_PER_PASS
        """New connections started per loop pass at most (0: no limit)."""
        self.handshakes_shed = 0
        """Initials dropped from the handshake backlog (full, or waited too long)."""
        self.handshakes_shed_stale = 0
        """Of ``handshakes_shed``: dropped because they waited too long."""
        self.handshakes_started = 0
        """Connections created (their handshake begun) since the endpoint started."""
        self.handshakes_completed = 0
        """Handshakes that completed since the endpoint started."""
        self.handshakes_failed = 0
        """Connections that ended before their handshake completed (the client gave up,
        or the handshake failed)."""
        self.backlog_waited = 0.0
        """Seconds the Initials that started connections waited in the backlog, summed."""
        self.connections: set[QuicFlowProtocol] = set()

    @property
    def port(self) -> int:
        """The bound UDP port."""
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            grow_buffers(sock)
            # Our own handle on the same socket, to read it in batches: the loop's
            # transport hands us one datagram per pass (asyncio's) or per read (uvloop's).
            with contextlib.suppress(OSError, ValueError):
                self._reader = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
                self._reader.setblocking(False)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._reader is not None:
            self._reader.close()  # our duplicate would keep the port bound
            self._reader = None

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
        """Take ``data`` and what else the socket holds now, established connections first.

        Per loop pass it reads at most `INTAKE_BATCH` datagrams and starts at most
        `handshakes_per_pass` new connections. The datagrams of connections that exist
        go first; Initials that would start a connection wait in a backlog (at most
        `HANDSHAKE_BACKLOG`, none older than `HANDSHAKE_BACKLOG_AGE` seconds, one per
        Destination Connection ID) and are served in arrival order over the next passes.
        One that would wait longer than ``admission`` allows is answered "server busy,
        retry in N ms" with a time to come back (docs/wire-protocol.md §2); what still
        overflows the backlog is dropped (shed: its client sends its Initial again after
        its probe timeout, and backs off if its connect timeout passes first). So a storm
        of handshakes cannot starve connections' own traffic (a ping queued behind
        thousands of Initials, or dropped by the kernel with them), and no pass does more
        handshakes than it can finish quickly (docs/scale.md "Datagram intake").
        """
        if not self._in_pass:
            self._begin_pass()
        backlog = self._backlog
        now = asyncio.get_running_loop().time()
        self._take(self._batch(data, addr), now)
        # While Initials overflow the backlog, read on past INTAKE_BATCH (at most
        # SHED_READS more per pass): the connections' datagrams queued behind them in the
        # kernel are served now, and the Initials are dropped as they are read, instead of
        # the kernel's queue filling with them and holding everyone's pings.
        extra = 0
        while len(backlog) >= HANDSHAKE_BACKLOG and extra < SHED_READS:
            more = self._read_more(min(INTAKE_BATCH, SHED_READS - extra))
            if not more:
                break
            extra += len(more)
            self._take(more, now)
        self._serve_backlog(now)

    def _take(self, batch: list[tuple[bytes, NetworkAddress]], now: float) -> None:
        protocols, cid_length = self._protocols, self._configuration.connection_id_length
        backlog, queued = self._backlog, self._queued
        last = len(batch) - 1
        cids = [destination_cid(data, cid_length) for data, _ in batch]
        run: list[tuple[bytes, NetworkAddress]] | None = None
        for index, item in enumerate(batch):
            cid = cids[index]
            protocol = protocols.get(cid)
            if protocol is not None:
                # Datagrams of one connection back to back (a peer that sends its packets
                # in datagrams of their own, as qh3 does in a handshake) are handled as a
                # run with one transmit after the last: one answer and one ACK, not one each.
                if index < last and protocols.get(cids[index + 1]) is protocol:
                    if run is None:
                        run = [item]
                    else:
                        run.append(item)
                elif run is not None:
                    run.append(item)
                    protocol.datagrams_received(run)
                    run = None
                else:
                    protocol.datagram_received(*item)
            elif not item[0][0] & 0x80 or len(item[0]) < _SMALLEST_INITIAL:
                self._route(*item)  # cannot start a connection: nothing to queue
            elif cid in queued:
                # Sent again while the first copy waits: the copy in the backlog keeps its
                # place (a busy answer now would turn away a client whose handshake is
                # about to start).
                self.initials_repeated += 1
            else:
                admission = self.admission
                if admission is not None:
                    delay = admission.admit(now, len(backlog))
                    if delay is not None and self._send_busy(item[0], item[1], delay, now):
                        continue
                if len(backlog) >= HANDSHAKE_BACKLOG:
                    self._unqueue(backlog.popleft()[1])
                    self.handshakes_shed += 1
                backlog.append((now, *item))
                queued.add(cid)

    def _unqueue(self, data: bytes) -> None:
        self._queued.discard(destination_cid(data, self._configuration.connection_id_length))

    def _begin_pass(self) -> None:
        self._in_pass = True
        self._read = self._started = 0
        asyncio.get_running_loop().call_soon(self._pass_over)

    def _pass_over(self) -> None:
        self._in_pass = False
        if self._backlog and self._transport is not None:
            # Initials still waiting: serve the next share in the next pass.
            self._begin_pass()
            self._serve_backlog(asyncio.get_running_loop().time())

    def _serve_backlog(self, now: float) -> None:
        backlog, budget = self._backlog, self.handshakes_per_pass
        protocols, cid_length = self._protocols, self._configuration.connection_id_length
        oldest = now - HANDSHAKE_BACKLOG_AGE
        loop_time = asyncio.get_running_loop().time
        while backlog and (not budget or self._started < budget):
            when, data, addr = backlog.popleft()
            self._unqueue(data)
            protocol = protocols.get(destination_cid(data, cid_length))
            if protocol is not None:  # its connection began earlier in this pass
                protocol.datagram_received(data, addr)
            elif when < oldest:
                self.handshakes_shed += 1  # its client has sent it again, or given up
                self.handshakes_shed_stale += 1
            else:
                before = len(self.connections)
                began = time.thread_time()
                self._route(data, addr)
                started = len(self.connections) - before
                self._started += started
                if started:
                    self.backlog_waited += now - when
                    if self.admission is not None:
                        self.admission.started(
                            loop_time(), time.thread_time() - began, bool(backlog)
                        )

    def _batch(self, data: bytes, addr: NetworkAddress) -> list[tuple[bytes, NetworkAddress]]:
        batch = [(data, addr), *self._read_more(INTAKE_BATCH - self._read - 1)]
        self._read += len(batch)
        return batch

    def _read_more(self, count: int) -> list[tuple[bytes, NetworkAddress]]:
        """Up to ``count`` datagrams the socket holds now."""
        out: list[tuple[bytes, NetworkAddress]] = []
        reader = self._reader
        if reader is None or count <= 0:
            return out
        recvfrom = reader.recvfrom
        for _ in range(count):
            try:
                out.append(recvfrom(_LARGEST_DATAGRAM))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break  # e.g. an ICMP error queued on the socket: the loop's reader sees it
        return out

    def _route(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return
        protocol = self._protocols.get(header.destination_cid)
        if protocol is None:
            if (
                header.packet_type != QuicPacketType.INITIAL
                or len(data) < _SMALLEST_INITIAL
                or header.version not in self._configuration.supported_versions
            ):
                if not data[0] & 0x80:
                    # A short-header packet of a connection we do not know (we restarted,
                    # or forgot it): tell its client at once (RFC 9000 §10.3).
                    self._send_reset(data, header.destination_cid, addr)
                return  # not a connection attempt we take (no version negotiation in v1)
            original_cid = header.destination_cid
            retry_cid: bytes | None = None
            validate = self._must_validate()
            if header.token and self._retry is not None:
                try:
                    original_cid = self._retry.validate_token(
                        address=addr,
                        destination_cid=header.destination_cid,
                        token=header.token,
                        now=asyncio.get_running_loop().time(),
                    )
                    retry_cid = header.destination_cid
                except ValueError:
                    if validate:
                        return  # forged, expired or from another address: no state for it
            elif validate:
                if header.token:
                    return  # a token we never issued
                self._send_retry(header.version, header.source_cid, original_cid, addr)
                return
            protocol = self._accept(header.destination_cid, addr, original_cid, retry_cid)
            protocol.datagram_received(data, addr)
            cap = self.max_connections
            if cap and len(self.connections) > cap:
                # Over the cap (this one included): refused before the runtime does any
                # work for it. Its client sees UNAVAILABLE and retries with backoff; the
                # connections already here are untouched.
                protocol.refuse("too many connections")
                self.connections_refused += 1
                if self._on_refused is not None:
                    self._on_refused("too many connections")
                return
            # Only now does the connection know its peer's address, so only now may
            # the runtime look at it (and, say, close it at once).
            self._on_connection(protocol)
            return
        protocol.datagram_received(data, addr)

    def _send_busy(self, data: bytes, addr: NetworkAddress, delay: float, now: float) -> bool:
        """Answer a client's first Initial with CONNECTION_CLOSE (CONNECTION_REFUSED,
        "server busy, retry in N ms") in an Initial packet of our own, without making a
        connection: Initial keys from its Destination Connection ID, one small packet
        (~80 bytes, ~50 us). False (nothing sent) if it is no version 1 Initial or busy
        answers are over their rate."""
        transport = self._transport
        if transport is None:
            return False
        try:
            header = pull_quic_header(
                Buffer(data=data), host_cid_length=self._configuration.connection_id_length
            )
        except ValueError:
            return False
        if (
            header.packet_type != QuicPacketType.INITIAL
            or header.version != QuicProtocolVersion.VERSION_1
            or not self._busy_limiter.allow(now)
        ):
            return False
        crypto = CryptoPair()
        crypto.setup_initial(header.destination_cid, is_client=False, version=header.version)
        builder = QuicPacketBuilder(
            host_cid=os.urandom(self._configuration.connection_id_length),
            peer_cid=header.source_cid,
            version=header.version,
            is_client=False,
            max_datagram_size=_SMALLEST_INITIAL,
        )
        reason = busy_reason(delay).encode()
        builder.start_packet(QuicPacketType.INITIAL, crypto)
        buf = builder.start_frame(QuicFrameType.TRANSPORT_CLOSE, capacity=len(reason) + 16)
        buf.push_uint_var(QuicErrorCode.CONNECTION_REFUSED)
        buf.push_uint_var(QuicFrameType.PADDING)  # no frame caused it
        buf.push_uint_var(len(reason))
        buf.push_bytes(reason)
        for datagram in builder.flush()[0]:
            transport.sendto(datagram, addr)
        self.busy_sent += 1
        return True

    def _send_reset(self, data: bytes, cid: bytes, addr: NetworkAddress) -> None:
        if self._transport is None:
            return
        if not self._reset_limiter.allow(asyncio.get_running_loop().time()):
            return
        packet = stateless_reset(self.reset_key, cid, len(data))
        if packet is not None:
            self._transport.sendto(packet, addr)
            self.resets_sent += 1

    @property
    def handshakes(self) -> int:
        """Connections whose handshake is in progress."""
        return len(self._handshaking)

    def _must_validate(self) -> bool:
        """Whether a new connection must pass a Retry first: always with ``retry``, else
        while ``retry_threshold`` handshakes or more are in progress."""
        if self._always_retry:
            return True
        threshold = self.retry_threshold
        handshakes = len(self._handshaking)
        busy = bool(threshold) and handshakes >= threshold
        # During a flood the count hovers around the threshold: log the episode's start
        # once, and its end once the count is below half the threshold.
        if busy and self._retrying is None:
            self._retrying = self.retries_sent
            logger.warning(
                "%d handshakes in progress (retry_threshold %d): new connections must "
                "validate their address with a QUIC Retry first",
                handshakes,
                threshold,
            )
        elif self._retrying is not None and handshakes * 2 < threshold:
            logger.info(
                "%d handshakes in progress, below half of retry_threshold %d: automatic "
                "Retry off again (%d Retries sent)",
                handshakes,
                threshold,
                self.retries_sent - self._retrying,
            )
            self._retrying = None
        return busy

    def _send_retry(
        self, version: int, client_cid: bytes, original_cid: bytes, addr: NetworkAddress
    ) -> None:
        assert self._transport is not None
        if self._retry is None:
            self._retry = QuicRetryTokenHandler()
        new_cid = os.urandom(8)
        token = self._retry.create_token(
            address=addr,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=new_cid,
            now=asyncio.get_running_loop().time(),
        )
        self._transport.sendto(
            encode_quic_retry(
                version=version,
                source_cid=new_cid,
                destination_cid=client_cid,
                original_destination_cid=original_cid,
                retry_token=token,
            ),
            addr,
        )
        self.retries_sent += 1

    def _accept(
        self,
        first_cid: bytes,
        addr: NetworkAddress,
        original_cid: bytes,
        retry_cid: bytes | None = None,
    ) -> QuicFlowProtocol:
        configuration = self._configuration
        size = datagram_size_for(addr[0], self._settings.max_datagram_size)
        if size != configuration.max_datagram_size:
            configuration = self._loopback_configuration(size)
        tickets = self.tickets
        resumption: dict[str, Any] = {}
        if tickets is not None:
            resumption = {
                "session_ticket_fetcher": tickets.pop,
                "session_ticket_handler": tickets.add,
            }
            if isinstance(tickets, SealedTickets):  # its labels go into the messages too
                resumption["sealed_tickets"] = tickets
        connection = make_connection(
            configuration,
            self._settings,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
            reset_key=self.reset_key,
            **resumption,
        )
        protocol = QuicFlowProtocol(connection, settings=self._settings, router=self)
        protocol.receive_budget.parent = self.receive_budget
        protocol.connection_made(cast(asyncio.BaseTransport, self._transport))
        self.connection_id_issued(protocol, first_cid)
        self.connection_id_issued(protocol, connection.host_cid)
        self._handshaking.add(protocol)
        self.connections.add(protocol)
        self.handshakes_started += 1
        return protocol

    def _loopback_configuration(self, size: int) -> QuicConfiguration:
        # One copy per size, shared by every connection that uses it.
        cached = self._sized.get(size)
        if cached is None:
            cached = self._sized[size] = dataclasses.replace(
                self._configuration, max_datagram_size=size
            )
        return cached

    # -- what each connection reports (`quic.ConnectionRouter`) --

    def connection_id_issued(self, protocol: QuicFlowProtocol, cid: bytes) -> None:
        self._protocols[cid] = protocol
        protocol.cids.add(cid)

    def connection_id_retired(self, protocol: QuicFlowProtocol, cid: bytes) -> None:
        protocol.cids.discard(cid)
        if self._protocols.get(cid) is protocol:
            del self._protocols[cid]

    def handshake_completed(self, protocol: QuicFlowProtocol) -> None:
        if protocol in self._handshaking:
            self._handshaking.discard(protocol)
            self.handshakes_completed += 1

    def connection_closed(self, protocol: QuicFlowProtocol) -> None:
        if protocol in self._handshaking:
            self._handshaking.discard(protocol)
            self.handshakes_failed += 1

    def connection_ended(self, protocol: QuicFlowProtocol) -> None:
        for cid in protocol.cids:
            if self._protocols.get(cid) is protocol:
                del self._protocols[cid]
        protocol.cids.clear()
        if protocol in self.connections:
            self.connections.discard(protocol)
            if protocol not in self._handshaking:
                self.connections_ended += 1
        if protocol in self._handshaking:
            self._handshaking.discard(protocol)
            self.handshakes_failed += 1

    def close(self) -> None:
        """Stop listening; connections still open are closed abruptly."""
        for protocol in list(self.connections):
            protocol.close(ErrorCode.NO_ERROR, "server closed")
        if self._transport is not None:
            self._transport.close()
        self._backlog.clear()
        self._queued.clear()
        if self._reader is not None:
            self._reader.close()
            self._reader = None


async def serve(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    on_connection: Callable[[QuicFlowProtocol], None],
    *,
    retry: bool = False,
    retry_threshold: int = 0,
    tickets: ServerTicketStore | SealedTickets | None = None,
    reset_key: bytes | None = None,
    max_connections: int = 0,
    on_refused: Callable[[str], None] | None = None,
) -> QuicFlowServer:
    """Bind a UDP socket and accept QUIC connections on it (``retry``: validate client
    addresses with a QUIC Retry first; ``retry_threshold``: do so while that many
    handshakes are in progress; ``tickets``: let clients resume TLS sessions;
    ``reset_key``: derive stateless reset tokens from it, None: a random key;
    ``max_connections``: refuse connections beyond it, telling ``on_refused``; see
    `QuicFlowServer`)."""
    loop = asyncio.get_running_loop()
    settings.apply(configuration)
    # QUIC version 1 only (docs/wire-protocol.md §2): aioquic's default list adds version
    # 2, which costs every connection a second set of Initial keys (~8 KiB) for a version
    # negotiation its clients never ask for (they start with version 1, and a server that
    # prefers version 1 never moves them to 2).
    configuration.supported_versions = [QuicProtocolVersion.VERSION_1]
    if resolve_engine(settings.quic_engine) == "qh3":
        from .engine_qh3 import shared_qh3_configuration

        # Refuse what qh3 cannot do now, not per connection.
        shared_qh3_configuration(configuration)
    try:
        _, proto = await loop.create_datagram_endpoint(
            lambda: QuicFlowServer(
                configuration,
                settings,
                on_connection,
                retry=retry,
                retry_threshold=retry_threshold,
                tickets=tickets,
                reset_key=reset_key,
                max_connections=max_connections,
                on_refused=on_refused,
            ),
            local_addr=(host, port),
            reuse_port=None,
        )
    except OSError as exc:
        raise bind_error(exc, "UDP", host, port) from exc
    return proto
