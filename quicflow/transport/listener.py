"""`ConnectionListener`: what the runtime hands a connection to hear of its peer.

A `QuicFlowProtocol` reports to one listener, attached by the runtime
(`QuicFlowProtocol.attach`) as soon as it has the connection: the client's
once `connect` returns, the server's in its ``on_connection``. The listener is
the runtime's own object for the connection (on the server, the one that also
keeps its session), so runtime state stays there, not on the transport.
"""

from __future__ import annotations

from typing import Protocol

from ..errors import ConnectionClosed
from .streams import StreamHandler

__all__ = ["ConnectionListener", "Unattached"]


class ConnectionListener(Protocol):
    """What a connection tells the runtime (all calls come from the event loop)."""

    def stream_opened(self, stream_id: int) -> StreamHandler | None:
        """The peer opened a bidirectional stream (a call, or the control stream): its
        handler, or None to refuse it (RESET_STREAM with REFUSED)."""
        ...

    def lane_opened(self, stream_id: int) -> StreamHandler | None:
        """The peer opened a unidirectional stream (a message lane, wire-protocol.md
        §11.1): its handler for the connection's life, or None to refuse it
        (STOP_SENDING with REFUSED)."""
        ...

    def call_reset(self) -> None:
        """The peer reset a stream it opened before we finished our side of it (a
        cancelled call: a server counts these against its rapid-reset budget). The
        listener may close the connection from here."""
        ...

    def nudged(self) -> None:
        """The connection sent a nudge: a QUIC PING after a silence while an answer is
        awaited (`QuicFlowProtocol.watch_quiet`)."""
        ...

    def connection_lost(self, exc: ConnectionClosed) -> None:
        """The connection ended, after each stream's handler heard of it."""
        ...


class Unattached:
    """The listener of a connection the runtime has not attached one to yet: it
    refuses the peer's streams and ignores the rest."""

    __slots__ = ()

    def stream_opened(self, stream_id: int) -> StreamHandler | None:
        return None

    def lane_opened(self, stream_id: int) -> StreamHandler | None:
        return None

    def call_reset(self) -> None:
        pass

    def nudged(self) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        pass
