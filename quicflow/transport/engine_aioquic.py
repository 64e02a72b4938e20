"""The aioquic engine, and every use of aioquic's private internals.

`AioquicFlowConnection` is aioquic's `QuicConnection` with consumption-based
receive credit, client-certificate checks, a pacer that charges packets by size,
and the answers the transport asks of an engine (`engine.EngineConnection`;
`engine_qh3.Qh3FlowConnection` gives the same answers for qh3).

aioquic has no public hook for any of these, so this module reads and patches
its private state. That is allowed here and nowhere else in QuicFlow: each
private name used is listed in `PRIVATE_USES`, which
tests/transport/test_aioquic_internals.py checks against the installed aioquic
(the name exists, a method keeps its parameters) and against this file's source
(every private name used here is listed). An aioquic upgrade that renames or
reshapes one fails there, by name, not as a wrong behaviour far away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketRecovery
from aioquic.quic.stream import QuicStream, QuicStreamReceiver, QuicStreamSender

from .pacer import BytePacer
from .reset import reset_token
from .streams import StreamHandler
from .tickets import SealedTickets, seal_tickets
from .tls import CertificateRejected, ClientCertificateVerifier, VerifiedClientCertificate

__all__ = ["ACTIVE_CONNECTION_ID_LIMIT", "PRIVATE_USES", "AioquicFlowConnection", "PrivateUse"]

logger = logging.getLogger("quicflow.transport")

MAX_FRAME_DATA = 16383
"""Most data bytes in one STREAM frame: aioquic writes the length as a 2-byte varint."""
MIN_FRAME_DATA = 64
"""Fewer bytes left in a packet than this: not worth another STREAM frame."""

_STREAM_WITH_LENGTH = int(QuicFrameType.STREAM_BASE) | 2
"""A STREAM frame's type with its length field (OFF and FIN are or-ed in per frame)."""


def _varint_size(value: int) -> int:
    """Bytes of ``value`` as a QUIC variable-length integer (aioquic's size_uint_var)."""
    return 1 if value < 0x40 else 2 if value < 0x4000 else 4 if value < 0x40000000 else 8


ACTIVE_CONNECTION_ID_LIMIT = 2
"""Connection IDs of ours a peer may keep (the active_connection_id_limit transport
parameter; RFC 9000's minimum): the one in use and one spare, for a migration. aioquic
asks for 8, so each side issued 7 NEW_CONNECTION_ID frames per handshake, each with its
stateless reset token (an HMAC on a server), and a server kept 8 IDs per connection in
its routing table. A NAT rebinding keeps the ID; an address change uses the spare and
the peer issues another as the old one is retired. qh3 announces 2 as a client by
itself; a qh3 server is told so by its configuration (`engine_qh3.qh3_configuration`)."""

HANDSHAKE_DATAGRAM_SIZE = 1200
"""Datagram size while Initial packets are still sent (RFC 9000's minimum, which an
Initial datagram is padded to): the handshake does not pay for a large datagram's padding."""

_NO_CRYPTO = Buffer(capacity=0)
"""The crypto buffer of an epoch TLS writes no more to: shared, it holds nothing (a write
would fail loudly rather than keep bytes)."""
_ONE_RTT_CRYPTO = 1024
"""Capacity of the 1-RTT crypto buffer: TLS writes only a NewSessionTicket there (the
server's, about 100 bytes), not aioquic's 16 KiB."""

# TLS states after which an epoch's crypto buffer is never written again (see
# aioquic.tls.Context.handle_message): a server writes INITIAL and HANDSHAKE only while
# it handles the ClientHello, and 1-RTT only on the client's Finished; a client writes
# INITIAL until the ServerHello and HANDSHAKE until the server's Finished.
_SERVER_PAST_HELLO = frozenset(
    {
        tls.State.SERVER_EXPECT_CERTIFICATE,
        tls.State.SERVER_EXPECT_CERTIFICATE_VERIFY,
        tls.State.SERVER_EXPECT_FINISHED,
    }
)
_CLIENT_BEFORE_SERVER_HELLO = frozenset(
    {tls.State.CLIENT_HANDSHAKE_START, tls.State.CLIENT_EXPECT_SERVER_HELLO}
)
_DONE = frozenset({tls.State.SERVER_POST_HANDSHAKE, tls.State.CLIENT_POST_HANDSHAKE})

_frame_tables: dict[type, dict[int, tuple[Any, frozenset[tls.Epoch]]]] = {}


class FrameHandlers:
    """aioquic's frame-handler table, shared by every connection of a class and bound to
    this one on lookup.

    aioquic builds the table in each connection's ``__init__``: 33 bound methods, tuples
    and frozensets, about 7 KiB per connection (a handshake that never completes
    included). Lookups (``table[frame_type]``, KeyError when unknown) are all it is
    used for.
    """

    __slots__ = ("connection", "table")

    def __init__(self, connection: QuicConnection, table: dict[int, Any]) -> None:
        self.connection = connection
        self.table = table

    def __getitem__(self, frame_type: int) -> tuple[Any, frozenset[tls.Epoch]]:
        function, epochs = self.table[frame_type]
        return function.__get__(self.connection), epochs

    def __contains__(self, frame_type: object) -> bool:
        return frame_type in self.table


@dataclass(frozen=True, slots=True)
class PrivateUse:
    """One private name of aioquic this module relies on."""

    owner: type
    """The aioquic class that has it (on its instances, for an attribute)."""
    name: str
    params: tuple[str, ...] | None
    """A method's parameter names (self included), as this module calls or overrides
    it; None for an attribute."""
    why: str


PRIVATE_USES: tuple[PrivateUse, ...] = (
    # QuicConnection: methods we override or call
    PrivateUse(
        QuicConnection,
        "_initialize",
        ("self", "peer_cid"),
        "overridden: once the TLS context exists, install the client-certificate checks",
    ),
    PrivateUse(
        QuicConnection,
        "_write_application",
        ("self", "builder", "network_path", "now"),
        "overridden: show the pacer the packet builder, to charge packets by size",
    ),
    PrivateUse(
        QuicConnection,
        "_write_stream_limits",
        ("self", "builder", "space", "stream"),
        "overridden: MAX_STREAM_DATA follows what the runtime consumed",
    ),
    PrivateUse(
        QuicConnection,
        "_get_or_create_stream_for_send",
        ("self", "stream_id"),
        "called: reserve a stream id at once (aioquic allocates on the first send)",
    ),
    PrivateUse(
        QuicConnection,
        "_on_max_stream_data_delivery",
        ("self", "delivery", "stream"),
        "called back: the MAX_STREAM_DATA frames we write are acknowledged as aioquic's",
    ),
    # QuicConnection: state we read or write
    PrivateUse(QuicConnection, "_streams", None, "stream state by id"),
    PrivateUse(QuicConnection, "_loss", None, "loss recovery: the pacer, RTT, PTO count"),
    PrivateUse(QuicConnection, "_spaces", None, "packet spaces: a pending ACK's time"),
    PrivateUse(QuicConnection, "_network_paths", None, "the active path is the first"),
    PrivateUse(QuicConnection, "_remote_max_streams_bidi", None, "the peer's MAX_STREAMS"),
    PrivateUse(QuicConnection, "_local_next_stream_id_bidi", None, "our next bidi stream"),
    PrivateUse(QuicConnection, "_close_event", None, "the close, before the draining ends"),
    PrivateUse(
        QuicConnection,
        "_push_crypto_data",
        ("self",),
        "overridden: drop the crypto buffers of epochs TLS has finished writing",
    ),
    PrivateUse(QuicConnection, "_crypto_buffers", None, "TLS output per epoch, 16 KiB each"),
    PrivateUse(
        QuicConnection,
        "_QuicConnection__frame_handlers",
        None,
        "the frame-handler table aioquic builds per connection: shared instead",
    ),
    PrivateUse(
        QuicConnection,
        "_handle_padding_frame",
        ("self", "context", "frame_type", "buf"),
        "overridden: skip PADDING with one C call, not a Python loop per byte",
    ),
    PrivateUse(QuicConnection, "_max_datagram_size", None, "capped while Initial keys live"),
    PrivateUse(QuicConnection, "_cryptos", None, "whether Initial keys exist, still in use"),
    PrivateUse(QuicConnection, "_quic_logger", None, "a qlog trace: keep aioquic's own path"),
    PrivateUse(
        QuicConnection,
        "_write_stream_frame",
        ("self", "builder", "space", "stream", "max_offset"),
        "overridden: several STREAM frames of at most 16,383 bytes per packet",
    ),
    # QuicPacketRecovery (QuicConnection._loss)
    PrivateUse(QuicPacketRecovery, "_pacer", None, "replaced by our BytePacer"),
    PrivateUse(QuicPacketRecovery, "_rtt_smoothed", None, "the smoothed RTT"),
    PrivateUse(QuicPacketRecovery, "_pto_count", None, "reset when the path changes"),
    # streams
    PrivateUse(QuicStreamSender, "_buffer", None, "bytes not yet acknowledged"),
    PrivateUse(QuicStreamSender, "_buffer_fin", None, "whether FIN is queued"),
    PrivateUse(QuicStreamReceiver, "_buffer_start", None, "bytes delivered in order"),
    # the packet builder (seen in _write_application)
    PrivateUse(QuicPacketBuilder, "_buffer", None, "the datagram being built: its size"),
    PrivateUse(QuicPacketBuilder, "_packet_start", None, "where the packet began"),
    # TLS: client certificates (a server's context)
    PrivateUse(tls.Context, "_request_client_certificate", None, "send CertificateRequest"),
    PrivateUse(
        tls.Context,
        "_server_handle_certificate",
        ("self", "input_buf"),
        "wrapped: require a client certificate",
    ),
    PrivateUse(
        tls.Context,
        "_server_handle_certificate_verify",
        ("self", "input_buf"),
        "wrapped: verify the client's chain once its key is proven",
    ),
    PrivateUse(tls.Context, "_peer_certificate", None, "the peer's leaf certificate"),
    PrivateUse(tls.Context, "_supported_groups", None, "a client offers one key share"),
    PrivateUse(QuicConnection, "_is_client", None, "only a client narrows its key shares"),
    PrivateUse(QuicConnection, "_host_cids", None, "our connection IDs: their reset tokens"),
    PrivateUse(QuicConnection, "_peer_cid", None, "the peer's connection ID: its reset token"),
    PrivateUse(
        QuicConnection,
        "_local_active_connection_id_limit",
        None,
        "the active_connection_id_limit we announce: 2, not aioquic's 8",
    ),
    PrivateUse(
        QuicConnection,
        "_replenish_connection_ids",
        ("self",),
        "overridden: new connection IDs get tokens derived from the reset key",
    ),
    PrivateUse(tls.Context, "_peer_certificate_chain", None, "the peer's intermediates"),
    PrivateUse(
        tls.Context,
        "_new_session_ticket",
        None,
        "the NewSessionTicket just written: written again with a sealed label (tickets.py)",
    ),
)


class AioquicFlowConnection(QuicConnection):
    """A QuicConnection whose per-stream receive window follows consumption.

    aioquic doubles a stream's window whenever the peer has sent past half of
    it, however little the application has read (no backpressure). For
    streams with a registered handler we instead grant
    ``delivered - unread + window``: a peer can never get more than ``window``
    bytes ahead of the reader.
    """

    engine = "aioquic"

    def __init__(
        self,
        *args: Any,
        window: int,
        pacer: BytePacer | None = None,
        reset_key: bytes | None = None,
        sealed_tickets: SealedTickets | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Announced in the transport parameters _initialize writes: the peer issues one
        # spare connection ID, not seven (see ACTIVE_CONNECTION_ID_LIMIT).
        self._local_active_connection_id_limit = ACTIVE_CONNECTION_ID_LIMIT
        self.sealed_tickets = sealed_tickets
        """A server's stateless tickets (`quicflow.transport.tickets`), None: in memory."""
        self.reset_key = None if self._is_client else reset_key
        """A server's stateless reset key: each connection ID's token derives from it
        (`quicflow.transport.reset`), so a restarted server holding it can still reset."""
        self.derive_reset_tokens()
        self.share_frame_handlers()
        self.flow_handlers: dict[int, StreamHandler] = {}
        self.flow_withheld: dict[int, int] = {}
        """Bytes of an unfinished frame per stream that count as unread (`FrameWatch`)."""
        self.flow_window = window
        self.flow_step = window >> 2  # raise in steps of a quarter window, not per byte
        self.client_certificate: VerifiedClientCertificate | None = None
        if pacer is not None:
            self._loss._pacer = pacer

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self._crypto_buffers[tls.Epoch.ONE_RTT] = Buffer(capacity=_ONE_RTT_CRYPTO)
        groups = self.tls._supported_groups
        if self._is_client and tls.Group.X25519 in groups:
            # aioquic offers a key share for each of P-256, P-384, X25519 and X448: four
            # key pairs made per connect, one used. X25519 is the cheapest, and every
            # QuicFlow server (aioquic, qh3) takes it.
            self.tls._supported_groups = [tls.Group.X25519]
        verifier = getattr(self.configuration, "client_verifier", None)
        if verifier is not None:
            _verify_client_certificates(self, verifier)
        if self.sealed_tickets is not None:
            context = self.tls
            seal_tickets(context, self.sealed_tickets, tls, lambda: context._new_session_ticket)

    # -- stateless reset (quicflow.transport.reset) --

    def derive_reset_tokens(self) -> None:
        """Give each of our connection IDs the token its ID derives to under our key."""
        key = self.reset_key
        if key is not None:
            for cid in self._host_cids:
                cid.stateless_reset_token = reset_token(key, cid.cid)

    def _replenish_connection_ids(self) -> None:
        super()._replenish_connection_ids()
        self.derive_reset_tokens()

    def peer_reset_token(self) -> bytes | None:
        """The stateless reset token of the connection ID we send to (a client: the
        server's), None before the peer gave one."""
        return self._peer_cid.stateless_reset_token or None

    # -- memory per connection (docs/limits.md "Handshake flood") --

    def share_frame_handlers(self) -> None:
        """Replace aioquic's per-connection frame-handler table by the class's shared one
        (`FrameHandlers`)."""
        own: object = self._QuicConnection__frame_handlers  # type: ignore[has-type]
        if not isinstance(own, dict):
            return  # already shared
        table = _frame_tables.get(type(self))
        if table is None:
            table = _frame_tables[type(self)] = {
                frame_type: (handler.__func__, epochs)
                for frame_type, (handler, epochs) in own.items()
            }
        self._QuicConnection__frame_handlers = FrameHandlers(self, table)

    def _push_crypto_data(self) -> None:
        super()._push_crypto_data()
        # Give back the 16 KiB buffers of the epochs TLS has finished writing: a server
        # waiting for the client's second flight (a handshake flood) keeps 1 KiB, not 48.
        state = self.tls.state
        buffers = self._crypto_buffers
        if state in _SERVER_PAST_HELLO:
            buffers[tls.Epoch.INITIAL] = buffers[tls.Epoch.HANDSHAKE] = _NO_CRYPTO
        elif state in _DONE:
            for epoch in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT):
                buffers[epoch] = _NO_CRYPTO
        elif self.configuration.is_client and state not in _CLIENT_BEFORE_SERVER_HELLO:
            buffers[tls.Epoch.INITIAL] = _NO_CRYPTO

    # -- the end (engine.EndedEngine) --

    def release(self) -> None:
        """Drop every attribute (the connection has ended and is used no more): aioquic's
        connection refers to itself through bound methods held by its own parts (loss
        recovery's probe, the crypto pairs' key-log callbacks, the frame handlers, the
        TLS context's), so without this only the cyclic collector would free it."""
        state = self.__dict__
        context = state.get("tls")
        if context is not None:
            context.__dict__.clear()
        for space in state.get("_spaces", {}).values():
            # A packet in flight holds its ACK's handler, whose arguments hold the space.
            space.sent_packets.clear()
        state.clear()

    # -- what QuicFlowProtocol asks of an engine (engine.EngineConnection) --

    def close_event(self) -> events.ConnectionTerminated | None:
        """The connection's end once decided: aioquic reports it as an event only after
        its draining period (3 PTO)."""
        return self._close_event

    def reserve_stream(self) -> int:
        """Allocate the next bidirectional stream id now (aioquic only advances on send)."""
        stream_id = self.get_next_available_stream_id()
        self._get_or_create_stream_for_send(stream_id)
        return stream_id

    def free_bidi_slots(self) -> int:
        """Bidirectional streams we may still open under the peer's MAX_STREAMS."""
        return self._remote_max_streams_bidi - self._local_next_stream_id_bidi // 4

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written on the stream that the peer has not acknowledged yet."""
        stream = self._streams.get(stream_id)
        return 0 if stream is None else len(stream.sender._buffer)

    def receive_finished(self, stream_id: int) -> bool | None:
        """Whether the peer finished (or reset) its side; None if the stream is gone."""
        stream = self._streams.get(stream_id)
        return None if stream is None else bool(stream.receiver.is_finished)

    def sent_fin(self, stream_id: int) -> bool | None:
        """Whether we queued FIN on the stream; None if the stream is gone."""
        stream = self._streams.get(stream_id)
        return None if stream is None else stream.sender._buffer_fin is not None

    def stream_state_count(self) -> int:
        """Streams the engine still holds state for."""
        return len(self._streams)

    def smoothed_rtt(self) -> float | None:
        rtt = self._loss._rtt_smoothed
        return float(rtt) if rtt else None

    def peer_certificate_der(self) -> bytes | None:
        cert = self.tls._peer_certificate
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return cert.public_bytes(Encoding.DER)

    def active_path(self) -> object | None:
        """The path in use (compared by identity to notice a move), None before any."""
        paths = self._network_paths
        return paths[0] if paths else None

    def reset_probe_backoff(self) -> None:
        """Forget the probe-timeout backoff earned on an old path (see
        `QuicFlowProtocol._path_changed`)."""
        self._loss._pto_count = 0

    def ack_with_data(self, now: float) -> None:
        """Make a pending ACK due now, so the data about to be sent carries it.

        aioquic writes an ACK frame only once its delay (1 ms) has passed, so a
        reply sent sooner goes without it and a separate ACK-only datagram follows,
        which the peer must process too: at one call at a time that was half a
        datagram more per call each way.
        """
        space = self._spaces.get(tls.Epoch.ONE_RTT)
        if space is not None and space.ack_at is not None and space.ack_at > now:
            space.ack_at = now

    def credit_due(self, stream_id: int, step: int = 0) -> bool:
        """True if consumption on this stream warrants sending MAX_STREAM_DATA now (the
        limit would rise by ``step`` bytes; 0: half a window)."""
        stream = self._streams.get(stream_id)
        if stream is None or not stream.max_stream_data_local:
            return False
        target = self.flow_target(stream)
        return target is not None and target - stream.max_stream_data_local_sent >= (
            step or self.flow_window >> 1
        )

    def flow_target(self, stream: QuicStream) -> int | None:
        """The receive limit this stream deserves now (None: not ours to manage)."""
        stream_id = stream.stream_id
        handler = self.flow_handlers.get(stream_id) if stream_id is not None else None
        if handler is None:
            return None
        withheld = self.flow_withheld
        if withheld:
            return (
                stream.receiver._buffer_start
                - handler.unread_bytes
                - withheld.get(stream_id, 0)  # type: ignore[arg-type]  # not None: handled
                + self.flow_window
            )
        return stream.receiver._buffer_start - handler.unread_bytes + self.flow_window

    # -- overrides of aioquic's packet writing --

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        initial = self._cryptos.get(tls.Epoch.INITIAL)
        if initial is None:
            # Not keyed yet: a client before connect() (aioquic would raise KeyError
            # here, or IndexError for the missing path). Nothing can be sent.
            return []
        full = self._max_datagram_size
        if full <= HANDSHAKE_DATAGRAM_SIZE or not initial.send.is_valid():
            return super().datagrams_to_send(now)
        # A datagram with an Initial packet is padded to the full datagram size, and a
        # 1-RTT packet in it carries that padding inside (encrypted, then scanned by the
        # peer): with 16 KiB loopback datagrams that was ~15 KB of AEAD and a per-byte
        # loop at the peer per handshake flight. Handshake flights use 1,200 bytes.
        self._max_datagram_size = HANDSHAKE_DATAGRAM_SIZE
        try:
            return super().datagrams_to_send(now)
        finally:
            self._max_datagram_size = full

    def _write_stream_frame(
        self, builder: Any, space: Any, stream: QuicStream, max_offset: int
    ) -> int:
        # aioquic writes one STREAM frame per stream and packet, its length in a 2-byte
        # varint (at most 16,383 bytes): in a larger packet the length overflowed and the
        # peer failed to parse it. Here a packet takes as many frames of at most that
        # size as fit, so datagrams above 16 KiB (loopback's 64 KiB) carry stream data.
        if self._quic_logger is not None:
            return int(super()._write_stream_frame(builder, space, stream, max_offset))
        sender = stream.sender
        stream_id = stream.stream_id
        assert stream_id is not None  # a stream with data to send has its id
        start = sender.highest_offset
        id_size = _varint_size(stream_id)
        while True:
            offset = sender.next_offset
            overhead = 3 + id_size + (_varint_size(offset) if offset else 0)
            room = min(builder.remaining_flight_space - overhead, MAX_FRAME_DATA)
            if room < MIN_FRAME_DATA:
                break
            frame = sender.get_frame(room, max_offset)
            if frame is None:
                break
            frame_type = _STREAM_WITH_LENGTH
            if frame.offset:
                frame_type |= 4
            if frame.fin:
                frame_type |= 1
            end = frame.offset + len(frame.data)
            buf = builder.start_frame(
                frame_type,
                capacity=overhead,
                handler=sender.on_data_delivery,
                handler_args=(frame.offset, end, frame.fin),
            )
            buf.push_uint_var(stream_id)
            if frame.offset:
                buf.push_uint_var(frame.offset)
            buf.push_uint16(len(frame.data) | 0x4000)
            buf.push_bytes(frame.data)
            if frame.fin or len(frame.data) < room:
                break  # the stream has no more to send now (or may not send more)
        return int(sender.highest_offset - start)

    def _handle_padding_frame(self, context: Any, frame_type: int, buf: Buffer) -> None:
        # aioquic walks the padding byte by byte in Python; lstrip does it in C.
        if self._quic_logger is not None:
            super()._handle_padding_frame(context, frame_type, buf)
            return
        pos = buf.tell()
        rest = buf.data_slice(pos, buf.capacity)
        buf.seek(pos + len(rest) - len(rest.lstrip(b"\x00")))

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        pacer = self._loss._pacer
        if not isinstance(pacer, BytePacer):
            super()._write_application(builder, network_path, now)
            return

        def packet_size() -> int:
            # The packet being built, with its AEAD tag still to come (16 bytes).
            return int(builder._buffer.tell() - builder._packet_start + 16)

        pacer.packet_size = packet_size
        try:
            super()._write_application(builder, network_path, now)
        finally:
            pacer.packet_size = None

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        # aioquic calls this for every stream on every packet: keep the common
        # cases (peer done sending, nothing to raise) to a few attribute reads.
        receiver = stream.receiver
        if receiver.is_finished:
            return  # nothing more will arrive: no credit to give
        stream_id = stream.stream_id
        handler = self.flow_handlers.get(stream_id) if stream_id is not None else None
        if handler is None:
            super()._write_stream_limits(builder, space, stream)
            return
        local = stream.max_stream_data_local
        target = receiver._buffer_start - handler.unread_bytes + self.flow_window
        if self.flow_withheld:
            target -= self.flow_withheld.get(stream_id, 0)  # type: ignore[arg-type]
        if target - local >= self.flow_step:
            stream.max_stream_data_local = local = target
        if stream.max_stream_data_local_sent != local:
            buf = builder.start_frame(
                QuicFrameType.MAX_STREAM_DATA,
                capacity=MAX_STREAM_DATA_FRAME_CAPACITY,
                handler=self._on_max_stream_data_delivery,
                handler_args=(stream,),
            )
            buf.push_uint_var(stream.stream_id)
            buf.push_uint_var(local)
            stream.max_stream_data_local_sent = local


class _AlertCertificateRequired(tls.Alert):
    description = tls.AlertDescription.certificate_required  # RFC 8446 §4.4.2.4


def _verify_client_certificates(
    conn: AioquicFlowConnection, verifier: ClientCertificateVerifier
) -> None:
    """Make a server connection's TLS context ask for a client certificate and verify it.

    aioquic sends CertificateRequest only under a private flag and checks only
    the CertificateVerify signature (proof of the key), never the chain. We
    wrap its two handlers: an empty Certificate fails with certificate_required
    when one is required, and after the signature check the chain is verified;
    failures raise TLS alerts, which aioquic turns into CONNECTION_CLOSE
    (CRYPTO_ERROR 0x100 + alert) with our reason phrase.
    """
    context = conn.tls
    context._request_client_certificate = True
    on_certificate = context._server_handle_certificate
    on_verify = context._server_handle_certificate_verify

    def handle_certificate(input_buf: Buffer) -> None:
        on_certificate(input_buf)
        if context._peer_certificate is None and verifier.required:
            raise _AlertCertificateRequired("client certificate required")

    def handle_certificate_verify(input_buf: Buffer) -> None:
        on_verify(input_buf)  # the client proved it holds the certificate's key
        leaf = context._peer_certificate
        assert leaf is not None
        try:
            verified = verifier.verify(leaf, context._peer_certificate_chain)
        except CertificateRejected as exc:
            logger.info("client certificate refused: %s", exc.reason)
            if exc.expired:
                raise tls.AlertCertificateExpired(exc.reason) from None
            raise tls.AlertBadCertificate(exc.reason) from None
        except Exception as exc:  # never let a verifier bug escape into aioquic
            logger.exception("client certificate verification failed")
            raise tls.AlertBadCertificate(f"client certificate not verified: {exc}") from None
        conn.client_certificate = verified

    context._server_handle_certificate = handle_certificate  # type: ignore[method-assign]
    context._server_handle_certificate_verify = handle_certificate_verify  # type: ignore[method-assign]
