"""What nodes say to each other through NATS, and how it is encoded (sans-IO).

The hot path (a routed call and its answer) uses a small binary layout, the
registry records use JSON (readable with ``nats kv get``). Every message
starts with a version byte, so a node can refuse what it does not know.

Binary layout (integers big-endian; ``str`` = u16 length + UTF-8; ``blob`` =
u32 length + bytes; ``md`` = u16 count, then per pair ``str`` key, u8 kind
(0 text, 1 bytes) and ``blob`` value)::

    RoutedCall  : u8 version=1, u8 flags (1 = may be held), u32 timeout_ms
                  (0xFFFFFFFF = none), str route, str origin node, str reply_to,
                  u8 len + message id, md metadata, blob payload
    CallOutcome : u8 version=1, u8 code, u8 flags (1 = not here), str message,
                  u8 len + message id, md trailing metadata, blob payload
    BroadcastCall: u8 version=1, u32 max_in_flight, u8 len + broadcast id,
                  md labels (text), RoutedCall
    NodeAnswer  : u8 version=1, str node, u32 count, then per client:
                  str client id, u8 delivery (0 delivered, 1 failed, 2 timed out),
                  CallOutcome
    StreamOpen  : u8 version=1, u8 kind (1 = requests stream, 2 = responses
                  stream), u32 window (bytes), RoutedCall (its payload: the one request,
                  or empty when requests stream)
    Frame       : u8 version=1, u8 type, u32 seq, then by type:
                  1 OPENED     str node, str subject, u32 credit (bytes)
                  2 HEADERS    md initial metadata
                  3 MESSAGE    the message bytes (the rest of the frame)
                  4 CREDIT     u32 more bytes the peer may send (a message
                               costs its length + 64)
                  5 HALF_CLOSE (nothing)
                  6 END        u8 code, u8 flags (1 = not here), str message, md trailing
                  7 CANCEL     u8 code, str message
                  8 MESSAGES   u32 count, then per message u32 length + bytes
                               (several MESSAGEs in one NATS message)

A routed stream's frames are numbered per direction from 0; a gap is a lost
frame and ends the stream UNAVAILABLE (quicflow/cluster/streams.py).
"""

from __future__ import annotations

import enum
import json
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from ..metadata import Metadata
from ..sessions import ClientInfo, SessionState
from ..status import StatusCode

__all__ = [
    "BroadcastCall",
    "CallOutcome",
    "ClientOutcome",
    "Frame",
    "FrameType",
    "StreamOpen",
    "decode_client_infos",
    "encode_client_infos",
    "NodeAnswer",
    "NodeRecord",
    "Registration",
    "RoutedCall",
]

VERSION = 1
_NO_TIMEOUT = 0xFFFF_FFFF
_DELIVERY = ("delivered", "failed", "timed_out")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RoutedCall:
    """A unary call for a client on another node (its request already serialized)."""

    route: str
    payload: bytes
    metadata: Metadata = ()
    timeout: float | None = None
    """Seconds the client gets to answer, from when the owning node receives it."""
    message_id: bytes = b""
    """Sent in the call's HEADERS: the client answers a repeat from its reply cache."""
    origin: str = ""
    """The sending node's id."""
    reply_to: str = ""
    """For a held send: the subject the answer is published to when it is delivered."""
    holdable: bool = False
    """The sender holds it (JetStream) if the client is not connected anywhere."""

    def encode(self) -> bytes:
        out = bytearray((VERSION, 1 if self.holdable else 0))
        timeout_ms = (
            _NO_TIMEOUT
            if self.timeout is None
            else min(max(int(self.timeout * 1000), 0), _NO_TIMEOUT - 1)
        )
        out += struct.pack(">I", timeout_ms)
        _put_str(out, self.route)
        _put_str(out, self.origin)
        _put_str(out, self.reply_to)
        _put_short(out, self.message_id)
        _put_md(out, self.metadata)
        _put_blob(out, self.payload)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> RoutedCall:
        return _read_all(data, cls._read)

    @classmethod
    def _read(cls, r: _Reader) -> RoutedCall:
        r.version()
        flags = r.u8()
        timeout_ms = r.u32()
        route = r.str()
        origin = r.str()
        reply_to = r.str()
        message_id = r.short()
        metadata = r.md()
        payload = r.blob()
        return cls(
            route,
            payload,
            metadata,
            None if timeout_ms == _NO_TIMEOUT else timeout_ms / 1000,
            message_id,
            origin,
            reply_to,
            bool(flags & 1),
        )


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How a routed call ended: the client's status and reply (or why it did not run)."""

    code: StatusCode
    message: str = ""
    payload: bytes = b""
    trailing_metadata: Metadata = ()
    not_here: bool = False
    """The node holds no session for the client (a stale route): nothing was sent, retry."""
    message_id: bytes = b""

    def encode(self) -> bytes:
        out = bytearray((VERSION, self.code.value, 1 if self.not_here else 0))
        self._write(out)
        return bytes(out)

    def _write(self, out: bytearray) -> None:
        _put_str(out, self.message)
        _put_short(out, self.message_id)
        _put_md(out, self.trailing_metadata)
        _put_blob(out, self.payload)

    @classmethod
    def decode(cls, data: bytes) -> CallOutcome:
        return _read_all(data, cls._read)

    @classmethod
    def _read(cls, r: _Reader) -> CallOutcome:
        r.version()
        code = StatusCode.from_wire(r.u8())
        flags = r.u8()
        message = r.str()
        message_id = r.short()
        trailing = r.md()
        payload = r.blob()
        return cls(code, message, payload, trailing, bool(flags & 1), message_id)


@dataclass(frozen=True, slots=True)
class BroadcastCall:
    """A broadcast: every node runs ``call`` on its own matching clients."""

    call: RoutedCall
    broadcast_id: bytes
    labels: Mapping[str, str] = field(default_factory=dict)
    max_in_flight: int = 100

    def encode(self) -> bytes:
        out = bytearray((VERSION,))
        out += struct.pack(">I", self.max_in_flight)
        _put_short(out, self.broadcast_id)
        _put_md(out, tuple(self.labels.items()))
        out += self.call.encode()
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> BroadcastCall:
        r = _Reader(data)
        r.version()
        max_in_flight = r.u32()
        broadcast_id = r.short()
        labels = {k: v if isinstance(v, str) else v.decode() for k, v in r.md()}
        call = RoutedCall._read(r)
        r.end()
        return cls(call, broadcast_id, labels, max_in_flight)


@dataclass(frozen=True, slots=True)
class ClientOutcome:
    """One client's result inside a node's broadcast answer."""

    client_id: str
    delivery: str
    """``delivered``, ``failed`` or ``timed_out`` (`DeliveryStatus` values)."""
    outcome: CallOutcome


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """One node's answer to a broadcast: its clients' results."""

    node_id: str
    results: tuple[ClientOutcome, ...] = ()

    def encode(self) -> bytes:
        out = bytearray((VERSION,))
        _put_str(out, self.node_id)
        out += struct.pack(">I", len(self.results))
        for result in self.results:
            _put_str(out, result.client_id)
            out.append(_DELIVERY.index(result.delivery))
            out += result.outcome.encode()
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> NodeAnswer:
        r = _Reader(data)
        r.version()
        node_id = r.str()
        results = []
        for _ in range(r.u32()):
            client_id = r.str()
            index = r.u8()
            if index >= len(_DELIVERY):
                raise ValueError(f"unknown delivery status {index}")
            results.append(ClientOutcome(client_id, _DELIVERY[index], CallOutcome._read(r)))
        r.end()
        return cls(node_id, tuple(results))


@dataclass(frozen=True, slots=True)
class Registration:
    """A client's entry in the clients bucket (the KV revision is its epoch)."""

    node_id: str
    connected_since: float
    """Unix seconds."""
    remote_address: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    heartbeat_interval: float = 0.0

    def encode(self) -> bytes:
        return _json(
            {
                "node": self.node_id,
                "since": self.connected_since,
                "addr": self.remote_address,
                "labels": dict(self.labels),
                "hb": self.heartbeat_interval,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> Registration:
        obj = json.loads(data)
        return cls(
            str(obj["node"]),
            float(obj["since"]),
            str(obj.get("addr", "")),
            {str(k): str(v) for k, v in obj.get("labels", {}).items()},
            float(obj.get("hb", 0.0)),
        )


@dataclass(frozen=True, slots=True)
class NodeRecord:
    """A node's entry in the nodes bucket, rewritten every refresh."""

    node_id: str
    address: str
    """``host:port`` its clients connect to."""
    started: float
    """Unix seconds."""
    clients: int = 0

    def encode(self) -> bytes:
        return _json(
            {
                "node": self.node_id,
                "addr": self.address,
                "started": self.started,
                "clients": self.clients,
            }
        )

    @classmethod
    def decode(cls, data: bytes) -> NodeRecord:
        obj = json.loads(data)
        return cls(
            str(obj["node"]), str(obj["addr"]), float(obj["started"]), int(obj.get("clients", 0))
        )


STREAM_REQUESTS = 1
"""`StreamOpen.kind` bit: the caller streams requests."""
STREAM_RESPONSES = 2
"""`StreamOpen.kind` bit: the client streams responses."""


@dataclass(frozen=True, slots=True)
class StreamOpen:
    """The first message of a routed streaming call (to the client's subject)."""

    call: RoutedCall
    """Route, metadata, timeout, message id, origin; ``payload`` is the one request
    (server-streaming) or empty (the requests follow as MESSAGE frames)."""
    kind: int
    """`STREAM_REQUESTS` | `STREAM_RESPONSES` bits."""
    window: int
    """Bytes of responses the owning node may send before it gets CREDIT (each message
    costs its length plus 64)."""

    def encode(self) -> bytes:
        out = bytearray((VERSION, self.kind))
        out += struct.pack(">I", self.window)
        out += self.call.encode()
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> StreamOpen:
        r = _Reader(data)
        r.version()
        kind = r.u8()
        if not kind or kind & ~(STREAM_REQUESTS | STREAM_RESPONSES):
            raise ValueError(f"bad stream kind {kind}")
        window = r.u32()
        if window < 1:
            raise ValueError("a stream window must be at least 1")
        call = RoutedCall._read(r)
        r.end()
        return cls(call, kind, window)


class FrameType(enum.IntEnum):
    """What a routed stream's frame carries."""

    OPENED = 1
    HEADERS = 2
    MESSAGE = 3
    CREDIT = 4
    HALF_CLOSE = 5
    END = 6
    CANCEL = 7
    MESSAGES = 8


@dataclass(frozen=True, slots=True)
class Frame:
    """One frame of a routed stream, either way (see the module docstring)."""

    type: FrameType
    seq: int
    payload: bytes = b""
    """MESSAGE: the serialized message."""
    payloads: tuple[bytes, ...] = ()
    """MESSAGES: the serialized messages, in order."""
    metadata: Metadata = ()
    """HEADERS: initial metadata; END: trailing metadata."""
    credit: int = 0
    """OPENED: request bytes the caller may send; CREDIT: how many more."""
    node: str = ""
    """OPENED: the owning node's id."""
    subject: str = ""
    """OPENED: where the caller sends its frames."""
    code: StatusCode = StatusCode.OK
    """END, CANCEL."""
    message: str = ""
    """END, CANCEL: the status message."""
    not_here: bool = False
    """END before OPENED: the client is not on this node; nothing was sent, retry."""

    def encode(self, seq: int | None = None) -> bytes:
        """The frame's bytes, numbered ``seq`` (default: its own ``seq``)."""
        out = bytearray((VERSION, self.type))
        out += struct.pack(">I", self.seq if seq is None else seq)
        kind = self.type
        if kind is FrameType.OPENED:
            _put_str(out, self.node)
            _put_str(out, self.subject)
            out += struct.pack(">I", self.credit)
        elif kind is FrameType.HEADERS:
            _put_md(out, self.metadata)
        elif kind is FrameType.MESSAGE:
            out += self.payload
        elif kind is FrameType.CREDIT:
            out += struct.pack(">I", self.credit)
        elif kind is FrameType.END:
            out += bytes((self.code.value, 1 if self.not_here else 0))
            _put_str(out, self.message)
            _put_md(out, self.metadata)
        elif kind is FrameType.CANCEL:
            out.append(self.code.value)
            _put_str(out, self.message)
        elif kind is FrameType.MESSAGES:
            out += struct.pack(">I", len(self.payloads))
            for payload in self.payloads:
                _put_blob(out, payload)
        return bytes(out)

    @classmethod
    def decode(cls, data: bytes) -> Frame:
        r = _Reader(data)
        r.version()
        raw = r.u8()
        try:
            kind = FrameType(raw)
        except ValueError:
            raise ValueError(f"unknown stream frame type {raw}") from None
        seq = r.u32()
        if kind is FrameType.OPENED:
            node = r.str()
            subject = r.str()
            frame = cls(kind, seq, node=node, subject=subject, credit=r.u32())
        elif kind is FrameType.HEADERS:
            frame = cls(kind, seq, metadata=r.md())
        elif kind is FrameType.MESSAGE:
            frame = cls(kind, seq, payload=r.rest())
        elif kind is FrameType.CREDIT:
            frame = cls(kind, seq, credit=r.u32())
        elif kind is FrameType.END:
            code = StatusCode.from_wire(r.u8())
            flags = r.u8()
            message = r.str()
            frame = cls(
                kind, seq, code=code, not_here=bool(flags & 1), message=message, metadata=r.md()
            )
        elif kind is FrameType.CANCEL:
            code = StatusCode.from_wire(r.u8())
            frame = cls(kind, seq, code=code, message=r.str())
        elif kind is FrameType.MESSAGES:
            frame = cls(kind, seq, payloads=tuple(r.blob() for _ in range(r.u32())))
        else:
            frame = cls(kind, seq)
        r.end()
        return frame


def encode_client_infos(infos: list[ClientInfo]) -> bytes:
    """Live client snapshots as JSON (a node's answer to an info request)."""
    return _json(
        [
            {
                "id": i.client_id,
                "addr": i.remote_address,
                "since": i.connected_since,
                "hb_at": i.last_heartbeat,
                "missed": i.missed_heartbeats,
                "rtt": i.rtt,
                "hb": i.heartbeat_interval,
                "calls_in": i.calls_in,
                "calls_out": i.calls_out,
                "bytes_in": i.bytes_in,
                "bytes_out": i.bytes_out,
                "labels": dict(i.labels),
                "state": i.state.value,
                "node": i.node,
            }
            for i in infos
        ]
    )


def decode_client_infos(data: bytes) -> list[ClientInfo]:
    """What `encode_client_infos` made.

    Raises:
        ValueError: not such a list.
    """
    try:
        return [
            ClientInfo(
                client_id=str(o["id"]),
                remote_address=str(o["addr"]),
                connected_since=float(o["since"]),
                last_heartbeat=None if o["hb_at"] is None else float(o["hb_at"]),
                missed_heartbeats=int(o["missed"]),
                rtt=None if o["rtt"] is None else float(o["rtt"]),
                heartbeat_interval=float(o["hb"]),
                calls_in=int(o["calls_in"]),
                calls_out=int(o["calls_out"]),
                bytes_in=int(o["bytes_in"]),
                bytes_out=int(o["bytes_out"]),
                labels={str(k): str(v) for k, v in o["labels"].items()},
                state=SessionState(o["state"]),
                node=str(o["node"]),
            )
            for o in json.loads(data)
        ]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"bad client info: {exc!r}") from exc


def _json(value: object) -> bytes:
    """``value`` as compact JSON (the registry records, info answers)."""
    return json.dumps(value, separators=(",", ":")).encode()


# -- binary helpers --


def _read_all(data: bytes, read: Callable[[_Reader], T]) -> T:
    """``read(reader)`` over all of ``data``; ValueError if bytes are left over."""
    reader = _Reader(data)
    value = read(reader)
    reader.end()
    return value


def _put_str(out: bytearray, text: str) -> None:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("string over 65535 bytes")
    out += struct.pack(">H", len(raw))
    out += raw


def _put_short(out: bytearray, raw: bytes) -> None:
    if len(raw) > 0xFF:
        raise ValueError("id over 255 bytes")
    out.append(len(raw))
    out += raw


def _put_blob(out: bytearray, raw: bytes) -> None:
    out += struct.pack(">I", len(raw))
    out += raw


def _put_md(out: bytearray, metadata: Metadata) -> None:
    out += struct.pack(">H", len(metadata))
    for key, value in metadata:
        _put_str(out, key)
        if isinstance(value, str):
            out.append(0)
            _put_blob(out, value.encode("utf-8"))
        else:
            out.append(1)
            _put_blob(out, bytes(value))


class _Reader:
    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)
        self._pos = 0

    def _take(self, n: int) -> memoryview:
        end = self._pos + n
        if end > len(self._data):
            raise ValueError("truncated cluster message")
        chunk = self._data[self._pos : end]
        self._pos = end
        return chunk

    def version(self) -> None:
        version = self.u8()
        if version != VERSION:
            raise ValueError(f"unknown cluster message version {version}")

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def str(self) -> str:
        (n,) = struct.unpack(">H", self._take(2))
        return bytes(self._take(n)).decode("utf-8")

    def short(self) -> bytes:
        return bytes(self._take(self.u8()))

    def blob(self) -> bytes:
        return bytes(self._take(self.u32()))

    def rest(self) -> bytes:
        return bytes(self._take(len(self._data) - self._pos))

    def md(self) -> Metadata:
        (count,) = struct.unpack(">H", self._take(2))
        pairs: list[tuple[str, str | bytes]] = []
        for _ in range(count):
            key = self.str()
            kind = self.u8()
            value = self.blob()
            pairs.append((key, value.decode("utf-8") if kind == 0 else value))
        return tuple(pairs)

    def end(self) -> None:
        if self._pos != len(self._data):
            raise ValueError("trailing bytes after a cluster message")
