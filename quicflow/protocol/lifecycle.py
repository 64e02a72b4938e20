"""The client connection's lifecycle as one table (docs/connections.md).

::

    IDLE ──CONNECT──▶ CONNECTING ──CONNECTED──▶ CONNECTED
                         ▲    │                    │
                 CONNECT │    │ CONNECT_FAILED     │ CONNECTION_LOST, GOAWAY
                         │    ▼                    ▼
                        RECONNECTING ◀─────────────┘
    any state ──CLOSE──▶ CLOSED (CLOSE in CLOSED is a no-op)

`ClientLifecycle` only records where the client stands and refuses a move
the table does not list (`LocalProtocolError`, ``cannot CONNECTED in IDLE``);
the runtime owns the tasks and timers that cause each event, and asks
`quicflow.protocol.backoff.Backoff` how long to stay in RECONNECTING.
"""

from __future__ import annotations

import enum
from typing import Final

from ..errors import LocalProtocolError

__all__ = ["TRANSITIONS", "ClientLifecycle", "ClientState", "LifecycleEvent"]


class ClientState(enum.Enum):
    """Where a client's connection stands."""

    IDLE = "idle"  # built, never started
    CONNECTING = "connecting"  # an attempt is under way (handshake, HELLO/WELCOME)
    CONNECTED = "connected"  # WELCOME received: calls flow
    RECONNECTING = "reconnecting"  # waiting out a backoff delay before the next attempt
    CLOSED = "closed"  # close() was called: final


class LifecycleEvent(enum.Enum):
    """What happened to the connection."""

    CONNECT = "connect"  # start an attempt
    CONNECTED = "connected"  # the attempt succeeded
    CONNECT_FAILED = "connect_failed"  # the attempt failed or timed out
    CONNECTION_LOST = "connection_lost"  # a live connection dropped or its heartbeat timed out
    GOAWAY = "goaway"  # the server asked us to go elsewhere
    CLOSE = "close"  # the user closed the client


_E = LifecycleEvent
_S = ClientState

TRANSITIONS: Final[dict[ClientState, dict[LifecycleEvent, ClientState]]] = {
    _S.IDLE: {_E.CONNECT: _S.CONNECTING, _E.CLOSE: _S.CLOSED},
    _S.CONNECTING: {
        _E.CONNECTED: _S.CONNECTED,
        _E.CONNECT_FAILED: _S.RECONNECTING,
        _E.CLOSE: _S.CLOSED,
    },
    _S.CONNECTED: {
        _E.CONNECTION_LOST: _S.RECONNECTING,
        _E.GOAWAY: _S.RECONNECTING,
        _E.CLOSE: _S.CLOSED,
    },
    _S.RECONNECTING: {_E.CONNECT: _S.CONNECTING, _E.CLOSE: _S.CLOSED},
    _S.CLOSED: {},
}

Transition = tuple[ClientState, LifecycleEvent, ClientState]


class ClientLifecycle:
    """The client's connection state, moved only along `TRANSITIONS`.

    Example::

        life = ClientLifecycle()
        life.fire(LifecycleEvent.CONNECT)     # (IDLE, CONNECTING)
        life.fire(LifecycleEvent.CONNECTED)   # (CONNECTING, CONNECTED)
        life.state                            # ClientState.CONNECTED
    """

    __slots__ = ("_state", "history")

    def __init__(self) -> None:
        self._state = ClientState.IDLE
        self.history: list[Transition] = []
        """Every transition taken, oldest first, as ``(old, event, new)``."""

    @property
    def state(self) -> ClientState:
        """The current state."""
        return self._state

    def fire(self, event: LifecycleEvent) -> tuple[ClientState, ClientState]:
        """Apply ``event`` and return ``(old, new)``.

        ``CLOSE`` in CLOSED is a no-op that returns ``(CLOSED, CLOSED)`` and
        records nothing, so closing twice is harmless.

        Raises:
            LocalProtocolError: the table has no entry for ``event`` in this
                state; the state is unchanged.
        """
        old = self._state
        if old is ClientState.CLOSED and event is LifecycleEvent.CLOSE:
            return old, old
        new = TRANSITIONS[old].get(event)
        if new is None:
            raise LocalProtocolError(f"cannot {event.name} in {old.name}")
        self._state = new
        self.history.append((old, event, new))
        return old, new
