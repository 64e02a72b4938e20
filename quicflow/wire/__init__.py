"""Layer 1, the wire: QuicFlow's bytes, sans-IO.

Theory of operation. Every QuicFlow stream carries a sequence of frames,
each ``type (1 byte) | length (4 bytes, big endian) | payload``
(docs/wire-protocol.md §3). DATA frames carry one serialized application
message untouched, so the hot path never re-encodes user payloads; HEADERS,
TRAILERS and the control stream's frames carry small protobuf messages from
``proto/quicflow/wire/v1/frames.proto``.

`FrameDecoder` is incremental: feed it any split of the byte stream and it
returns whole frames. It reads the length prefix first and refuses a frame
over its limit *before* buffering any of the payload, so a hostile length
costs nothing. It imports neither asyncio nor aioquic (a test enforces it).
"""

from .codec import (
    FRAME_HEADER_SIZE,
    ErrorCode,
    Frame,
    FrameDecoder,
    FrameType,
    decode_metadata,
    encode_frame,
    encode_metadata,
)

__all__ = [
    "FRAME_HEADER_SIZE",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "decode_metadata",
    "encode_frame",
    "encode_metadata",
]
