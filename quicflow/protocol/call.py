"""One call's stream as a sans-IO state machine (docs/wire-protocol.md §5).

A call has two sides, each with its own small machine: what *we* may send
next and what we accept from the *peer*. Which frames are legal depends on
our role: the CALLER opened the stream (sends HEADERS, DATA*, then FIN); the
CALLEE answers (optional HEADERS, DATA*, then TRAILERS with FIN). The tables
below are the whole story; a frame with no entry is a protocol error.

The machine only decides. ``send_*`` return the bytes to write; the runtime
writes them. ``receive_data`` returns events; a broken rule becomes one
`ProtocolViolation` event and parks the machine in ``ERROR``.
"""

from __future__ import annotations

import enum
import math
from typing import Final

from ..errors import LocalProtocolError
from ..metadata import MetadataValue
from ..status import StatusCode
from ..wire.codec import (
    ErrorCode,
    FrameDecoder,
    FrameType,
    MalformedFrame,
    decode_metadata,
    encode_frame,
)
from ..wire.codec import encode_metadata as _encode_metadata
from ..wire.compression import IDENTITY, compress, decompress
from ..wire.v1 import frames_pb2 as pb
from .events import (
    EndOfStream,
    Event,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from .stream import receive_frames

__all__ = ["END", "TRANSITIONS", "CallProtocol", "Role", "SideState", "reset_status"]


class Role(enum.Enum):
    """Our part in the call."""

    CALLER = "caller"
    CALLEE = "callee"

    # Members are singletons compared by identity: hash them by identity too, in C
    # (Enum's own __hash__ is a Python call, and every call's machine looks its role
    # and states up in tables several times).
    __hash__ = object.__hash__


class SideState(enum.Enum):
    """Where one direction of the stream stands."""

    IDLE = "idle"  # nothing yet
    OPEN = "open"  # headers (or a first message) seen, messages may follow
    TRAILED = "trailed"  # trailers seen, only FIN may follow
    CLOSED = "closed"  # FIN seen: this direction is done
    ERROR = "error"

    __hash__ = object.__hash__  # as Role's: looked up once per frame


class _End:
    """Table key for FIN (end of stream)."""


END: Final = _End
_Key = FrameType | type[_End]

# TRANSITIONS[role of the *sender* of the frames][state] -> {frame: next state}
TRANSITIONS: Final[dict[Role, dict[SideState, dict[_Key, SideState]]]] = {
    Role.CALLER: {
        SideState.IDLE: {FrameType.HEADERS: SideState.OPEN},
        SideState.OPEN: {
            FrameType.DATA: SideState.OPEN,
            FrameType.COMPRESSED: SideState.OPEN,
            END: SideState.CLOSED,
        },
    },
    Role.CALLEE: {
        SideState.IDLE: {
            FrameType.HEADERS: SideState.OPEN,
            FrameType.DATA: SideState.OPEN,
            FrameType.TRAILERS: SideState.TRAILED,
        },
        SideState.OPEN: {
            FrameType.DATA: SideState.OPEN,
            FrameType.COMPRESSED: SideState.OPEN,
            FrameType.TRAILERS: SideState.TRAILED,
        },
        SideState.TRAILED: {END: SideState.CLOSED},
    },
}

_OTHER = {Role.CALLER: Role.CALLEE, Role.CALLEE: Role.CALLER}
# The frame types a sender's table admits in some state: any other known type is
# refused at its header, whatever its length (wire-protocol.md §3.2).
_SENDS: Final = {
    role: frozenset(key for row in table.values() for key in row if isinstance(key, FrameType))
    for role, table in TRANSITIONS.items()
}
_END_EVENT: Final = EndOfStream()
_OK_TRAILERS: Final = encode_frame(FrameType.TRAILERS, b"")
_MAX_TIMEOUT_US: Final = 2**64 - 1


_NO_MOVES: Final[dict[_Key, SideState]] = {}
"""The row of a state no frame leaves (CLOSED, ERROR)."""


class CallProtocol:
    """The sans-IO machine for one call stream.

    Example::

        call = CallProtocol(Role.CALLER, max_message_size=4 << 20, max_metadata_size=64 << 10)
        out = call.send_headers("/echo.Echo/Say", (), timeout=1.0)
        out += call.send_message(request_bytes)
        # write `out` with FIN; then feed what arrives:
        for event in call.receive_data(chunk, end_stream):
            ...
    """

    __slots__ = (
        "_decoder",
        "_local_table",
        "_peer_table",
        "compression_threshold",
        "local_encoding",
        "local_state",
        "peer_encoding",
        "peer_state",
        "role",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_message_size: int,
        max_metadata_size: int,
        compression_threshold: int = 1024,
    ) -> None:
        self.role = role
        self.local_encoding = ""
        """The encoding our HEADERS named for our COMPRESSED frames ("": none, §4.4)."""
        self.peer_encoding = ""
        """The encoding the peer's HEADERS named for its COMPRESSED frames ("": none)."""
        self.compression_threshold = compression_threshold
        """Messages shorter than this (bytes) are sent as DATA even with an encoding."""
        self.local_state = SideState.IDLE
        self.peer_state = SideState.IDLE
        self._local_table = TRANSITIONS[role]
        self._peer_table = TRANSITIONS[_OTHER[role]]
        self._decoder = FrameDecoder(
            max_message_size,
            max_metadata_size,
            allowed=_SENDS[_OTHER[role]],
        )

    @property
    def buffered(self) -> int:
        """Bytes of a partial incoming frame held by the decoder."""
        return self._decoder.buffered

    @property
    def partial_frame(self) -> tuple[int, int]:
        """The incoming frame not yet complete: (bytes held, its payload length; 0 until
        its length prefix is complete). (0, 0) at a frame boundary."""
        decoder = self._decoder
        return decoder.buffered, decoder.frame_length

    # -- sending (each returns the bytes to write; see wire-protocol.md §5) --

    def _advance_local(self, key: _Key) -> None:
        nxt = self._local_table.get(self.local_state, _NO_MOVES).get(key)
        if nxt is None:
            name = "FIN" if key is END else FrameType(key).name  # type: ignore[arg-type]
            raise LocalProtocolError(
                f"cannot send {name} in state {self.local_state.name} as {self.role.name}"
            )
        self.local_state = nxt

    def send_headers(
        self,
        method: str,
        metadata: tuple[tuple[str, MetadataValue], ...] = (),
        *,
        timeout: float | None = None,
        message_id: bytes = b"",
        message_encoding: str = "",
    ) -> bytes:
        """Start the call (caller) or send response headers (callee, ``method=""``).

        ``timeout`` is seconds left (finite, capped at 2**64-1 microseconds).
        ``message_encoding`` (one the peer accepts, §4.4) makes `send_message`
        compress messages of at least ``compression_threshold`` bytes.
        """
        if (self.role is Role.CALLER) != bool(method):
            raise LocalProtocolError(
                "call HEADERS need a method"
                if self.role is Role.CALLER
                else "response HEADERS must not carry a method"
            )
        msg = pb.CallHeaders(method=method, message_id=message_id)
        if message_encoding and message_encoding != IDENTITY:
            msg.message_encoding = message_encoding
            self.local_encoding = message_encoding
        if timeout is not None:
            if not math.isfinite(timeout):
                raise LocalProtocolError(f"timeout must be a finite number, got {timeout!r}")
            msg.timeout_us = min(_MAX_TIMEOUT_US, max(1, round(timeout * 1_000_000)))
        self._advance_local(FrameType.HEADERS)
        if metadata:
            _encode_metadata(msg, metadata)
        return encode_frame(FrameType.HEADERS, msg.SerializeToString())

    def send_message(self, data: bytes) -> bytes:
        """Frame one serialized message: COMPRESSED when our HEADERS named an encoding,
        the message is at least ``compression_threshold`` bytes and compressing makes
        it smaller; DATA otherwise (wire-protocol.md §4.4)."""
        if self.local_state is not SideState.OPEN:
            self._advance_local(FrameType.DATA)
        encoding = self.local_encoding
        if encoding and len(data) >= self.compression_threshold:
            packed = compress(encoding, data)
            if len(packed) < len(data):
                return encode_frame(FrameType.COMPRESSED, packed)
        return encode_frame(FrameType.DATA, data)

    def half_close(self) -> None:
        """Record that we send FIN now (caller only; the callee's FIN rides on trailers)."""
        self._advance_local(END)

    def send_trailers(
        self,
        status: int,
        message: str = "",
        metadata: tuple[tuple[str, MetadataValue], ...] = (),
        details: bytes = b"",
    ) -> bytes:
        """End the call with a status (callee only); write the bytes with FIN."""
        self._advance_local(FrameType.TRAILERS)
        self._advance_local(END)
        if status == 0 and not message and not metadata and not details:
            return _OK_TRAILERS
        msg = pb.CallTrailers(status=status, message=message, details=details)
        if metadata:
            _encode_metadata(msg, metadata)
        return encode_frame(FrameType.TRAILERS, msg.SerializeToString())

    # -- receiving --

    def receive_data(self, data: bytes, end_stream: bool) -> list[Event]:
        """Feed bytes from the peer; return the events they complete, in order.

        Never raises for anything the peer sent: a broken rule ends the list
        with a `ProtocolViolation` and the machine stays in ``ERROR``.
        """
        if self.peer_state is SideState.ERROR:
            return []
        events, error = receive_frames(
            self._decoder,
            data,
            end_stream,
            on_frame=self._on_frame,
            on_unexpected=self._advance_peer,
            on_end=self._on_end,
            stream="stream",
        )
        if error is not None:
            self.peer_state = SideState.ERROR
            events.append(ProtocolViolation(error))
        return events

    def _on_end(self) -> Event:
        self._advance_peer(END)
        return _END_EVENT

    def _advance_peer(self, key: _Key) -> None:
        nxt = self._peer_table.get(self.peer_state, _NO_MOVES).get(key)
        if nxt is None:
            if key is END:
                what = "stream ended"
                if self.role is Role.CALLER:
                    what += " without trailers"
            else:
                what = f"unexpected {FrameType(key).name} frame"  # type: ignore[arg-type]
            raise MalformedFrame(f"{what} in state {self.peer_state.name}")
        self.peer_state = nxt

    def _on_frame(self, ftype: FrameType, payload: bytes) -> Event:
        self._advance_peer(ftype)
        if ftype is FrameType.DATA:
            return MessageReceived(payload)
        if ftype is FrameType.COMPRESSED:
            if not self.peer_encoding:
                raise MalformedFrame("COMPRESSED frame, but the HEADERS named no message encoding")
            # Refused as it inflates, before it is whole, once over the limit (§4.4).
            data = decompress(self.peer_encoding, payload, self._decoder.max_data_size)
            return MessageReceived(data)
        try:
            if ftype is FrameType.HEADERS:
                h = pb.CallHeaders.FromString(payload)
                if (self.role is Role.CALLEE) != bool(h.method):
                    raise MalformedFrame(
                        "call HEADERS need a method"
                        if self.role is Role.CALLEE
                        else "response HEADERS must not carry a method"
                    )
                encoding = h.message_encoding
                if encoding and encoding != IDENTITY:
                    self.peer_encoding = encoding
                return HeadersReceived(
                    method=h.method,
                    metadata=decode_metadata(h.metadata) if h.metadata else (),
                    timeout=h.timeout_us / 1_000_000 if h.timeout_us else None,
                    message_id=h.message_id,
                    message_encoding=h.message_encoding,
                )
            # TRAILERS (the tables admit nothing else on a call stream)
            if not payload:
                return TrailersReceived(0, "", (), b"")
            t = pb.CallTrailers.FromString(payload)
            return TrailersReceived(
                status=t.status,
                message=t.message,
                metadata=decode_metadata(t.metadata) if t.metadata else (),
                details=t.details,
            )
        except MalformedFrame:
            raise
        except Exception as exc:  # protobuf's DecodeError and friends
            raise MalformedFrame(f"malformed {ftype.name} payload: {exc}") from exc


_RESET_STATUS: Final[dict[int, tuple[StatusCode, str]]] = {
    ErrorCode.CANCELLED: (StatusCode.CANCELLED, "the peer cancelled the call"),
    ErrorCode.DEADLINE_EXCEEDED: (StatusCode.DEADLINE_EXCEEDED, "deadline exceeded"),
    ErrorCode.REFUSED: (StatusCode.UNAVAILABLE, "the peer refused the call; safe to retry"),
    ErrorCode.EXCESSIVE_LOAD: (StatusCode.RESOURCE_EXHAUSTED, "the peer is overloaded"),
    ErrorCode.PROTOCOL_ERROR: (StatusCode.INTERNAL, "the peer reported a protocol error"),
}


def reset_status(error_code: int) -> tuple[StatusCode, str]:
    """The status a caller reports when the callee resets the stream (wire-protocol.md §6)."""
    found = _RESET_STATUS.get(error_code)
    if found is not None:
        return found
    return StatusCode.INTERNAL, f"stream reset by the peer (error code 0x{error_code:x})"
