"""Events the sans-IO core reports, named as facts (docs/wire-protocol.md §5)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ProtocolError
from ..metadata import Metadata

__all__ = [
    "EndOfStream",
    "Event",
    "HeadersReceived",
    "MessageReceived",
    "ProtocolViolation",
    "TrailersReceived",
]


@dataclass(frozen=True, slots=True)
class HeadersReceived:
    """The peer's HEADERS frame: a call's start (caller's) or response headers (callee's)."""

    method: str
    """``/package.Service/Method``; empty in response headers."""
    metadata: Metadata
    timeout: float | None
    """Seconds the caller had left when it sent the frame; None: no deadline."""
    message_id: bytes
    """Optional 16-byte id for acknowledgements; empty when unused."""
    message_encoding: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """One whole application message (a DATA frame's payload)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class TrailersReceived:
    """The callee's final status."""

    status: int
    message: str
    metadata: Metadata
    details: bytes


@dataclass(frozen=True, slots=True)
class EndOfStream:
    """The peer finished its side of the stream cleanly (QUIC FIN)."""


@dataclass(frozen=True, slots=True)
class ProtocolViolation:
    """The peer's bytes broke the protocol; the call is over (the error says why)."""

    error: ProtocolError


Event = HeadersReceived | MessageReceived | TrailersReceived | EndOfStream | ProtocolViolation
