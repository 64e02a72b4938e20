"""Sans-IO tests for `CallProtocol`: legal exchanges, illegal orders, the tables, encodings."""

from __future__ import annotations

import dataclasses
import math
import struct

import pytest

from quicflow.errors import (
    FrameTooLarge,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from quicflow.metadata import MetadataValue
from quicflow.protocol.call import END, TRANSITIONS, CallProtocol, Role, SideState, reset_status
from quicflow.protocol.events import (
    EndOfStream,
    Event,
    HeadersReceived,
    MessageReceived,
    ProtocolViolation,
    TrailersReceived,
)
from quicflow.status import StatusCode
from quicflow.wire.codec import ErrorCode, FrameType, MalformedFrame, encode_frame
from quicflow.wire.compression import compress
from quicflow.wire.v1 import frames_pb2 as pb

MAX_MESSAGE = 64 << 10
MAX_METADATA = 4 << 10
METHOD = "/echo.Echo/Say"
OTHER = {Role.CALLER: Role.CALLEE, Role.CALLEE: Role.CALLER}
CHUNKINGS = [None, 1, 3]
"""How `transfer` delivers bytes: all at once, one byte at a time, or three at a time."""

Pairs = tuple[tuple[str, MetadataValue], ...]


# -- helpers -------------------------------------------------------------------


def make(role: Role) -> CallProtocol:
    """A fresh machine for ``role`` with the test limits."""
    return CallProtocol(role, max_message_size=MAX_MESSAGE, max_metadata_size=MAX_METADATA)


def transfer(
    receiver: CallProtocol, data: bytes, *, end_stream: bool = False, chunk: int | None = None
) -> list[Event]:
    """Deliver ``data`` to ``receiver`` in pieces of ``chunk`` bytes, FIN with the last piece."""
    if chunk is None:
        return receiver.receive_data(data, end_stream)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    events: list[Event] = []
    for i, piece in enumerate(pieces):
        events += receiver.receive_data(piece, end_stream and i == len(pieces) - 1)
    return events


def headers_frame(method: str = "", metadata: Pairs = (), **fields: object) -> bytes:
    """Raw HEADERS bytes, built without a machine so any content can be sent."""
    msg = pb.CallHeaders(method=method, **fields)  # type: ignore[arg-type]
    for key, value in metadata:
        msg.metadata.add(key=key, value=value.encode() if isinstance(value, str) else value)
    return encode_frame(FrameType.HEADERS, msg.SerializeToString())


def trailers_frame(status: int = 0, message: str = "", metadata: Pairs = ()) -> bytes:
    """Raw TRAILERS bytes."""
    msg = pb.CallTrailers(status=status, message=message)
    for key, value in metadata:
        msg.metadata.add(key=key, value=value.encode() if isinstance(value, str) else value)
    return encode_frame(FrameType.TRAILERS, msg.SerializeToString())


def data_frame(payload: bytes = b"m") -> bytes:
    """Raw DATA bytes."""
    return encode_frame(FrameType.DATA, payload)


def violation(events: list[Event]) -> ProtocolError:
    """Assert ``events`` ends with the only ProtocolViolation and return its error."""
    assert events, "expected a ProtocolViolation, got no events"
    last = events[-1]
    assert isinstance(last, ProtocolViolation), f"expected a violation, got {events!r}"
    assert not any(isinstance(e, ProtocolViolation) for e in events[:-1])
    return last.error


def opened_callee() -> CallProtocol:
    """A callee that has received the call's HEADERS."""
    callee = make(Role.CALLEE)
    assert isinstance(callee.receive_data(headers_frame(METHOD), False)[0], HeadersReceived)
    return callee


def local(machine: CallProtocol) -> SideState:
    """``machine.local_state``, read through a call so mypy does not narrow it between steps."""
    return machine.local_state


def peer(machine: CallProtocol) -> SideState:
    """``machine.peer_state``, read through a call so mypy does not narrow it between steps."""
    return machine.peer_state


def headers_event(method: str = "", metadata: Pairs = (), timeout: float | None = None) -> Event:
    """The HeadersReceived a plain HEADERS frame decodes to."""
    return HeadersReceived(
        method=method, metadata=metadata, timeout=timeout, message_id=b"", message_encoding=""
    )


# -- legal exchanges, one per call kind ---------------------------------------


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_unary_exchange(chunk: int | None) -> None:
    """Check that a unary call goes caller to callee and back with the right events and states."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    request = caller.send_headers(METHOD, (("k", "v"),), timeout=1.5)
    assert local(caller) is SideState.OPEN
    request += caller.send_message(b"request")
    caller.half_close()
    assert local(caller) is SideState.CLOSED

    assert transfer(callee, request, end_stream=True, chunk=chunk) == [
        headers_event(METHOD, (("k", "v"),), 1.5),
        MessageReceived(b"request"),
        EndOfStream(),
    ]
    assert callee.peer_state is SideState.CLOSED

    reply = callee.send_headers("", (("srv", "x"),))
    reply += callee.send_message(b"reply")
    reply += callee.send_trailers(StatusCode.OK)
    assert callee.local_state is SideState.CLOSED

    assert transfer(caller, reply, end_stream=True, chunk=chunk) == [
        headers_event("", (("srv", "x"),)),
        MessageReceived(b"reply"),
        TrailersReceived(0, "", (), b""),
        EndOfStream(),
    ]
    assert peer(caller) is SideState.CLOSED
    assert caller.buffered == callee.buffered == 0


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_client_streaming_exchange(chunk: int | None) -> None:
    """Check that many requests (one empty) then one reply without response headers are legal."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    out = caller.send_headers(METHOD)
    for payload in (b"one", b"", b"three" * 1000):
        out += caller.send_message(payload)
    caller.half_close()
    assert transfer(callee, out, end_stream=True, chunk=chunk) == [
        headers_event(METHOD),
        MessageReceived(b"one"),
        MessageReceived(b""),
        MessageReceived(b"three" * 1000),
        EndOfStream(),
    ]
    # The callee may skip response headers and start with a message (IDLE -DATA-> OPEN).
    reply = callee.send_message(b"sum") + callee.send_trailers(0)
    assert transfer(caller, reply, end_stream=True, chunk=chunk) == [
        MessageReceived(b"sum"),
        TrailersReceived(0, "", (), b""),
        EndOfStream(),
    ]


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_server_streaming_exchange_with_error_status(chunk: int | None) -> None:
    """Check that one request then many replies and a non-OK status with details round-trip."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    out = caller.send_headers(METHOD) + caller.send_message(b"q")
    caller.half_close()
    transfer(callee, out, end_stream=True, chunk=chunk)

    reply = callee.send_headers("")
    for i in range(5):
        reply += callee.send_message(b"item%d" % i)
    reply += callee.send_trailers(
        StatusCode.NOT_FOUND, "no such item", (("why", "gone"), ("why-bin", b"\x00")), b"\x08\x05"
    )
    events = transfer(caller, reply, end_stream=True, chunk=chunk)
    assert events == [
        headers_event(),
        *(MessageReceived(b"item%d" % i) for i in range(5)),
        TrailersReceived(5, "no such item", (("why", "gone"), ("why-bin", b"\x00")), b"\x08\x05"),
        EndOfStream(),
    ]


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_bidi_streaming_interleaved(chunk: int | None) -> None:
    """Check that both sides may interleave messages, each delivered as it is written."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    assert transfer(callee, caller.send_headers(METHOD), chunk=chunk) == [headers_event(METHOD)]
    assert transfer(caller, callee.send_headers(""), chunk=chunk) == [headers_event()]
    for i in range(3):
        ping = b"ping%d" % i
        assert transfer(callee, caller.send_message(ping), chunk=chunk) == [MessageReceived(ping)]
        pong = b"pong%d" % i
        assert transfer(caller, callee.send_message(pong), chunk=chunk) == [MessageReceived(pong)]
    caller.half_close()
    assert transfer(callee, b"", end_stream=True, chunk=chunk) == [EndOfStream()]
    assert transfer(caller, callee.send_message(b"last"), chunk=chunk) == [MessageReceived(b"last")]
    assert transfer(caller, callee.send_trailers(0), end_stream=True, chunk=chunk) == [
        TrailersReceived(0, "", (), b""),
        EndOfStream(),
    ]
    for machine in (caller, callee):
        assert machine.local_state is machine.peer_state is SideState.CLOSED


def test_callee_may_end_before_the_caller_half_closes() -> None:
    """Check that the callee's trailers may arrive while the caller is still sending."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    transfer(callee, caller.send_headers(METHOD))
    end = callee.send_trailers(StatusCode.CANCELLED, "stop")
    assert transfer(caller, end, end_stream=True) == [
        TrailersReceived(1, "stop", (), b""),
        EndOfStream(),
    ]
    assert local(caller) is SideState.OPEN
    caller.send_message(b"late")  # still ours to send; the runtime decides whether to
    caller.half_close()
    assert local(caller) is SideState.CLOSED


def test_caller_with_no_messages_and_trailers_only_reply() -> None:
    """Check that HEADERS then FIN, answered by trailers only, is a complete call."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    out = caller.send_headers(METHOD)
    caller.half_close()
    assert transfer(callee, out, end_stream=True) == [headers_event(METHOD), EndOfStream()]
    end = callee.send_trailers(StatusCode.UNIMPLEMENTED, "nope")
    assert transfer(caller, end, end_stream=True) == [
        TrailersReceived(12, "nope", (), b""),
        EndOfStream(),
    ]


def test_fin_may_come_alone_after_the_last_frame() -> None:
    """Check that FIN delivered in an empty read after all frames is a clean end."""
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    assert caller.receive_data(trailers_frame(), False) == [TrailersReceived(0, "", (), b"")]
    assert peer(caller) is SideState.TRAILED
    assert caller.receive_data(b"", False) == []
    assert caller.receive_data(b"", True) == [EndOfStream()]
    assert peer(caller) is SideState.CLOSED


def test_buffered_reports_a_partial_incoming_frame() -> None:
    """Check that buffered counts the bytes of an incomplete frame from the peer."""
    callee = make(Role.CALLEE)
    frame = headers_frame(METHOD)
    assert callee.receive_data(frame[:-2], False) == []
    assert callee.buffered == len(frame) - 2 - 5
    assert callee.receive_data(frame[-2:], False) == [headers_event(METHOD)]
    assert callee.buffered == 0


# -- illegal orders from the peer ---------------------------------------------


@pytest.mark.parametrize(
    ("frames", "end_stream", "message"),
    [
        pytest.param(data_frame(), False, "unexpected DATA frame in state IDLE", id="data-first"),
        pytest.param(
            trailers_frame(), False, "unexpected TRAILERS frame in state IDLE", id="trailers-first"
        ),
        pytest.param(
            headers_frame(METHOD) + trailers_frame(),
            False,
            "unexpected TRAILERS frame in state OPEN",
            id="trailers-from-caller",
        ),
        pytest.param(
            headers_frame(METHOD) * 2,
            False,
            "unexpected HEADERS frame in state OPEN",
            id="headers-twice",
        ),
        pytest.param(
            headers_frame(METHOD) + data_frame() + headers_frame(METHOD),
            False,
            "unexpected HEADERS frame in state OPEN",
            id="headers-after-data",
        ),
        pytest.param(b"", True, "stream ended in state IDLE", id="fin-before-headers"),
        pytest.param(headers_frame(), False, "call HEADERS need a method", id="no-method"),
    ],
)
def test_callee_rejects_illegal_caller_orders(
    frames: bytes, end_stream: bool, message: str
) -> None:
    """Check that the callee turns each illegal caller order into a violation saying why."""
    callee = make(Role.CALLEE)
    error = violation(transfer(callee, frames, end_stream=end_stream))
    assert isinstance(error, MalformedFrame)
    assert message in str(error)
    assert callee.peer_state is SideState.ERROR


def test_callee_rejects_data_after_fin() -> None:
    """Check that a frame after the caller's FIN is a violation."""
    callee = make(Role.CALLEE)
    transfer(callee, headers_frame(METHOD), end_stream=True)
    assert "unexpected DATA frame in state CLOSED" in str(violation(transfer(callee, data_frame())))


def test_second_fin_is_a_violation() -> None:
    """Check that FIN reported twice is a violation, not a second EndOfStream."""
    callee = make(Role.CALLEE)
    assert transfer(callee, headers_frame(METHOD), end_stream=True)[-1] == EndOfStream()
    assert "stream ended in state CLOSED" in str(violation(callee.receive_data(b"", True)))


@pytest.mark.parametrize(
    ("frames", "end_stream", "message"),
    [
        pytest.param(
            b"", True, "stream ended without trailers in state IDLE", id="fin-with-nothing"
        ),
        pytest.param(
            headers_frame() + data_frame(),
            True,
            "stream ended without trailers in state OPEN",
            id="fin-without-trailers",
        ),
        pytest.param(
            headers_frame() * 2,
            False,
            "unexpected HEADERS frame in state OPEN",
            id="headers-twice",
        ),
        pytest.param(
            data_frame() + headers_frame(),
            False,
            "unexpected HEADERS frame in state OPEN",
            id="headers-after-data",
        ),
        pytest.param(
            trailers_frame() + data_frame(),
            False,
            "unexpected DATA frame in state TRAILED",
            id="data-after-trailers",
        ),
        pytest.param(
            trailers_frame() * 2,
            False,
            "unexpected TRAILERS frame in state TRAILED",
            id="trailers-twice",
        ),
        pytest.param(
            trailers_frame() + headers_frame(),
            False,
            "unexpected HEADERS frame in state TRAILED",
            id="headers-after-trailers",
        ),
        pytest.param(
            headers_frame(METHOD),
            False,
            "response HEADERS must not carry a method",
            id="response-headers-with-method",
        ),
    ],
)
def test_caller_rejects_illegal_callee_orders(
    frames: bytes, end_stream: bool, message: str
) -> None:
    """Check that the caller turns each illegal callee order into a violation saying why."""
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    error = violation(transfer(caller, frames, end_stream=end_stream))
    assert isinstance(error, MalformedFrame)
    assert message in str(error)
    assert peer(caller) is SideState.ERROR


CONTROL_TYPES = [
    FrameType.HELLO,
    FrameType.WELCOME,
    FrameType.PING,
    FrameType.PONG,
    FrameType.GOAWAY,
]


@pytest.mark.parametrize("ftype", CONTROL_TYPES, ids=lambda t: t.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("opened", [False, True], ids=["idle", "open"])
def test_control_frames_on_a_call_stream_are_violations(
    ftype: FrameType, role: Role, opened: bool
) -> None:
    """Check that HELLO, WELCOME, PING, PONG and GOAWAY are refused on a call stream."""
    machine = make(role)
    if opened:
        first = headers_frame(METHOD if role is Role.CALLEE else "")
        assert not isinstance(machine.receive_data(first, False)[-1], ProtocolViolation)
    error = violation(machine.receive_data(encode_frame(ftype, b""), False))
    state = "OPEN" if opened else "IDLE"
    assert f"unexpected {ftype.name} frame in state {state}" in str(error)


@pytest.mark.parametrize("ftype", [*CONTROL_TYPES, FrameType.MESSAGE], ids=lambda t: t.name)
@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
def test_a_frame_never_legal_here_is_a_violation_whatever_its_length(
    ftype: FrameType, role: Role
) -> None:
    """Check that a control or MESSAGE frame announcing 4 GiB on a call stream is refused
    as an illegal frame (INTERNAL, PROTOCOL_ERROR) at its header, not as an oversized one
    (RESOURCE_EXHAUSTED): the type is checked before the length (wire-protocol.md §3.2)."""
    for chunk in CHUNKINGS:
        machine = make(role)
        events = transfer(machine, struct.pack(">BI", ftype, 0xFFFF_FFFF), chunk=chunk)
        error = violation(events)
        assert not isinstance(error, FrameTooLarge)
        assert isinstance(error, MalformedFrame)
        assert str(error) == f"unexpected {ftype.name} frame in state IDLE"
        assert (error.error_code, error.status) == (ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL)


def test_trailers_from_the_caller_are_refused_whatever_their_length() -> None:
    """Check that TRAILERS, which a caller never sends, announcing 4 GiB after HEADERS are
    refused as illegal in state OPEN, not as too large."""
    error = violation(
        opened_callee().receive_data(struct.pack(">BI", FrameType.TRAILERS, 0xFFFF_FFFF), False)
    )
    assert str(error) == "unexpected TRAILERS frame in state OPEN"
    assert error.status is StatusCode.INTERNAL


def test_legal_types_over_their_limit_stay_resource_exhausted() -> None:
    """Check that HEADERS and DATA (and TRAILERS from the callee) over their limits are
    still FrameTooLarge, RESOURCE_EXHAUSTED."""
    for role, ftype in [
        (Role.CALLEE, FrameType.HEADERS),
        (Role.CALLEE, FrameType.DATA),
        (Role.CALLER, FrameType.TRAILERS),
    ]:
        error = violation(make(role).receive_data(struct.pack(">BI", ftype, 0xFFFF_FFFF), False))
        assert isinstance(error, FrameTooLarge)
        assert error.status is StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
@pytest.mark.parametrize("cut", [1, 4, 5, 7], ids=lambda n: f"after-{n}-bytes")
def test_stream_ended_inside_a_frame(role: Role, cut: int) -> None:
    """Check that FIN in the middle of a header or payload is a violation."""
    machine = make(role)
    partial = data_frame(b"abcdef")[:cut]
    error = violation(machine.receive_data(partial, True))
    assert isinstance(error, MalformedFrame)
    assert "stream ended inside a frame" in str(error)


@pytest.mark.parametrize("role", list(Role), ids=lambda r: r.name)
def test_unknown_frame_type_is_a_violation(role: Role) -> None:
    """Check that an unknown frame type from the peer becomes a violation, not an exception."""
    error = violation(make(role).receive_data(b"\x7f\x00\x00\x00\x00", False))
    assert isinstance(error, MalformedFrame)
    assert "unknown frame type 0x7f" in str(error)


@pytest.mark.parametrize(
    ("payload", "ftype"),
    [
        (b"\xff", FrameType.HEADERS),  # a truncated varint tag
        (b"\x0a\x05ab", FrameType.HEADERS),  # a length-delimited field running past the end
        (b"\x0a\x01\xff", FrameType.HEADERS),  # a method string that is not UTF-8
        (b"\xff", FrameType.TRAILERS),
        (b"\x12\x02\xc3", FrameType.TRAILERS),
    ],
)
def test_malformed_protobuf_payload_is_a_violation(payload: bytes, ftype: FrameType) -> None:
    """Check that HEADERS or TRAILERS whose protobuf does not parse become a MalformedFrame."""
    if ftype is FrameType.HEADERS:
        machine = make(Role.CALLEE)
    else:
        machine = make(Role.CALLER)
        machine.send_headers(METHOD)
    error = violation(machine.receive_data(encode_frame(ftype, payload), False))
    assert isinstance(error, MalformedFrame)
    assert str(error).startswith(f"malformed {ftype.name} payload")
    assert error.__cause__ is not None


@pytest.mark.parametrize(
    ("frame", "role"),
    [
        (data_frame(b"x" * (MAX_MESSAGE + 1)), Role.CALLER),
        (headers_frame(METHOD, (("big", "v" * MAX_METADATA),)), Role.CALLEE),
        (trailers_frame(0, "m" * (MAX_METADATA + 1)), Role.CALLER),
    ],
    ids=["data", "headers", "trailers"],
)
def test_frame_over_its_limit_is_a_resource_exhausted_violation(frame: bytes, role: Role) -> None:
    """Check that an oversize frame becomes a FrameTooLarge violation with EXCESSIVE_LOAD."""
    machine = make(role)
    if role is Role.CALLER:
        machine.send_headers(METHOD)
    error = violation(machine.receive_data(frame[:5], False))
    assert isinstance(error, FrameTooLarge)
    assert error.error_code == ErrorCode.EXCESSIVE_LOAD
    assert error.status is StatusCode.RESOURCE_EXHAUSTED
    assert machine.buffered <= 5


def test_message_at_the_limit_is_accepted() -> None:
    """Check that a message of exactly max_message_size is delivered."""
    callee = opened_callee()
    payload = b"x" * MAX_MESSAGE
    assert callee.receive_data(data_frame(payload), False) == [MessageReceived(payload)]


def test_violation_error_is_remote_with_protocol_error_code() -> None:
    """Check that an ordering violation carries PROTOCOL_ERROR and reports INTERNAL."""
    error = violation(make(Role.CALLEE).receive_data(data_frame(), False))
    assert isinstance(error, RemoteProtocolError)
    assert error.error_code == ErrorCode.PROTOCOL_ERROR
    assert error.status is StatusCode.INTERNAL


def test_after_a_violation_the_machine_returns_nothing_forever() -> None:
    """Check that once a violation is reported, every later input yields no events."""
    callee = make(Role.CALLEE)
    violation(callee.receive_data(data_frame(), False))
    assert callee.peer_state is SideState.ERROR
    for data, fin in [
        (headers_frame(METHOD), False),
        (data_frame(), False),
        (b"\x7f\x7f\x7f\x7f\x7f", False),
        (b"", True),
        (b"abc", True),
    ]:
        assert callee.receive_data(data, fin) == []
    assert callee.peer_state is SideState.ERROR


def test_events_before_a_violation_in_another_read_are_kept() -> None:
    """Check that frames completed before the bad one, in an earlier read, produce their events."""
    callee = make(Role.CALLEE)
    first = callee.receive_data(headers_frame(METHOD) + data_frame(b"a"), False)
    second = callee.receive_data(data_frame(b"b") + trailers_frame(), False)
    assert first == [headers_event(METHOD), MessageReceived(b"a")]
    assert second[0] == MessageReceived(b"b")
    assert "unexpected TRAILERS" in str(violation(second))


def test_events_before_a_violation_in_the_same_frame_sequence_are_kept() -> None:
    """Check that an ordering violation after good frames in one read keeps their events."""
    callee = make(Role.CALLEE)
    events = callee.receive_data(headers_frame(METHOD) + data_frame(b"a") + trailers_frame(), False)
    assert events[:2] == [headers_event(METHOD), MessageReceived(b"a")]
    violation(events)


@pytest.mark.parametrize("bad", [b"\x7f\x00\x00\x00\x00", b"\x00\xff\xff\xff\xff"])
def test_events_before_a_decoder_error_do_not_depend_on_the_split(bad: bytes) -> None:
    """Check that good frames before an undecodable one yield the same events however split."""
    stream = headers_frame(METHOD) + data_frame(b"a") + bad
    whole = make(Role.CALLEE).receive_data(stream, False)
    bytewise = transfer(make(Role.CALLEE), stream, chunk=1)
    assert bytewise[:2] == [headers_event(METHOD), MessageReceived(b"a")]
    assert [type(e) for e in whole] == [type(e) for e in bytewise]


# -- the tables ----------------------------------------------------------------


def test_transition_tables_match_the_documented_protocol() -> None:
    """Check that the tables say: caller HEADERS (DATA|COMPRESSED)* FIN; callee [HEADERS]
    (DATA|COMPRESSED)* TRAILERS FIN, COMPRESSED only after HEADERS."""
    assert TRANSITIONS == {
        Role.CALLER: {
            SideState.IDLE: {FrameType.HEADERS: SideState.OPEN},
            SideState.OPEN: {
                FrameType.DATA: SideState.OPEN,
                FrameType.COMPRESSED: SideState.OPEN,
                END: SideState.CLOSED,
            },
        },
        Role.CALLEE: {
            SideState.IDLE: {
                FrameType.HEADERS: SideState.OPEN,
                FrameType.DATA: SideState.OPEN,
                FrameType.TRAILERS: SideState.TRAILED,
            },
            SideState.OPEN: {
                FrameType.DATA: SideState.OPEN,
                FrameType.COMPRESSED: SideState.OPEN,
                FrameType.TRAILERS: SideState.TRAILED,
            },
            SideState.TRAILED: {END: SideState.CLOSED},
        },
    }


def _key_name(key: object) -> str:
    return key.name if isinstance(key, FrameType) else "FIN"


def _peer_cases() -> list[object]:
    cases: list[object] = []
    for sender in Role:
        for state in SideState:
            for key in [*FrameType, END]:
                cases.append(
                    pytest.param(
                        sender, state, key, id=f"{sender.name}-{state.name}-{_key_name(key)}"
                    )
                )
    return cases


def _peer_input(sender: Role, key: object) -> tuple[bytes, bool]:
    """Bytes that are a valid instance of ``key`` from ``sender``, so only order can be wrong."""
    if key is END:
        return b"", True
    if key is FrameType.HEADERS:
        return headers_frame(METHOD if sender is Role.CALLER else ""), False
    if key is FrameType.DATA:
        return data_frame(), False
    if key is FrameType.TRAILERS:
        return trailers_frame(), False
    if key is FrameType.COMPRESSED:
        return encode_frame(key, compress("gzip", b"x")), False
    assert isinstance(key, FrameType)
    return encode_frame(key, b""), False


@pytest.mark.parametrize(("sender", "state", "key"), _peer_cases())
def test_peer_table_is_enforced_for_every_state_and_frame(
    sender: Role, state: SideState, key: object
) -> None:
    """Check that each (role, state, frame) missing from the table is a violation; entries work."""
    receiver = make(OTHER[sender])
    receiver.peer_state = state
    receiver.peer_encoding = "gzip"  # as if its HEADERS named it (wire-protocol.md §4.4)
    data, fin = _peer_input(sender, key)
    events = receiver.receive_data(data, fin)
    allowed = TRANSITIONS[sender].get(state, {})
    if state is SideState.ERROR:
        assert events == []
    elif key in allowed:
        assert len(events) == 1
        assert not isinstance(events[0], ProtocolViolation)
        assert receiver.peer_state is allowed[key]  # type: ignore[index]
    else:
        error = violation(events)
        assert isinstance(error, MalformedFrame)
        assert f"in state {state.name}" in str(error)
        assert receiver.peer_state is SideState.ERROR


LOCAL_KEYS = [FrameType.HEADERS, FrameType.DATA, FrameType.TRAILERS, END]


def _local_cases() -> list[object]:
    return [
        pytest.param(role, state, key, id=f"{role.name}-{state.name}-{_key_name(key)}")
        for role in Role
        for state in SideState
        for key in LOCAL_KEYS
    ]


def _local_send(machine: CallProtocol, key: object) -> None:
    if key is FrameType.HEADERS:
        machine.send_headers(METHOD if machine.role is Role.CALLER else "")
    elif key is FrameType.DATA:
        machine.send_message(b"m")
    elif key is FrameType.TRAILERS:
        machine.send_trailers(0)
    else:
        machine.half_close()


@pytest.mark.parametrize(("role", "state", "key"), _local_cases())
def test_local_table_is_enforced_for_every_state_and_command(
    role: Role, state: SideState, key: object
) -> None:
    """Check that each command missing from the table fails with LocalProtocolError, state kept."""
    machine = make(role)
    machine.local_state = state
    allowed = TRANSITIONS[role].get(state, {})
    if key in allowed:
        _local_send(machine, key)
        # send_trailers also sends FIN: TRAILED is passed through on the way to CLOSED.
        expected = SideState.CLOSED if key is FrameType.TRAILERS else allowed[key]  # type: ignore[index]
        assert machine.local_state is expected
    else:
        with pytest.raises(LocalProtocolError) as info:
            _local_send(machine, key)
        assert str(info.value) == (
            f"cannot send {_key_name(key)} in state {state.name} as {role.name}"
        )
        assert machine.local_state is state


# -- local misuse --------------------------------------------------------------


def test_send_trailers_as_caller_is_local_error() -> None:
    """Check that a caller cannot send trailers."""
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    with pytest.raises(LocalProtocolError, match="cannot send TRAILERS in state OPEN as CALLER"):
        caller.send_trailers(0)


def test_message_after_half_close_is_local_error() -> None:
    """Check that a caller cannot send a message after FIN."""
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    caller.half_close()
    with pytest.raises(LocalProtocolError, match="cannot send DATA in state CLOSED as CALLER"):
        caller.send_message(b"late")


@pytest.mark.parametrize(
    ("role", "steps", "message"),
    [
        (Role.CALLER, ["message"], "cannot send DATA in state IDLE as CALLER"),
        (Role.CALLER, ["half_close"], "cannot send FIN in state IDLE as CALLER"),
        (Role.CALLER, ["headers", "headers"], "cannot send HEADERS in state OPEN as CALLER"),
        (Role.CALLER, ["headers", "half_close", "half_close"], "cannot send FIN in state CLOSED"),
        (Role.CALLEE, ["half_close"], "cannot send FIN in state IDLE as CALLEE"),
        (Role.CALLEE, ["message", "headers"], "cannot send HEADERS in state OPEN as CALLEE"),
        (Role.CALLEE, ["headers", "headers"], "cannot send HEADERS in state OPEN as CALLEE"),
        (Role.CALLEE, ["trailers", "message"], "cannot send DATA in state CLOSED as CALLEE"),
        (Role.CALLEE, ["trailers", "trailers"], "cannot send TRAILERS in state CLOSED"),
        (Role.CALLEE, ["trailers", "headers"], "cannot send HEADERS in state CLOSED"),
    ],
)
def test_local_misuse_raises_local_protocol_error(
    role: Role, steps: list[str], message: str
) -> None:
    """Check that commands out of order raise LocalProtocolError naming the command and state."""
    machine = make(role)
    method = METHOD if role is Role.CALLER else ""
    commands = {
        "headers": lambda: machine.send_headers(method),
        "message": lambda: machine.send_message(b"m"),
        "trailers": lambda: machine.send_trailers(0),
        "half_close": machine.half_close,
    }
    for step in steps[:-1]:
        commands[step]()
    with pytest.raises(LocalProtocolError, match=message) as info:
        commands[steps[-1]]()
    assert not isinstance(info.value, RemoteProtocolError)


@pytest.mark.parametrize(("role", "method"), [(Role.CALLEE, METHOD), (Role.CALLER, "")])
def test_headers_with_wrong_method_for_the_role_is_local_error(role: Role, method: str) -> None:
    """Check that a caller must name a method and a callee must not."""
    with pytest.raises(LocalProtocolError):
        make(role).send_headers(method)


# -- encodings: metadata, timeout, trailers ------------------------------------

ROUND_TRIP: Pairs = (
    ("authorization", "Bearer t0ken"),
    ("trace-bin", b"\x00\xff\x10"),
    ("lang", "\u65e5\u672c\u8a9e"),
    ("authorization", "again"),
    ("empty", ""),
)


def test_metadata_round_trip_in_headers() -> None:
    """Check that text and -bin metadata survive caller HEADERS to the callee, in order."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    (event,) = transfer(callee, caller.send_headers(METHOD, ROUND_TRIP))
    assert isinstance(event, HeadersReceived)
    assert event.metadata == ROUND_TRIP


def test_metadata_round_trip_in_response_headers_and_trailers() -> None:
    """Check that metadata survives the callee's response headers and trailers."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    caller.send_headers(METHOD)
    out = callee.send_headers("", ROUND_TRIP) + callee.send_trailers(0, "", ROUND_TRIP)
    headers, trailers, end = transfer(caller, out, end_stream=True)
    assert isinstance(headers, HeadersReceived)
    assert isinstance(trailers, TrailersReceived)
    assert headers.metadata == trailers.metadata == ROUND_TRIP
    assert end == EndOfStream()


@pytest.mark.parametrize("carrier", ["headers", "trailers"])
def test_non_utf8_text_metadata_is_a_violation(carrier: str) -> None:
    """Check that a text metadata value that is not UTF-8 is a violation naming the key."""
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    bad: Pairs = (("note", b"\xc3\x28"),)
    frame = headers_frame("", bad) if carrier == "headers" else trailers_frame(0, "", bad)
    error = violation(caller.receive_data(frame, False))
    assert isinstance(error, MalformedFrame)
    assert "metadata value for 'note' is not UTF-8" in str(error)


def test_upper_case_metadata_key_from_peer_is_a_violation() -> None:
    """Check that a peer's upper-case metadata key is a violation."""
    error = violation(make(Role.CALLEE).receive_data(headers_frame(METHOD, (("Key", "v"),)), False))
    assert "invalid metadata key 'Key'" in str(error)


def _sent_headers(out: bytes) -> pb.CallHeaders:
    assert out[0] == FrameType.HEADERS
    assert int.from_bytes(out[1:5], "big") == len(out) - 5
    return pb.CallHeaders.FromString(out[5:])


@pytest.mark.parametrize(
    ("timeout", "micros"),
    [(1.5, 1_500_000), (30.0, 30_000_000), (0.25, 250_000), (1e-3, 1_000), (2.5e-6, 2)],
)
def test_timeout_is_sent_in_microseconds(timeout: float, micros: int) -> None:
    """Check that a timeout in seconds goes on the wire as whole microseconds."""
    msg = _sent_headers(make(Role.CALLER).send_headers(METHOD, timeout=timeout))
    assert msg.timeout_us == micros


@pytest.mark.parametrize("timeout", [1e-7, 1e-9, 5e-324, 0.9e-6])
def test_tiny_timeout_is_at_least_one_microsecond(timeout: float) -> None:
    """Check that a positive timeout under 1 µs is sent as 1 µs, never as 0 (no deadline)."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    out = caller.send_headers(METHOD, timeout=timeout)
    assert _sent_headers(out).timeout_us == 1
    (event,) = transfer(callee, out)
    assert isinstance(event, HeadersReceived)
    assert event.timeout == 1e-6


def test_no_timeout_leaves_the_field_absent() -> None:
    """Check that timeout=None sends no timeout field at all and decodes as None."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    out = caller.send_headers(METHOD, timeout=None)
    assert out == encode_frame(FrameType.HEADERS, pb.CallHeaders(method=METHOD).SerializeToString())
    (event,) = transfer(callee, out)
    assert isinstance(event, HeadersReceived)
    assert event.timeout is None


def test_timeout_round_trip() -> None:
    """Check that the callee sees the caller's timeout in seconds."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    (event,) = transfer(callee, caller.send_headers(METHOD, timeout=1.5))
    assert isinstance(event, HeadersReceived)
    assert event.timeout == 1.5


@pytest.mark.parametrize("timeout", [math.inf, math.nan, 1e30])
def test_out_of_range_timeout_is_refused_or_clamped(timeout: float) -> None:
    """Check that a non-finite or huge timeout raises LocalProtocolError or is clamped to uint64."""
    caller = make(Role.CALLER)
    try:
        out = caller.send_headers(METHOD, timeout=timeout)
    except LocalProtocolError:
        assert local(caller) is SideState.IDLE
        return
    assert _sent_headers(out).timeout_us == 2**64 - 1


def test_message_id_and_encoding_reach_the_callee() -> None:
    """Check that message_id and message_encoding are carried into HeadersReceived."""
    callee = make(Role.CALLEE)
    caller = make(Role.CALLER)
    mid = bytes(range(16))
    (event,) = transfer(callee, caller.send_headers(METHOD, message_id=mid))
    assert isinstance(event, HeadersReceived)
    assert event.message_id == mid
    (event,) = transfer(make(Role.CALLEE), headers_frame(METHOD, message_encoding="identity"))
    assert isinstance(event, HeadersReceived)
    assert event.message_encoding == "identity"


def test_ok_trailers_only_encode_to_an_empty_frame() -> None:
    """Check that OK trailers with nothing else are exactly the 5-byte empty TRAILERS frame."""
    callee = make(Role.CALLEE)
    assert callee.send_trailers(StatusCode.OK) == b"\x02\x00\x00\x00\x00"
    caller = make(Role.CALLER)
    caller.send_headers(METHOD)
    assert caller.receive_data(b"\x02\x00\x00\x00\x00", True) == [
        TrailersReceived(0, "", (), b""),
        EndOfStream(),
    ]


@pytest.mark.parametrize(
    ("status", "message", "metadata", "details"),
    [
        (0, "fine", (), b""),
        (0, "", (("k", "v"),), b""),
        (0, "", (), b"\x01"),
        (StatusCode.INTERNAL, "", (), b""),
        (StatusCode.UNAUTHENTICATED, "who?", (("k-bin", b"\x00"),), b"\x02"),
    ],
)
def test_trailers_round_trip(status: int, message: str, metadata: Pairs, details: bytes) -> None:
    """Check that status, message, metadata and details survive the trip, OK or not."""
    caller, callee = make(Role.CALLER), make(Role.CALLEE)
    caller.send_headers(METHOD)
    out = callee.send_trailers(status, message, metadata, details)
    assert out != b"\x02\x00\x00\x00\x00" or status == 0
    assert transfer(caller, out, end_stream=True) == [
        TrailersReceived(int(status), message, metadata, details),
        EndOfStream(),
    ]


# -- reset_status --------------------------------------------------------------

RESET_EXPECTED: dict[ErrorCode, StatusCode] = {
    ErrorCode.NO_ERROR: StatusCode.INTERNAL,
    ErrorCode.CANCELLED: StatusCode.CANCELLED,
    ErrorCode.DEADLINE_EXCEEDED: StatusCode.DEADLINE_EXCEEDED,
    ErrorCode.REFUSED: StatusCode.UNAVAILABLE,
    ErrorCode.EXCESSIVE_LOAD: StatusCode.RESOURCE_EXHAUSTED,
    ErrorCode.PROTOCOL_ERROR: StatusCode.INTERNAL,
    ErrorCode.INTERNAL_ERROR: StatusCode.INTERNAL,
    # CONNECTION_CLOSE-only codes: a stream reset carrying one is unexpected.
    ErrorCode.UNAUTHENTICATED: StatusCode.INTERNAL,
    ErrorCode.PERMISSION_DENIED: StatusCode.INTERNAL,
    ErrorCode.SESSION_REPLACED: StatusCode.INTERNAL,
    ErrorCode.SESSION_EXPIRED: StatusCode.INTERNAL,
    ErrorCode.HELLO_TIMEOUT: StatusCode.INTERNAL,
}


def test_reset_status_table_covers_every_error_code() -> None:
    """Check that the expectations below name every ErrorCode, so a new code needs a decision."""
    assert set(RESET_EXPECTED) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode), ids=lambda c: c.name)
def test_reset_status_maps_every_error_code(code: ErrorCode) -> None:
    """Check that each QUIC error code maps to its status with a non-empty message."""
    status, message = reset_status(code)
    assert status is RESET_EXPECTED[code]
    assert message
    assert reset_status(int(code)) == (status, message)


def test_reset_status_messages() -> None:
    """Check that the mapped messages explain the reset and say when retrying is safe."""
    assert reset_status(ErrorCode.CANCELLED)[1] == "the peer cancelled the call"
    assert "safe to retry" in reset_status(ErrorCode.REFUSED)[1]
    assert reset_status(ErrorCode.NO_ERROR) == (
        StatusCode.INTERNAL,
        "stream reset by the peer (error code 0x0)",
    )


@pytest.mark.parametrize("code", [0x07, 0xFF, 0x1234, 2**62 - 1])
def test_reset_status_unknown_code(code: int) -> None:
    """Check that an unknown error code maps to INTERNAL with the code in hex."""
    assert reset_status(code) == (
        StatusCode.INTERNAL,
        f"stream reset by the peer (error code 0x{code:x})",
    )


# -- events ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "event",
    [
        headers_event(METHOD),
        MessageReceived(b"x"),
        TrailersReceived(0, "", (), b""),
        EndOfStream(),
        ProtocolViolation(MalformedFrame("x")),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_are_frozen_slotted_dataclasses(event: Event) -> None:
    """Check that every event is an immutable, slotted dataclass compared by value."""
    assert dataclasses.is_dataclass(event)
    assert not hasattr(event, "__dict__")
    for f in dataclasses.fields(event):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(event, f.name, None)
    assert event == dataclasses.replace(event)
