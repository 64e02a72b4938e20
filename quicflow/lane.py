"""Message lanes: one-way untyped messages without a call each (wire-protocol.md §11.1).

``send_message(..., wait_ack=False)`` used to be a whole unary call: a fresh
QUIC stream, HEADERS + DATA + FIN one way and HEADERS/DATA/TRAILERS back that
nobody read. When both sides announce the ``"lane"`` feature in HELLO and
WELCOME, each side instead opens one unidirectional stream for the
connection's life, its *message lane*, and writes every one-way message on it
as a MESSAGE frame (type ``0x20``) whose payload is a `RawMessage` with the
type, payload, metadata and optional message id. Nothing comes back.

Theory of operation:

- **Negotiation, per direction.** HELLO ``features`` lists ``"lane"`` when
  the client accepts the server's lane; WELCOME lists it when the server
  accepts the client's. A side that runs callee interceptors does not accept
  a lane (they could not see lane messages), and a client with interceptors
  of its own does not send on one; both then use calls as before. A peer
  that knows nothing of lanes never sees one.
- **Order.** Messages on a lane reach the receiver's dispatcher in the order
  they were sent (handlers still run concurrently on its workers). Under
  loss a gap stalls the messages behind it until QUIC repairs it.
- **Backpressure, not drops.** The receiver hands each message to the
  dispatcher with `Dispatcher.post`; when every worker is busy and the queue
  is full it keeps the messages it has and counts their bytes as unread, so
  QUIC stops granting credit on the lane (transport/quic.py), the sender's
  buffer fills, and ``send_message`` waits in `SendLane.drain` (up to its
  timeout: DEADLINE_EXCEEDED) instead of the message being refused.
- **Errors are unseen**: the handler's outcome only counts in the
  receiver's metrics. A malformed lane (another frame type, a bad payload, a
  frame over ``max_message_size``, FIN or RESET_STREAM on it) closes the
  connection: PROTOCOL_ERROR, or EXCESSIVE_LOAD for a frame over the limit.

Example (sans-IO)::

    frame = encode_lane_message("alert", b"disk full", (("zone", "eu"),), b"")
    decoder = LaneDecoder(max_message_size=4 << 20, max_metadata_size=64 << 10)
    [message], error = decoder.feed(frame, False)    # LaneMessage("alert", ...), None
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final, NamedTuple

from .clock import Clock
from .clock import timeout as clock_timeout
from .dispatch import Dispatcher, Message
from .errors import ConnectionClosed, FrameTooLarge, PayloadTooLarge, ProtocolError, RpcError
from .hooks import Hooks, MessageInfo
from .metadata import Metadata, MetadataLike, normalize_metadata
from .status import StatusCode
from .wire.codec import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    MalformedFrame,
    decode_metadata,
    encode_frame,
    encode_metadata,
)
from .wire.v1 import frames_pb2 as pb

if TYPE_CHECKING:
    from .calls import CallTarget
    from .metrics import MethodStats, Metrics
    from .transport import QuicFlowProtocol

__all__ = [
    "LANE_FEATURE",
    "LaneDecoder",
    "LaneError",
    "LaneMessage",
    "ReceiveLane",
    "SendLane",
    "encode_lane_message",
    "send_one_way",
]

logger = logging.getLogger("quicflow.lane")

LANE_FEATURE: Final = "lane"
"""The HELLO/WELCOME feature string that turns message lanes on (wire-protocol.md §10.3)."""

ROUTE: Final = "/quicflow.wire.v1.Messaging/Deliver"
"""Where lane messages count in metrics and hooks: the route they replaced."""


def _varint_size(n: int) -> int:
    size = 1
    while n >= 0x80:
        n >>= 7
        size += 1
    return size


def raw_size(type_length: int, payload_length: int) -> int:
    """Bytes of ``RawMessage{type, payload}`` (what the call path counted as the message)."""
    size = 0
    if type_length:
        size += 1 + _varint_size(type_length) + type_length
    if payload_length:
        size += 1 + _varint_size(payload_length) + payload_length
    return size


def encode_lane_message(
    message_type: str, payload: bytes, metadata: Metadata, message_id: bytes
) -> bytes:
    """One MESSAGE frame (5-byte prefix + `RawMessage` with fields 1-4)."""
    msg = pb.RawMessage(type=message_type, payload=payload, message_id=message_id)
    if metadata:
        encode_metadata(msg, metadata)
    return encode_frame(FrameType.MESSAGE, msg.SerializeToString())


class LaneError(Exception):
    """The peer broke its message lane; close the connection with ``code``."""

    def __init__(self, code: ErrorCode, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class LaneMessage(NamedTuple):
    """One message decoded from a lane."""

    type: str
    payload: bytes
    metadata: Metadata
    message_id: bytes
    size: int
    """Bytes of the frame on the wire (prefix included): what it holds of the credit."""


class LaneDecoder:
    """Sans-IO receiver side of a lane: bytes in, `LaneMessage`s out, or `LaneError`."""

    __slots__ = ("_failed", "_frames")

    def __init__(self, max_message_size: int, max_metadata_size: int) -> None:
        # Only MESSAGE: any other type is a protocol error whatever its length.
        self._frames = FrameDecoder(
            max_message_size, max_metadata_size, allowed=(FrameType.MESSAGE,)
        )
        self._failed = False

    def feed(self, data: bytes, end_stream: bool) -> tuple[list[LaneMessage], LaneError | None]:
        """Decode ``data``: the messages it completes, and the error that ends the lane.

        Every frame must be a valid MESSAGE. The error is EXCESSIVE_LOAD for a
        frame over the limit and PROTOCOL_ERROR for anything else that is
        wrong, including FIN (a lane lasts as long as its connection); the
        messages completed before it are still returned. After an error every
        further input is an error too.
        """
        out: list[LaneMessage] = []
        if self._failed:
            return out, LaneError(ErrorCode.PROTOCOL_ERROR, "message lane: already failed")
        try:
            frames, error = self._frames.feed_until_error(data)
            for frame in frames:
                if frame.type is not FrameType.MESSAGE:
                    raise MalformedFrame(f"unexpected {frame.type.name} frame")
                try:
                    msg = pb.RawMessage.FromString(frame.payload)
                except Exception as exc:  # protobuf's DecodeError and friends
                    raise MalformedFrame(f"malformed MESSAGE payload: {exc}") from None
                if not msg.type:
                    raise MalformedFrame("MESSAGE needs a type")
                metadata = decode_metadata(msg.metadata) if msg.metadata else ()
                out.append(
                    LaneMessage(
                        msg.type, msg.payload, metadata, msg.message_id, 5 + len(frame.payload)
                    )
                )
            if error is not None:
                raise error
            if end_stream:
                raise MalformedFrame("the peer ended its message lane")
            return out, None
        except FrameTooLarge as exc:
            self._failed = True
            return out, LaneError(ErrorCode.EXCESSIVE_LOAD, f"message lane: {exc}")
        except ProtocolError as exc:
            self._failed = True
            return out, LaneError(ErrorCode.PROTOCOL_ERROR, f"message lane: {exc}")


class SendLane:
    """This side's lane on one connection (the `StreamHandler` of its stream)."""

    __slots__ = ("conn", "stream_id")

    unread_bytes = 0  # nothing is ever received on our own unidirectional stream

    def __init__(self, conn: QuicFlowProtocol) -> None:
        self.conn = conn
        self.stream_id = -1  # opened on the first message: an idle connection holds nothing

    def write(self, frame: bytes) -> None:
        """Queue one MESSAGE frame (opening the lane's stream on the first)."""
        if self.stream_id < 0:
            self.stream_id = self.conn.open_uni_stream(self)
        self.conn.write(self.stream_id, frame)

    def over_limit(self) -> bool:
        """True while more than ``send_buffer_limit`` bytes on the lane are unacknowledged."""
        conn = self.conn
        sid = self.stream_id
        return sid >= 0 and conn.send_buffered(sid) > conn.settings.send_buffer_limit

    def data_received(self, data: bytes, end_stream: bool) -> None:  # pragma: no cover
        pass  # a unidirectional stream we opened carries nothing to us

    def stream_reset(self, error_code: int) -> None:  # pragma: no cover
        pass

    def stop_sending(self, error_code: int) -> None:
        # The peer will read no more of it: later one-way messages go as calls.
        logger.info("peer stopped our message lane (code 0x%x)", error_code)
        if self.conn.message_lane is self:
            self.conn.message_lane = None
        self.conn.release(self.stream_id)

    def connection_lost(self, exc: ConnectionClosed) -> None:
        if self.conn.message_lane is self:
            self.conn.message_lane = None


async def send_one_way(
    target: CallTarget,
    message_type: str,
    payload: bytes,
    metadata: MetadataLike | None,
    timeout: float | None,
) -> bool:
    """Send one message on the target's lane; False (nothing done) when there is none.

    Returns True once the frame is handed to QUIC. Waits first while the lane
    holds more than ``send_buffer_limit`` unacknowledged bytes (the receiver is
    behind), at most ``timeout`` (default: the target's default timeout).

    Raises:
        PayloadTooLarge: the message is over the sender's ``max_message_size``.
        ArgumentError: bad metadata.
        RpcError: DEADLINE_EXCEEDED while waiting; UNAVAILABLE when the
            connection ends meanwhile.
    """
    if target.interceptors or not target.ready:
        return False
    if timeout is None:
        timeout = target.default_timeout
    if timeout is not None and timeout <= 0:
        return False  # the call path fails it exactly as before
    conn = target.connection_for_call()
    lane: SendLane | None = conn.message_lane
    if lane is None:
        return False
    md = normalize_metadata(metadata) if metadata else ()
    frame = encode_lane_message(message_type, payload, md, target.message_id)
    limit = target.max_message_size
    if len(frame) - 5 > limit:
        raise PayloadTooLarge(
            message=f"message of {len(frame) - 5} bytes exceeds max_message_size ({limit})"
        )
    metrics = target.metrics
    stats = metrics.made.method(ROUTE) if metrics is not None else None
    if stats is not None:
        stats.started += 1
    clock = target.clock
    start = clock.time()
    if lane.over_limit():
        try:
            async with clock_timeout(clock, timeout):
                while lane.over_limit():
                    await conn.drain(lane.stream_id)
                    if conn.message_lane is not lane:
                        raise ConnectionClosed(message="message lane closed", may_have_run=False)
        except TimeoutError:
            error: RpcError = RpcError(
                StatusCode.DEADLINE_EXCEEDED,
                "deadline exceeded waiting for the message lane",
                may_have_run=False,  # nothing was sent
            )
            if stats is not None:
                stats.finished(error.code, clock.time() - start)
            raise error from None
        except RpcError as exc:
            if stats is not None:
                stats.finished(exc.code, clock.time() - start)
            raise
    lane.write(frame)
    size = raw_size(len(message_type.encode()), len(payload))
    if stats is not None:
        stats.messages_sent += 1
        stats.bytes_sent += size
        stats.finished(StatusCode.OK, clock.time() - start)
    hooks = target.hooks
    if hooks.wants("message_sent"):
        hooks.fire("message_sent", MessageInfo(target.peer_name, ROUTE, message_type, size))
    return True


class ReceiveLane:
    """The peer's lane on one connection: decodes it and feeds this side's dispatcher."""

    __slots__ = (
        "_clock",
        "_decoder",
        "_dispatcher",
        "_dropped",
        "_hold_limit",
        "_hooks",
        "_metrics",
        "_pending",
        "_sender",
        "_waiting",
        "conn",
        "stream_id",
        "unread_bytes",
    )

    def __init__(
        self,
        conn: QuicFlowProtocol,
        stream_id: int,
        dispatcher: Dispatcher,
        *,
        clock: Clock,
        sender: Callable[[], str],
        metrics: Metrics | None,
        hooks: Hooks,
        max_message_size: int,
        max_metadata_size: int,
    ) -> None:
        self.conn = conn
        self.stream_id = stream_id
        self.unread_bytes = 0
        """Bytes of messages held back while the dispatcher is full (not yet credited)."""
        self._decoder = LaneDecoder(max_message_size, max_metadata_size)
        self._dispatcher = dispatcher
        self._clock = clock
        self._sender = sender
        self._metrics = metrics
        self._hooks = hooks
        self._pending: deque[LaneMessage] = deque()
        self._dropped = 0
        # Credit keeps what is held under one window plus one frame; an engine that
        # grants credit by itself (qh3) can overrun that: past it, messages are dropped.
        self._hold_limit = conn.settings.stream_receive_window + max_message_size + 5
        self._waiting: asyncio.Task[None] | None = None

    @property
    def held(self) -> int:
        """Messages held back until the dispatcher has room."""
        return len(self._pending)

    # StreamHandler

    def data_received(self, data: bytes, end_stream: bool) -> None:
        messages, error = self._decoder.feed(data, end_stream)
        pending = self._pending
        for message in messages:
            if pending or not self._post(message):
                if self.unread_bytes + message.size > self._hold_limit:
                    self._drop(message)
                    continue
                pending.append(message)
                self.unread_bytes += message.size
        if error is not None:
            self._fail(error.code, error.reason)
        elif pending and self._waiting is None:
            self._waiting = asyncio.get_running_loop().create_task(self._resume())

    def stream_reset(self, error_code: int) -> None:
        self._fail(
            ErrorCode.PROTOCOL_ERROR,
            f"message lane: reset by the peer (code 0x{error_code:x})",
        )

    def stop_sending(self, error_code: int) -> None:  # pragma: no cover
        pass  # a peer cannot stop a stream only it sends on

    def connection_lost(self, exc: ConnectionClosed) -> None:
        # At most once: messages still held back are dropped with the connection.
        self._pending.clear()
        if self._waiting is not None:
            self._waiting.cancel()
            self._waiting = None

    # internals

    def _fail(self, code: ErrorCode, reason: str) -> None:
        logger.warning("closing the connection: %s", reason)
        self.connection_lost(ConnectionClosed(message=reason))
        self.conn.close(code, reason)

    async def _resume(self) -> None:
        """Offer held messages again as the dispatcher frees room; credit follows."""
        pending = self._pending
        try:
            while pending:
                await self._dispatcher.wait_room()
                while pending and self._post(pending[0]):
                    self.unread_bytes -= pending.popleft().size
                self.conn.credit_released(self.stream_id)
        finally:
            self._waiting = None

    def _post(self, m: LaneMessage) -> bool:
        dispatcher = self._dispatcher
        if not dispatcher.has_room:
            return False
        sender = self._sender()
        size = raw_size(len(m.type.encode()), len(m.payload))
        metrics = self._metrics
        stats = metrics.handled.method(ROUTE) if metrics is not None else None
        if stats is not None:  # counted and announced before the handler runs, as a call is
            stats.started += 1
            stats.messages_received += 1
            stats.bytes_received += size
        hooks = self._hooks
        if hooks.wants("message_received"):
            hooks.fire("message_received", MessageInfo(sender, ROUTE, m.type, size))
        message = Message(m.type, m.payload, m.metadata, m.message_id, sender)
        if not dispatcher.post(message, self._outcome(stats, self._clock.time())):
            # has_room said yes; only a worker that vanished meanwhile gets here
            if stats is not None:
                stats.finished(StatusCode.RESOURCE_EXHAUSTED, 0.0)
            logger.warning("dispatcher full: %s message dropped", m.type)
        return True

    def _drop(self, m: LaneMessage) -> None:
        """Count a message the full dispatcher could not take, as a refused call was."""
        metrics = self._metrics
        if metrics is not None:
            stats = metrics.handled.method(ROUTE)
            stats.started += 1
            stats.messages_received += 1
            stats.bytes_received += raw_size(len(m.type.encode()), len(m.payload))
            stats.finished(StatusCode.RESOURCE_EXHAUSTED, 0.0)
        self._dropped += 1
        if self._dropped & (self._dropped - 1) == 0:  # 1st, 2nd, 4th, ...: no log flood
            logger.warning(
                "dispatcher full and message lane overrun: %d message(s) dropped so far",
                self._dropped,
            )

    def _outcome(
        self, stats: MethodStats | None, start: float
    ) -> Callable[[bytes | RpcError], None]:
        clock = self._clock

        def done(outcome: bytes | RpcError) -> None:
            if stats is not None:
                code = outcome.code if isinstance(outcome, RpcError) else StatusCode.OK
                stats.finished(code, clock.time() - start)

        return done
