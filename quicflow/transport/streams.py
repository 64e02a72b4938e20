"""The stream side of the transport: what the runtime registers per stream."""

from __future__ import annotations

from typing import Protocol

from ..errors import ConnectionClosed

__all__ = ["StreamHandler"]


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
