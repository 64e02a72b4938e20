"""A raw, hostile QuicFlow peer for tests: aioquic directly, none of QuicFlow's runtime.

`HostilePeer` does the TLS 1.3 handshake with ALPN ``quicflow/1`` and then
does only what the test tells it: HELLO on stream 0 (or not), arbitrary bytes
on new streams, resets, streams left idle, ping floods. It records what the
server sends back per stream (bytes, FIN, RESET_STREAM, STOP_SENDING) and how
the connection ended, so a test can assert the exact status or close code.

It deliberately shares no code with `quicflow.client`: it is the peer a
broken or malicious implementation would be.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from quicflow.wire import FrameDecoder, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

ALPN = "quicflow/1"


@dataclass
class StreamLog:
    """What the server did on one stream."""

    data: bytearray = field(default_factory=bytearray)
    fin: bool = False
    reset_code: int | None = None
    stop_code: int | None = None

    @property
    def ended(self) -> bool:
        """The server finished its side (FIN) or reset it."""
        return self.fin or self.reset_code is not None

    def frames(self) -> list[tuple[FrameType, bytes]]:
        """The frames the server sent on this stream."""
        decoder = FrameDecoder(1 << 30, 1 << 30)
        return [(f.type, f.payload) for f in decoder.feed(bytes(self.data))]

    def trailers(self) -> pb.CallTrailers | None:
        """The server's TRAILERS, if it sent them."""
        for ftype, payload in self.frames():
            if ftype is FrameType.TRAILERS:
                return pb.CallTrailers.FromString(payload)
        return None


class _StingyConnection(QuicConnection):
    """A connection that never raises any receive limit: a peer that never reads."""

    def _write_connection_limits(self, builder: Any, space: Any) -> None:
        return

    def _write_stream_limits(self, builder: Any, space: Any, stream: Any) -> None:
        return


class _Recorder(QuicConnectionProtocol):
    def __init__(self, quic: QuicConnection, **kwargs: Any) -> None:
        super().__init__(quic, **kwargs)
        self.streams: dict[int, StreamLog] = {}
        self.close_code: int | None = None
        self.close_reason = ""
        self._changed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def log(self, stream_id: int) -> StreamLog:
        found = self.streams.get(stream_id)
        if found is None:
            found = self.streams[stream_id] = StreamLog()
        return found

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            log = self.log(event.stream_id)
            log.data += event.data
            log.fin = log.fin or event.end_stream
        elif isinstance(event, events.StreamReset):
            self.log(event.stream_id).reset_code = event.error_code
        elif isinstance(event, events.StopSendingReceived):
            self.log(event.stream_id).stop_code = event.error_code
        elif isinstance(event, events.ConnectionTerminated) and self.close_code is None:
            self.close_code = event.error_code
            self.close_reason = event.reason_phrase
        self._wake()

    def datagram_received(self, data: bytes | str, addr: Any) -> None:
        super().datagram_received(data, addr)
        self._wake()  # frames such as MAX_STREAMS make no event, but may be awaited

    def _handle_timer(self) -> None:
        super()._handle_timer()
        self._wake()

    def _wake(self) -> None:
        if not self._changed.done():
            self._changed.set_result(None)

    async def changed(self) -> None:
        if self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await self._changed


class HostilePeer:
    """One raw QUIC connection to a QuicFlow server.

    Example::

        async with HostilePeer("127.0.0.1", port, ca_file) as peer:
            await peer.hello("evil")
            sid = peer.send_new(b"\\xff" * 10)
            log = await peer.wait_stream_end(sid)
    """

    def __init__(
        self,
        host: str,
        port: int,
        ca_file: str,
        *,
        server_name: str = "localhost",
        max_stream_data: int | None = None,
        grant_credit: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN], server_name=server_name)
        config.verify_mode = ssl.CERT_REQUIRED
        config.load_verify_locations(cafile=ca_file)
        if max_stream_data is not None:
            config.max_stream_data = max_stream_data
        self.configuration = config
        self.grant_credit = grant_credit
        """False: never send MAX_STREAM_DATA / MAX_DATA / MAX_STREAMS (a peer that never
        reads: the server can send only the initial windows)."""
        self._proto: _Recorder | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self.control_id: int | None = None

    async def __aenter__(self) -> HostilePeer:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def proto(self) -> _Recorder:
        assert self._proto is not None, "not connected"
        return self._proto

    @property
    def quic(self) -> QuicConnection:
        return self.proto._quic

    async def connect(self, timeout: float = 5.0) -> None:
        """Handshake (TLS 1.3, ALPN quicflow/1) and nothing else."""
        loop = asyncio.get_running_loop()
        kind = QuicConnection if self.grant_credit else _StingyConnection
        connection = kind(configuration=self.configuration)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, proto = await loop.create_datagram_endpoint(
            lambda: _Recorder(connection), sock=sock
        )
        self._transport = transport
        self._proto = proto
        proto.connect((self.host, self.port))
        async with asyncio.timeout(timeout):
            await proto.wait_connected()

    async def aclose(self) -> None:
        """Close the connection (NO_ERROR) and the socket."""
        if self._proto is not None:
            self._proto.close()
            try:
                async with asyncio.timeout(1.0):
                    await self._proto.wait_closed()
            except TimeoutError:
                pass
        if self._transport is not None:
            self._transport.close()

    # -- sending --

    def flush(self) -> None:
        self.proto.transmit()

    def open_stream(self) -> int:
        """Allocate the next client-initiated bidirectional stream id (no bytes sent)."""
        return int(self.quic.get_next_available_stream_id())

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Write raw bytes on a stream and transmit."""
        self.quic.send_stream_data(stream_id, data, end_stream)
        self.flush()

    def send_new(self, data: bytes, end_stream: bool = False) -> int:
        """Open a new stream, write ``data`` on it, and return its id."""
        sid = self.open_stream()
        self.send(sid, data, end_stream)
        return sid

    def can_open_stream(self) -> bool:
        """The server's MAX_STREAMS allows one more bidirectional stream now."""
        quic = self.quic
        return bool(quic._local_next_stream_id_bidi // 4 < quic._remote_max_streams_bidi)

    async def wait_stream_credit(self, timeout: float = 5.0) -> None:
        """Wait until the server grants one more stream (the peer never exceeds it: that
        would be a QUIC error aioquic does not let us make)."""
        await self.wait_for(lambda: self.can_open_stream() or self.closed, timeout)

    def reset(self, stream_id: int, error_code: int = 0x01) -> None:
        """RESET_STREAM our side of a stream."""
        self.quic.reset_stream(stream_id, error_code)
        self.flush()

    async def hello(
        self, client_id: str = "", timeout: float = 3.0, features: tuple[str, ...] = ()
    ) -> pb.Welcome:
        """Send HELLO (with ``features``) on stream 0 and wait for WELCOME."""
        sid = self.open_stream()
        self.control_id = sid
        hello = pb.Hello(protocol_version=1, client_id=client_id, features=features)
        self.send(sid, encode_frame(FrameType.HELLO, hello.SerializeToString()))
        await self.wait_for(lambda: self._first_frame(sid) is not None, timeout)
        found = self._first_frame(sid)
        assert found is not None
        ftype, payload = found
        assert ftype is FrameType.WELCOME, ftype
        return pb.Welcome.FromString(payload)

    def _first_frame(self, sid: int) -> tuple[FrameType, bytes] | None:
        frames = self.proto.log(sid).frames() if self.proto.log(sid).data else []
        return frames[0] if frames else None

    def ping(self, count: int = 1, start: int = 1) -> None:
        """Send ``count`` PING frames on the control stream in one write."""
        assert self.control_id is not None, "hello() first"
        out = b"".join(
            encode_frame(FrameType.PING, pb.Ping(sequence=n).SerializeToString())
            for n in range(start, start + count)
        )
        self.send(self.control_id, out)

    # -- observing --

    def stream(self, stream_id: int) -> StreamLog:
        """What the server sent on a stream so far."""
        return self.proto.log(stream_id)

    @property
    def closed(self) -> bool:
        """The connection has ended (either side)."""
        return self.proto.close_code is not None or self.quic._close_event is not None

    @property
    def close_code(self) -> int | None:
        """The CONNECTION_CLOSE error code, once closed."""
        if self.proto.close_code is not None:
            return self.proto.close_code
        event = self.quic._close_event
        return None if event is None else int(event.error_code)

    @property
    def close_reason(self) -> str:
        event = self.quic._close_event
        if event is not None:
            return str(event.reason_phrase)
        return self.proto.close_reason

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` is true (checked after every event), or time out."""
        async with asyncio.timeout(timeout):
            while not predicate():
                await self.proto.changed()

    async def wait_stream_end(self, stream_id: int, timeout: float = 5.0) -> StreamLog:
        """Wait until the server finished (FIN) or reset the stream; return its log."""
        await self.wait_for(lambda: self.stream(stream_id).ended, timeout)
        return self.stream(stream_id)

    async def wait_closed(self, timeout: float = 5.0) -> tuple[int | None, str]:
        """Wait until the connection ends; return (error code, reason)."""
        await self.wait_for(lambda: self.closed, timeout)
        return self.close_code, self.close_reason
