"""Message compression, sans-IO (quicflow/wire/compression.py, wire-protocol.md §4.4):
the codecs, the inflate limit, and the call machine's COMPRESSED frames."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from quicflow.errors import FrameTooLarge
from quicflow.protocol.call import CallProtocol, Role
from quicflow.protocol.events import HeadersReceived, MessageReceived, ProtocolViolation
from quicflow.wire.codec import FrameDecoder, FrameType, MalformedFrame, encode_frame
from quicflow.wire.compression import (
    ENCODINGS,
    UnsupportedEncoding,
    check_compression,
    compress,
    decompress,
)

TEXT = b"the same words again and again, " * 100  # 3,200 bytes, very compressible


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_round_trip_and_inclusive_limit(encoding: str) -> None:
    """Check that a message inflates back exactly, at a limit equal to its size, and is
    refused with FrameTooLarge one byte below it."""
    packed = compress(encoding, TEXT)
    assert len(packed) < len(TEXT) // 10
    assert decompress(encoding, packed, len(TEXT)) == TEXT
    with pytest.raises(FrameTooLarge, match=f"more than the limit of {len(TEXT) - 1} bytes"):
        decompress(encoding, packed, len(TEXT) - 1)
    assert decompress(encoding, compress(encoding, b""), 0) == b""


def test_gzip_is_rfc_1952_with_its_size_trailer() -> None:
    """Check that gzip output is one gzip member (magic 1f 8b, deflate) ending in the size."""
    packed = compress("gzip", TEXT)
    assert packed[:3] == b"\x1f\x8b\x08"
    assert int.from_bytes(packed[-4:], "little") == len(TEXT)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_a_bomb_is_refused_before_it_is_built(encoding: str) -> None:
    """Check that 64 MiB of zeros, compressed, is refused at a 1 MiB limit while the
    decompressor never holds more than a few limits' worth of memory."""
    bomb = compress(encoding, bytes(64 << 20))
    assert len(bomb) < 256 << 10
    tracemalloc.start()
    try:
        with pytest.raises(FrameTooLarge):
            decompress(encoding, bomb, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[:-3],
        lambda b: b + b"tail",
        lambda b: b"not compressed at all",
        lambda b: b[:12] + bytes(x ^ 0xFF for x in b[12:20]) + b[20:],
        lambda b: b"",
    ],
    ids=["truncated", "trailing-bytes", "garbage", "flipped-bits", "empty"],
)
def test_corrupt_input_is_malformed(encoding: str, damage: object) -> None:
    """Check that truncated, extended, garbage or bit-flipped input raises MalformedFrame
    (a protocol error, INTERNAL), never another exception."""
    packed = compress(encoding, TEXT + os.urandom(64))
    with pytest.raises((MalformedFrame, FrameTooLarge)):
        decompress(encoding, damage(packed), 1 << 20)  # type: ignore[operator]


def test_unknown_encodings() -> None:
    """Check that an unknown name is UnsupportedEncoding both ways, and check_compression
    names the setting and the choices."""
    with pytest.raises(UnsupportedEncoding, match="'br' is not supported"):
        compress("br", b"x")
    with pytest.raises(UnsupportedEncoding):
        decompress("identity", b"x", 10)
    with pytest.raises(ValueError, match="c: must be one of 'identity', 'gzip', 'zstd'"):
        check_compression("c", "br", lambda name, msg: ValueError(f"{name}: {msg}"))
    check_compression("c", "identity", lambda name, msg: ValueError(msg))


def test_compressed_frames_are_bounded_like_data() -> None:
    """Check that a COMPRESSED frame's Length is checked against the message limit."""
    decoder = FrameDecoder(max_data_size=100, max_control_size=10)
    assert decoder.feed(encode_frame(FrameType.COMPRESSED, b"x" * 100))[0].payload == b"x" * 100
    with pytest.raises(FrameTooLarge, match="message of 101 bytes"):
        FrameDecoder(100, 10).feed(encode_frame(FrameType.COMPRESSED, b"x" * 101))


def _caller(threshold: int = 1024) -> CallProtocol:
    return CallProtocol(
        Role.CALLER,
        max_message_size=1 << 20,
        max_metadata_size=1 << 16,
        compression_threshold=threshold,
    )


def _callee(limit: int = 1 << 20) -> CallProtocol:
    return CallProtocol(Role.CALLEE, max_message_size=limit, max_metadata_size=1 << 16)


def test_the_sender_compresses_only_at_or_over_the_threshold_and_when_it_helps() -> None:
    """Check that with an encoding named, a message under the threshold goes as DATA, one
    at it as COMPRESSED, and an incompressible one as DATA; and that the receiver gets
    all three back as the same messages, fed one byte at a time."""
    caller = _caller(threshold=len(TEXT))
    out = caller.send_headers("/a.B/C", message_encoding="gzip")
    small, exact, noise = TEXT[:-1], TEXT, os.urandom(4000)
    frames = [caller.send_message(m) for m in (small, exact, noise)]
    assert [f[0] for f in frames] == [FrameType.DATA, FrameType.COMPRESSED, FrameType.DATA]
    callee = _callee()
    events = []
    for byte in out + b"".join(frames):
        events += callee.receive_data(bytes([byte]), False)
    assert isinstance(events[0], HeadersReceived)
    assert events[0].message_encoding == "gzip"
    assert events[1:] == [MessageReceived(small), MessageReceived(exact), MessageReceived(noise)]


def test_without_an_encoding_nothing_is_compressed() -> None:
    """Check that HEADERS without an encoding (or with identity) send plain DATA and no
    message_encoding field."""
    for encoding in ("", "identity"):
        caller = _caller(threshold=0)
        headers = caller.send_headers("/a.B/C", message_encoding=encoding)
        assert b"\x2a" not in headers[5 + 8 :]  # field 5 tag after the method
        assert caller.send_message(TEXT)[0] == FrameType.DATA


def test_response_compression_and_caller_side_errors() -> None:
    """Check that a caller inflates a callee's COMPRESSED response, and turns an inflated
    size over its limit and a corrupt payload into protocol violations (RESOURCE_EXHAUSTED,
    INTERNAL)."""
    callee = CallProtocol(
        Role.CALLEE, max_message_size=1 << 20, max_metadata_size=1 << 16, compression_threshold=0
    )
    response = callee.send_headers("", message_encoding="gzip") + callee.send_message(TEXT)
    caller = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=1 << 16)
    events = caller.receive_data(response, False)
    assert events[1] == MessageReceived(TEXT)
    small = CallProtocol(Role.CALLER, max_message_size=100, max_metadata_size=1 << 16)
    [_, bad] = small.receive_data(response, False)
    assert isinstance(bad, ProtocolViolation) and isinstance(bad.error, FrameTooLarge)
    corrupt = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=1 << 16)
    headers_only = response[: 5 + int.from_bytes(response[1:5], "big")]
    events = corrupt.receive_data(
        headers_only + encode_frame(FrameType.COMPRESSED, b"\x1f\x8bxx"), False
    )
    assert isinstance(events[-1], ProtocolViolation)
    assert "corrupt gzip message" in str(events[-1].error)


def test_compressed_without_an_encoding_is_a_violation() -> None:
    """Check that a COMPRESSED frame after HEADERS that named no encoding is refused."""
    callee = _callee()
    events = callee.receive_data(
        _caller().send_headers("/a.B/C")
        + encode_frame(FrameType.COMPRESSED, compress("gzip", b"x")),
        False,
    )
    assert isinstance(events[-1], ProtocolViolation)
    assert "named no message encoding" in str(events[-1].error)


def test_the_worked_example_of_the_spec() -> None:
    """Check the bytes of wire-protocol.md §4.4's worked example: the HEADERS exactly, and
    that the documented COMPRESSED payload inflates to the 1,027-byte request."""
    request = b"\x0a\x80\x08" + b"a" * 1024  # EchoRequest{text: "a" x 1024}
    caller = _caller()
    headers = caller.send_headers("/echo.Echo/Say", message_encoding="gzip")
    assert headers.hex(" ") == (
        "01 00 00 00 16 0a 0e 2f 65 63 68 6f 2e 45 63 68 6f 2f 53 61 79 2a 04 67 7a 69 70"
    )
    documented = bytes.fromhex(
        "1f 8b 08 00 00 00 00 00 00 03 e3 6a e0 48 1c 05 a3 60 14 8c 58 00 00"
        " 76 f5 ac 4d 03 04 00 00"
    )
    assert len(documented) == 0x1F
    assert decompress("gzip", documented, 1027) == request
    frame = caller.send_message(request)
    assert frame[:5] == bytes([FrameType.COMPRESSED]) + len(frame[5:]).to_bytes(4, "big")
    assert decompress("gzip", frame[5:], 1027) == request
