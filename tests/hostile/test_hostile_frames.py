"""Hostile peers speaking raw QUIC: malformed, oversize, unknown and out-of-order frames.

Every case asserts the exact status (or close code) the server answers with,
that a well-behaved client keeps making calls meanwhile, and that the server's
per-connection state (connections, calls, stream handlers, aioquic streams,
tasks, live call objects) returns to where it was.
"""

from __future__ import annotations

import pytest
from echo.echo_pb2 import EchoRequest

from quicflow import StatusCode
from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.compression import compress
from quicflow.wire.v1 import frames_pb2 as pb

from .harness import attack_setup

SAY = "/echo.Echo/Say"


def _headers(method: str = SAY, message_encoding: str = "") -> bytes:
    headers = pb.CallHeaders(method=method, message_encoding=message_encoding)
    return encode_frame(FrameType.HEADERS, headers.SerializeToString())


def _data(text: str = "x") -> bytes:
    return encode_frame(FrameType.DATA, EchoRequest(text=text).SerializeToString())


def _prefix(ftype: int, length: int) -> bytes:
    return bytes([ftype]) + length.to_bytes(4, "big")


# (bytes on a fresh call stream, FIN after them?, status, text in message, STOP_SENDING code)
CASES = {
    "unknown frame type": (
        b"\x7f" + b"\x00" * 8,
        False,
        StatusCode.INTERNAL,
        "unknown frame type 0x7f",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "DATA before HEADERS": (
        _data(),
        False,
        StatusCode.INTERNAL,
        "unexpected DATA frame in state IDLE",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "HEADERS twice": (
        _headers() + _headers(),
        False,
        StatusCode.INTERNAL,
        "unexpected HEADERS frame in state OPEN",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "TRAILERS from the caller": (
        _headers() + encode_frame(FrameType.TRAILERS, b""),
        False,
        StatusCode.INTERNAL,
        "unexpected TRAILERS frame in state OPEN",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "TRAILERS first": (
        encode_frame(FrameType.TRAILERS, b""),
        False,
        StatusCode.INTERNAL,
        "unexpected TRAILERS frame in state IDLE",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "HELLO on a call stream": (
        encode_frame(FrameType.HELLO, b""),
        False,
        StatusCode.INTERNAL,
        "unexpected HELLO frame in state IDLE",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "PING after HEADERS": (
        _headers() + encode_frame(FrameType.PING, b""),
        False,
        StatusCode.INTERNAL,
        "unexpected PING frame",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "HEADERS without a method": (
        _headers(method=""),
        False,
        StatusCode.INTERNAL,
        "call HEADERS need a method",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "HEADERS not protobuf": (
        encode_frame(FrameType.HEADERS, b"\xff\xff\xff"),
        False,
        StatusCode.INTERNAL,
        "malformed HEADERS payload",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "metadata key upper case": (
        encode_frame(
            FrameType.HEADERS,
            pb.CallHeaders(
                method=SAY, metadata=[pb.MetadataEntry(key="Bad", value=b"v")]
            ).SerializeToString(),
        ),
        False,
        StatusCode.INTERNAL,
        "invalid metadata key 'Bad'",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "metadata text not UTF-8": (
        encode_frame(
            FrameType.HEADERS,
            pb.CallHeaders(
                method=SAY, metadata=[pb.MetadataEntry(key="k", value=b"\xff")]
            ).SerializeToString(),
        ),
        False,
        StatusCode.INTERNAL,
        "not UTF-8",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "DATA length 4 GiB": (
        _headers() + _prefix(FrameType.DATA, 0xFFFF_FFFF),
        False,
        StatusCode.RESOURCE_EXHAUSTED,
        "message of 4294967295 bytes exceeds the limit of 4194304 bytes",
        ErrorCode.EXCESSIVE_LOAD,
    ),
    "HEADERS length 4 GiB": (
        _prefix(FrameType.HEADERS, 0xFFFF_FFFF),
        False,
        StatusCode.RESOURCE_EXHAUSTED,
        "HEADERS frame of 4294967295 bytes exceeds the limit of 65536",
        ErrorCode.EXCESSIVE_LOAD,
    ),
    # A type no caller may send is a protocol error whatever its length (limits.md).
    "HELLO length 4 GiB": (
        _prefix(FrameType.HELLO, 0xFFFF_FFFF),
        False,
        StatusCode.INTERNAL,
        "malformed request: unexpected HELLO frame in state IDLE",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "TRAILERS length 4 GiB after HEADERS": (
        _headers() + _prefix(FrameType.TRAILERS, 0xFFFF_FFFF),
        False,
        StatusCode.INTERNAL,
        "malformed request: unexpected TRAILERS frame in state OPEN",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "HEADERS one over the limit": (
        _prefix(FrameType.HEADERS, 65537),
        False,
        StatusCode.RESOURCE_EXHAUSTED,
        "65537 bytes exceeds",
        ErrorCode.EXCESSIVE_LOAD,
    ),
    "truncated frame then FIN": (
        _headers() + _data()[:-2],
        True,
        StatusCode.INTERNAL,
        "stream ended inside a frame",
        None,
    ),
    "truncated header then FIN": (
        b"\x01\x00\x00",
        True,
        StatusCode.INTERNAL,
        "stream ended inside a frame",
        None,
    ),
    "FIN without HEADERS": (b"", True, StatusCode.INTERNAL, "stream ended in state IDLE", None),
    "unknown method": (
        _headers("/no.Such/Method") + _data(),
        True,
        StatusCode.UNIMPLEMENTED,
        "unknown method /no.Such/Method",
        None,
    ),
    "unsupported encoding": (
        _headers(message_encoding="br") + _data(),
        True,
        StatusCode.UNIMPLEMENTED,
        "message encoding 'br' is not supported (accepted: gzip",
        None,
    ),
    "corrupt gzip message": (
        _headers(message_encoding="gzip")
        + encode_frame(FrameType.COMPRESSED, b"\x1f\x8b\x08\x00garbage"),
        False,
        StatusCode.INTERNAL,
        "malformed request: corrupt gzip message",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "truncated gzip message": (
        _headers(message_encoding="gzip")
        + encode_frame(FrameType.COMPRESSED, compress("gzip", b"x" * 5000)[:-4]),
        False,
        StatusCode.INTERNAL,
        "corrupt gzip message: truncated",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "gzip bomb (8 KiB inflating to 8 MiB, over the 4 MiB limit)": (
        _headers(message_encoding="gzip")
        + encode_frame(FrameType.COMPRESSED, compress("gzip", bytes(8 << 20))),
        False,
        StatusCode.RESOURCE_EXHAUSTED,
        "message inflates to more than the limit of 4194304 bytes",
        ErrorCode.EXCESSIVE_LOAD,
    ),
    "COMPRESSED without an encoding": (
        _headers() + encode_frame(FrameType.COMPRESSED, compress("gzip", b"x")),
        False,
        StatusCode.INTERNAL,
        "COMPRESSED frame, but the HEADERS named no message encoding",
        ErrorCode.PROTOCOL_ERROR,
    ),
    "compressed request over its encoding": (
        _headers(message_encoding="gzip")
        + encode_frame(FrameType.COMPRESSED, compress("gzip", _data()[5:])),
        True,
        StatusCode.OK,
        "",
        None,
    ),
    "unary with no request": (
        _headers(),
        True,
        StatusCode.INTERNAL,
        "the client sent no request",
        None,
    ),
    "unary with two requests": (
        _headers() + _data() + _data(),
        True,
        StatusCode.INTERNAL,
        "the client sent more than one request",
        None,
    ),
    "request not protobuf": (
        _headers() + encode_frame(FrameType.DATA, b"\xff\xff"),
        True,
        StatusCode.INTERNAL,
        "could not parse the request",
        None,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_bad_call_stream_ends_with_its_status(case: str) -> None:
    """Check that each malformed call stream gets TRAILERS with the exact status and cause
    (and STOP_SENDING with the matching code when the peer was still sending), while the
    same connection and a bystander client keep working and no state is left behind."""
    raw, fin, status, text, stop = CASES[case]
    async with attack_setup() as (_, bystander, peer):
        await peer.hello("hostile")
        bystander.start()
        sid = peer.send_new(raw, end_stream=fin)
        log = await peer.wait_stream_end(sid)
        await bystander.stop()
        assert log.fin and log.reset_code is None
        trailers = log.trailers()
        assert trailers is not None
        assert trailers.status == status, (trailers.status, trailers.message)
        assert text in trailers.message
        if stop is not None:
            await peer.wait_for(lambda: peer.stream(sid).stop_code is not None)
            assert peer.stream(sid).stop_code == stop
        # The connection is still good for a proper call.
        ok = peer.send_new(_headers() + _data("fine"), end_stream=True)
        good = await peer.wait_stream_end(ok)
        assert good.trailers() == pb.CallTrailers()
        assert not peer.closed


# (bytes on the control stream, FIN?, close code, text in the reason)
CONTROL_CASES = {
    "call frame first": (_headers(), False, ErrorCode.PROTOCOL_ERROR, "control stream"),
    "PING before HELLO": (
        encode_frame(FrameType.PING, b""),
        False,
        ErrorCode.PROTOCOL_ERROR,
        "cannot recv PING in IDLE as SERVER",
    ),
    "HELLO not protobuf": (
        encode_frame(FrameType.HELLO, b"\xff\xff"),
        False,
        ErrorCode.PROTOCOL_ERROR,
        "control stream",
    ),
    "unknown frame type": (
        b"\x55\x00\x00\x00\x00",
        False,
        ErrorCode.PROTOCOL_ERROR,
        "unknown frame type 0x55",
    ),
    "HELLO length 4 GiB": (
        _prefix(FrameType.HELLO, 0xFFFF_FFFF),
        False,
        ErrorCode.PROTOCOL_ERROR,
        "control stream: HELLO frame of 4294967295 bytes exceeds the limit of 65536 bytes",
    ),
    "DATA length 4 GiB": (
        _prefix(FrameType.DATA, 0xFFFF_FFFF),
        False,
        ErrorCode.PROTOCOL_ERROR,
        "control stream: unexpected DATA frame on the control stream",
    ),
    "FIN at once": (b"", True, ErrorCode.PROTOCOL_ERROR, "control stream closed"),
}


@pytest.mark.parametrize("case", list(CONTROL_CASES))
async def test_bad_control_stream_closes_that_connection(case: str) -> None:
    """Check that a broken control stream closes its own connection with PROTOCOL_ERROR and
    a reason naming the cause, and nobody else's."""
    raw, fin, code, text = CONTROL_CASES[case]
    async with attack_setup() as (_, bystander, peer):
        bystander.start()
        peer.send_new(raw, end_stream=fin)
        close_code, reason = await peer.wait_closed()
        await bystander.stop()
        assert close_code == code
        assert text in reason, reason


async def test_second_hello_and_control_reset_close_the_connection() -> None:
    """Check that HELLO twice and a reset control stream each close the connection with
    PROTOCOL_ERROR."""
    async with attack_setup() as (harness, bystander, peer):
        await peer.hello("twice")
        assert [c.client_id for c in harness.server.list_clients()].count("twice") == 1
        bystander.start()
        assert peer.control_id is not None
        peer.send(peer.control_id, encode_frame(FrameType.HELLO, b""))
        close_code, reason = await peer.wait_closed()
        await bystander.stop()
        assert close_code == ErrorCode.PROTOCOL_ERROR
        assert reason == "control stream: cannot recv HELLO in READY as SERVER"
    async with attack_setup() as (harness, bystander, peer):
        await peer.hello("resetter")
        assert peer.control_id is not None
        peer.reset(peer.control_id, 0x77)
        close_code, reason = await peer.wait_closed()
        assert close_code == ErrorCode.PROTOCOL_ERROR
        assert reason == "control stream reset"


async def test_unidirectional_stream_is_refused() -> None:
    """Check that a unidirectional stream (unused in v1) gets STOP_SENDING(REFUSED) and the
    connection goes on."""
    async with attack_setup() as (_, _bystander, peer):
        await peer.hello("uni")
        sid = peer.quic.get_next_available_stream_id(is_unidirectional=True)
        peer.send(sid, b"hello")
        await peer.wait_for(lambda: peer.stream(sid).stop_code is not None)
        assert peer.stream(sid).stop_code == ErrorCode.REFUSED
        ok = peer.send_new(_headers() + _data("fine"), end_stream=True)
        assert (await peer.wait_stream_end(ok)).trailers() == pb.CallTrailers()


_LANE_MESSAGE = encode_frame(FrameType.MESSAGE, pb.RawMessage(type="t").SerializeToString())


@pytest.mark.parametrize(
    ("data", "end", "code", "reason"),
    [
        (_headers(), False, ErrorCode.PROTOCOL_ERROR, "unexpected HEADERS frame"),
        (b"\x7f\x00\x00\x00\x00", False, ErrorCode.PROTOCOL_ERROR, "unknown frame type 0x7f"),
        (encode_frame(FrameType.MESSAGE, b"\xff"), False, ErrorCode.PROTOCOL_ERROR, "malformed"),
        (b"\x20\xff\xff\xff\xff", False, ErrorCode.EXCESSIVE_LOAD, "exceeds the limit"),
        (_LANE_MESSAGE, True, ErrorCode.PROTOCOL_ERROR, "ended its message lane"),
    ],
    ids=["headers", "unknown-type", "bad-payload", "over-limit", "fin"],
)
async def test_bad_message_lane_closes_that_connection(
    data: bytes, end: bool, code: int, reason: str
) -> None:
    """Check that a broken message lane (wire-protocol.md §11.1) closes the peer's connection
    with the cause as reason and leaves the bystander working."""
    async with attack_setup() as (harness, bystander, peer):
        welcome = await peer.hello("lane", features=("lane",))
        assert list(welcome.features) == ["lane"]
        sid = peer.quic.get_next_available_stream_id(is_unidirectional=True)
        peer.send(sid, _LANE_MESSAGE + data, end_stream=end)
        got_code, got_reason = await peer.wait_closed()
        assert got_code == code and reason in got_reason and "message lane" in got_reason
        # the good messages before the bad bytes were dispatched (no handler: UNIMPLEMENTED)
        made = harness.server.get_metrics().handled["/quicflow.wire.v1.Messaging/Deliver"]
        assert made.finished == {"UNIMPLEMENTED": 2 if end else 1}
        await bystander.calls(5)
