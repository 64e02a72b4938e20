"""The engine seam: what the transport asks of a QUIC state machine, and which one runs.

A connection's QUIC state machine (its *engine*) is aioquic's `QuicConnection`
(`engine_aioquic.AioquicFlowConnection`) or qh3's (`engine_qh3.Qh3FlowConnection`).
`QuicFlowProtocol` and the endpoints know it only as an `EngineConnection`: the
sans-IO calls of aioquic's public API (feed datagrams, drain events and
datagrams, one timer) plus the few questions QuicFlow adds (stream credit left,
bytes queued, the active path, ...), which each engine answers its own way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from typing import Any, Protocol

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from ..errors import ConfigError
from .engine_aioquic import AioquicFlowConnection
from .pacer import BytePacer, clock_resolution
from .settings import TransportSettings
from .streams import StreamHandler
from .tls import VerifiedClientCertificate

__all__ = [
    "ENGINES",
    "ENGINE_ENV",
    "EndedEngine",
    "EngineConfiguration",
    "EngineConnection",
    "make_connection",
    "resolve_engine",
]


class EngineConfiguration(Protocol):
    """What the transport reads of an engine's configuration."""

    @property
    def is_client(self) -> bool: ...


class EngineConnection(Protocol):
    """What the transport needs from an engine's connection.

    The first group is aioquic's public sans-IO API (qh3 has the same); the
    second is QuicFlow's, answered by `AioquicFlowConnection` and
    `Qh3FlowConnection` from their engine's state.
    """

    # -- aioquic's QuicConnection API --

    @property
    def configuration(self) -> EngineConfiguration: ...

    @property
    def host_cid(self) -> bytes:
        """The connection id this side chose first (the server routes it)."""
        ...

    def connect(self, addr: NetworkAddress, now: float) -> None: ...

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None: ...

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]: ...

    def get_timer(self) -> float | None: ...

    def handle_timer(self, now: float) -> None: ...

    def next_event(self) -> events.QuicEvent | None: ...

    def close(
        self, error_code: int = ..., frame_type: int | None = ..., reason_phrase: str = ...
    ) -> None: ...

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = ...) -> None: ...

    def reset_stream(self, stream_id: int, error_code: int) -> None: ...

    def stop_stream(self, stream_id: int, error_code: int) -> None: ...

    def send_ping(self, uid: int) -> None: ...

    def get_next_available_stream_id(self, is_unidirectional: bool = ...) -> int: ...

    def get_peer_address(self) -> NetworkAddress | None: ...

    # -- QuicFlow's questions --

    @property
    def engine(self) -> str:
        """ "aioquic" or "qh3"."""
        ...

    @property
    def flow_handlers(self) -> dict[int, StreamHandler]:
        """The runtime's handler of each stream (shared with the protocol's registry), from
        which an engine that can reads ``unread_bytes`` to grant receive credit."""
        ...

    @property
    def flow_withheld(self) -> dict[int, int]:
        """Bytes of an unfinished frame per stream that count as unread (`FrameWatch`)."""
        ...

    @property
    def client_certificate(self) -> VerifiedClientCertificate | None:
        """On a server: the client certificate verified in the handshake."""
        ...

    def close_event(self) -> events.ConnectionTerminated | None:
        """The connection's end once decided (by either side), before the engine reports
        it as an event after its draining period."""
        ...

    def reserve_stream(self) -> int:
        """Allocate the next bidirectional stream id now."""
        ...

    def free_bidi_slots(self) -> int:
        """Bidirectional streams we may still open under the peer's limit."""
        ...

    def send_buffered(self, stream_id: int) -> int:
        """Bytes written on the stream and not yet acknowledged (qh3: not yet sent)."""
        ...

    def receive_finished(self, stream_id: int) -> bool | None:
        """Whether the peer finished (or reset) its side; None if unknown or gone."""
        ...

    def sent_fin(self, stream_id: int) -> bool | None:
        """Whether we queued FIN on the stream; None if unknown or gone."""
        ...

    def stream_state_count(self) -> int:
        """Streams the engine still holds state for."""
        ...

    def smoothed_rtt(self) -> float | None:
        """The smoothed round-trip time in seconds, once measured."""
        ...

    def peer_certificate_der(self) -> bytes | None:
        """The peer's leaf certificate (DER), if it presented one."""
        ...

    def active_path(self) -> object | None:
        """The path in use (compared by identity to notice a move), None before any."""
        ...

    def reset_probe_backoff(self) -> None:
        """Forget the probe-timeout backoff earned on an old path."""
        ...

    def peer_reset_token(self) -> bytes | None:
        """The stateless reset token of the connection ID we send to, if the transport
        must detect resets itself (None: unknown yet, or the engine detects them)."""
        ...

    def ack_with_data(self, now: float) -> None:
        """Make a pending ACK due now, so data about to be sent carries it."""
        ...

    def credit_due(self, stream_id: int, step: int = ...) -> bool:
        """True if consumption on this stream warrants sending MAX_STREAM_DATA now (the
        limit would rise by ``step`` bytes; 0: half a window)."""
        ...


class EndedEngine:
    """What stands in for a connection's engine once the connection has ended.

    An engine is full of reference cycles (aioquic's connection holds bound methods of
    itself, its TLS context, its loss recovery; each stream's state points back), so an
    ended one would wait for the cyclic garbage collector, and a server that froze its
    heap (`quicflow.gcpause`) would keep it until a collection of the whole heap.
    `QuicFlowProtocol` therefore swaps its engine for this snapshot of the answers an
    ended connection still gives (its id, the close, the peer's address and
    certificate, the last RTT) and takes the engine apart (`release_engine`), so that
    reference counting frees it at once. Everything else answers as an ended
    connection would: nothing to send, no timer, no streams, writes refused.
    """

    __slots__ = (
        "_close_event",
        "_peer_address",
        "_peer_certificate_der",
        "_rtt",
        "client_certificate",
        "configuration",
        "engine",
        "flow_handlers",
        "flow_withheld",
        "host_cid",
    )

    def __init__(self, engine: EngineConnection) -> None:
        self.configuration = engine.configuration
        self.host_cid = engine.host_cid
        self.engine = engine.engine
        self.flow_handlers: dict[int, StreamHandler] = {}
        self.flow_withheld: dict[int, int] = {}
        self.client_certificate = engine.client_certificate
        self._close_event = engine.close_event()
        self._peer_address = engine.get_peer_address()
        self._rtt = engine.smoothed_rtt()
        self._peer_certificate_der = engine.peer_certificate_der()

    # -- aioquic's QuicConnection API: an ended connection's answers --

    def connect(self, addr: NetworkAddress, now: float) -> None:
        raise RuntimeError("the connection has ended")

    def receive_datagram(self, data: bytes, addr: NetworkAddress, now: float) -> None:
        pass

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, NetworkAddress]]:
        return []

    def get_timer(self) -> float | None:
        return None

    def handle_timer(self, now: float) -> None:
        pass

    def next_event(self) -> events.QuicEvent | None:
        return None

    def close(
        self, error_code: int = 0, frame_type: int | None = None, reason_phrase: str = ""
    ) -> None:
        pass

    def send_stream_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        raise RuntimeError("the connection has ended")

    def reset_stream(self, stream_id: int, error_code: int) -> None:
        pass

    def stop_stream(self, stream_id: int, error_code: int) -> None:
        pass

    def send_ping(self, uid: int) -> None:
        pass

    def get_next_available_stream_id(self, is_unidirectional: bool = False) -> int:
        raise RuntimeError("the connection has ended")

    def get_peer_address(self) -> NetworkAddress | None:
        return self._peer_address

    # -- QuicFlow's questions --

    def close_event(self) -> events.ConnectionTerminated | None:
        return self._close_event

    def reserve_stream(self) -> int:
        raise RuntimeError("the connection has ended")

    def free_bidi_slots(self) -> int:
        return 0

    def send_buffered(self, stream_id: int) -> int:
        return 0

    def receive_finished(self, stream_id: int) -> bool | None:
        return None

    def sent_fin(self, stream_id: int) -> bool | None:
        return None

    def stream_state_count(self) -> int:
        return 0

    def smoothed_rtt(self) -> float | None:
        return self._rtt

    def peer_certificate_der(self) -> bytes | None:
        return self._peer_certificate_der

    def active_path(self) -> object | None:
        return None

    def reset_probe_backoff(self) -> None:
        pass

    def peer_reset_token(self) -> bytes | None:
        return None

    def ack_with_data(self, now: float) -> None:
        pass

    def credit_due(self, stream_id: int, step: int = 0) -> bool:
        return False


def release_engine(engine: EngineConnection) -> None:
    """Take an ended connection's engine apart (it is used no more): drop every
    attribute of it and of the objects that point back at it, so that reference counting
    frees the lot without the cyclic collector (see `EndedEngine`)."""
    release = getattr(engine, "release", None)
    if release is not None:
        release()


ENGINES = ("aioquic", "qh3")
"""QUIC engines `TransportSettings.quic_engine` may name (besides "auto")."""

ENGINE_ENV = "QUICFLOW_QUIC_ENGINE"
"""Environment variable "auto" follows (e.g. to run a test suite on qh3)."""


def resolve_engine(name: str) -> str:
    """The engine ``name`` means: "auto" is ``$QUICFLOW_QUIC_ENGINE`` if set, else aioquic.

    qh3 is never chosen just because it is installed: it has no hook for
    consumption-based receive credit and no client certificates on a server (see engine_qh3).

    Raises:
        ConfigError: naming ``quic_engine`` for an unknown engine or qh3 not installed.
    """
    if name == "auto":
        name = os.environ.get(ENGINE_ENV, "").strip().lower() or "aioquic"
    if name not in ENGINES:
        raise ConfigError("quic_engine", f"must be one of 'auto', 'aioquic', 'qh3', got {name!r}")
    if name == "qh3":
        try:
            import qh3  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "quic_engine", "qh3 is not installed (pip install 'quicflow[qh3]')"
            ) from None
    return name


def make_connection(
    configuration: QuicConfiguration,
    settings: TransportSettings,
    *,
    session_ticket: Any = None,
    reset_key: bytes | None = None,
    **kwargs: Any,
) -> EngineConnection:
    """A new connection of the engine ``settings`` name (``kwargs``: aioquic's
    `QuicConnection` arguments besides the configuration; ``session_ticket``: a
    client's ticket from an earlier connection of the same engine, to resume;
    ``reset_key``: a server's stateless reset key, aioquic only: qh3 makes its own tokens)."""
    window = settings.stream_receive_window
    if resolve_engine(settings.quic_engine) == "qh3":
        from .engine_qh3 import Qh3FlowConnection, shared_qh3_configuration

        converted = shared_qh3_configuration(configuration)
        if session_ticket is not None:
            converted = dataclasses.replace(converted, session_ticket=session_ticket)
        qh3_connection: EngineConnection = Qh3FlowConnection(
            configuration=converted, window=window, **kwargs
        )
        return qh3_connection
    if session_ticket is not None:
        configuration = dataclasses.replace(configuration, session_ticket=session_ticket)
    pacer = BytePacer(
        max_datagram_size=configuration.max_datagram_size,
        resolution=clock_resolution(asyncio.get_running_loop()),
    )
    return AioquicFlowConnection(
        configuration=configuration, window=window, pacer=pacer, reset_key=reset_key, **kwargs
    )
