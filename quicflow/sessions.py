"""The server's session registry: who is connected, and how they are doing.

A *session* is one authenticated client connection. The registry maps each
client id to its one live session. A client that connects again under the
same id *replaces* its old session at once: the old connection is closed
and forgotten, and nothing is refused.

All registry operations are synchronous (no ``await`` inside), so they are
atomic with respect to other tasks on the event loop: safe under concurrent
use from handlers, hooks and the heartbeat timers.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .errors import ClientNotConnected

if TYPE_CHECKING:
    from .clock import PolicyTimer
    from .lane import SendLane
    from .protocol.heartbeat import HeartbeatMonitor
    from .transport import QuicFlowProtocol

__all__ = ["ClientInfo", "Session", "SessionRegistry", "SessionState"]


class SessionState(enum.Enum):
    """Where a session stands."""

    ACTIVE = "active"
    DRAINING = "draining"  # GOAWAY sent: no new calls, calls in flight finish
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """A snapshot of one connected client (times are Unix seconds)."""

    client_id: str
    remote_address: str
    """``host:port`` of the client's current path."""
    connected_since: float
    last_heartbeat: float | None
    """When the last PING arrived; None before the first."""
    missed_heartbeats: int
    rtt: float | None
    """QUIC's smoothed round-trip time in seconds, once measured."""
    heartbeat_interval: float
    calls_in: int
    """Calls the client made to the server."""
    calls_out: int
    """Calls the server made to the client."""
    bytes_in: int
    bytes_out: int
    labels: Mapping[str, str] = field(default_factory=dict)
    state: SessionState = SessionState.ACTIVE
    node: str = ""
    """In a cluster, the id of the node the client is connected to (empty otherwise)."""


class Session:
    """One live client session (internal; users see `ClientInfo`)."""

    __slots__ = (
        "bytes_in",
        "bytes_out",
        "calls_in",
        "calls_out",
        "client_id",
        "conn",
        "connected_since",
        "heartbeat_interval",
        "labels",
        "last_heartbeat",
        "message_lane",
        "monitor",
        "peer_encodings",
        "state",
        "timer",
    )

    def __init__(
        self,
        client_id: str,
        conn: QuicFlowProtocol,
        labels: Mapping[str, str],
        heartbeat_interval: float,
        monitor: HeartbeatMonitor,
    ) -> None:
        self.client_id = client_id
        self.conn = conn
        self.labels = dict(labels)
        self.heartbeat_interval = heartbeat_interval
        self.monitor = monitor
        self.connected_since = time.time()
        self.last_heartbeat: float | None = None
        self.calls_in = 0
        self.calls_out = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.state = SessionState.ACTIVE
        self.timer: PolicyTimer | None = None
        """Keeps the heartbeat monitor's checks armed while the session lives."""
        self.message_lane: SendLane | None = None
        """The server's message lane to this client, once negotiated (wire-protocol.md
        §11.1)."""
        self.peer_encodings: frozenset[str] = frozenset()
        """Message encodings the client accepts (its HELLO, wire-protocol.md §4.4): the
        server compresses only with these."""

    def end(self) -> bool:
        """Mark the session CLOSED and stop its heartbeat checks; False if it already was."""
        if self.state is SessionState.CLOSED:
            return False
        self.state = SessionState.CLOSED
        if self.timer is not None:
            self.timer.stop()
            self.timer = None
        return True

    def info(self) -> ClientInfo:
        """A snapshot of this session."""
        addr = self.conn.peer_address
        return ClientInfo(
            client_id=self.client_id,
            remote_address=f"{addr[0]}:{addr[1]}" if addr else "",
            connected_since=self.connected_since,
            last_heartbeat=self.last_heartbeat,
            missed_heartbeats=self.monitor.missed_count,
            rtt=self.conn.rtt,
            heartbeat_interval=self.heartbeat_interval,
            calls_in=self.calls_in,
            calls_out=self.calls_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            labels=dict(self.labels),
            state=self.state,
        )


class SessionRegistry:
    """Client id → live session."""

    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def add(self, session: Session) -> Session | None:
        """Register ``session``; return the session it replaced (same id), if any."""
        old = self._sessions.get(session.client_id)
        self._sessions[session.client_id] = session
        return old

    def remove(self, session: Session) -> bool:
        """Forget ``session`` if it is still the live one for its id; True if it was."""
        if self._sessions.get(session.client_id) is session:
            del self._sessions[session.client_id]
            return True
        return False

    def get(self, client_id: str) -> Session | None:
        """The live session for ``client_id``, or None."""
        return self._sessions.get(client_id)

    def require(self, client_id: str) -> Session:
        """The live session for ``client_id``.

        Raises:
            ClientNotConnected: no client is connected under that id.
        """
        session = self._sessions.get(client_id)
        if session is None:
            raise ClientNotConnected(message=f"client {client_id!r} is not connected")
        return session

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._sessions
