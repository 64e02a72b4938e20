"""The qh3 QUIC engine: qh3's connection (Rust core) under QuicFlow's protocol.

qh3 (PyPI ``qh3``) is an aioquic fork whose packet handling, crypto and
recovery run in Rust. Only its sans-IO `QuicConnection` is used: the asyncio
side (`QuicFlowProtocol`, `QuicFlowServer`, timers, stream handlers) is the
same code as with aioquic. What differs, and lives here:

- events: qh3's event objects are turned into aioquic's (same fields) as they
  leave the connection, so the protocol's dispatch is engine-blind;
- stream bookkeeping: the stream credit left (`free_bidi_slots`), bytes a
  stream has queued (`send_buffered`) and whether the peer finished a stream
  come from qh3's public API instead of aioquic's stream objects;
- receive flow control: qh3 grants stream credit itself as data is handed to
  the application (it has no hook for our consumption-based grant), so a slow
  reader is bounded by qh3's windows, not by ``stream_receive_window``;
- the anti-amplification allowance of a server: aioquic pads its Initial
  datagrams with zeros after the packet, which qh3 2.1 does not count; the
  padding is handed to qh3 with the packet before it (`_receive_padded`);
- TLS: the configuration is rebuilt for qh3 from the aioquic one that
  `quicflow.transport.tls` made (same certificates, CA, verify mode). A qh3
  client presents its certificate (``cert_file``) when a server asks; a qh3
  server cannot ask (qh3 2.1's TLS server has no CertificateRequest), so
  ``client_cert_mode`` needs the aioquic engine on the server.

The private names of qh3 this module relies on are listed in `PRIVATE_USES` and
checked against the installed qh3 by tests/transport/test_qh3_internals.py.

Known qh3 behaviours: its server allows 100 concurrent streams per
connection (calls beyond wait for credit like any other), and it rejects a
self-signed certificate used directly as the server's (use a CA, as
``quicflow certs`` does).
"""

from __future__ import annotations

from typing import Any

from aioquic.quic import events as aio_events
from aioquic.quic.configuration import QuicConfiguration as AioConfiguration
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
)
from qh3 import tls as qh3_tls  # type: ignore[import-untyped,unused-ignore]
from qh3._hazmat import Buffer as Qh3Buffer  # type: ignore[import-untyped,unused-ignore]
from qh3._hazmat import (  # type: ignore[import-untyped,unused-ignore]
    QuicConnectionCore as Qh3Core,
)
from qh3._hazmat import (  # type: ignore[import-untyped,unused-ignore]
    pull_quic_header as qh3_pull_quic_header,
)
from qh3.quic import events as qh3_events  # type: ignore[import-untyped,unused-ignore]
from qh3.quic.configuration import (  # type: ignore[import-untyped,unused-ignore]
    QuicConfiguration as Qh3Configuration,
)
from qh3.quic.connection import (  # type: ignore[import-untyped,unused-ignore]
    QuicConnection as Qh3Connection,
)
from qh3.quic.packet import (  # type: ignore[import-untyped,unused-ignore]
    pull_quic_transport_parameters as qh3_pull_parameters,
)
from qh3.quic.packet import (  # type: ignore[import-untyped,unused-ignore]
    push_quic_transport_parameters as qh3_push_parameters,
)

from ..errors import ConfigError
from .engine_aioquic import ACTIVE_CONNECTION_ID_LIMIT, PrivateUse
from .tickets import SealedTickets, seal_tickets

__all__ = ["PRIVATE_USES", "Qh3FlowConnection", "qh3_configuration", "shared_qh3_configuration"]

PRIVATE_USES: tuple[PrivateUse, ...] = (
    # Checked like engine_aioquic.PRIVATE_USES, by tests/transport/test_qh3_internals.py.
    PrivateUse(
        Qh3Connection,
        "_call_core",
        ("self", "operation", "args"),
        "wrapped for one datagram: hand the padding to the last packet (_receive_padded)",
    ),
    PrivateUse(Qh3Connection, "_open_stream", ("self", "is_unidirectional"), "reserve a stream id"),
    PrivateUse(
        Qh3Connection,
        "_create_tls",
        ("self", "remote_source_cid"),
        "overridden: a client announces its max_datagram_size, not qh3's fixed 1,472",
    ),
    PrivateUse(Qh3Connection, "_core", None, "the Rust core: stream limits, RTT"),
    PrivateUse(Qh3Connection, "_is_client", None, "only a server receives padded Initials"),
    PrivateUse(Qh3Connection, "_handshake_complete", None, "padding matters before it"),
    PrivateUse(Qh3Connection, "_configuration", None, "the connection id length"),
    PrivateUse(Qh3Connection, "_close_event", None, "the close, before the draining ends"),
    PrivateUse(
        Qh3Connection,
        "_tls",
        None,
        "the TLS bridge: a server's is replaced by a SpentTls once the handshake is over",
    ),
    PrivateUse(
        Qh3Connection,
        "_drain_tls",
        ("self",),
        "overridden: a server sheds its TLS state once the handshake has completed",
    ),
    PrivateUse(
        Qh3Connection,
        "_applied_transport_parameters",
        None,
        "what SpentTls answers as the peer's transport parameters (no change to apply)",
    ),
    PrivateUse(Qh3Core, "stream_limits", None, "(peer bidi limit, _, bidi opened, _)"),
    PrivateUse(Qh3Core, "smoothed_rtt", None, "the smoothed RTT"),
    PrivateUse(
        qh3_tls.Context,
        "_new_session_ticket",
        None,
        "the NewSessionTicket just written: written again with a sealed label (tickets.py)",
    ),
)


def _announce_datagram_size(context: Any, size: int) -> None:
    """Make a qh3 client's transport parameters announce ``size`` as the largest UDP payload
    it takes: qh3 always announces 1,472, so a qh3 server never sent it more, however large
    the datagrams both ends were configured for (65,000 on loopback)."""
    if size <= 1472:
        return
    extensions = []
    for kind, data in context.handshake_extensions:
        if kind == qh3_tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS:
            parameters = qh3_pull_parameters(Qh3Buffer(data=data))
            parameters.max_udp_payload_size = size
            buf = Qh3Buffer(capacity=len(data) + 16)
            qh3_push_parameters(buf, parameters)
            data = buf.data
        extensions.append((kind, data))
    context.handshake_extensions = extensions


def _convert(event: Any) -> Any:
    cls = type(event)
    if cls is qh3_events.StreamDataReceived:
        return aio_events.StreamDataReceived(
            data=event.data, end_stream=event.end_stream, stream_id=event.stream_id
        )
    if cls is qh3_events.StreamReset:
        return aio_events.StreamReset(error_code=event.error_code, stream_id=event.stream_id)
    if cls is qh3_events.StopSendingReceived:
        return aio_events.StopSendingReceived(
            error_code=event.error_code, stream_id=event.stream_id
        )
    if cls is qh3_events.ConnectionTerminated:
        return aio_events.ConnectionTerminated(
            error_code=event.error_code,
            frame_type=event.frame_type,
            reason_phrase=event.reason_phrase,
        )
    if cls is qh3_events.HandshakeCompleted:
        return aio_events.HandshakeCompleted(
            alpn_protocol=event.alpn_protocol,
            early_data_accepted=event.early_data_accepted,
            session_resumed=event.session_resumed,
        )
    if cls is qh3_events.ConnectionIdIssued:
        return aio_events.ConnectionIdIssued(connection_id=event.connection_id)
    if cls is qh3_events.ConnectionIdRetired:
        return aio_events.ConnectionIdRetired(connection_id=event.connection_id)
    if cls is qh3_events.PingAcknowledged:
        return aio_events.PingAcknowledged(uid=event.uid)
    return None  # an event QuicFlow has no use for (datagram frames, ...)


class SpentTls:
    """What a qh3 server connection keeps of its TLS bridge once the handshake is over.

    qh3 keeps the bridge, the TLS context and their buffers for the connection's life,
    ~10 KiB per connection (7 KiB native, 3 KiB of Python objects; docs/scale.md "Memory
    per session"), though a server's TLS has nothing left to do: every secret is
    installed, every handshake message (the NewSessionTicket included) is handed to the
    core, which retransmits them itself, and TLS 1.3 over QUIC has no post-handshake
    messages from a client. The connection still reads what the handshake settled
    (cipher suite, peer certificates, version): this keeps those, answers "nothing more"
    to the rest, and ignores CRYPTO data that comes late (a client's retransmitted
    Finished)."""

    __slots__ = (
        "cipher_suite",
        "ech_accepted",
        "ech_retry_configs",
        "peer_certificate",
        "peer_certificate_chain",
        "remote_transport_parameters",
        "tls",
        "version",
    )

    handshake_complete = True

    def __init__(self, bridge: Any, applied_parameters: Any) -> None:
        self.version = bridge.version
        self.cipher_suite = bridge.cipher_suite
        self.peer_certificate = bridge.peer_certificate
        self.peer_certificate_chain = list(bridge.peer_certificate_chain)
        self.ech_accepted = bridge.ech_accepted
        self.ech_retry_configs = bridge.ech_retry_configs
        # The same object the connection applied, so it sees nothing new to apply.
        self.remote_transport_parameters = applied_parameters
        self.tls = _SpentContext(bool(bridge.tls.early_data_accepted))

    def receive_crypto(self, *args: Any, **kwargs: Any) -> None:
        """Late handshake data: the handshake is over, nothing to do."""

    def next_traffic_secret(self) -> None:
        return None

    def next_crypto_data(self) -> None:
        return None

    def next_event(self) -> None:
        return None


class _SpentContext:
    """The one thing read of the TLS context after the handshake."""

    __slots__ = ("early_data_accepted",)

    def __init__(self, early_data_accepted: bool) -> None:
        self.early_data_accepted = early_data_accepted


def _take_apart(bridge: Any) -> None:
    """Clear a TLS bridge and its context: they hold bound methods of the connection
    and of each other, so only the cyclic collector would free them otherwise."""
    context = getattr(bridge, "__dict__", {}).get("tls")
    if context is not None and hasattr(context, "__dict__"):
        context.__dict__.clear()
    if hasattr(bridge, "__dict__"):
        bridge.__dict__.clear()


class Qh3FlowConnection(Qh3Connection):
    """A qh3 connection that speaks the subset of aioquic's interface the transport uses."""

    engine = "qh3"

    def __init__(
        self,
        *args: Any,
        window: int,
        sealed_tickets: SealedTickets | None = None,
        **kwargs: Any,
    ) -> None:
        self.sealed_tickets = sealed_tickets
        """A server's stateless tickets (`quicflow.transport.tickets`), None: in memory."""
        super().__init__(*args, **kwargs)
        self.flow_handlers: dict[int, Any] = {}
        self.flow_withheld: dict[int, int] = {}  # kept, unused: qh3 credits by itself
        self.flow_window = window
        self.client_certificate = None  # a qh3 server cannot ask for one
        self._peer_address: Any = None
        self._path: object | None = None

    def _create_tls(self, remote_source_cid: bytes | None) -> Any:
        bridge = super()._create_tls(remote_source_cid)
        if self._is_client:
            _announce_datagram_size(bridge.tls, self._configuration.max_datagram_size)
        elif self.sealed_tickets is not None:
            context = bridge.tls
            seal_tickets(context, self.sealed_tickets, qh3_tls, lambda: context._new_session_ticket)
        return bridge

    def _drain_tls(self) -> None:
        super()._drain_tls()
        bridge = self._tls
        if self._handshake_complete and not self._is_client and not isinstance(bridge, SpentTls):
            # A server's TLS has nothing left to do (SpentTls): keep what it settled.
            self._tls = SpentTls(bridge, self._applied_transport_parameters)  # type: ignore[assignment]  # duck-typed
            _take_apart(bridge)

    def next_event(self) -> Any:
        while True:
            event = super().next_event()
            if event is None:
                return None
            converted = _convert(event)
            if converted is not None:
                return converted

    # -- the end (engine.EndedEngine) --

    def release(self) -> None:
        """Drop every attribute (the connection has ended and is used no more): the TLS
        bridge and its context hold bound methods of the connection and of each other,
        so without this only the cyclic collector would free them."""
        state = self.__dict__
        bridge = self._tls if "_tls" in state else None
        if bridge is not None:
            _take_apart(bridge)
        state.clear()

    # -- what QuicFlowProtocol asks of an engine (engine.EngineConnection) --

    def close_event(self) -> aio_events.ConnectionTerminated | None:
        """The connection's end once decided, before qh3 reports it after draining."""
        event = self._close_event
        return None if event is None else _convert(event)

    def reserve_stream(self) -> int:
        """Allocate the next bidirectional stream id now."""
        return int(self._open_stream())

    def free_bidi_slots(self) -> int:
        """Bidirectional streams we may still open under the peer's limit."""
        core = self._core
        if core is None:
            return 0
        limits = core.stream_limits  # (peer's bidi limit, ..., bidi opened, uni opened)
        return int(limits[0]) - int(limits[2])

    def send_buffered(self, stream_id: int) -> int:
        """Bytes queued on the stream and not yet sent."""
        try:
            return int(self.get_send_buffer_size(stream_id))
        except Exception:
            return 0

    def receive_finished(self, stream_id: int) -> bool | None:
        """qh3 does not expose it: None (the caller then just tries)."""
        return None

    def ack_with_data(self, now: float) -> None:
        """No-op: qh3 decides itself when an ACK rides along."""

    def credit_due(self, stream_id: int, step: int = 0) -> bool:
        """qh3 grants receive credit by itself: never."""
        return False

    def sent_fin(self, stream_id: int) -> bool | None:
        return None

    def stream_state_count(self) -> int:
        return int(self.open_outbound_streams) + len(self.flow_handlers)

    def smoothed_rtt(self) -> float | None:
        core = self._core
        rtt = core.smoothed_rtt if core is not None else None
        return float(rtt) if rtt else None

    def get_peer_address(self) -> Any:
        return self._peer_address

    def connect(self, addr: Any, now: float) -> None:
        self._peer_address = addr
        super().connect(addr, now=now)

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        if addr != self._peer_address:
            self._path = object()  # a new token whenever the peer's address changes
        self._peer_address = addr
        if not self._is_client and not self._handshake_complete:
            padding = _padding_start(data, self._configuration.connection_id_length)
            if padding is not None:
                self._receive_padded(data, padding, addr, now)
                return
        super().receive_datagram(data, addr, now=now)

    def _receive_padded(self, data: bytes, padding: int, addr: Any, now: float) -> None:
        """Receive a datagram whose last packet is followed by zero padding, crediting
        the padding to the packet before it.

        aioquic pads a datagram that carries an Initial packet with zero bytes *after*
        the packet (RFC 9000 §14.1 allows it). qh3 2.1 hands its core each packet on
        its own and drops the zeros, so the anti-amplification allowance (3x the
        bytes received, RFC 9000 §8.1) counts 517 bytes instead of 1,200: the first
        server datagram (padded to 1,200) leaves too little for the Handshake packet,
        and qh3's packet builder raises "packet builder capacity exhausted". Handing
        the core the last packet with its padding (which it skips as padding) counts
        the whole datagram, as a datagram that pads with PADDING frames is counted
        (qh3 then offers the zeros alone too, and drops them as before).
        """
        offset = 0
        call_core = self._call_core

        def extend_last_packet(operation: Any, *args: Any) -> Any:
            nonlocal offset
            if getattr(operation, "__name__", "") == "receive_datagram":
                chunk = args[0]
                start, offset = offset, offset + len(chunk)
                if offset == padding:  # the last packet: give it the padding too
                    args = (data[start:], *args[1:])
            return call_core(operation, *args)

        self._call_core = extend_last_packet  # type: ignore[method-assign]  # this datagram only
        try:
            super().receive_datagram(data, addr, now=now)
        finally:
            del self._call_core

    def active_path(self) -> object | None:
        """A token that changes when the peer's address does (qh3 keeps its paths inside)."""
        return self._path

    def reset_probe_backoff(self) -> None:
        """qh3's recovery is its own: nothing to reset from here."""

    def peer_reset_token(self) -> bytes | None:
        """qh3's core keeps the peer's reset tokens (and detects resets) itself."""
        return None

    def peer_certificate_der(self) -> bytes | None:
        cert = self.get_peercert()
        if cert is None:
            return None
        return bytes(cert.public_bytes())


def _padding_start(data: bytes, cid_length: int) -> int | None:
    """Where zero bytes after the last QUIC packet of ``data`` begin, or None (no padding)."""
    offset = 0
    while offset < len(data):
        if not data[offset]:
            return offset if not any(data[offset:]) else None
        try:
            end = int(qh3_pull_quic_header(data, offset, cid_length)[9])
        except ValueError:
            return None
        if end <= offset:
            return None
        offset = end
    return None


def shared_qh3_configuration(source: AioConfiguration) -> Any:
    """`qh3_configuration` of ``source``, converted once and kept on it (a server's
    connections all share one configuration)."""
    converted = getattr(source, "_quicflow_qh3", None)
    if converted is None:
        converted = qh3_configuration(source)
        source._quicflow_qh3 = converted  # type: ignore[attr-defined]
    return converted


def qh3_configuration(source: AioConfiguration) -> Any:
    """The qh3 configuration equivalent to an aioquic one from `quicflow.transport.tls`.

    Raises:
        ConfigError: naming ``quic_engine`` for a server that asks for client certificates.
    """
    if getattr(source, "client_verifier", None) is not None:
        # qh3 2.1's TLS server never sends CertificateRequest and has no state for a
        # client's Certificate/CertificateVerify (ClientHello -> Finished only). A qh3
        # *client* does answer a CertificateRequest: cert_file works on a client.
        raise ConfigError(
            "quic_engine",
            "a qh3 server cannot ask for client certificates (client_cert_mode): "
            "use quic_engine='aioquic' on the server",
        )
    config = Qh3Configuration(is_client=source.is_client, server_name=source.server_name)
    config.alpn_protocols = list(source.alpn_protocols or [])
    config.idle_timeout = source.idle_timeout
    config.max_datagram_size = source.max_datagram_size
    # No path MTU probing: max_datagram_size is decided by QuicFlow ("auto"), and qh3's
    # probes overflow its packet builder towards a peer (aioquic) that announces no
    # max_udp_payload_size.
    config.probe_datagram_size = False
    # One spare connection ID per peer, as on aioquic (ACTIVE_CONNECTION_ID_LIMIT).
    config.active_connection_id_limit = ACTIVE_CONNECTION_ID_LIMIT
    config.max_stream_data = source.max_stream_data
    config.max_data = source.max_data
    config.verify_mode = source.verify_mode
    config.load_verify_locations(cafile=source.cafile, capath=source.capath, cadata=source.cadata)
    if source.certificate is not None and source.private_key is not None:
        pem = source.certificate.public_bytes(Encoding.PEM) + b"".join(
            cert.public_bytes(Encoding.PEM) for cert in source.certificate_chain
        )
        key = source.private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
        config.load_cert_chain(pem, key)
    return config
