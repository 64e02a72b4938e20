"""Frame encoding and the incremental frame decoder (docs/wire-protocol.md §3)."""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ..errors import FrameTooLarge, ProtocolError, RemoteProtocolError
from ..metadata import KEY_CHARS as _KEY_CHARS
from ..metadata import Metadata, MetadataValue
from .v1 import frames_pb2 as pb

__all__ = [
    "FRAME_HEADER_SIZE",
    "ErrorCode",
    "Frame",
    "FrameDecoder",
    "FrameType",
    "MalformedFrame",
    "UnexpectedFrame",
    "decode_metadata",
    "encode_frame",
    "encode_metadata",
]

FRAME_HEADER_SIZE = 5
"""Bytes before every payload: one type byte and a 32-bit big-endian length."""

_HEADER = struct.Struct(">BI")
_MAX_LENGTH = 0xFFFF_FFFF


class FrameType(enum.IntEnum):
    """The frame types of wire protocol v1 (docs/wire-protocol.md §3.1)."""

    DATA = 0x00
    HEADERS = 0x01
    TRAILERS = 0x02
    COMPRESSED = 0x03
    """One message compressed with the sender's ``message_encoding`` (§4.4)."""
    HELLO = 0x10
    WELCOME = 0x11
    PING = 0x12
    PONG = 0x13
    GOAWAY = 0x14
    MESSAGE = 0x20
    """A one-way untyped message; only on a message lane (§11.1)."""


class ErrorCode(enum.IntEnum):
    """QUIC application error codes for RESET_STREAM, STOP_SENDING and
    CONNECTION_CLOSE (docs/wire-protocol.md §6)."""

    NO_ERROR = 0x00
    CANCELLED = 0x01
    DEADLINE_EXCEEDED = 0x02
    REFUSED = 0x03
    EXCESSIVE_LOAD = 0x04
    PROTOCOL_ERROR = 0x05
    INTERNAL_ERROR = 0x06
    # CONNECTION_CLOSE only (docs/wire-protocol.md §9):
    UNAUTHENTICATED = 0x07
    PERMISSION_DENIED = 0x08
    SESSION_REPLACED = 0x09
    SESSION_EXPIRED = 0x0A
    HELLO_TIMEOUT = 0x0B


_KNOWN_TYPES = frozenset(int(t) for t in FrameType)
_FRAME_TYPES: dict[int, FrameType] = {int(t): t for t in FrameType}
"""Frame type by wire value: a dict lookup per frame, not an Enum call (a Python call)."""
# Frames that carry one message: their Length is bounded by max_message_size (§3.2).
_MESSAGE_TYPES = frozenset((FrameType.DATA, FrameType.COMPRESSED, FrameType.MESSAGE))


class MalformedFrame(RemoteProtocolError):
    """The peer sent bytes that are not a valid frame (unknown type, bad payload)."""


class UnexpectedFrame(MalformedFrame):
    """A known frame type that this stream never carries from this peer.

    `FrameDecoder` raises it at the frame's header when given ``allowed``,
    before the length is checked: a frame that can never be legal here is a
    protocol error whatever its size (wire-protocol.md §3.2), and the state
    machine that owns the stream rephrases it with its state.
    """

    def __init__(self, frame_type: FrameType) -> None:
        super().__init__(f"unexpected {frame_type.name} frame")
        self.frame_type = frame_type
        """The frame type that is not allowed."""


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded frame."""

    type: FrameType
    payload: bytes


def encode_frame(frame_type: int, payload: bytes) -> bytes:
    """Return the bytes of one frame: 5-byte prefix then ``payload``."""
    n = len(payload)
    if n > _MAX_LENGTH:
        raise ValueError(f"frame payload of {n} bytes exceeds the 32-bit length field")
    return _HEADER.pack(frame_type, n) + payload


class FrameDecoder:
    """Turn a byte stream, split anywhere, into frames.

    ``max_data_size`` bounds DATA payloads (the max message size);
    ``max_control_size`` bounds every other frame's payload. A length over its
    bound raises `FrameTooLarge` as soon as the 5-byte prefix is complete,
    before any of the payload is buffered. Unknown frame types raise
    `MalformedFrame`, and, when ``allowed`` is given, known types outside it
    raise `UnexpectedFrame`; both are checked before the length, so a frame
    of a type that is wrong here is a protocol error whatever its size.
    After an error the decoder refuses further input.

    Example::

        dec = FrameDecoder(max_data_size=4 << 20, max_control_size=64 << 10)
        for frame in dec.feed(chunk):
            ...
    """

    __slots__ = (
        "_allowed",
        "_buf",
        "_error",
        "_need",
        "_type",
        "max_control_size",
        "max_data_size",
    )

    def __init__(
        self, max_data_size: int, max_control_size: int, *, allowed: Iterable[int] | None = None
    ) -> None:
        self.max_data_size = max_data_size
        self.max_control_size = max_control_size
        self._allowed = _KNOWN_TYPES if allowed is None else frozenset(allowed)
        self._buf = bytearray()
        self._type = -1  # type of the frame whose payload we are collecting; -1: none
        self._need = 0
        self._error = False

    @property
    def buffered(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf)

    @property
    def frame_length(self) -> int:
        """Payload length of the frame being collected; 0 until its prefix is complete."""
        return self._need if self._type >= 0 else 0

    @property
    def at_boundary(self) -> bool:
        """True when no partial frame is buffered (a FIN here is a clean end)."""
        return not self._buf and self._type < 0

    def feed(self, data: bytes, out: list[Frame] | None = None) -> list[Frame]:
        """Consume ``data`` and return every frame it completes, in order.

        Frames are appended to ``out`` when given (and it is returned), so a
        caller still has the frames completed before an error.

        Raises:
            FrameTooLarge: a length prefix is over its limit.
            UnexpectedFrame: a known frame type outside ``allowed``.
            MalformedFrame: an unknown frame type, or input after an error.
        """
        if self._error:
            raise MalformedFrame("decoder already failed")
        frames: list[Frame] = [] if out is None else out
        buf = self._buf
        # Fast path: nothing buffered, so frames can be sliced straight out of ``data``.
        if not buf and self._type < 0:
            pos = 0
            end = len(data)
            while end - pos >= FRAME_HEADER_SIZE:
                ftype, length = _HEADER.unpack_from(data, pos)
                self._check(ftype, length)
                stop = pos + FRAME_HEADER_SIZE + length
                if stop > end:
                    break
                frames.append(Frame(_FRAME_TYPES[ftype], data[pos + FRAME_HEADER_SIZE : stop]))
                pos = stop
            if pos == end:
                return frames
            data = data[pos:]
        buf += data
        while True:
            if self._type < 0:
                if len(buf) < FRAME_HEADER_SIZE:
                    return frames
                ftype, length = _HEADER.unpack_from(buf, 0)
                self._check(ftype, length)
                del buf[:FRAME_HEADER_SIZE]
                self._type = ftype
                self._need = length
            if len(buf) < self._need:
                return frames
            payload = bytes(buf[: self._need])
            del buf[: self._need]
            frames.append(Frame(_FRAME_TYPES[self._type], payload))
            self._type = -1

    def feed_until_error(self, data: bytes) -> tuple[list[Frame], ProtocolError | None]:
        """Like `feed`, but return the error (with the frames completed before it) instead
        of raising, so a state machine can process those frames first."""
        frames: list[Frame] = []
        try:
            self.feed(data, frames)
        except ProtocolError as exc:
            return frames, exc
        return frames, None

    def _check(self, ftype: int, length: int) -> None:
        if ftype not in self._allowed:
            self._error = True
            if ftype not in _KNOWN_TYPES:
                raise MalformedFrame(f"unknown frame type 0x{ftype:02x}")
            raise UnexpectedFrame(FrameType(ftype))
        data = ftype in _MESSAGE_TYPES
        limit = self.max_data_size if data else self.max_control_size
        if length > limit:
            self._error = True
            what = "message" if data else f"{FrameType(ftype).name} frame"
            raise FrameTooLarge(f"{what} of {length} bytes exceeds the limit of {limit} bytes")


# Metadata (docs/wire-protocol.md §4.1) -----------------------------------


def encode_metadata(
    target: pb.CallHeaders | pb.CallTrailers | pb.Hello | pb.RawMessage,
    metadata: Iterable[tuple[str, MetadataValue]],
) -> None:
    """Append ``metadata`` to a protobuf message's ``metadata`` field."""
    entries = target.metadata
    for key, value in metadata:
        entries.add(key=key, value=value.encode() if isinstance(value, str) else value)


def decode_metadata(entries: Sequence[pb.MetadataEntry]) -> Metadata:
    """Turn wire metadata into user metadata: ``-bin`` keys keep bytes, others UTF-8 text.

    Raises:
        MalformedFrame: a text value is not UTF-8, or a key is not lower-case ASCII.
    """
    out: list[tuple[str, MetadataValue]] = []
    for entry in entries:
        key = entry.key
        if not key or not _KEY_CHARS.issuperset(key):
            raise MalformedFrame(f"invalid metadata key {key!r}")
        if key.endswith("-bin"):
            out.append((key, entry.value))
        else:
            try:
                out.append((key, entry.value.decode()))
            except UnicodeDecodeError:
                raise MalformedFrame(f"metadata value for {key!r} is not UTF-8") from None
    return tuple(out)
