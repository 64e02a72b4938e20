"""Sans-IO tests for `ControlProtocol`: the whole exchange, every illegal order, garbage input."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from quicflow.errors import FrameTooLarge, LocalProtocolError, ProtocolError, RemoteProtocolError
from quicflow.protocol.call import Role
from quicflow.protocol.control import (
    FIN,
    PROTOCOL_VERSION,
    TRANSITIONS,
    ControlEvent,
    ControlProtocol,
    ControlState,
    ControlStreamEnded,
    Direction,
    GoAwayReceived,
    HelloReceived,
    PingReceived,
    PongReceived,
    WelcomeReceived,
)
from quicflow.protocol.events import ProtocolViolation
from quicflow.wire.codec import FrameType, MalformedFrame, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

MAX_FRAME = 4 << 10
CLIENT, SERVER = Role.CALLER, Role.CALLEE
CHUNKINGS = [None, 1, 3]
"""How `transfer` delivers bytes: all at once, one byte at a time, or three at a time."""

CS = ControlState
ALLOWED_SEND: dict[Role, dict[ControlState, set[FrameType]]] = {
    CLIENT: {
        CS.IDLE: {FrameType.HELLO},
        CS.READY: {FrameType.PING},
        CS.GOING_AWAY: {FrameType.PING},
    },
    SERVER: {
        CS.HELLO_RECEIVED: {FrameType.WELCOME},
        CS.READY: {FrameType.PONG, FrameType.GOAWAY},
        CS.GOING_AWAY: {FrameType.PONG},
    },
}
"""What each end may send, written out by hand (the table must agree)."""
ALLOWED_RECEIVE: dict[Role, dict[ControlState, set[FrameType]]] = {
    CLIENT: {
        CS.HELLO_SENT: {FrameType.WELCOME},
        CS.READY: {FrameType.PONG, FrameType.GOAWAY},
        CS.GOING_AWAY: {FrameType.PONG},
    },
    SERVER: {
        CS.IDLE: {FrameType.HELLO},
        CS.READY: {FrameType.PING},
        CS.GOING_AWAY: {FrameType.PING},
    },
}
"""What each end accepts from its peer, by hand."""
LIVE_STATES = [CS.IDLE, CS.HELLO_SENT, CS.HELLO_RECEIVED, CS.READY, CS.GOING_AWAY]
CONTROL_FRAMES = [FrameType.HELLO, FrameType.WELCOME, FrameType.PING, FrameType.PONG]
CONTROL_FRAMES.append(FrameType.GOAWAY)


# -- helpers -------------------------------------------------------------------


def make(role: Role) -> ControlProtocol:
    """A fresh control machine for ``role`` with the test limit."""
    return ControlProtocol(role, max_frame_size=MAX_FRAME)


def state(machine: ControlProtocol) -> ControlState:
    """``machine.state`` through a call, so mypy does not narrow it between steps."""
    return machine.state


def transfer(
    receiver: ControlProtocol, data: bytes, *, end_stream: bool = False, chunk: int | None = None
) -> list[ControlEvent]:
    """Deliver ``data`` to ``receiver`` in pieces of ``chunk`` bytes, FIN with the last piece."""
    if chunk is None:
        return receiver.receive_data(data, end_stream)
    pieces = [data[i : i + chunk] for i in range(0, len(data), chunk)] or [b""]
    events: list[ControlEvent] = []
    for i, piece in enumerate(pieces):
        events += receiver.receive_data(piece, end_stream and i == len(pieces) - 1)
    return events


def violation(events: list[ControlEvent]) -> ProtocolError:
    """Assert ``events`` ends with the only ProtocolViolation and return its error."""
    assert events, "expected a ProtocolViolation, got no events"
    last = events[-1]
    assert isinstance(last, ProtocolViolation), f"expected a violation, got {events!r}"
    assert not any(isinstance(e, ProtocolViolation) for e in events[:-1])
    return last.error


def raw(ftype: FrameType) -> bytes:
    """A valid frame of ``ftype``, built without a machine so it can be sent anywhere."""
    payloads: dict[FrameType, bytes] = {
        FrameType.HELLO: pb.Hello(protocol_version=1, client_id="c").SerializeToString(),
        FrameType.WELCOME: pb.Welcome(
            protocol_version=1,
            client_id="c",
            heartbeat_interval_ms=15000,
            heartbeat_timeout_ms=5000,
            max_message_size=1024,
        ).SerializeToString(),
        FrameType.PING: pb.Ping(sequence=1).SerializeToString(),
        FrameType.PONG: pb.Pong(sequence=1).SerializeToString(),
        FrameType.GOAWAY: pb.GoAway(reason="bye", grace_ms=1000).SerializeToString(),
        FrameType.HEADERS: pb.CallHeaders(method="/a.B/C").SerializeToString(),
        FrameType.DATA: b"x",
        FrameType.COMPRESSED: b"x",
        FrameType.TRAILERS: b"",
        FrameType.MESSAGE: pb.RawMessage(type="t").SerializeToString(),
    }
    return encode_frame(ftype, payloads[ftype])


SENDERS: dict[FrameType, Callable[[ControlProtocol], bytes]] = {
    FrameType.HELLO: lambda m: m.send_hello("c"),
    FrameType.WELCOME: lambda m: m.send_welcome("c", 15.0, 5.0, 1024),
    FrameType.PING: lambda m: m.send_ping(1),
    FrameType.PONG: lambda m: m.send_pong(1),
    FrameType.GOAWAY: lambda m: m.send_goaway("bye", 1.0),
}


def machine_in(role: Role, target: ControlState) -> ControlProtocol:
    """A machine for ``role`` driven into ``target`` through legal steps."""
    m = make(role)
    if target is CS.CLOSED:
        assert m.receive_data(b"", True) == [ControlStreamEnded()]
    elif target is CS.ERROR:
        violation(m.receive_data(b"\xff" * 5, False))
    elif role is CLIENT:
        steps: list[Callable[[], object]] = [
            lambda: m.send_hello("c"),
            lambda: m.receive_data(raw(FrameType.WELCOME), False),
            lambda: m.receive_data(raw(FrameType.GOAWAY), False),
        ]
        order = [CS.IDLE, CS.HELLO_SENT, CS.READY, CS.GOING_AWAY]
        for step in steps[: order.index(target)]:
            step()
    else:
        steps = [
            lambda: m.receive_data(raw(FrameType.HELLO), False),
            lambda: m.send_welcome("c", 15.0, 5.0, 1024),
            lambda: m.send_goaway("bye", 1.0),
        ]
        order = [CS.IDLE, CS.HELLO_RECEIVED, CS.READY, CS.GOING_AWAY]
        for step in steps[: order.index(target)]:
            step()
    assert m.state is target
    return m


def reachable(role: Role) -> list[ControlState]:
    """The states ``role`` can reach (the other end's handshake state is not among them)."""
    skip = CS.HELLO_RECEIVED if role is CLIENT else CS.HELLO_SENT
    return [s for s in ControlState if s is not skip]


# -- the whole exchange --------------------------------------------------------


def handshake() -> tuple[ControlProtocol, ControlProtocol]:
    """A client and server after HELLO and WELCOME."""
    client, server = make(CLIENT), make(SERVER)
    [hello] = server.receive_data(client.send_hello("c"), False)
    assert isinstance(hello, HelloReceived)
    [welcome] = client.receive_data(server.send_welcome("c", 15.0, 5.0, 1024), False)
    assert isinstance(welcome, WelcomeReceived)
    return client, server


@pytest.mark.parametrize("chunk", CHUNKINGS)
def test_full_exchange_between_client_and_server(chunk: int | None) -> None:
    """Check that HELLO, WELCOME, PING/PONG, GOAWAY and FIN flow both ways with the right events."""
    client, server = make(CLIENT), make(SERVER)
    assert (client.state, server.state) == (CS.IDLE, CS.IDLE)

    hello = client.send_hello(
        "sensor-7",
        [("authorization", "Bearer t0k"), ("trace-bin", b"\x00\xff")],
        {"region": "eu", "rack": "12"},
        heartbeat_interval=5.0,
    )
    assert state(client) is CS.HELLO_SENT
    assert transfer(server, hello, chunk=chunk) == [
        HelloReceived(
            protocol_version=PROTOCOL_VERSION,
            client_id="sensor-7",
            metadata=(("authorization", "Bearer t0k"), ("trace-bin", b"\x00\xff")),
            labels={"region": "eu", "rack": "12"},
            heartbeat_interval=5.0,
        )
    ]
    assert state(server) is CS.HELLO_RECEIVED

    welcome = server.send_welcome("sensor-7", 5.0, 2.5, 4 << 20)
    assert state(server) is CS.READY
    assert transfer(client, welcome, chunk=chunk) == [
        WelcomeReceived(PROTOCOL_VERSION, "sensor-7", 5.0, 2.5, 4 << 20)
    ]
    assert state(client) is CS.READY

    for seq in (1, 2, 3):
        assert transfer(server, client.send_ping(seq), chunk=chunk) == [PingReceived(seq)]
        assert transfer(client, server.send_pong(seq), chunk=chunk) == [PongReceived(seq)]

    goaway = server.send_goaway("server stopping", 2.5)
    assert state(server) is CS.GOING_AWAY
    assert transfer(client, goaway, chunk=chunk) == [GoAwayReceived("server stopping", 2.5)]
    assert state(client) is CS.GOING_AWAY

    # The heartbeat goes on during the grace period.
    assert transfer(server, client.send_ping(4), chunk=chunk) == [PingReceived(4)]
    assert transfer(client, server.send_pong(4), chunk=chunk) == [PongReceived(4)]

    assert transfer(client, b"", end_stream=True, chunk=chunk) == [ControlStreamEnded()]
    assert transfer(server, b"", end_stream=True, chunk=chunk) == [ControlStreamEnded()]
    assert (state(client), state(server)) == (CS.CLOSED, CS.CLOSED)
    assert client.receive_data(b"", True) == []


def test_server_stream_split_at_every_byte_gives_the_same_events() -> None:
    """Check that the server's byte stream, cut at any one point, decodes to the same events."""
    server = machine_in(SERVER, CS.HELLO_RECEIVED)
    stream = (
        server.send_welcome("c", 15.0, 5.0, 1024)
        + server.send_pong(1)
        + server.send_pong(2**64 - 1)
        + server.send_goaway("bye", 0.0)
    )
    expected: list[ControlEvent] = [
        WelcomeReceived(1, "c", 15.0, 5.0, 1024),
        PongReceived(1),
        PongReceived(2**64 - 1),
        GoAwayReceived("bye", 0.0),
        ControlStreamEnded(),
    ]
    for cut in range(len(stream) + 1):
        client = machine_in(CLIENT, CS.HELLO_SENT)
        events = client.receive_data(stream[:cut], False)
        events += client.receive_data(stream[cut:], True)
        assert events == expected, cut


def test_client_stream_split_at_random_points_gives_the_same_events() -> None:
    """Check that the client's HELLO and pings, in random pieces, decode to the same events."""
    client = make(CLIENT)
    hello = client.send_hello("c", [("k", "v")], {"a": "b"}, 1.0)
    client.receive_data(raw(FrameType.WELCOME), False)
    pings = b"".join(client.send_ping(i) for i in range(1, 50))
    rng = random.Random(5)
    for _ in range(50):
        server = make(SERVER)
        events: list[ControlEvent] = []
        # The client pings only after WELCOME, so HELLO arrives alone.
        for stream in (hello, pings):
            cuts = sorted(rng.sample(range(1, len(stream)), 6))
            for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True):
                events += server.receive_data(stream[a:b], False)
            if server.state is CS.HELLO_RECEIVED:
                server.send_welcome("c", 1.0, 1.0, 1024)
        assert events[0] == HelloReceived(1, "c", (("k", "v"),), {"a": "b"}, 1.0)
        assert events[1:] == [PingReceived(i) for i in range(1, 50)]


def test_ping_before_welcome_is_a_violation() -> None:
    """Check that a PING read with HELLO, before WELCOME, is refused after the HelloReceived."""
    server = make(SERVER)
    events = server.receive_data(make(CLIENT).send_hello("c") + raw(FrameType.PING), False)
    assert isinstance(events[0], HelloReceived)
    assert str(violation(events)) == "cannot recv PING in HELLO_RECEIVED as SERVER"


# -- exact bytes and unit conversions -----------------------------------------


def test_wire_bytes_of_ping_pong_and_goaway() -> None:
    """Check the exact bytes: type, 4-byte length, then the protobuf payload in milliseconds."""
    client, server = handshake()
    assert client.send_ping(1) == bytes.fromhex("12 00000002 0801")
    assert server.send_pong(300) == bytes.fromhex("13 00000003 08ac02")
    assert server.send_goaway("", 2.5) == bytes.fromhex("14 00000003 10c413")
    assert make(CLIENT).send_hello("") == bytes.fromhex("10 00000002 0801")


def test_durations_travel_as_milliseconds() -> None:
    """Check that seconds become uint32 ms on the wire (a positive value never rounds to 0)."""
    client = make(CLIENT)
    hello = pb.Hello.FromString(client.send_hello("c", heartbeat_interval=0.0004)[5:])
    assert hello.heartbeat_interval_ms == 1
    assert (
        pb.Hello.FromString(make(CLIENT).send_hello("c", (), None, 2.0)[5:]).heartbeat_interval_ms
        == 2000
    )
    assert (
        pb.Hello.FromString(make(CLIENT).send_hello("c", (), None, None)[5:]).heartbeat_interval_ms
        == 0
    )
    server = machine_in(SERVER, CS.HELLO_RECEIVED)
    welcome = pb.Welcome.FromString(server.send_welcome("c", 15.0, 0.25, 7)[5:])
    assert (welcome.heartbeat_interval_ms, welcome.heartbeat_timeout_ms) == (15000, 250)
    assert pb.GoAway.FromString(server.send_goaway("x", 30.0)[5:]).grace_ms == 30000


def test_hello_without_interval_means_the_servers_choice() -> None:
    """Check that a HELLO with interval 0 or None arrives as heartbeat_interval=None."""
    for asked in (None, 0.0):
        server = make(SERVER)
        [event] = server.receive_data(make(CLIENT).send_hello("c", heartbeat_interval=asked), False)
        assert isinstance(event, HelloReceived)
        assert event.heartbeat_interval is None
        assert event.labels == {} and event.metadata == ()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.send_hello("c", heartbeat_interval=-1.0), "heartbeat_interval"),
        (lambda m: m.send_hello("c", heartbeat_interval=float("nan")), "heartbeat_interval"),
        (lambda m: m.send_hello("c", heartbeat_interval=5e6), "uint32"),
        (lambda m: m.send_hello("c", protocol_version=-1), "protocol_version"),
        (lambda m: m.send_hello("c", protocol_version=2**32), "protocol_version"),
    ],
)
def test_client_refuses_values_that_do_not_fit_the_wire(
    call: Callable[[ControlProtocol], bytes], match: str
) -> None:
    """Check that a bad HELLO value raises LocalProtocolError naming it and keeps the state IDLE."""
    client = make(CLIENT)
    with pytest.raises(LocalProtocolError, match=match):
        call(client)
    assert client.state is CS.IDLE


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m: m.send_welcome("c", 0.0, 5.0, 1024), "heartbeat_interval"),
        (lambda m: m.send_welcome("c", 15.0, 0.0, 1024), "heartbeat_timeout"),
        (lambda m: m.send_welcome("c", 15.0, -1.0, 1024), "heartbeat_timeout"),
        (lambda m: m.send_welcome("c", 15.0, 5.0, 0), "max_message_size"),
        (lambda m: m.send_welcome("c", 15.0, 5.0, 2**32), "max_message_size"),
    ],
)
def test_server_refuses_welcome_values_that_do_not_fit_the_wire(
    call: Callable[[ControlProtocol], bytes], match: str
) -> None:
    """Check that a bad WELCOME value raises LocalProtocolError naming it and leaves the state."""
    server = machine_in(SERVER, CS.HELLO_RECEIVED)
    with pytest.raises(LocalProtocolError, match=match):
        call(server)
    assert server.state is CS.HELLO_RECEIVED


def test_ping_and_goaway_values_are_checked() -> None:
    """Check that a sequence outside uint64 or a negative grace raises and changes nothing."""
    client, server = handshake()
    with pytest.raises(LocalProtocolError, match="sequence"):
        client.send_ping(2**64)
    with pytest.raises(LocalProtocolError, match="sequence"):
        server.send_pong(-1)
    with pytest.raises(LocalProtocolError, match="grace"):
        server.send_goaway("x", -0.5)
    assert server.state is CS.READY


# -- illegal orders ------------------------------------------------------------


def test_transition_tables_match_the_documented_orders() -> None:
    """Check that TRANSITIONS lists exactly the hand-written sends, receives and FIN moves."""
    for role in (CLIENT, SERVER):
        table = TRANSITIONS[role]
        for st in LIVE_STATES:
            row = table.get(st, {})
            sends = {f for (d, f) in row if d is Direction.SEND}
            receives = {f for (d, f) in row if d is Direction.RECEIVE and f is not FIN}
            assert sends == ALLOWED_SEND[role].get(st, set()), (role, st)
            assert receives == ALLOWED_RECEIVE[role].get(st, set()), (role, st)
            if st in reachable(role):
                assert row[(Direction.RECEIVE, FIN)] is CS.CLOSED
        assert CS.CLOSED not in table and CS.ERROR not in table


@pytest.mark.parametrize("role", [CLIENT, SERVER], ids=["client", "server"])
def test_every_illegal_send_raises_and_keeps_the_state(role: Role) -> None:
    """Check that every send the table lacks raises LocalProtocolError naming it and the state."""
    side = "CLIENT" if role is CLIENT else "SERVER"
    checked = 0
    for st in reachable(role):
        for ftype in CONTROL_FRAMES:
            m = machine_in(role, st)
            if ftype in ALLOWED_SEND[role].get(st, set()):
                assert isinstance(SENDERS[ftype](m), bytes)
                continue
            with pytest.raises(LocalProtocolError) as info:
                SENDERS[ftype](m)
            assert str(info.value) == f"cannot send {ftype.name} in {st.name} as {side}"
            assert m.state is st
            checked += 1
    assert checked > 20


@pytest.mark.parametrize("role", [CLIENT, SERVER], ids=["client", "server"])
@pytest.mark.parametrize("ftype", list(FrameType), ids=lambda f: f.name)
def test_every_illegal_receive_is_one_violation(role: Role, ftype: FrameType) -> None:
    """Check that any frame the peer may not send now yields one ProtocolViolation and ERROR."""
    for st in reachable(role):
        if st in (CS.CLOSED, CS.ERROR):
            m = machine_in(role, st)
            assert m.receive_data(raw(ftype), False) == []  # finished: nothing more to say
            continue
        m = machine_in(role, st)
        events = m.receive_data(raw(ftype), False)
        if ftype in ALLOWED_RECEIVE[role].get(st, set()):
            assert len(events) == 1 and not isinstance(events[0], ProtocolViolation)
            continue
        error = violation(events)
        assert len(events) == 1
        assert isinstance(error, MalformedFrame)
        if ftype in (FrameType.HEADERS, FrameType.DATA, FrameType.TRAILERS, FrameType.COMPRESSED):
            assert str(error) == f"unexpected {ftype.name} frame on the control stream"
        else:
            side = "CLIENT" if role is CLIENT else "SERVER"
            assert str(error) == f"cannot recv {ftype.name} in {st.name} as {side}"
        assert m.state is CS.ERROR
        assert m.receive_data(raw(FrameType.PING), False) == []
        assert m.receive_data(b"", True) == []
        with pytest.raises(LocalProtocolError, match="in ERROR"):
            SENDERS[FrameType.PING if role is CLIENT else FrameType.PONG](m)


def test_second_hello_and_second_welcome_are_violations() -> None:
    """Check that the handshake frames are accepted exactly once."""
    server = machine_in(SERVER, CS.READY)
    assert str(violation(server.receive_data(raw(FrameType.HELLO), False))) == (
        "cannot recv HELLO in READY as SERVER"
    )
    client = machine_in(CLIENT, CS.READY)
    violation(client.receive_data(raw(FrameType.WELCOME), False))
    assert client.state is CS.ERROR


def test_events_before_an_error_in_the_same_read_are_delivered() -> None:
    """Check that frames completed before a bad one in one read still yield their events."""
    client = machine_in(CLIENT, CS.READY)
    events = client.receive_data(raw(FrameType.PONG) + raw(FrameType.PONG) + b"\x7f\0\0\0\0", False)
    assert events[:2] == [PongReceived(1), PongReceived(1)]
    assert "unknown frame type 0x7f" in str(violation(events))
    server = machine_in(SERVER, CS.READY)
    events = server.receive_data(
        raw(FrameType.PING) + raw(FrameType.DATA) + raw(FrameType.PING), False
    )
    assert events[0] == PingReceived(1)
    assert len(events) == 2
    violation(events)


# -- garbage -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "end_stream", "error_type", "match"),
    [
        (b"\xff\x00\x00\x00\x00", False, MalformedFrame, "unknown frame type 0xff"),
        (encode_frame(FrameType.HELLO, b"\xff\xff\xff"), False, MalformedFrame, "malformed HELLO"),
        (encode_frame(FrameType.HELLO, b"\x12\x02\xc3\x28"), False, MalformedFrame, "HELLO"),
        (b"\x10\x00\x00\x00\x05ab", True, MalformedFrame, "ended inside a frame"),
        (b"\x10\x00", True, MalformedFrame, "ended inside a frame"),
        (b"\x10\x00\x01\x00\x00", False, FrameTooLarge, "exceeds the limit"),
        (b"\x10\xff\xff\xff\xff", False, FrameTooLarge, "exceeds the limit"),
        (raw(FrameType.DATA), False, MalformedFrame, "unexpected DATA frame on the control stream"),
        # A type the client never sends here is refused whatever its length (§3.2).
        (b"\x00\xff\xff\xff\xff", False, MalformedFrame, "unexpected DATA frame on the control"),
        (b"\x11\xff\xff\xff\xff", False, MalformedFrame, "cannot recv WELCOME in IDLE as SERVER"),
    ],
)
def test_garbage_to_the_server_is_one_violation(
    data: bytes, end_stream: bool, error_type: type[RemoteProtocolError], match: str
) -> None:
    """Check that undecodable, oversized, truncated or call-frame input gives one violation."""
    for chunk in CHUNKINGS:
        server = make(SERVER)
        events = transfer(server, data, end_stream=end_stream, chunk=chunk)
        assert len(events) == 1
        error = violation(events)
        assert isinstance(error, error_type)
        assert match in str(error)
        assert server.state is CS.ERROR


def test_bad_metadata_in_hello_is_a_violation() -> None:
    """Check that a HELLO metadata key that is not lower-case ASCII is refused."""
    msg = pb.Hello(protocol_version=1, client_id="c")
    msg.metadata.add(key="Bad Key", value=b"v")
    error = violation(
        make(SERVER).receive_data(encode_frame(FrameType.HELLO, msg.SerializeToString()), False)
    )
    assert "invalid metadata key" in str(error)


@pytest.mark.parametrize(
    "fields",
    [
        {"heartbeat_interval_ms": 0, "heartbeat_timeout_ms": 5000, "max_message_size": 1},
        {"heartbeat_interval_ms": 15000, "heartbeat_timeout_ms": 0, "max_message_size": 1},
        {"heartbeat_interval_ms": 15000, "heartbeat_timeout_ms": 5000, "max_message_size": 0},
    ],
)
def test_welcome_with_zero_parameters_is_a_violation(fields: dict[str, int]) -> None:
    """Check that a WELCOME without a positive interval, timeout or size limit is refused,
    naming the missing field (wire-protocol.md §9.2: fields 3-5 are required)."""
    client = machine_in(CLIENT, CS.HELLO_SENT)
    welcome = pb.Welcome(protocol_version=1, client_id="c")
    for name, value in fields.items():
        setattr(welcome, name, value)
    payload = welcome.SerializeToString()
    error = violation(client.receive_data(encode_frame(FrameType.WELCOME, payload), False))
    [missing] = [name for name, value in fields.items() if value == 0]
    assert str(error) == f"WELCOME needs a positive {missing}"
    assert client.state is CS.ERROR


@pytest.mark.parametrize("version", [0, 2, 0xFFFF_FFFF])
def test_other_protocol_versions_are_violations(version: int) -> None:
    """Check that a HELLO or WELCOME whose protocol_version is not 1 (absent, 0, included)
    is refused with a reason naming both versions (wire-protocol.md §10.1)."""
    server = make(SERVER)
    hello = pb.Hello(protocol_version=version, client_id="c").SerializeToString()
    error = violation(server.receive_data(encode_frame(FrameType.HELLO, hello), False))
    assert isinstance(error, MalformedFrame)
    assert str(error) == f"unsupported protocol_version {version}: this server speaks 1"
    assert server.state is CS.ERROR
    client = machine_in(CLIENT, CS.HELLO_SENT)
    welcome = pb.Welcome(
        protocol_version=version,
        client_id="c",
        heartbeat_interval_ms=15000,
        heartbeat_timeout_ms=5000,
        max_message_size=1024,
    ).SerializeToString()
    error = violation(client.receive_data(encode_frame(FrameType.WELCOME, welcome), False))
    assert str(error) == f"unsupported protocol_version {version}: this client speaks 1"
    assert client.state is CS.ERROR


def test_random_garbage_never_raises() -> None:
    """Check that random bytes, in random pieces, give at most one violation and never raise."""
    rng = random.Random(11)
    for _ in range(300):
        role = rng.choice([CLIENT, SERVER])
        m = machine_in(role, rng.choice([CS.IDLE, CS.READY]) if role is SERVER else CS.READY)
        blob = rng.randbytes(rng.randrange(1, 64))
        events: list[ControlEvent] = []
        pos = 0
        while pos < len(blob):
            step = rng.randrange(1, 9)
            events += m.receive_data(blob[pos : pos + step], False)
            pos += step
        events += m.receive_data(b"", True)
        assert sum(isinstance(e, ProtocolViolation) for e in events) <= 1
        assert m.state in (CS.ERROR, CS.CLOSED, CS.READY, CS.GOING_AWAY, CS.HELLO_RECEIVED)
        if any(isinstance(e, ProtocolViolation) for e in events):
            assert isinstance(events[-1], ProtocolViolation)


def test_fin_ends_the_stream_in_every_live_state() -> None:
    """Check that the peer's FIN at a frame boundary yields ControlStreamEnded in any live state."""
    for role in (CLIENT, SERVER):
        for st in reachable(role):
            if st in (CS.CLOSED, CS.ERROR):
                continue
            m = machine_in(role, st)
            assert m.receive_data(b"", True) == [ControlStreamEnded()]
            assert m.state is CS.CLOSED
            with pytest.raises(LocalProtocolError, match="in CLOSED"):
                SENDERS[FrameType.HELLO if role is CLIENT else FrameType.WELCOME](m)


def test_buffered_reports_a_partial_frame() -> None:
    """Check that ``buffered`` counts the bytes of an incomplete frame."""
    client = machine_in(CLIENT, CS.READY)
    frame = raw(FrameType.PONG)
    assert client.receive_data(frame[:4], False) == []
    assert client.buffered == 4
    assert client.receive_data(frame[4:], False) == [PongReceived(1)]
    assert client.buffered == 0


def test_features_travel_in_hello_and_welcome() -> None:
    """Check that HELLO and WELCOME carry features (field 6) and that a peer that sends none
    (an older one) reads as no features."""
    client, server = make(CLIENT), make(SERVER)
    hello_bytes = client.send_hello("c", features=("lane",))
    assert hello_bytes.hex(" ") == "10 00 00 00 0b 08 01 12 01 63 32 04 6c 61 6e 65"
    [hello] = server.receive_data(hello_bytes, False)
    assert isinstance(hello, HelloReceived) and hello.features == ("lane",)
    [welcome] = client.receive_data(server.send_welcome("c", 15.0, 5.0, 1024, features=()), False)
    assert isinstance(welcome, WelcomeReceived) and welcome.features == ()
