"""Seeded property-style fuzzing of `CallProtocol.receive_data`, with no extra dependencies.

Each case builds a byte stream from the peer (random bytes, or frames that are
mostly plausible and sometimes broken), splits it at random points, and feeds
it to a fresh machine. Whatever arrives, ``receive_data`` must only return
events: at most one `ProtocolViolation`, last, and nothing at all afterwards.
"""

from __future__ import annotations

import random

import pytest

from quicflow.errors import ProtocolError
from quicflow.protocol.call import CallProtocol, Role, SideState
from quicflow.protocol.events import (
    EndOfStream,
    Event,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from quicflow.wire.codec import FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

MAX_MESSAGE = 512
MAX_METADATA = 256
SEEDS = range(16)
CASES_PER_SEED = 150
EVENT_TYPES = (HeadersReceived, MessageReceived, TrailersReceived, EndOfStream, ProtocolViolation)


def _make(role: Role) -> CallProtocol:
    return CallProtocol(role, max_message_size=MAX_MESSAGE, max_metadata_size=MAX_METADATA)


def _random_key(rng: random.Random) -> str:
    return rng.choice(["k", "trace-bin", "a-b", "Upper", "", "x y", "caf\u00e9", "z-bin"])


def _random_headers(rng: random.Random) -> bytes:
    msg = pb.CallHeaders(method=rng.choice(["", "/p.S/M", "x"]))
    if rng.random() < 0.5:
        msg.timeout_us = rng.choice([0, 1, 1_500_000, 2**64 - 1])
    if rng.random() < 0.3:
        msg.message_id = rng.randbytes(16)
    for _ in range(rng.randint(0, 3)):
        value = rng.choice([b"v", b"\xff\xfe", rng.randbytes(rng.randint(0, 8)), "é".encode()])
        msg.metadata.add(key=_random_key(rng), value=value)
    return msg.SerializeToString()


def _random_trailers(rng: random.Random) -> bytes:
    msg = pb.CallTrailers(status=rng.choice([0, 1, 5, 13, 99, 2**32 - 1]))
    if rng.random() < 0.5:
        msg.message = rng.choice(["", "oops", "\u00fcber"])
    if rng.random() < 0.3:
        msg.details = rng.randbytes(rng.randint(0, 10))
    for _ in range(rng.randint(0, 2)):
        msg.metadata.add(key=_random_key(rng), value=rng.randbytes(rng.randint(0, 4)))
    return msg.SerializeToString()


def _random_payload(rng: random.Random, ftype: int) -> bytes:
    pick = rng.random()
    if pick < 0.2:
        return b""
    if pick < 0.35:
        return rng.randbytes(rng.randint(1, 40))  # usually not valid protobuf
    if pick < 0.4:
        return rng.randbytes(MAX_METADATA + rng.randint(1, 8))  # over the control limit
    if ftype == FrameType.HEADERS:
        return _random_headers(rng)
    if ftype == FrameType.TRAILERS:
        return _random_trailers(rng)
    return rng.randbytes(rng.randint(0, MAX_MESSAGE + 4))


FRAME_TYPE_WEIGHTS = [
    (FrameType.DATA, 5),
    (FrameType.HEADERS, 4),
    (FrameType.TRAILERS, 3),
    (FrameType.PING, 1),
    (FrameType.GOAWAY, 1),
    (FrameType.HELLO, 1),
    (-1, 1),  # a random byte, usually not a known type
]


def _random_frames(rng: random.Random) -> bytes:
    """Mostly well-formed frames in a random order, sometimes truncated or garbled."""
    types = [t for t, _ in FRAME_TYPE_WEIGHTS]
    weights = [w for _, w in FRAME_TYPE_WEIGHTS]
    out = bytearray()
    for _ in range(rng.randint(0, 6)):
        ftype = rng.choices(types, weights)[0]
        if ftype < 0:
            ftype = rng.randrange(256)
        frame = encode_frame(ftype, _random_payload(rng, ftype))
        damage = rng.random()
        if damage < 0.05:
            frame = frame[: rng.randrange(len(frame))]  # cut short
        elif damage < 0.1:
            mangled = bytearray(frame)
            mangled[rng.randrange(len(mangled))] = rng.randrange(256)
            frame = bytes(mangled)
        out += frame
    return bytes(out)


def _legal_stream(rng: random.Random, receiver: Role) -> bytes:
    """A well-formed, well-ordered stream from the peer of ``receiver`` (valid metadata too)."""
    out = bytearray()
    metadata = pb.CallHeaders(method="/p.S/M" if receiver is Role.CALLEE else "")
    for _ in range(rng.randint(0, 2)):
        metadata.metadata.add(key=rng.choice(["k", "a-bin"]), value=rng.choice([b"", b"v"]))
    if receiver is Role.CALLEE or rng.random() < 0.5:
        out += encode_frame(FrameType.HEADERS, metadata.SerializeToString())
    for _ in range(rng.randint(0, 4)):
        out += encode_frame(FrameType.DATA, rng.randbytes(rng.randint(0, MAX_MESSAGE)))
    if receiver is Role.CALLER:
        out += encode_frame(FrameType.TRAILERS, rng.choice([b"", _legal_trailers(rng)]))
    return bytes(out)


def _legal_trailers(rng: random.Random) -> bytes:
    msg = pb.CallTrailers(status=rng.randrange(17), message=rng.choice(["", "m"]))
    msg.details = rng.randbytes(rng.randint(0, 3))
    return msg.SerializeToString()


def _random_stream(rng: random.Random, receiver: Role) -> bytes:
    """Random bytes, random frames, or a legal start followed by random frames."""
    pick = rng.random()
    if pick < 0.25:
        return rng.randbytes(rng.randint(0, 64))
    if pick < 0.6:
        return _random_frames(rng)
    stream = _legal_stream(rng, receiver)
    return stream[: rng.randint(0, len(stream))] + _random_frames(rng)


def _split(data: bytes, rng: random.Random) -> list[bytes]:
    """Random pieces of ``data``; empty pieces included on purpose."""
    pieces: list[bytes] = []
    pos = 0
    while pos < len(data):
        size = rng.choice([0, 1, 1, 2, 5, rng.randint(1, 64), len(data)])
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def _feed(machine: CallProtocol, pieces: list[bytes], fin_at: int | None) -> list[Event]:
    """Feed ``pieces``; FIN rides on piece ``fin_at`` (None: no FIN); check the invariants."""
    events: list[Event] = []
    violated = False
    for i, piece in enumerate(pieces):
        got = machine.receive_data(piece, i == fin_at)
        assert isinstance(got, list)
        assert all(isinstance(e, EVENT_TYPES) for e in got), got
        if violated:
            assert got == [], "events after a ProtocolViolation"
        violations = [e for e in got if isinstance(e, ProtocolViolation)]
        if violations:
            assert len(violations) == 1
            assert got[-1] is violations[0], "a ProtocolViolation must be the last event"
            assert isinstance(violations[0].error, ProtocolError)
            assert machine.peer_state is SideState.ERROR
            violated = True
        events += got
    if violated:
        # Parked in ERROR: whatever else comes, nothing more is reported.
        assert machine.receive_data(b"\x00\x00\x00\x00\x01x", False) == []
        assert machine.receive_data(b"", True) == []
    ends = [e for e in events if isinstance(e, EndOfStream)]
    assert len(ends) <= 1
    if ends:
        assert events[-1] is ends[0] or isinstance(events[-1], ProtocolViolation)
    return events


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("seed", SEEDS)
def test_receive_data_never_raises(role: Role, seed: int) -> None:
    """Check that random peer bytes, split at random, only ever produce well-behaved events."""
    rng = random.Random(f"{role.name}-{seed}")
    for _ in range(CASES_PER_SEED):
        stream = _random_stream(rng, role)
        pieces = _split(stream, rng) or [b""]
        # FIN with the last piece, in the middle, or not at all.
        fin_at = rng.choice([len(pieces) - 1, len(pieces) - 1, rng.randrange(len(pieces)), None])
        machine = _make(role)
        if role is Role.CALLER:
            machine.send_headers("/p.S/M")
        _feed(machine, pieces, fin_at)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("seed", SEEDS)
def test_clean_streams_decode_the_same_however_split(role: Role, seed: int) -> None:
    """Check that a stream without violations yields identical events for whole and split input."""
    rng = random.Random(f"split-{role.name}-{seed}")
    for _ in range(CASES_PER_SEED):
        stream = _legal_stream(rng, role)
        whole = _feed(_make(role), [stream], 0)
        assert not any(isinstance(e, ProtocolViolation) for e in whole), whole
        assert whole[-1] == EndOfStream()
        pieces = _split(stream, rng) or [b""]
        assert _feed(_make(role), pieces, len(pieces) - 1) == whole


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
def test_pure_random_bytes_byte_by_byte(role: Role) -> None:
    """Check that thousands of random bytes fed one at a time never make receive_data raise."""
    rng = random.Random(f"bytes-{role.name}")
    for _ in range(300):
        stream = rng.randbytes(rng.randint(0, 40))
        pieces = [stream[i : i + 1] for i in range(len(stream))] or [b""]
        _feed(_make(role), pieces, len(pieces) - 1)
