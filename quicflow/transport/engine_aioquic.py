"""The aioquic QUIC engine: aioquic's `QuicConnection` with consumption-based
receive credit, client-certificate checks, and the answers the protocol asks of
an engine (`engine_qh3.Qh3FlowConnection` gives the same answers for qh3)."""

from __future__ import annotations

import logging
from typing import Any, cast

from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.connection import MAX_STREAM_DATA_FRAME_CAPACITY, QuicConnection
from aioquic.quic.packet import QuicFrameType
from aioquic.quic.stream import QuicStream

from .streams import StreamHandler
from .tls import CertificateRejected, ClientCertificateVerifier, VerifiedClientCertificate

__all__ = ["AioquicFlowConnection"]

logger = logging.getLogger("quicflow.transport")

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


class _FrameHandlers:
    """aioquic's frame-handler table, shared by every connection of a class and bound to
    this one on lookup.

    aioquic builds the table in each connection's ``__init__``: 33 bound methods, tuples
    and frozensets, about 7 KiB per connection (a handshake that never completes
    included). Lookups (``table[frame_type]``, KeyError when unknown) are all it is
    used for.
    """

    __slots__ = ("_connection", "_table")

    def __init__(self, connection: QuicConnection, table: dict[int, Any]) -> None:
        self._connection = connection
        self._table = table

    def __getitem__(self, frame_type: int) -> tuple[Any, frozenset[tls.Epoch]]:
        function, epochs = self._table[frame_type]
        return function.__get__(self._connection), epochs

    def __contains__(self, frame_type: object) -> bool:
        return frame_type in self._table


class AioquicFlowConnection(QuicConnection):
    """A QuicConnection whose per-stream receive window follows consumption.

    aioquic doubles a stream's window whenever the peer has sent past half of
    it, however little the application has read (no backpressure). For
    streams with a registered handler we instead grant
    ``delivered - unread + window``: a peer can never get more than ``window``
    bytes ahead of the reader.
    """

    def __init__(self, *args: Any, window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._share_frame_handlers()
        self.flow_handlers: dict[int, StreamHandler] = {}
        self.flow_withheld: dict[int, int] = {}
        """Bytes of an unfinished frame per stream that count as unread (`FrameWatch`)."""
        self.flow_window = window
        self.flow_step = window >> 2  # raise in steps of a quarter window, not per byte
        self.client_certificate: VerifiedClientCertificate | None = None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        self._crypto_buffers[tls.Epoch.ONE_RTT] = Buffer(capacity=_ONE_RTT_CRYPTO)
        verifier = getattr(self._configuration, "client_verifier", None)
        if verifier is not None:
            _verify_client_certificates(self, verifier)

    # -- memory per connection (docs/limits.md "Handshake flood") --

    def _share_frame_handlers(self) -> None:
        attribute = "_QuicConnection__frame_handlers"
        own = getattr(self, attribute, None)
        if not isinstance(own, dict):
            return  # another aioquic: leave it as it is
        table = _frame_tables.get(type(self))
        if table is None:
            table = _frame_tables[type(self)] = {
                frame_type: (handler.__func__, epochs)
                for frame_type, (handler, epochs) in own.items()
            }
        setattr(self, attribute, _FrameHandlers(self, table))

    def _push_crypto_data(self) -> None:
        super()._push_crypto_data()
        # Give back the 16 KiB buffers of the epochs TLS has finished writing: a server
        # waiting for the client's second flight (a handshake flood) keeps 4 KiB, not 48.
        state = self.tls.state
        buffers = self._crypto_buffers
        if state in _SERVER_PAST_HELLO:
            buffers[tls.Epoch.INITIAL] = buffers[tls.Epoch.HANDSHAKE] = _NO_CRYPTO
        elif state in _DONE:
            for epoch in (tls.Epoch.INITIAL, tls.Epoch.HANDSHAKE, tls.Epoch.ONE_RTT):
                buffers[epoch] = _NO_CRYPTO
        elif self._is_client and state not in _CLIENT_BEFORE_SERVER_HELLO:
            buffers[tls.Epoch.INITIAL] = _NO_CRYPTO

    engine = "aioquic"

    # -- what QuicFlowProtocol asks of an engine (engine_qh3.Qh3FlowConnection has the same) --

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
        rtt = getattr(self._loss, "_rtt_smoothed", 0.0)
        return float(rtt) if rtt else None

    def peer_certificate_der(self) -> bytes | None:
        cert = getattr(self.tls, "_peer_certificate", None)
        if cert is None:
            return None
        from cryptography.hazmat.primitives.serialization import Encoding

        return cast(bytes, cert.public_bytes(Encoding.DER))

    def active_path(self) -> object | None:
        """The path in use (compared by identity to notice a move), None before any."""
        paths = self._network_paths
        return paths[0] if paths else None

    def reset_probe_backoff(self) -> None:
        """Forget the probe-timeout backoff earned on an old path (see _path_changed)."""
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
        handler = self.flow_handlers.get(cast(int, stream.stream_id))
        if handler is None:
            return None
        withheld = self.flow_withheld
        if withheld:
            return (
                stream.receiver._buffer_start
                - handler.unread_bytes
                - withheld.get(cast(int, stream.stream_id), 0)
                + self.flow_window
            )
        return stream.receiver._buffer_start - handler.unread_bytes + self.flow_window

    def _write_application(self, builder: Any, network_path: Any, now: float) -> None:
        pacer = self._loss._pacer
        pacer.builder = builder  # type: ignore[attr-defined]  # _BytePacer sizes packets
        try:
            super()._write_application(builder, network_path, now)
        finally:
            pacer.builder = None  # type: ignore[attr-defined]

    def _write_stream_limits(self, builder: Any, space: Any, stream: QuicStream) -> None:
        # aioquic calls this for every stream on every packet: keep the common
        # cases (peer done sending, nothing to raise) to a few attribute reads.
        receiver = stream.receiver
        if receiver.is_finished:
            return  # nothing more will arrive: no credit to give
        handler = self.flow_handlers.get(stream.stream_id)  # type: ignore[arg-type]
        if handler is None:
            super()._write_stream_limits(builder, space, stream)
            return
        local = stream.max_stream_data_local
        target = receiver._buffer_start - handler.unread_bytes + self.flow_window
        if self.flow_withheld:
            target -= self.flow_withheld.get(stream.stream_id, 0)  # type: ignore[arg-type]
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
