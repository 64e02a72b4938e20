"""Message lanes, sans-IO: the MESSAGE frame codec (wire-protocol.md §11.1).

A message lane is one unidirectional stream per side and connection that
carries one-way untyped messages as MESSAGE frames (type ``0x20``) whose
payload is a `RawMessage`. This module is the pure part: encoding one frame,
and `LaneDecoder`, which turns a lane's bytes into `LaneMessage`s or the
`LaneError` that ends the lane (and its connection). The asyncio side, the
lanes on a live connection, is quicflow/lane.py.

Example::

    frame = encode_lane_message("alert", b"disk full", (("zone", "eu"),), b"")
    decoder = LaneDecoder(max_message_size=4 << 20, max_metadata_size=64 << 10)
    [message], error = decoder.feed(frame, False)    # LaneMessage("alert", ...), None
"""

from __future__ import annotations

from typing import Final, NamedTuple

from ..errors import FrameTooLarge, ProtocolError
from ..metadata import Metadata
from ..wire.codec import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    MalformedFrame,
    decode_metadata,
    encode_frame,
    encode_metadata,
)
from ..wire.v1 import frames_pb2 as pb

__all__ = [
    "LANE_FEATURE",
    "ROUTE",
    "LaneDecoder",
    "LaneError",
    "LaneMessage",
    "encode_lane_message",
    "raw_size",
]

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
