"""A connection listener for tests that takes over the peer's new calls."""

from __future__ import annotations

from collections.abc import Callable

from quicflow.errors import ConnectionClosed
from quicflow.transport import ConnectionListener, QuicFlowProtocol, StreamHandler


class CallsTo:
    """Attached to ``conn``: the peer's new bidirectional streams go to ``opened`` (None
    refuses them), everything else to the listener it replaced (`restore` puts that one
    back)."""

    def __init__(
        self, conn: QuicFlowProtocol, opened: Callable[[int], StreamHandler | None]
    ) -> None:
        self.conn = conn
        self.inner: ConnectionListener = conn.listener
        self.opened = opened
        conn.attach(self)

    def restore(self) -> None:
        self.conn.attach(self.inner)

    def stream_opened(self, stream_id: int) -> StreamHandler | None:
        return self.opened(stream_id)

    def lane_opened(self, stream_id: int) -> StreamHandler | None:
        return self.inner.lane_opened(stream_id)

    def call_reset(self) -> None:
        self.inner.call_reset()

    def nudged(self) -> None:
        self.inner.nudged()

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.inner.connection_lost(exc)
