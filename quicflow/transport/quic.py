"""aioquic adapter: one QUIC connection, its streams, and a multi-connection server.

Every ``cast`` and every touch of aioquic's private state lives in this file
(STYLE.md "Typing"). See the package docstring for the theory of operation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import socket
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

from aioquic import tls
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import (
    MAX_STREAM_DATA_FRAME_CAPACITY,
    NetworkAddress,
    QuicConnection,
)
from aioquic.quic.packet import (
    QuicErrorCode,
    QuicFrameType,
    QuicPacketType,
    encode_quic_retry,
    pull_quic_header,
)
from aioquic.quic.recovery import QuicPacketPacer
from aioquic.quic.retry import QuicRetryTokenHandler
from aioquic.quic.stream import QuicStream

from ..errors import ConfigError, ConnectionClosed
from ..protocol.budget import ByteBudget
from ..protocol.heartbeat import QuietWatch
from ..wire.codec import ErrorCode
from .inflow import FrameWatch
from .tls import CertificateRejected, ClientCertificateVerifier, VerifiedClientCertificate

__all__ = [
    "QuicFlowProtocol",
    "QuicFlowServer",
    "StreamHandler",
    "TransportSettings",
    "connect",
    "serve",
]

logger = logging.getLogger("quicflow.transport")

ALPN = "quicflow/1"
"""The ALPN token of wire protocol v1 (docs/wire-protocol.md §2)."""

_SMALLEST_INITIAL = 1200  # RFC 9000 §14.1: a client Initial is padded to at least this

FLUSH_STREAMS = 2
"""A write that ends a stream is sent at once (not at the next loop turn) while the
connection has at most this many live streams: the control stream and one call.
Nothing else is likely to share its datagram, and the loop turn is latency."""

LOOPBACK_DATAGRAM_SIZE = 16384
"""Datagram size ``max_datagram_size=0`` ("auto") picks for a loopback peer: the
largest aioquic handshakes with (loopback's MTU is 64 KiB); 13x fewer packets
for bulk data than 1200."""
PATH_DATAGRAM_SIZE = 1200
"""Datagram size "auto" picks for any other peer: the path MTU is unknown and
1200 is what every QUIC path must carry (RFC 9000 §14)."""


def datagram_size_for(host: object, configured: int) -> int:
    """The datagram size to use towards ``host``: ``configured``, or when it is 0
    ("auto") `LOOPBACK_DATAGRAM_SIZE` for a loopback address and
    `PATH_DATAGRAM_SIZE` otherwise."""
    if configured:
        return configured
    text = str(host)
    if text.startswith("::ffff:"):
        text = text[7:]
    try:
        loopback = ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_DATAGRAM_SIZE if loopback else PATH_DATAGRAM_SIZE


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """QUIC knobs shared by client and server (copied from their configs)."""

    idle_timeout: float = 60.0
    """Seconds of silence after which QUIC itself drops the connection."""
    max_datagram_size: int = 0
    """Largest UDP payload we send; 0: auto per peer (`datagram_size_for`)."""
    congestion_control: str = "cubic"
    """aioquic's algorithm name: "reno" or "cubic"."""
    stream_receive_window: int = 1 << 20
    """Bytes a peer may send on one stream beyond what our runtime has consumed."""
    connection_receive_window: int = 4 << 20
    """Initial connection-level receive window (aioquic raises it as it is used)."""
    send_buffer_limit: int = 1 << 20
    """Unacknowledged bytes per stream above which `QuicFlowProtocol.drain` waits."""
    connection_send_limit: int = 32 << 20
    """Unacknowledged bytes over all streams above which `drain_connection` waits."""
    quic_engine: str = "auto"
    """"aioquic", "qh3", or "auto" (`resolve_engine`)."""
    connection_receive_limit: int = 16 << 20
    """Bytes of unfinished frames larger than half the stream window that one connection
    may hold at once (each reserves its whole size; `quicflow.protocol.budget`)."""
    receive_limit: int = 256 << 20
    """The same over all connections of a server."""
    frame_timeout: float = 30.0
    """Seconds a frame may stay unfinished (from its first byte, or from its reservation)."""

    def apply(self, config: QuicConfiguration) -> None:
        """Copy these settings into an aioquic configuration."""
        config.alpn_protocols = [ALPN]
        config.idle_timeout = self.idle_timeout
        config.max_datagram_size = self.max_datagram_size or PATH_DATAGRAM_SIZE
        config.congestion_control_algorithm = self.congestion_control
        config.max_stream_data = self.stream_receive_window
        config.max_data = self.connection_receive_window


class StreamHandler(Protocol):
    """What the runtime registers for one stream (a call)."""

    unread_bytes: int
    """Bytes received but not yet consumed by the application (for credit)."""

    def data_received(self, data: bytes, end_stream: bool) -> None:
        """Bytes (possibly empty) arrived in order; ``end_stream``: the peer sent FIN."""
        ...

    def stream_reset(self, error_code: int) -> None:
        """The peer reset its sending side (RESET_STREAM)."""
        ...

    def stop_sending(self, error_code: int) -> None:
        """The peer asked us to stop sending (STOP_SENDING); our side is reset."""
        ...

    def connection_lost(self, exc: ConnectionClosed) -> None:
        """The connection ended; the call must fail with ``exc``."""
        ...


class _FlowConnection(QuicConnection):
    """A QuicConnection whose per-stream receive window follows consumption.

    aioquic doubles a stream's window whenever the peer has sent past half of
    it, however little the application has read (no backpressure). For
    streams with a registered handler we instead grant
    ``delivered - unread + window``: a peer can never get more than ``window``
    bytes ahead of the reader.
    """

    def __init__(self, *args: Any, window: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flow_handlers: dict[int, StreamHandler] = {}
        self.flow_withheld: dict[int, int] = {}
        """Bytes of an unfinished frame per stream that count as unread (`FrameWatch`)."""
        self.flow_window = window
        self.flow_step = window >> 2  # raise in steps of a quarter window, not per byte
        self.client_certificate: VerifiedClientCertificate | None = None

    def _initialize(self, peer_cid: bytes) -> None:
        super()._initialize(peer_cid)
        verifier = getattr(self._configuration, "client_verifier", None)
        if verifier is not None:
            _verify_client_certificates(self, verifier)

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


def _verify_client_certificates(conn: _FlowConnection, verifier: ClientCertificateVerifier) -> None:
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


class QuicFlowProtocol(QuicConnectionProtocol):
    """One QUIC connection carrying QuicFlow streams.

    The runtime opens streams with `open_stream`, writes with `write`, and
    receives through the `StreamHandler` it registered. Peer-opened streams are
    offered to ``on_new_stream``, which returns a handler or None to refuse.
    Methods that only queue output schedule one transmit for the end of the
    current loop iteration, so many streams' frames share datagrams.
    """

    def __init__(
        self,
        quic: QuicConnection,
        *,
        settings: TransportSettings,
    ) -> None:
        super().__init__(quic)
        self.settings = settings
        self._fq = cast(_FlowConnection, quic)
        self._handlers: dict[int, StreamHandler] = self._fq.flow_handlers
        self._drain_waiters: dict[int, asyncio.Future[None]] = {}
        # Connection-wide send budget: an upper bound of the bytes queued on all streams
        # (raised by each write, made exact by a scan only when it passes the limit) and
        # the streams that may still hold some.
        self._unsent_bound = 0
        self._sending: set[int] = set()
        self._scan_at = 64  # prune _sending when it grows past this (amortised O(1))
        self._budget_waiter: asyncio.Future[None] | None = None
        self._idle_waiters: list[asyncio.Future[None]] = []
        self._credit_waiters: deque[asyncio.Future[None]] = deque()
        self._peer_next_bidi = 1 if quic.configuration.is_client else 0
        self._peer_unseen: set[int] = set()
        self._receiving = False
        self._wrote = False  # stream data queued since the last transmit
        self._delivered = False  # the datagram being handled gave a handler data
        self.owns_transport = quic.configuration.is_client
        """A client connection has its own UDP socket, closed when the connection ends."""
        self.on_new_stream: Callable[[int], StreamHandler | None] | None = None
        self.on_new_uni_stream: Callable[[int], StreamHandler | None] | None = None
        """Offered the peer's unidirectional streams (message lanes); None refuses them."""
        self._lanes: set[int] = set()  # long-lived uni streams: not calls, never "idle"
        self.message_lane: Any = None
        """This side's sending message lane (`quicflow.lane.SendLane`), once negotiated."""
        self.on_connection_lost: list[Callable[[ConnectionClosed], None]] = []
        self.on_peer_reset: Callable[[], None] | None = None
        """Called when the peer resets a stream it opened before we finished our side (a
        cancelled call: the server counts these against its rapid-reset budget)."""
        self.closed_error: ConnectionClosed | None = None
        self.close_code: int | None = None
        """The CONNECTION_CLOSE error code once the connection ended."""
        self.close_reason = ""
        self.cids: set[bytes] = set()
        """Connection ids routed to us by `QuicFlowServer` (so removal is O(own ids))."""
        self.last_heard = self.last_data = self._loop.time()
        """Loop time of the last datagram received from the peer (``last_data``: the last
        one that carried stream data to a handler)."""
        self._wait_began = 0.0  # when the nudge was last armed from idle
        self._quiet: QuietWatch | None = None  # the client's nudge (see watch_quiet)
        self._waiting: Callable[[], bool] | None = None
        self._quiet_timer: asyncio.TimerHandle | None = None
        self.on_nudge: Callable[[], None] | None = None
        """Called after each nudge (the client counts them in its metrics)."""
        self.receive_budget = ByteBudget(settings.connection_receive_limit)
        """Bytes of large unfinished frames this connection may hold (`watch_frames`); a
        server makes its own budget the parent."""
        self._watches: dict[int, FrameWatch] = {}

    # -- introspection --

    @property
    def is_closed(self) -> bool:
        """True once the connection has terminated."""
        return self.closed_error is not None

    @property
    def stream_count(self) -> int:
        """Streams with a live handler (calls in flight; message lanes not counted)."""
        return len(self._handlers) - len(self._lanes)

    @property
    def quic_stream_count(self) -> int:
        """Streams aioquic still holds state for (freed once both sides finish)."""
        return self._fq.stream_state_count()

    @property
    def peer_address(self) -> tuple[str, int] | None:
        """The peer's current (host, port)."""
        addr = self._quic.get_peer_address()
        if addr is None:
            return None
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return host, int(addr[1])

    @property
    def rtt(self) -> float | None:
        """QUIC's smoothed round-trip time in seconds, once measured."""
        return self._fq.smoothed_rtt()

    @property
    def client_certificate(self) -> VerifiedClientCertificate | None:
        """On the server: the client certificate verified during the handshake (mutual TLS)."""
        return self._fq.client_certificate

    def peer_certificate_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), if it presented one."""
        return self._fq.peer_certificate_der()

    # -- streams --

    def open_stream(self, handler: StreamHandler) -> int:
        """Allocate a new bidirectional stream for a call and register its handler.

        No bytes move until the first `write`. Beyond the peer's stream credit
        the stream simply waits in aioquic until MAX_STREAMS arrives.
        """
        if self.closed_error is not None:
            raise self.closed_error
        stream_id = self._fq.reserve_stream()
        self._handlers[stream_id] = handler
        if self._quiet is not None and self._quiet_timer is None:
            self.expect_answer()
        return stream_id

    def open_uni_stream(self, handler: StreamHandler) -> int:
        """Allocate a unidirectional stream for the connection's life (a message lane).

        ``handler`` hears of the peer's STOP_SENDING and of the connection's end;
        the stream does not count as a call (`stream_count`, `wait_idle`).
        """
        if self.closed_error is not None:
            raise self.closed_error
        stream_id = self._quic.get_next_available_stream_id(is_unidirectional=True)
        self._handlers[stream_id] = handler
        self._lanes.add(stream_id)
        return stream_id

    def can_open_stream(self) -> bool:
        """True if the peer's stream credit allows one more bidirectional stream now."""
        return self._fq.free_bidi_slots() > 0

    async def wait_stream_credit(self) -> None:
        """Wait until `can_open_stream` may have become true (MAX_STREAMS arrived), or the
        connection ended (then raises `ConnectionClosed`)."""
        if self.closed_error is not None:
            raise self.closed_error
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._credit_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Gave up (deadline, cancel): leave no dead waiter behind; pass on a slot
            # that may already have been handed to us.
            if waiter in self._credit_waiters:
                self._credit_waiters.remove(waiter)
            elif self._credit_waiters and self.can_open_stream():
                self._wake_credit()
            raise

    def _wake_credit(self) -> None:
        # Wake only as many waiters as there are free slots, oldest first: waking all
        # of them for a handful of slots is quadratic with thousands waiting.
        slots = self._fq.free_bidi_slots()
        waiters = self._credit_waiters
        while slots > 0 and waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                slots -= 1

    def write(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        """Queue bytes on a stream; False if that side is already closed or reset."""
        try:
            self._quic.send_stream_data(stream_id, data, end_stream)
        except (RuntimeError, ValueError, AssertionError):
            return False
        self._unsent_bound += len(data)
        self._wrote = True
        sending = self._sending
        sending.add(stream_id)
        if len(sending) > self._scan_at:
            self._scan_sending()
        if end_stream and not self._receiving and self._few_streams():
            pending = self._transmit_task
            if pending is not None:
                pending.cancel()
            self.transmit()
        else:
            self._transmit_soon()
        return True

    # -- the client's nudge --

    def watch_quiet(self, after: float, longest: float, waiting: Callable[[], bool]) -> None:
        """Send a QUIC PING whenever ``waiting()`` holds and the peer has been silent
        for ``after`` seconds, backing off to ``longest`` while no data comes
        (`QuietWatch`); the client turns this on.

        Only the client can heal a NAT rebinding: the server learns the new address
        from the client's next datagram, and sends into the old one until then. A
        client that only waits for a reply would stay silent until its next
        heartbeat. Checks run only while something is awaited: `open_stream` and
        `expect_answer` start them, and the silence counts from then at the earliest.
        """
        self._quiet = QuietWatch(after, longest)
        self._waiting = waiting
        self.expect_answer()

    def _quiet_since(self) -> float:
        return max(self.last_heard, self._wait_began)

    def expect_answer(self) -> None:
        """Something now awaits the peer (a call, a ping sent): make sure the nudge is
        armed."""
        quiet = self._quiet
        if quiet is None or self._quiet_timer is not None or self.closed_error is not None:
            return
        self._wait_began = self._loop.time()
        when = quiet.next_check(self._quiet_since(), self.last_data)
        self._quiet_timer = self._loop.call_at(when, self._nudge)

    def _nudge(self) -> None:
        self._quiet_timer = None
        quiet, waiting = self._quiet, self._waiting
        if quiet is None or waiting is None or self.closed_error is not None:
            return
        if not waiting():
            return  # idle now; the next call or ping re-arms
        if quiet.poll(self._loop.time(), self._quiet_since(), self.last_data, True):
            self._quic.send_ping(0)
            self.transmit()
            if self.on_nudge is not None:
                self.on_nudge()
        when = quiet.next_check(self._quiet_since(), self.last_data)
        self._quiet_timer = self._loop.call_at(when, self._nudge)

    def _few_streams(self) -> bool:
        """At most `FLUSH_STREAMS` live streams besides message lanes (the control
        stream and one call): nothing else is likely to share a datagram."""
        return len(self._handlers) - len(self._lanes) <= FLUSH_STREAMS

    def _scan_sending(self) -> int:
        """Bytes queued on all streams now; forgets streams that hold none."""
        total = 0
        send_buffered = self._fq.send_buffered
        for sid in list(self._sending):
            queued = send_buffered(sid)
            if queued:
                total += queued
            else:
                self._sending.discard(sid)
        self._unsent_bound = total
        self._scan_at = max(64, 2 * len(self._sending))
        return total

    def send_budget_exceeded(self) -> bool:
        """Whether the bytes queued towards the peer on all streams pass
        ``connection_send_limit`` (cheap while well under it: no scan)."""
        limit = self.settings.connection_send_limit
        return self._unsent_bound > limit and self._scan_sending() > limit

    async def drain_connection(self) -> None:
        """Wait until the bytes queued on all streams are under ``connection_send_limit``.

        Bounds what a peer that never reads can make this side hold: a sender
        calls it before writing a whole reply. Raises `ConnectionClosed` if the
        connection ends meanwhile.
        """
        while self.send_budget_exceeded():
            if self.closed_error is not None:
                raise self.closed_error
            waiter = self._budget_waiter
            if waiter is None or waiter.done():
                waiter = self._budget_waiter = self._loop.create_future()
            await waiter

    def reset(self, stream_id: int, error_code: int, *, stop: bool = True) -> None:
        """Abort a stream: RESET_STREAM our side and, with ``stop``, STOP_SENDING the peer's.

        Idempotent. Also forgets the stream's handler.
        """
        self.release(stream_id)
        quic = self._quic
        with contextlib.suppress(RuntimeError, ValueError, AssertionError):
            quic.reset_stream(stream_id, error_code)
        if stop and self._fq.receive_finished(stream_id) is not True:
            with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                quic.stop_stream(stream_id, error_code)
        self._wake_drain(stream_id)
        self._transmit_soon()

    def stop_reading(self, stream_id: int, error_code: int = ErrorCode.NO_ERROR) -> None:
        """Tell the peer we will read no more from this stream (STOP_SENDING)."""
        if self._fq.receive_finished(stream_id) is not True:
            with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                self._quic.stop_stream(stream_id, error_code)
            self._transmit_soon()

    def watch_frames(self, stream_id: int, on_timeout: Callable[[], None]) -> FrameWatch:
        """The `FrameWatch` of an incoming stream whose frames arrive in pieces: frames
        over half the stream window reserve their size from `receive_budget` before they
        get credit beyond it, and ``on_timeout`` runs when one stays unfinished for
        ``frame_timeout``. Closed by `release` (and when the connection ends)."""
        watch = self._watches.get(stream_id)
        if watch is None:
            settings = self.settings
            watch = self._watches[stream_id] = FrameWatch(
                self._loop,
                self.receive_budget,
                threshold=settings.stream_receive_window >> 1,
                timeout=settings.frame_timeout,
                on_timeout=on_timeout,
                withhold=lambda n: self._withhold(stream_id, n),
            )
        return watch

    def _withhold(self, stream_id: int, count: int) -> None:
        withheld = self._fq.flow_withheld
        if count:
            withheld[stream_id] = count
        elif (
            withheld.pop(stream_id, None) is not None
            and not self._receiving
            and self._fq.credit_due(stream_id, self.settings.stream_receive_window >> 2)
        ):
            # A reservation came through (another stream's frame ended): the credit the
            # frame was waiting for goes out now, not with the next unrelated packet.
            self._transmit_soon()

    def release(self, stream_id: int) -> None:
        """Forget a stream's handler once its call is over (frees our per-stream state)."""
        self._handlers.pop(stream_id, None)
        if self._watches:
            watch = self._watches.pop(stream_id, None)
            if watch is not None:
                watch.close()
        self._drain_waiters.pop(stream_id, None)
        self._lanes.discard(stream_id)
        if self._idle_waiters and len(self._handlers) <= len(self._lanes):
            self._wake_idle()

    async def wait_idle(self) -> None:
        """Wait until no stream has a live handler (every call has ended)."""
        if len(self._handlers) > len(self._lanes) and self.closed_error is None:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._idle_waiters.append(waiter)
            await waiter

    def _wake_idle(self) -> None:
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    def credit_released(self, stream_id: int) -> None:
        """The runtime consumed data on this stream: send MAX_STREAM_DATA if worthwhile."""
        if self._fq.credit_due(stream_id):
            self._transmit_soon()

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written on a stream that the peer has not acknowledged yet."""
        return self._fq.send_buffered(stream_id)

    async def drain(self, stream_id: int) -> None:
        """Wait until the stream's unacknowledged bytes are under ``send_buffer_limit``.

        Returns at once when already under. Raises `ConnectionClosed` if the
        connection ends meanwhile; returns if the stream is reset.
        """
        limit = self.settings.send_buffer_limit
        while self.send_buffered(stream_id) > limit:
            if self.closed_error is not None:
                raise self.closed_error
            if stream_id not in self._handlers:
                return
            waiter = self._drain_waiters.get(stream_id)
            if waiter is None:
                waiter = self._drain_waiters[stream_id] = self._loop.create_future()
            await waiter

    def _wake_drain(self, stream_id: int) -> None:
        waiter = self._drain_waiters.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _check_drains(self) -> None:
        limit = self.settings.send_buffer_limit
        for stream_id in [s for s in self._drain_waiters if self.send_buffered(s) <= limit]:
            self._wake_drain(stream_id)

    # -- aioquic plumbing --

    def datagram_received(self, data: bytes | str, addr: NetworkAddress) -> None:
        # aioquic transmits right after processing a datagram, so writes made by
        # stream handlers meanwhile need no transmit of their own.
        quic = self._quic
        active = self._fq.active_path()
        self._receiving = True
        self._delivered = False
        self.last_heard = now = self._loop.time()
        try:
            quic.receive_datagram(cast(bytes, data), addr, now=now)
            self._process_events()
        finally:
            self._receiving = False
        if self._delivered:
            self.last_data = now
        if active is not None and self._fq.active_path() is not active:
            self._path_changed()
        if self._wrote or not self._delivered or not self._few_streams():
            # With many calls in flight, datagrams arrive back to back and each
            # deferred transmit would add a loop turn to every ACK and credit update:
            # on qh3 that doubled CPU per call at c=128 (9,555 vs 16,987 calls/s).
            self.transmit()
        elif self._transmit_task is None:
            # Data reached a handler that wrote nothing back yet: its answer (the next
            # request, the reply of a task) comes at the next loop turn, and one
            # transmit then carries it with whatever ACK is due now.
            self._transmit_task = self._loop.call_soon(self.transmit)
        close_event = self._quic._close_event
        if close_event is not None and self.closed_error is None:
            # The peer closed: aioquic reports it only after its draining period
            # (3 PTO), but every call on this connection is over now.
            self._terminated(close_event)
        if self._drain_waiters:
            self._check_drains()
        budget = self._budget_waiter
        if budget is not None and not self.send_budget_exceeded():
            self._budget_waiter = None
            if not budget.done():
                budget.set_result(None)
        if self._credit_waiters and self.can_open_stream():
            self._wake_credit()

    def _path_changed(self) -> None:
        # The peer moved (a NAT rebinding) or we fell back to an older path. aioquic
        # keeps the probe-timeout backoff earned on the old path: after seconds of
        # sending into an address that is gone it is seconds long, so anything lost
        # on the new path (the path challenge, the first answers) waited for that
        # backed-off probe, 10 s and more. A new path starts with a fresh backoff.
        self._fq.reset_probe_backoff()

    def transmit(self) -> None:
        """Send what aioquic has queued; data written since the last transmit carries
        any pending ACK (`_FlowConnection.ack_with_data`)."""
        if self._wrote:
            self._wrote = False
            self._fq.ack_with_data(self._loop.time())
        super().transmit()

    def _transmit_soon(self) -> None:
        if not self._receiving and self._transmit_task is None:
            self._transmit_task = self._loop.call_soon(self.transmit)

    def close(self, error_code: int = ErrorCode.NO_ERROR, reason_phrase: str = "") -> None:
        """Close the connection (CONNECTION_CLOSE with an application error code)."""
        self._close_now(error_code=error_code, reason_phrase=reason_phrase)

    def refuse(self, reason: str) -> None:
        """Refuse a connection still in its handshake: CONNECTION_CLOSE with QUIC's own
        CONNECTION_REFUSED (0x02). A transport error, unlike our application codes, keeps
        its reason phrase in Initial packets (RFC 9000 §10.2.3), so the client sees why."""
        self._close_now(
            error_code=QuicErrorCode.CONNECTION_REFUSED,
            frame_type=QuicFrameType.PADDING,
            reason_phrase=reason,
        )

    def _close_now(self, **close: Any) -> None:
        """Send CONNECTION_CLOSE (``close``: `QuicConnection.close`'s arguments) and end
        the calls still open now, not after the draining period."""
        if self._transport is None or self._transport.is_closing():
            return
        self._quic.close(**close)
        self.transmit()
        close_event = self._quic._close_event
        if close_event is not None and self.closed_error is None:
            self._terminated(close_event)

    def abort(self, reason: str) -> None:
        """Give up on the connection now: fail every stream with UNAVAILABLE at once.

        For a peer we believe dead (no heartbeat answer): we still queue a
        CONNECTION_CLOSE, but do not wait for the peer's acknowledgement.
        """
        if self.closed_error is not None:
            return
        with contextlib.suppress(Exception):
            self._quic.close(error_code=ErrorCode.NO_ERROR, reason_phrase=reason)
            self.transmit()
        self._terminated(
            events.ConnectionTerminated(
                error_code=ErrorCode.NO_ERROR, frame_type=None, reason_phrase=reason
            )
        )
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._closed.set()

    async def aclose(self, error_code: int = ErrorCode.NO_ERROR, reason: str = "") -> None:
        """Close, wait (up to 1 s) for the close to complete, and release the socket if
        this connection owns it."""
        if self.closed_error is None:
            self.close(error_code, reason)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.wait_closed()
        if self.owns_transport and self._transport is not None:
            self._transport.close()

    def quic_event_received(self, event: events.QuicEvent) -> None:
        try:
            self._dispatch_event(event)
        except Exception:
            # A bug in one stream's handler must not take the connection (or the other
            # events of this datagram) with it: end that stream, log, go on.
            sid = getattr(event, "stream_id", None)
            logger.exception("stream handler failed on %s", type(event).__name__)
            if sid is not None:
                self.reset(sid, ErrorCode.INTERNAL_ERROR)

    def _dispatch_event(self, event: events.QuicEvent) -> None:
        handlers = self._handlers
        if type(event) is events.StreamDataReceived:
            sid = event.stream_id
            handler = handlers.get(sid)
            if handler is None:
                handler = self._accept_stream(sid)
                if handler is None:
                    return
            handler.data_received(event.data, event.end_stream)
            self._delivered = True
        elif type(event) is events.StreamReset:
            handler = handlers.get(event.stream_id)
            if (
                self.on_peer_reset is not None
                and self.closed_error is None
                and (event.stream_id & 3) == (self._peer_next_bidi & 3)  # a peer-opened call
                and (handler is not None or self._fq.sent_fin(event.stream_id) is False)
            ):
                # A call still open on our side (or one we never saw): a premature reset.
                self.on_peer_reset()
                if self.closed_error is not None:
                    return  # that was one too many: the connection is closed
                handler = handlers.get(event.stream_id)
            if handler is not None:
                handler.stream_reset(event.error_code)
            else:
                # A stream reset before we saw any of it (or after we let it go): if we
                # never finished our side, reset it as well so aioquic can free it. A
                # side that sent FIN stays as it is (its trailers may still be in flight).
                self._accept_stream(event.stream_id, offer=False)
                if self._fq.sent_fin(event.stream_id) is False:
                    with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                        self._quic.reset_stream(event.stream_id, event.error_code)
        elif type(event) is events.StopSendingReceived:
            self._wake_drain(event.stream_id)
            handler = handlers.get(event.stream_id)
            if handler is not None:
                handler.stop_sending(event.error_code)
        elif type(event) is events.ConnectionTerminated:
            self._terminated(event)

    def _accept_stream(self, stream_id: int, *, offer: bool = True) -> StreamHandler | None:
        # Only bidirectional streams the peer opened, and only new ones: data
        # arriving late on a stream we already released is dropped.
        is_peer_bidi = (stream_id & 3) == (1 if self._quic.configuration.is_client else 0)
        if not is_peer_bidi:
            if (stream_id & 2) and stream_id not in self._handlers:
                # A peer's unidirectional stream: a message lane if the runtime takes it
                # (wire-protocol.md §11.1), else refused.
                is_peer_uni = (stream_id & 1) == (1 if self._quic.configuration.is_client else 0)
                offer_uni = self.on_new_uni_stream
                if offer and is_peer_uni and offer_uni is not None:
                    uni_handler = offer_uni(stream_id)
                    if uni_handler is not None:
                        self._handlers[stream_id] = uni_handler
                        self._lanes.add(stream_id)
                        return uni_handler
                with contextlib.suppress(RuntimeError, ValueError, AssertionError):
                    self._quic.stop_stream(stream_id, ErrorCode.REFUSED)
            return None
        # QUIC opens every lower-numbered stream implicitly, and packets reorder: a
        # stream below the highest seen is new if we have not seen it yet.
        if stream_id < self._peer_next_bidi:
            if stream_id not in self._peer_unseen:
                return None
            self._peer_unseen.discard(stream_id)
        else:
            self._peer_unseen.update(range(self._peer_next_bidi, stream_id, 4))
            self._peer_next_bidi = stream_id + 4
        if not offer:
            return None
        handler = self.on_new_stream(stream_id) if self.on_new_stream is not None else None
        if handler is None:
            self.reset(stream_id, ErrorCode.REFUSED)
            return None
        self._handlers[stream_id] = handler
        if self._quiet is not None and self._quiet_timer is None:
            self.expect_answer()  # a push: the rest of its request may be stuck on a path
        return handler

    def _terminated(self, event: events.ConnectionTerminated) -> None:
        if self.closed_error is not None:
            return
        reason = event.reason_phrase or f"error code 0x{event.error_code:x}"
        self.close_code = event.error_code
        self.close_reason = reason
        self.closed_error = ConnectionClosed(message=f"connection closed: {reason}")
        if self.owns_transport and self._transport is not None:
            # Let the CONNECTION_CLOSE we may have queued leave first.
            self._loop.call_soon(self._transport.close)
        handlers = list(self._handlers.values())
        self._handlers.clear()
        self._lanes.clear()
        watches = list(self._watches.values())
        self._watches.clear()
        for watch in watches:
            watch.close()  # give the server's budget back
        if self._quiet_timer is not None:
            self._quiet_timer.cancel()
            self._quiet_timer = None
        self._wake_idle()
        for waiter in self._drain_waiters.values():
            if not waiter.done():
                waiter.set_exception(self.closed_error)
        self._drain_waiters.clear()
        budget, self._budget_waiter = self._budget_waiter, None
        if budget is not None and not budget.done():
            budget.set_exception(self.closed_error)
        self._sending.clear()
        for waiter in self._credit_waiters:
            if not waiter.done():
                waiter.set_exception(self.closed_error)
        self._credit_waiters.clear()
        for handler in handlers:
            try:
                handler.connection_lost(self.closed_error)
            except Exception:  # one broken handler must not stop the others
                logger.exception("stream handler failed on connection loss")
        for callback in self.on_connection_lost:
            try:
                callback(self.closed_error)
            except Exception:
                logger.exception("connection-lost callback failed")


ENGINES = ("aioquic", "qh3")
"""QUIC engines `TransportSettings.quic_engine` may name (besides "auto")."""

ENGINE_ENV = "QUICFLOW_QUIC_ENGINE"
"""Environment variable "auto" follows (e.g. to run a test suite on qh3)."""


def resolve_engine(name: str) -> str:
    """The engine ``name`` means: "auto" is ``$QUICFLOW_QUIC_ENGINE`` if set, else aioquic.

    qh3 is never chosen just because it is installed: it has no hook for
    consumption-based receive credit and no client certificates on a server (see engine_qh3).

    Raises:
        ConfigError: naming ``quic_engine`` for an unknown engine or qh3 not installed.
    """
    if name == "auto":
        name = os.environ.get(ENGINE_ENV, "").strip().lower() or "aioquic"
    if name not in ENGINES:
        raise ConfigError("quic_engine", f"must be one of 'auto', 'aioquic', 'qh3', got {name!r}")
    if name == "qh3":
        try:
            import qh3  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "quic_engine", "qh3 is not installed (pip install 'quicflow[qh3]')"
            ) from None
    return name


class _BytePacer(QuicPacketPacer):
    """aioquic's pacer, charging each packet for its size instead of a full datagram.

    aioquic takes ``max_datagram_size / rate`` from the token bucket for every
    packet, however small. With 16 KiB datagrams a 1.5 KB packet of small calls
    costs as much as 16 KiB of data, so small-message traffic is paced to
    ``cwnd / (16 KiB x srtt)`` datagrams per second: 13x fewer than with 1,200 B at
    the same window (cwnd grows by bytes acknowledged, alike for both), and under
    128 concurrent calls srtt includes the peer's queueing, so this bound is what
    the sender hits. Here a packet costs ``size / rate``; a full datagram costs
    what it did, so bulk pacing is unchanged. The connection shows the pacer its
    packet builder (`_FlowConnection._write_application`) to read the size from.

    With ``resolution`` (a loop whose clock moves in steps, uvloop: 1 ms) the
    bucket holds at least two clock steps of sending and a wake-up is at least one
    step away: aioquic's asks for microseconds, which such a clock cannot honour,
    so it spun and sent one small bucket per step (1 MiB streaming fell from 13
    to 1.9 MiB/s).
    """

    def __init__(self, *, max_datagram_size: int, resolution: float = 0.0) -> None:
        super().__init__(max_datagram_size=max_datagram_size)
        self.resolution = resolution
        self.builder: Any = None
        """The packet builder of the transmit in progress, None between transmits."""

    def update_rate(self, congestion_window: int, smoothed_rtt: float) -> None:
        super().update_rate(congestion_window=congestion_window, smoothed_rtt=smoothed_rtt)
        floor = 2 * self.resolution
        if self.bucket_max < floor:
            self.bucket_max = floor

    def next_send_time(self, now: float) -> float:
        at: float | None = super().next_send_time(now=now)
        if at is None or not self.resolution:
            return at  # type: ignore[return-value]  # aioquic's annotation omits None
        return max(at, now + self.resolution)

    def update_after_send(self, now: float) -> None:
        cost = self.packet_time
        if cost is None:
            return
        self.update_bucket(now=now)
        builder = self.builder
        if builder is not None:
            # The packet being built (its AEAD tag still to come, 16 bytes).
            size = builder._buffer.tell() - builder._packet_start + 16
            if size < self._max_datagram_size:
                cost *= size / self._max_datagram_size
        self.bucket_time = max(0.0, self.bucket_time - cost)


def clock_resolution(loop: asyncio.AbstractEventLoop) -> float:
    """How coarsely ``loop.time()`` moves: 1 ms for uvloop (libuv's clock), else 0."""
    return 0.001 if type(loop).__module__.partition(".")[0] == "uvloop" else 0.0


def _make_connection(
    configuration: QuicConfiguration, settings: TransportSettings, **kwargs: Any
) -> QuicConnection:
    window = settings.stream_receive_window
    if resolve_engine(settings.quic_engine) == "qh3":
        from .engine_qh3 import Qh3FlowConnection, qh3_configuration

        # Converted once per aioquic configuration (a server shares one by all).
        converted = getattr(configuration, "_quicflow_qh3", None)
        if converted is None:
            converted = qh3_configuration(configuration)
            configuration._quicflow_qh3 = converted  # type: ignore[attr-defined]
        return cast(
            QuicConnection,
            Qh3FlowConnection(configuration=converted, window=window, **kwargs),
        )
    connection = _FlowConnection(configuration=configuration, window=window, **kwargs)
    connection._loss._pacer = _BytePacer(
        max_datagram_size=configuration.max_datagram_size,
        resolution=clock_resolution(asyncio.get_running_loop()),
    )
    return connection


async def connect(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    *,
    connect_timeout: float,
) -> QuicFlowProtocol:
    """Open a QUIC connection and finish the TLS 1.3 handshake.

    Raises:
        ConnectionClosed: the handshake failed (its reason is in the message) or
            did not finish within ``connect_timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    settings.apply(configuration)
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConnectionClosed(message=f"cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    size = datagram_size_for(addr[0], settings.max_datagram_size)
    if size != configuration.max_datagram_size:
        configuration = dataclasses.replace(configuration, max_datagram_size=size)
    connection = _make_connection(configuration, settings)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        _grow_buffers(sock)
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        transport, proto = await loop.create_datagram_endpoint(
            lambda: QuicFlowProtocol(connection, settings=settings), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    protocol = proto
    try:
        protocol.connect(cast(NetworkAddress, addr))
        async with asyncio.timeout(connect_timeout):
            await protocol.wait_connected()
    except TimeoutError:
        transport.close()
        raise ConnectionClosed(
            message=f"could not connect to {host}:{port} within {connect_timeout} s"
        ) from None
    except ConnectionError as exc:
        transport.close()
        why = protocol.closed_error.message if protocol.closed_error else "handshake failed"
        raise ConnectionClosed(message=f"could not connect to {host}:{port}: {why}") from exc
    except BaseException:
        transport.close()
        raise
    return protocol


_SOCKET_BUFFER = 4 << 20


def _grow_buffers(sock: socket.socket) -> None:
    """Ask for 4 MiB socket buffers: the usual 208 KiB default drops datagrams in the
    bursts a fast sender makes on loopback (the kernel may grant less; that is fine)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)


class QuicFlowServer(asyncio.DatagramProtocol):
    """The UDP endpoint that demultiplexes datagrams to many connections.

    Each new connection is a `QuicFlowProtocol`; ``on_connection`` sees it
    before its first stream arrives. With ``retry``, a client's first Initial
    is answered with a stateless Retry carrying an address-bound token, and
    only an Initial that returns a valid token creates a connection (RFC 9000
    §8.1.2): a flood from spoofed addresses costs one datagram each, no state.
    """

    def __init__(
        self,
        configuration: QuicConfiguration,
        settings: TransportSettings,
        on_connection: Callable[[QuicFlowProtocol], None],
        *,
        retry: bool = False,
    ) -> None:
        self._retry = QuicRetryTokenHandler() if retry else None
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
        self.connections: set[QuicFlowProtocol] = set()

    @property
    def port(self) -> int:
        """The bound UDP port."""
        assert self._transport is not None
        return int(self._transport.get_extra_info("sockname")[1])

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: NetworkAddress) -> None:
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
                return  # not a connection attempt we take (no version negotiation in v1)
            original_cid = header.destination_cid
            retry_cid: bytes | None = None
            if self._retry is not None:
                if not header.token:
                    self._send_retry(header.version, header.source_cid, original_cid, addr)
                    return
                try:
                    original_cid = self._retry.validate_token(
                        address=addr,
                        destination_cid=header.destination_cid,
                        token=header.token,
                        now=asyncio.get_running_loop().time(),
                    )
                except ValueError:
                    return  # forged, expired or from another address: no state for it
                retry_cid = header.destination_cid
            protocol = self._accept(header.destination_cid, addr, original_cid, retry_cid)
            protocol.datagram_received(data, addr)
            # Only now does the connection know its peer's address, so only now may
            # the runtime look at it (and, say, close it at once).
            self._on_connection(protocol)
            return
        protocol.datagram_received(data, addr)

    def _send_retry(
        self, version: int, client_cid: bytes, original_cid: bytes, addr: NetworkAddress
    ) -> None:
        assert self._retry is not None and self._transport is not None
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
        connection = _make_connection(
            configuration,
            self._settings,
            original_destination_connection_id=original_cid,
            retry_source_connection_id=retry_cid,
        )
        protocol = QuicFlowProtocol(connection, settings=self._settings)
        protocol.receive_budget.parent = self.receive_budget
        protocol.connection_made(cast(asyncio.BaseTransport, self._transport))
        protocol._connection_id_issued_handler = lambda cid: self._add_cid(protocol, cid)
        protocol._connection_id_retired_handler = lambda cid: self._remove_cid(protocol, cid)
        protocol._connection_terminated_handler = lambda: self._forget(protocol)
        self._add_cid(protocol, first_cid)
        self._add_cid(protocol, connection.host_cid)
        self.connections.add(protocol)
        return protocol

    def _loopback_configuration(self, size: int) -> QuicConfiguration:
        # One copy per size, shared by every connection that uses it.
        cached = self._sized.get(size)
        if cached is None:
            cached = self._sized[size] = dataclasses.replace(
                self._configuration, max_datagram_size=size
            )
        return cached

    def _add_cid(self, protocol: QuicFlowProtocol, cid: bytes) -> None:
        self._protocols[cid] = protocol
        protocol.cids.add(cid)

    def _remove_cid(self, protocol: QuicFlowProtocol, cid: bytes) -> None:
        protocol.cids.discard(cid)
        if self._protocols.get(cid) is protocol:
            del self._protocols[cid]

    def _forget(self, protocol: QuicFlowProtocol) -> None:
        for cid in protocol.cids:
            if self._protocols.get(cid) is protocol:
                del self._protocols[cid]
        protocol.cids.clear()
        self.connections.discard(protocol)

    def close(self) -> None:
        """Stop listening; connections still open are closed abruptly."""
        for protocol in list(self.connections):
            protocol.close(ErrorCode.NO_ERROR, "server closed")
        if self._transport is not None:
            self._transport.close()


async def serve(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    on_connection: Callable[[QuicFlowProtocol], None],
    *,
    retry: bool = False,
) -> QuicFlowServer:
    """Bind a UDP socket and accept QUIC connections on it (``retry``: validate client
    addresses with a QUIC Retry first; see `QuicFlowServer`)."""
    loop = asyncio.get_running_loop()
    settings.apply(configuration)
    if resolve_engine(settings.quic_engine) == "qh3":
        from .engine_qh3 import qh3_configuration

        qh3_configuration(configuration)  # refuse what qh3 cannot do now, not per connection
    _, proto = await loop.create_datagram_endpoint(
        lambda: QuicFlowServer(configuration, settings, on_connection, retry=retry),
        local_addr=(host, port),
        reuse_port=None,
    )
    if proto._transport is not None:
        sock = proto._transport.get_extra_info("socket")
        if sock is not None:
            _grow_buffers(sock)
    return proto
