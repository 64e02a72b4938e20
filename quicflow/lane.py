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

The frame codec (`encode_lane_message`, `LaneDecoder`) is sans-IO and lives
in quicflow/protocol/lane.py; the sender's side of a one-way message
(`quicflow.calls.send_one_way`) with the other calls. This module holds the
lanes on a live connection: `SendLane` and `ReceiveLane`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .clock import Clock
from .dispatch import Dispatcher, Message
from .errors import ConnectionClosed, RpcError
from .hooks import Hooks, MessageInfo
from .protocol.lane import (
    LANE_FEATURE,
    ROUTE,
    LaneDecoder,
    LaneError,
    LaneMessage,
    encode_lane_message,
    raw_size,
)
from .status import StatusCode
from .wire.codec import ErrorCode

if TYPE_CHECKING:
    from .metrics import MethodStats, Metrics
    from .transport import QuicFlowProtocol

__all__ = [
    "LANE_FEATURE",
    "ROUTE",
    "LaneDecoder",
    "LaneError",
    "LaneMessage",
    "ReceiveLane",
    "SendLane",
    "encode_lane_message",
    "raw_size",
]

logger = logging.getLogger("quicflow.lane")


class SendLane:
    """This side's lane on one connection (the `StreamHandler` of its stream)."""

    __slots__ = ("closed", "conn", "stream_id")

    unread_bytes = 0  # nothing is ever received on our own unidirectional stream

    def __init__(self, conn: QuicFlowProtocol) -> None:
        self.conn = conn
        self.stream_id = -1  # opened on the first message: an idle connection holds nothing
        self.closed = False
        """True once the peer stopped the lane or the connection ended: later one-way
        messages go as calls."""

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
        self.closed = True
        self.conn.release(self.stream_id)

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.closed = True


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
