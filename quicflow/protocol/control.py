"""The connection's control stream as a sans-IO state machine (docs/wire-protocol.md §9).

The client opens one long-lived control stream right after the handshake.
It carries the same 5-byte frames as a call stream, but only the control
frames: HELLO, WELCOME, PING, PONG and GOAWAY. The whole exchange is one
table per role, `TRANSITIONS`, keyed by what happens (``SEND`` or
``RECEIVE`` of a frame type, or the peer's FIN)::

    client: IDLE --send HELLO--> HELLO_SENT --recv WELCOME--> READY
            READY: send PING, recv PONG; --recv GOAWAY--> GOING_AWAY (PING/PONG go on)
    server: IDLE --recv HELLO--> HELLO_RECEIVED --send WELCOME--> READY
            READY: recv PING, send PONG; --send GOAWAY--> GOING_AWAY (PING/PONG go on)
    either: --recv FIN--> CLOSED (from any live state)

A server that refuses a HELLO sends nothing on this stream: it closes the
connection with an application error instead.

The role is call.py's `Role`: the client opens the stream, so it is the
``CALLER``; the server is the ``CALLEE``.

``send_*`` return the bytes to write and raise `LocalProtocolError` for a
frame our table does not allow (``cannot send PING in HELLO_SENT as
CLIENT``). ``receive_data`` never raises for the peer's bytes: anything out of
order, undecodable, too large, or a call frame (HEADERS, DATA, COMPRESSED, TRAILERS) ends
the event list with one `ProtocolViolation`, and the machine parks in
``ERROR``. Durations are float seconds here and milliseconds (uint32) on the
wire.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from ..errors import LocalProtocolError
from ..metadata import Metadata, MetadataValue
from ..wire.codec import (
    FrameDecoder,
    FrameType,
    MalformedFrame,
    decode_metadata,
    encode_frame,
    encode_metadata,
)
from ..wire.v1 import frames_pb2 as pb
from .call import Role
from .events import ProtocolViolation
from .stream import receive_frames

__all__ = [
    "FIN",
    "PROTOCOL_VERSION",
    "TRANSITIONS",
    "ControlEvent",
    "ControlProtocol",
    "ControlState",
    "ControlStreamEnded",
    "Direction",
    "GoAwayReceived",
    "HelloReceived",
    "PingReceived",
    "PongReceived",
    "WelcomeReceived",
]

PROTOCOL_VERSION: Final = 1
"""The protocol version a HELLO and a WELCOME carry (wire-protocol.md §10.1). A HELLO or
WELCOME with any other value, 0 (absent) included, is a protocol error."""


class ControlState(enum.Enum):
    """Where the control stream stands."""

    IDLE = "idle"  # nothing sent or received yet
    HELLO_SENT = "hello_sent"  # client: waiting for WELCOME
    HELLO_RECEIVED = "hello_received"  # server: authenticating, WELCOME not yet sent
    READY = "ready"  # heartbeat running, calls may flow
    GOING_AWAY = "going_away"  # GOAWAY sent/received: no new calls, heartbeat goes on
    CLOSED = "closed"  # the peer ended the stream (FIN)
    ERROR = "error"  # the peer broke the protocol


class Direction(enum.Enum):
    """Whether a table key is a frame we send or one we receive."""

    SEND = "send"
    RECEIVE = "recv"


class _Fin:
    """Table key for the peer's FIN (end of the control stream)."""


FIN: Final = _Fin
_Key = tuple[Direction, FrameType | type[_Fin]]

_S, _R = Direction.SEND, Direction.RECEIVE
# TRANSITIONS[our role][state] -> {(direction, frame or FIN): next state}
# (our role: CALLER is the client, which opens the stream; CALLEE is the server)
TRANSITIONS: Final[dict[Role, dict[ControlState, dict[_Key, ControlState]]]] = {
    Role.CALLER: {
        ControlState.IDLE: {
            (_S, FrameType.HELLO): ControlState.HELLO_SENT,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.HELLO_SENT: {
            (_R, FrameType.WELCOME): ControlState.READY,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.READY: {
            (_S, FrameType.PING): ControlState.READY,
            (_R, FrameType.PONG): ControlState.READY,
            (_R, FrameType.GOAWAY): ControlState.GOING_AWAY,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.GOING_AWAY: {
            (_S, FrameType.PING): ControlState.GOING_AWAY,
            (_R, FrameType.PONG): ControlState.GOING_AWAY,
            (_R, FIN): ControlState.CLOSED,
        },
    },
    Role.CALLEE: {
        ControlState.IDLE: {
            (_R, FrameType.HELLO): ControlState.HELLO_RECEIVED,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.HELLO_RECEIVED: {
            (_S, FrameType.WELCOME): ControlState.READY,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.READY: {
            (_R, FrameType.PING): ControlState.READY,
            (_S, FrameType.PONG): ControlState.READY,
            (_S, FrameType.GOAWAY): ControlState.GOING_AWAY,
            (_R, FIN): ControlState.CLOSED,
        },
        ControlState.GOING_AWAY: {
            (_R, FrameType.PING): ControlState.GOING_AWAY,
            (_S, FrameType.PONG): ControlState.GOING_AWAY,
            (_R, FIN): ControlState.CLOSED,
        },
    },
}

_SIDE: Final = {Role.CALLER: "CLIENT", Role.CALLEE: "SERVER"}
_CALL_FRAMES: Final = frozenset(
    {FrameType.DATA, FrameType.HEADERS, FrameType.TRAILERS, FrameType.COMPRESSED}
)
_MAX_UINT32: Final = 0xFFFF_FFFF
_MAX_UINT64: Final = 2**64 - 1


# -- events ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """The client's HELLO (server side): who it says it is and what it asks for."""

    protocol_version: int
    client_id: str
    """The identity the client asks for (authenticate it before trusting it)."""
    metadata: Metadata
    """Credentials and other connection metadata (e.g. ``authorization``)."""
    labels: dict[str, str]
    heartbeat_interval: float | None
    """The interval the client asks for, seconds; None: the server's choice."""
    features: tuple[str, ...] = ()
    """Optional features the client supports (wire-protocol.md §10.3)."""
    message_encodings: tuple[str, ...] = ()
    """Message encodings the client accepts in COMPRESSED frames (wire-protocol.md §4.4)."""


@dataclass(frozen=True, slots=True)
class WelcomeReceived:
    """The server's WELCOME (client side): the accepted id and the connection's parameters."""

    protocol_version: int
    client_id: str
    """The id the server accepted (authenticated) for this connection."""
    heartbeat_interval: float
    """Seconds between pings, as the server decided."""
    heartbeat_timeout: float
    """Seconds; see docs/wire-protocol.md §9."""
    max_message_size: int
    """The server's limit on DATA payloads, bytes."""
    features: tuple[str, ...] = ()
    """The HELLO's features the server uses too (wire-protocol.md §10.3)."""
    message_encodings: tuple[str, ...] = ()
    """Message encodings the server accepts in COMPRESSED frames (wire-protocol.md §4.4)."""


@dataclass(frozen=True, slots=True)
class PingReceived:
    """A PING (server side); answer with ``send_pong(sequence)``."""

    sequence: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """A PONG (client side) answering our PING with this sequence."""

    sequence: int


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The server stops taking new calls on this connection (client side)."""

    reason: str
    grace: float
    """Seconds the server will wait for calls in flight."""


@dataclass(frozen=True, slots=True)
class ControlStreamEnded:
    """The peer ended the control stream cleanly (FIN): the connection is going."""


ControlEvent = (
    HelloReceived
    | WelcomeReceived
    | PingReceived
    | PongReceived
    | GoAwayReceived
    | ControlStreamEnded
    | ProtocolViolation
)

_ENDED: Final = ControlStreamEnded()


# -- helpers -----------------------------------------------------------------


def _key_name(key: _Key) -> str:
    direction, what = key
    name = "FIN" if what is FIN else FrameType(what).name  # type: ignore[arg-type]
    return f"{direction.value} {name}"


def _duration_ms(name: str, seconds: float | None, *, allow_zero: bool) -> int:
    """Seconds to wire milliseconds (uint32); a positive duration never rounds to 0."""
    if seconds is None:
        seconds = 0.0
    if not isinstance(seconds, (int, float)) or not math.isfinite(seconds) or seconds < 0:
        raise LocalProtocolError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
    if seconds == 0:
        if not allow_zero:
            raise LocalProtocolError(f"{name} must be > 0 seconds")
        return 0
    ms = max(1, round(seconds * 1000))
    if ms > _MAX_UINT32:
        raise LocalProtocolError(f"{name} of {seconds!r} s does not fit the wire's uint32 ms")
    return ms


def _uint(name: str, value: int, maximum: int, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
        raise LocalProtocolError(f"{name} must be an int in [{minimum}, {maximum}], got {value!r}")
    return value


@functools.cache
def _received(role: Role) -> frozenset[int]:
    """The frame types the peer may send to ``role`` (one set per role, shared by every
    connection's decoder rather than a set each)."""
    received = (
        what for row in TRANSITIONS[role].values() for direction, what in row if direction is _R
    )
    return frozenset(int(what) for what in received if isinstance(what, FrameType))


class ControlProtocol:
    """The sans-IO machine for one end of the control stream.

    Example::

        client = ControlProtocol(Role.CALLER, max_frame_size=64 << 10)  # the client
        server = ControlProtocol(Role.CALLEE, max_frame_size=64 << 10)  # the server
        hello = client.send_hello("sensor-7", [("authorization", "Bearer t")])
        [event] = server.receive_data(hello, False)           # HelloReceived
        welcome = server.send_welcome(event.client_id, 15.0, 5.0, 4 << 20)
        [event] = client.receive_data(welcome, False)         # WelcomeReceived
    """

    __slots__ = ("_decoder", "_side", "_table", "role", "state")

    def __init__(self, role: Role, *, max_frame_size: int) -> None:
        """Start an end of the control stream.

        ``role`` is ``Role.CALLER`` for the client (it opens the stream) and
        ``Role.CALLEE`` for the server. ``max_frame_size`` bounds every
        incoming frame's payload, bytes (the peer's ``max_metadata_size``
        limit, docs/wire-protocol.md §3.2).
        """
        self.role = role
        self._side = _SIDE[role]
        self.state = ControlState.IDLE
        self._table = TRANSITIONS[role]
        # Every frame here is a control frame, so one limit covers all of them. A type
        # the peer may never send here is refused at its header, whatever its length.
        self._decoder = FrameDecoder(max_frame_size, max_frame_size, allowed=_received(role))

    @property
    def buffered(self) -> int:
        """Bytes of a partial incoming frame held by the decoder."""
        return self._decoder.buffered

    # -- sending (each returns the bytes to write; wire-protocol.md §9) --

    def _check_send(self, ftype: FrameType) -> ControlState:
        nxt = self._table.get(self.state, {}).get((_S, ftype))
        if nxt is None:
            raise LocalProtocolError(
                f"cannot send {ftype.name} in {self.state.name} as {self._side}"
            )
        return nxt

    def send_hello(
        self,
        client_id: str,
        metadata: Iterable[tuple[str, MetadataValue]] = (),
        labels: Mapping[str, str] | None = None,
        heartbeat_interval: float | None = None,
        protocol_version: int = PROTOCOL_VERSION,
        features: Iterable[str] = (),
        message_encodings: Iterable[str] = (),
    ) -> bytes:
        """Open the control stream (client): identity, credentials, labels.

        ``features`` are the optional features the client supports
        (wire-protocol.md §10.3, e.g. ``"lane"``); ``message_encodings`` the
        encodings it accepts in COMPRESSED frames (§4.4).

        ``heartbeat_interval`` is the interval the client asks for (seconds;
        None or 0: the server's choice). Metadata must already be validated
        (`quicflow.metadata.normalize_metadata`).

        Raises:
            LocalProtocolError: not the client's first frame, or a value does
                not fit the wire.
        """
        nxt = self._check_send(FrameType.HELLO)
        msg = pb.Hello(
            protocol_version=_uint("protocol_version", protocol_version, _MAX_UINT32),
            client_id=client_id,
            heartbeat_interval_ms=_duration_ms(
                "heartbeat_interval", heartbeat_interval, allow_zero=True
            ),
        )
        if labels:
            msg.labels.update(labels)
        msg.features.extend(features)
        msg.message_encodings.extend(message_encodings)
        encode_metadata(msg, metadata)
        payload = msg.SerializeToString()
        self.state = nxt
        return encode_frame(FrameType.HELLO, payload)

    def send_welcome(
        self,
        client_id: str,
        heartbeat_interval: float,
        heartbeat_timeout: float,
        max_message_size: int,
        protocol_version: int = PROTOCOL_VERSION,
        features: Iterable[str] = (),
        message_encodings: Iterable[str] = (),
    ) -> bytes:
        """Accept the client (server), announcing the id and the connection's parameters.

        ``features``: those of the client's HELLO the server uses too (§10.3);
        ``message_encodings``: the encodings it accepts in COMPRESSED frames (§4.4).

        Raises:
            LocalProtocolError: no HELLO yet or WELCOME already sent, or a
                value is not positive or does not fit the wire.
        """
        nxt = self._check_send(FrameType.WELCOME)
        msg = pb.Welcome(
            protocol_version=_uint("protocol_version", protocol_version, _MAX_UINT32),
            client_id=client_id,
            heartbeat_interval_ms=_duration_ms(
                "heartbeat_interval", heartbeat_interval, allow_zero=False
            ),
            heartbeat_timeout_ms=_duration_ms(
                "heartbeat_timeout", heartbeat_timeout, allow_zero=False
            ),
            max_message_size=_uint("max_message_size", max_message_size, _MAX_UINT32, minimum=1),
            features=features,
            message_encodings=message_encodings,
        )
        payload = msg.SerializeToString()
        self.state = nxt
        return encode_frame(FrameType.WELCOME, payload)

    def send_ping(self, sequence: int) -> bytes:
        """Frame a PING (client, after WELCOME).

        Raises:
            LocalProtocolError: not READY or GOING_AWAY, or ``sequence`` is not a uint64.
        """
        nxt = self._check_send(FrameType.PING)
        payload = pb.Ping(sequence=_uint("sequence", sequence, _MAX_UINT64)).SerializeToString()
        self.state = nxt
        return encode_frame(FrameType.PING, payload)

    def send_pong(self, sequence: int) -> bytes:
        """Frame the PONG answering ``PingReceived(sequence)`` (server).

        Raises:
            LocalProtocolError: not READY or GOING_AWAY, or ``sequence`` is not a uint64.
        """
        nxt = self._check_send(FrameType.PONG)
        payload = pb.Pong(sequence=_uint("sequence", sequence, _MAX_UINT64)).SerializeToString()
        self.state = nxt
        return encode_frame(FrameType.PONG, payload)

    def send_goaway(self, reason: str, grace: float) -> bytes:
        """Tell the client to stop starting calls here (server, once, when READY).

        ``grace`` is the seconds calls in flight get to finish (>= 0).

        Raises:
            LocalProtocolError: not READY (GOAWAY is sent at most once), or
                ``grace`` is negative or does not fit the wire.
        """
        nxt = self._check_send(FrameType.GOAWAY)
        msg = pb.GoAway(reason=reason, grace_ms=_duration_ms("grace", grace, allow_zero=True))
        payload = msg.SerializeToString()
        self.state = nxt
        return encode_frame(FrameType.GOAWAY, payload)

    # -- receiving --

    def receive_data(self, data: bytes, end_stream: bool) -> list[ControlEvent]:
        """Feed bytes from the peer; return the events they complete, in order.

        Never raises for anything the peer sent: a broken rule ends the list
        with a `ProtocolViolation` (after the events of the frames completed
        before it) and the machine stays in ``ERROR``. Returns ``[]`` once the
        machine is CLOSED or in ERROR.
        """
        if self.state is ControlState.ERROR or self.state is ControlState.CLOSED:
            return []
        events, error = receive_frames(
            self._decoder,
            data,
            end_stream,
            on_frame=self._on_frame,
            on_unexpected=lambda frame_type: self._advance_peer((_R, frame_type)),
            on_end=self._on_end,
            stream="control stream",
        )
        if error is not None:
            self.state = ControlState.ERROR
            events.append(ProtocolViolation(error))
        return events

    def _on_end(self) -> ControlEvent:
        self._advance_peer((_R, FIN))
        return _ENDED

    def _advance_peer(self, key: _Key) -> None:
        nxt = self._table.get(self.state, {}).get(key)
        if nxt is None:
            what = key[1]
            if what in _CALL_FRAMES:
                raise MalformedFrame(
                    f"unexpected {FrameType(what).name} frame on the control stream"
                )
            raise MalformedFrame(f"cannot {_key_name(key)} in {self.state.name} as {self._side}")
        self.state = nxt

    def _check_version(self, version: int) -> None:
        """Refuse a HELLO or WELCOME of another protocol version (wire-protocol.md §10.1)."""
        if version != PROTOCOL_VERSION:
            raise MalformedFrame(
                f"unsupported protocol_version {version}: this "
                f"{self._side.lower()} speaks {PROTOCOL_VERSION}"
            )

    def _on_frame(self, ftype: FrameType, payload: bytes) -> ControlEvent:
        self._advance_peer((_R, ftype))
        try:
            if ftype is FrameType.HELLO:
                h = pb.Hello.FromString(payload)
                self._check_version(h.protocol_version)
                return HelloReceived(
                    protocol_version=h.protocol_version,
                    client_id=h.client_id,
                    metadata=decode_metadata(h.metadata) if h.metadata else (),
                    labels=dict(h.labels),
                    heartbeat_interval=(
                        h.heartbeat_interval_ms / 1000 if h.heartbeat_interval_ms else None
                    ),
                    features=tuple(h.features),
                    message_encodings=tuple(h.message_encodings),
                )
            if ftype is FrameType.WELCOME:
                w = pb.Welcome.FromString(payload)
                self._check_version(w.protocol_version)
                # §9.2: fields 3-5 are required; there are no defaults to fall back on.
                for name in ("heartbeat_interval_ms", "heartbeat_timeout_ms", "max_message_size"):
                    if not getattr(w, name):
                        raise MalformedFrame(f"WELCOME needs a positive {name}")
                return WelcomeReceived(
                    protocol_version=w.protocol_version,
                    client_id=w.client_id,
                    heartbeat_interval=w.heartbeat_interval_ms / 1000,
                    heartbeat_timeout=w.heartbeat_timeout_ms / 1000,
                    max_message_size=w.max_message_size,
                    features=tuple(w.features),
                    message_encodings=tuple(w.message_encodings),
                )
            if ftype is FrameType.PING:
                return PingReceived(pb.Ping.FromString(payload).sequence)
            if ftype is FrameType.PONG:
                return PongReceived(pb.Pong.FromString(payload).sequence)
            # GOAWAY (the tables admit nothing else from the peer)
            g = pb.GoAway.FromString(payload)
            return GoAwayReceived(reason=g.reason, grace=g.grace_ms / 1000)
        except MalformedFrame:
            raise
        except Exception as exc:  # protobuf's DecodeError and friends
            raise MalformedFrame(f"malformed {ftype.name} payload: {exc}") from exc
