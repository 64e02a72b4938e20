"""Property-based tests (Hypothesis) of the frame decoder and the two state machines.

Properties, for any input Hypothesis can build:

- `FrameDecoder`: any byte sequence, split into ``feed()`` chunks anywhere,
  gives exactly the frames (and the same error, at the same frame) that a
  one-shot decode gives; the only exceptions are `MalformedFrame` and
  `FrameTooLarge`.
- `CallProtocol` and `ControlProtocol`, each role: ``receive_data`` never
  raises, whatever arrives and however it is split; it reports at most one
  `ProtocolViolation`, last, and nothing afterwards; the events do not depend
  on the split. Sending raises only `LocalProtocolError`, and whatever a
  machine agreed to send is accepted by the peer's machine without a
  violation.

tests/protocol/test_call_fuzz.py keeps its seeded random cases as a fast
smoke test; this module searches (and shrinks) instead. The profile is
bounded and derandomized so `make test` is deterministic and takes seconds;
`make chaos` runs the same properties with many more examples and a random
seed.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quicflow.errors import FrameTooLarge, LocalProtocolError
from quicflow.protocol.call import CallProtocol, Role, SideState
from quicflow.protocol.control import ControlProtocol, ControlState
from quicflow.protocol.events import EndOfStream, ProtocolViolation
from quicflow.wire import FrameDecoder, FrameType, encode_frame
from quicflow.wire.codec import MalformedFrame
from quicflow.wire.v1 import frames_pb2 as pb

MAX_DATA = 64
MAX_CONTROL = 256

FAST = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(
    max_examples=3_000,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- strategies --------------------------------------------------------------

_types = st.one_of(st.sampled_from([int(t) for t in FrameType]), st.integers(0, 255))
_keys = st.sampled_from(["k", "a-bin", "x.y_z", "", "Upper", "sp ace", "caf\u00e9"])


def _metadata_entries() -> st.SearchStrategy[list[pb.MetadataEntry]]:
    return st.lists(st.builds(pb.MetadataEntry, key=_keys, value=st.binary(max_size=6)), max_size=3)


_payloads: dict[int, st.SearchStrategy[bytes]] = {
    FrameType.HEADERS: st.builds(
        pb.CallHeaders,
        method=st.sampled_from(["", "/p.S/M"]),
        metadata=_metadata_entries(),
        timeout_us=st.integers(0, 2**64 - 1),
        message_id=st.binary(max_size=16),
        message_encoding=st.sampled_from(["", "identity", "gzip"]),
    ).map(lambda m: m.SerializeToString()),
    FrameType.TRAILERS: st.builds(
        pb.CallTrailers,
        status=st.integers(0, 2**32 - 1),
        message=st.text(max_size=8),
        metadata=_metadata_entries(),
        details=st.binary(max_size=4),
    ).map(lambda m: m.SerializeToString()),
    FrameType.HELLO: st.builds(
        pb.Hello,
        protocol_version=st.integers(0, 3),
        client_id=st.text(max_size=6),
        metadata=_metadata_entries(),
        heartbeat_interval_ms=st.integers(0, 2**32 - 1),
    ).map(lambda m: m.SerializeToString()),
    FrameType.WELCOME: st.builds(
        pb.Welcome,
        protocol_version=st.integers(0, 3),
        client_id=st.text(max_size=6),
        heartbeat_interval_ms=st.integers(0, 2**32 - 1),
        heartbeat_timeout_ms=st.integers(0, 2**32 - 1),
        max_message_size=st.integers(0, 2**32 - 1),
    ).map(lambda m: m.SerializeToString()),
    FrameType.PING: st.builds(pb.Ping, sequence=st.integers(0, 2**64 - 1)).map(
        lambda m: m.SerializeToString()
    ),
    FrameType.PONG: st.builds(pb.Pong, sequence=st.integers(0, 2**64 - 1)).map(
        lambda m: m.SerializeToString()
    ),
    FrameType.GOAWAY: st.builds(
        pb.GoAway, reason=st.text(max_size=6), grace_ms=st.integers(0, 2**32 - 1)
    ).map(lambda m: m.SerializeToString()),
}


@st.composite
def _frame(draw: st.DrawFn) -> bytes:
    """One frame: a plausible payload for its type or random bytes; sometimes a length
    prefix that lies (over the limit, or longer than what follows)."""
    ftype = draw(_types)
    plausible = _payloads.get(ftype, st.binary(max_size=MAX_DATA + 8))
    payload = draw(st.one_of(plausible, st.binary(max_size=MAX_CONTROL + 8)))
    frame = encode_frame(ftype, payload)
    if draw(st.integers(0, 9)) == 0:
        length = draw(st.sampled_from([MAX_DATA + 1, MAX_CONTROL + 1, 2**31, 2**32 - 1]))
        frame = bytes([ftype]) + length.to_bytes(4, "big") + payload
    return frame


streams = st.one_of(
    st.binary(max_size=300),
    st.lists(_frame(), max_size=8).map(b"".join),
)


@st.composite
def _split(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at any points (empty chunks included)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def stream_and_split(draw: st.DrawFn) -> tuple[bytes, list[bytes], bool]:
    data = draw(streams)
    return data, draw(_split(data)), draw(st.booleans())


# -- the decoder ---------------------------------------------------------------


def _decode(chunks: list[bytes]) -> tuple[list[tuple[int, bytes]], str | None, int]:
    decoder = FrameDecoder(MAX_DATA, MAX_CONTROL)
    frames: list[tuple[int, bytes]] = []
    for chunk in chunks:
        got, error = decoder.feed_until_error(chunk)
        frames += [(f.type, f.payload) for f in got]
        if error is not None:
            assert isinstance(error, (MalformedFrame, FrameTooLarge)), error
            # After an error the decoder refuses further input, cleanly.
            with pytest.raises(MalformedFrame):
                decoder.feed(b"\x00")
            return frames, f"{type(error).__name__}: {error}", -1
    return frames, None, decoder.buffered


def _check_decoder(case: tuple[bytes, list[bytes], bool]) -> None:
    data, chunks, _ = case
    assert _decode(chunks) == _decode([data])


@FAST
@given(stream_and_split())
def test_decoder_any_split_matches_one_shot(case: tuple[bytes, list[bytes], bool]) -> None:
    """Check that the decoder gives the one-shot frames and error for any split of any
    bytes, and raises nothing else."""
    _check_decoder(case)


# -- the call machine ------------------------------------------------------------


def _call_events(role: Role, chunks: list[bytes], fin: bool) -> list[Any]:
    machine = CallProtocol(role, max_message_size=MAX_DATA, max_metadata_size=MAX_CONTROL)
    if role is Role.CALLER:
        machine.send_headers("/p.S/M")
    events: list[Any] = []
    violated = False
    for i, chunk in enumerate(chunks):
        got = machine.receive_data(chunk, fin and i == len(chunks) - 1)
        if violated:
            assert got == [], "events after a ProtocolViolation"
        for n, event in enumerate(got):
            if isinstance(event, ProtocolViolation):
                assert n == len(got) - 1, "a ProtocolViolation must be the last event"
                assert machine.peer_state is SideState.ERROR
                violated = True
        events += got
    ends = [e for e in events if isinstance(e, EndOfStream)]
    assert len(ends) <= 1 and (not ends or events[-1] is ends[0])
    if not violated:
        assert machine.peer_state is not SideState.ERROR
    # Comparable across splits: violations by their text.
    return [str(e.error) if isinstance(e, ProtocolViolation) else e for e in events]


@FAST
@given(st.sampled_from(list(Role)), stream_and_split())
def test_call_machine_never_raises_and_ignores_the_split(
    role: Role, case: tuple[bytes, list[bytes], bool]
) -> None:
    """Check that any peer bytes, split anywhere, give the same well-formed events as the
    unsplit stream, ending in at most one ProtocolViolation."""
    data, chunks, fin = case
    assert _call_events(role, chunks or [b""], fin) == _call_events(role, [data], fin)


_call_ops = st.lists(
    st.one_of(
        st.tuples(st.just("headers"), st.sampled_from(["", "/p.S/M"])),
        st.tuples(st.just("message"), st.binary(max_size=MAX_DATA)),
        st.tuples(st.just("half_close"), st.none()),
        st.tuples(st.just("trailers"), st.integers(0, 20)),
    ),
    max_size=8,
)


@FAST
@given(st.sampled_from(list(Role)), _call_ops, st.data())
def test_what_a_call_machine_sends_its_peer_accepts(
    role: Role, ops: list[tuple[str, Any]], data: st.DataObject
) -> None:
    """Check that any sequence of send operations either works or raises LocalProtocolError,
    and that the bytes sent are accepted by the peer's machine, however split."""
    machine = CallProtocol(role, max_message_size=MAX_DATA, max_metadata_size=MAX_CONTROL)
    peer_role = Role.CALLEE if role is Role.CALLER else Role.CALLER
    peer = CallProtocol(peer_role, max_message_size=MAX_DATA, max_metadata_size=MAX_CONTROL)
    if peer_role is Role.CALLER:
        peer.send_headers("/p.S/M")
    out = bytearray()
    fin = False
    for op, arg in ops:
        try:
            if op == "headers":
                out += machine.send_headers(arg)
            elif op == "message":
                out += machine.send_message(arg)
            elif op == "half_close":
                machine.half_close()
                fin = True
            else:
                out += machine.send_trailers(arg, "m" if arg else "")
                fin = True
        except LocalProtocolError:
            continue
        if fin:
            break
    chunks = data.draw(_split(bytes(out))) or [b""]
    for i, chunk in enumerate(chunks):
        events = peer.receive_data(chunk, fin and i == len(chunks) - 1)
        assert not any(isinstance(e, ProtocolViolation) for e in events), events


# -- the control machine -----------------------------------------------------------


def _control_events(role: Role, chunks: list[bytes], fin: bool, prime: bool) -> list[Any]:
    machine = ControlProtocol(role, max_frame_size=MAX_CONTROL)
    if prime:  # get past the handshake first, so READY's rules are searched too
        if role is Role.CALLER:
            server = ControlProtocol(Role.CALLEE, max_frame_size=MAX_CONTROL)
            server.receive_data(machine.send_hello("c"), False)
            machine.receive_data(server.send_welcome("c", 15.0, 5.0, 1 << 20), False)
            assert machine.state is ControlState.READY
        else:
            hello = ControlProtocol(Role.CALLER, max_frame_size=MAX_CONTROL).send_hello("c")
            machine.receive_data(hello, False)
            machine.send_welcome("c", 15.0, 5.0, 1 << 20)
    events: list[Any] = []
    violated = False
    for i, chunk in enumerate(chunks):
        got = machine.receive_data(chunk, fin and i == len(chunks) - 1)
        if violated:
            assert got == [], "events after a ProtocolViolation"
        for n, event in enumerate(got):
            if isinstance(event, ProtocolViolation):
                assert n == len(got) - 1
                assert machine.state is ControlState.ERROR
                violated = True
        events += got
    return [str(e.error) if isinstance(e, ProtocolViolation) else e for e in events]


@FAST
@given(st.sampled_from(list(Role)), st.booleans(), stream_and_split())
def test_control_machine_never_raises_and_ignores_the_split(
    role: Role, prime: bool, case: tuple[bytes, list[bytes], bool]
) -> None:
    """Check that any bytes on the control stream, split anywhere, give the same events as
    the unsplit stream and at most one ProtocolViolation, last; nothing raises."""
    data, chunks, fin = case
    assert _control_events(role, chunks or [b""], fin, prime) == _control_events(
        role, [data], fin, prime
    )


_control_sends: dict[str, Callable[[ControlProtocol, Any], bytes]] = {
    "hello": lambda m, a: m.send_hello("c", heartbeat_interval=a),
    "welcome": lambda m, a: m.send_welcome("c", a or 15.0, 5.0, 1 << 20),
    "ping": lambda m, a: m.send_ping(a if isinstance(a, int) else 0),
    "pong": lambda m, a: m.send_pong(a if isinstance(a, int) else 0),
    "goaway": lambda m, a: m.send_goaway("bye", a or 0.0),
}


@FAST
@given(
    st.lists(
        st.tuples(
            st.sampled_from(sorted(_control_sends)),
            st.one_of(st.none(), st.floats(allow_nan=True), st.integers(-1, 2**65)),
        ),
        max_size=10,
    ),
    st.data(),
)
def test_control_sends_are_checked_and_accepted(
    ops: list[tuple[str, Any]], data: st.DataObject
) -> None:
    """Check that any sequence of sends on either side raises only LocalProtocolError, and
    that what each side sent is accepted by the other, however split."""
    client = ControlProtocol(Role.CALLER, max_frame_size=MAX_CONTROL)
    server = ControlProtocol(Role.CALLEE, max_frame_size=MAX_CONTROL)
    for name, arg in ops:
        sender, receiver = (client, server) if name in ("hello", "ping") else (server, client)
        try:
            out = _control_sends[name](sender, arg)
        except (LocalProtocolError, OverflowError, TypeError) as exc:
            # Out-of-range values must be refused as LocalProtocolError, not crash inside.
            assert isinstance(exc, LocalProtocolError), exc
            continue
        for chunk in data.draw(_split(out)):
            events = receiver.receive_data(chunk, False)
            assert not any(isinstance(e, ProtocolViolation) for e in events), events


# -- long versions -------------------------------------------------------------------


@pytest.mark.chaos
@LONG
@given(stream_and_split())
def test_decoder_long(case: tuple[bytes, list[bytes], bool]) -> None:
    """The decoder property with 3,000 examples and a random seed."""
    _check_decoder(case)


@pytest.mark.chaos
@LONG
@given(st.sampled_from(list(Role)), st.booleans(), stream_and_split())
def test_machines_long(role: Role, prime: bool, case: tuple[bytes, list[bytes], bool]) -> None:
    """The call and control machine properties with 3,000 examples and a random seed."""
    data, chunks, fin = case
    assert _call_events(role, chunks or [b""], fin) == _call_events(role, [data], fin)
    assert _control_events(role, chunks or [b""], fin, prime) == _control_events(
        role, [data], fin, prime
    )
