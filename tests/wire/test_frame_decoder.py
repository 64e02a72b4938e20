"""Sans-IO tests for `FrameDecoder`: whole input, byte by byte, random splits, limits, errors."""

from __future__ import annotations

import random
import struct

import pytest

from quicflow.errors import FrameTooLarge, RemoteProtocolError
from quicflow.wire.codec import (
    FRAME_HEADER_SIZE,
    Frame,
    FrameDecoder,
    FrameType,
    MalformedFrame,
    UnexpectedFrame,
    encode_frame,
)

DATA_LIMIT = 256 << 10
CONTROL_LIMIT = 1 << 10
LARGE = 200_000  # a DATA payload far over the control limit and over any sane chunk size


def _decoder(allowed: tuple[FrameType, ...] | None = None) -> FrameDecoder:
    return FrameDecoder(max_data_size=DATA_LIMIT, max_control_size=CONTROL_LIMIT, allowed=allowed)


def _header(frame_type: int, length: int) -> bytes:
    return struct.pack(">BI", frame_type, length)


def _mixed_frames() -> list[Frame]:
    """A long sequence of every frame type, with empty, tiny, boundary and large payloads."""
    rng = random.Random(1234)
    frames: list[Frame] = []
    for round_no in range(20):
        for ftype in FrameType:
            frames.append(Frame(ftype, b""))
            frames.append(Frame(ftype, rng.randbytes(rng.randint(1, 40))))
        frames.append(Frame(FrameType.DATA, bytes(range(256)) * 3))
        frames.append(Frame(FrameType.HEADERS, b"h" * CONTROL_LIMIT))  # exactly at the limit
        if round_no % 5 == 0:
            frames.append(Frame(FrameType.DATA, rng.randbytes(LARGE)))
        frames.append(Frame(FrameType.DATA, b"\x00" * FRAME_HEADER_SIZE))  # looks like a header
    frames.append(Frame(FrameType.DATA, DATA_LIMIT * b"\xff"))  # exactly at the DATA limit
    return frames


FRAMES = _mixed_frames()
STREAM = b"".join(encode_frame(f.type, f.payload) for f in FRAMES)


def _random_chunks(data: bytes, rng: random.Random) -> list[bytes]:
    """Split ``data`` at random points, mixing tiny, header-sized and large chunks."""
    chunks: list[bytes] = []
    pos = 0
    while pos < len(data):
        pick = rng.random()
        if pick < 0.4:
            size = rng.randint(1, 7)
        elif pick < 0.8:
            size = rng.randint(8, 2_000)
        else:
            size = rng.randint(2_000, 300_000)
        chunks.append(data[pos : pos + size])
        pos += size
    return chunks


def _feed_all(decoder: FrameDecoder, chunks: list[bytes]) -> list[Frame]:
    out: list[Frame] = []
    for chunk in chunks:
        out.extend(decoder.feed(chunk))
    return out


# -- framing -------------------------------------------------------------------


def test_encode_frame_layout() -> None:
    """Check that a frame is one type byte, a big-endian 32-bit length, then the payload."""
    assert encode_frame(FrameType.HEADERS, b"abc") == b"\x01\x00\x00\x00\x03abc"
    assert encode_frame(FrameType.TRAILERS, b"") == b"\x02\x00\x00\x00\x00"
    assert encode_frame(FrameType.GOAWAY, b"x" * 0x0102) == b"\x14\x00\x00\x01\x02" + b"x" * 258
    assert FRAME_HEADER_SIZE == 5


def test_frame_type_numbers_match_the_wire_protocol() -> None:
    """Check that the frame type numbers are the ones wire protocol v1 fixes."""
    assert {t.name: int(t) for t in FrameType} == {
        "DATA": 0x00,
        "HEADERS": 0x01,
        "TRAILERS": 0x02,
        "COMPRESSED": 0x03,
        "HELLO": 0x10,
        "WELCOME": 0x11,
        "PING": 0x12,
        "PONG": 0x13,
        "GOAWAY": 0x14,
        "MESSAGE": 0x20,
    }


def test_decode_whole_input() -> None:
    """Check that the whole stream fed at once yields exactly the encoded frames."""
    decoder = _decoder()
    frames = decoder.feed(STREAM)
    assert frames == FRAMES
    assert all(type(f.payload) is bytes for f in frames)
    assert all(type(f.type) is FrameType for f in frames)
    assert decoder.at_boundary
    assert decoder.buffered == 0


def test_decode_one_byte_at_a_time() -> None:
    """Check that feeding the stream one byte at a time yields exactly the same frames."""
    decoder = _decoder()
    out: list[Frame] = []
    for i in range(len(STREAM)):
        out.extend(decoder.feed(STREAM[i : i + 1]))
    assert out == FRAMES
    assert decoder.at_boundary


@pytest.mark.parametrize("seed", range(40))
def test_decode_random_splits(seed: int) -> None:
    """Check that any seeded random split of the stream yields exactly the same frames."""
    rng = random.Random(seed)
    decoder = _decoder()
    assert _feed_all(decoder, _random_chunks(STREAM, rng)) == FRAMES
    assert decoder.at_boundary
    assert decoder.buffered == 0


def test_decode_with_empty_chunks() -> None:
    """Check that empty chunks between real ones change nothing."""
    decoder = _decoder()
    assert decoder.feed(b"") == []
    chunks: list[bytes] = []
    for i in range(0, 4_000, 3):
        chunks += [b"", STREAM[i : i + 3]]
    frames = _feed_all(decoder, chunks)
    assert frames == _decoder().feed(STREAM[:4_002])
    assert decoder.feed(b"") == []


def test_decode_returns_frames_in_order_across_one_call() -> None:
    """Check that one feed completing several frames returns them all, in order."""
    decoder = _decoder()
    first = encode_frame(FrameType.HEADERS, b"h")
    second = encode_frame(FrameType.DATA, b"d1")
    third = encode_frame(FrameType.DATA, b"")
    assert decoder.feed(first[:3]) == []
    assert decoder.feed(first[3:] + second + third + b"\x02\x00") == [
        Frame(FrameType.HEADERS, b"h"),
        Frame(FrameType.DATA, b"d1"),
        Frame(FrameType.DATA, b""),
    ]
    assert decoder.buffered == 2
    assert decoder.feed(b"\x00\x00\x00") == [Frame(FrameType.TRAILERS, b"")]


# -- at_boundary and buffered --------------------------------------------------


def test_at_boundary_tracks_partial_frames() -> None:
    """Check that at_boundary holds only between whole frames, never inside a header or payload."""
    decoder = _decoder()
    assert decoder.at_boundary
    frame = encode_frame(FrameType.DATA, b"payload")
    for i in range(len(frame) - 1):
        decoder.feed(frame[i : i + 1])
        assert not decoder.at_boundary, f"at_boundary after {i + 1} bytes"
    assert decoder.feed(frame[-1:]) == [Frame(FrameType.DATA, b"payload")]
    assert decoder.at_boundary


def test_at_boundary_false_with_complete_header_and_no_payload_yet() -> None:
    """Check that a complete header whose payload has not arrived is not a boundary."""
    decoder = _decoder()
    assert decoder.feed(_header(FrameType.DATA, 10)) == []
    assert decoder.buffered == 0
    assert not decoder.at_boundary
    decoder.feed(b"0123456789")
    assert decoder.at_boundary


def test_at_boundary_after_empty_payload_frame() -> None:
    """Check that a zero-length frame completes as soon as its header does."""
    decoder = _decoder()
    assert decoder.feed(b"\x12\x00\x00") == []
    assert not decoder.at_boundary
    assert decoder.feed(b"\x00\x00") == [Frame(FrameType.PING, b"")]
    assert decoder.at_boundary


def test_buffered_counts_partial_payload_only() -> None:
    """Check that buffered reports the bytes held for an incomplete frame."""
    decoder = _decoder()
    decoder.feed(encode_frame(FrameType.DATA, b"x" * 100)[:50])
    assert decoder.buffered == 50 - FRAME_HEADER_SIZE
    decoder.feed(b"x" * 55)
    assert decoder.buffered == 0


# -- limits --------------------------------------------------------------------


@pytest.mark.parametrize("chunked", [False, True], ids=["whole-header", "byte-by-byte"])
def test_oversize_length_fails_before_payload_is_buffered(chunked: bool) -> None:
    """Check that a header announcing 2 GiB raises FrameTooLarge with the prefix alone buffered."""
    decoder = _decoder()
    header = _header(FrameType.DATA, 2 << 30)
    with pytest.raises(FrameTooLarge, match=r"message of 2147483648 bytes exceeds the limit"):
        if chunked:
            for i in range(FRAME_HEADER_SIZE):
                decoder.feed(header[i : i + 1])
        else:
            decoder.feed(header)
    assert decoder.buffered <= FRAME_HEADER_SIZE


def test_oversize_length_raises_before_payload_arrives() -> None:
    """Check that the error comes with the prefix, even when payload bytes follow in the chunk."""
    decoder = _decoder()
    with pytest.raises(FrameTooLarge):
        decoder.feed(_header(FrameType.DATA, 0xFFFF_FFFF) + b"x" * 100)
    assert decoder.buffered <= FRAME_HEADER_SIZE


def test_oversize_length_after_good_frames_in_buffered_path() -> None:
    """Check that an oversize prefix is refused also when it follows a partial frame."""
    decoder = _decoder()
    good = encode_frame(FrameType.DATA, b"abc")
    decoder.feed(good[:2])
    with pytest.raises(FrameTooLarge):
        decoder.feed(good[2:] + _header(FrameType.DATA, 2 << 30))
    assert decoder.buffered <= FRAME_HEADER_SIZE


def test_data_limit_is_inclusive() -> None:
    """Check that a DATA payload of exactly max_data_size passes and one byte more fails."""
    decoder = _decoder()
    assert decoder.feed(_header(FrameType.DATA, DATA_LIMIT)) == []
    with pytest.raises(FrameTooLarge, match=f"of {DATA_LIMIT + 1} bytes exceeds the limit of"):
        _decoder().feed(_header(FrameType.DATA, DATA_LIMIT + 1))


_MESSAGE_TYPES = (FrameType.DATA, FrameType.COMPRESSED, FrameType.MESSAGE)


@pytest.mark.parametrize("ftype", [t for t in FrameType if t not in _MESSAGE_TYPES])
def test_control_limit_applies_to_every_non_data_frame(ftype: FrameType) -> None:
    """Check that each non-DATA frame is bounded by max_control_size, not by max_data_size."""
    assert _decoder().feed(_header(ftype, CONTROL_LIMIT)) == []
    with pytest.raises(FrameTooLarge, match=f"{ftype.name} frame of {CONTROL_LIMIT + 1} bytes"):
        _decoder().feed(_header(ftype, CONTROL_LIMIT + 1))


def test_lane_message_is_bounded_by_the_message_limit() -> None:
    """Check that a MESSAGE frame (a lane's one-way message) has DATA's limit."""
    assert _decoder().feed(_header(FrameType.MESSAGE, DATA_LIMIT)) == []
    with pytest.raises(FrameTooLarge, match=f"message of {DATA_LIMIT + 1} bytes exceeds"):
        _decoder().feed(_header(FrameType.MESSAGE, DATA_LIMIT + 1))


def test_data_and_control_limits_are_separate() -> None:
    """Check that a size legal for DATA is refused for HEADERS, and the reverse limit too."""
    small_data = FrameDecoder(max_data_size=10, max_control_size=1_000)
    assert small_data.feed(encode_frame(FrameType.HEADERS, b"h" * 500)) == [
        Frame(FrameType.HEADERS, b"h" * 500)
    ]
    with pytest.raises(FrameTooLarge, match="message of 11 bytes exceeds the limit of 10 bytes"):
        small_data.feed(_header(FrameType.DATA, 11))

    small_control = FrameDecoder(max_data_size=1_000, max_control_size=10)
    assert small_control.feed(encode_frame(FrameType.DATA, b"d" * 500)) == [
        Frame(FrameType.DATA, b"d" * 500)
    ]
    with pytest.raises(FrameTooLarge, match="HEADERS frame of 11 bytes"):
        small_control.feed(_header(FrameType.HEADERS, 11))


def test_limits_are_public_attributes() -> None:
    """Check that the decoder exposes the limits it was built with."""
    decoder = FrameDecoder(max_data_size=7, max_control_size=9)
    assert (decoder.max_data_size, decoder.max_control_size) == (7, 9)


def test_frame_too_large_is_a_remote_protocol_error_with_excessive_load() -> None:
    """Check that FrameTooLarge is a RemoteProtocolError carrying EXCESSIVE_LOAD (0x04)."""
    with pytest.raises(RemoteProtocolError) as info:
        _decoder().feed(_header(FrameType.DATA, DATA_LIMIT + 1))
    assert isinstance(info.value, FrameTooLarge)
    assert info.value.error_code == 0x04


# -- errors --------------------------------------------------------------------


@pytest.mark.parametrize("ftype", [0x04, 0x0F, 0x15, 0x7F, 0xFF])
def test_unknown_frame_type_is_malformed(ftype: int) -> None:
    """Check that an unknown type byte raises MalformedFrame naming the type in hex."""
    with pytest.raises(MalformedFrame, match=f"unknown frame type 0x{ftype:02x}"):
        _decoder().feed(_header(ftype, 0))


def test_unknown_frame_type_detected_with_only_the_prefix() -> None:
    """Check that an unknown type is refused once its prefix is complete, whatever its length."""
    decoder = _decoder()
    header = _header(0x42, 2 << 30)
    for i in range(FRAME_HEADER_SIZE - 1):
        assert decoder.feed(header[i : i + 1]) == []
    with pytest.raises(MalformedFrame):
        decoder.feed(header[-1:])
    assert decoder.buffered <= FRAME_HEADER_SIZE


def test_unknown_frame_type_after_good_frames() -> None:
    """Check that good frames before a bad one do not hide the error."""
    decoder = _decoder()
    with pytest.raises(MalformedFrame):
        decoder.feed(encode_frame(FrameType.DATA, b"ok") + _header(0x99, 0))


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "byte-by-byte"])
def test_a_type_outside_allowed_is_unexpected_whatever_its_length(chunked: bool) -> None:
    """Check that with ``allowed`` a known type outside it raises UnexpectedFrame at its
    header, before its length is checked (a 4 GiB HELLO on a call stream is a protocol
    error, not an oversized frame), while allowed types keep their limits."""
    header = _header(FrameType.HELLO, 0xFFFF_FFFF)
    decoder = _decoder(allowed=(FrameType.HEADERS, FrameType.DATA))
    with pytest.raises(UnexpectedFrame, match=r"^unexpected HELLO frame$") as info:
        for piece in [header[i : i + 1] for i in range(len(header))] if chunked else [header]:
            decoder.feed(piece)
    assert info.value.frame_type is FrameType.HELLO
    assert isinstance(info.value, MalformedFrame) and info.value.error_code == 0x05
    assert decoder.buffered <= FRAME_HEADER_SIZE
    allowed = _decoder(allowed=(FrameType.HEADERS, FrameType.DATA))
    with pytest.raises(FrameTooLarge):
        allowed.feed(_header(FrameType.DATA, DATA_LIMIT + 1))
    unknown = _decoder(allowed=(FrameType.DATA,))
    with pytest.raises(MalformedFrame, match="unknown frame type 0x99") as unknown_info:
        unknown.feed(_header(0x99, 0xFFFF_FFFF))
    assert not isinstance(unknown_info.value, UnexpectedFrame)


@pytest.mark.parametrize(
    "bad",
    [_header(0x99, 0), _header(FrameType.DATA, DATA_LIMIT + 1)],
    ids=["unknown-type", "too-large"],
)
def test_decoder_refuses_input_after_an_error(bad: bytes) -> None:
    """Check that once a feed has failed, every later feed raises MalformedFrame."""
    decoder = _decoder()
    with pytest.raises(RemoteProtocolError):
        decoder.feed(bad)
    for later in (encode_frame(FrameType.DATA, b"fine"), b"", b"\x00"):
        with pytest.raises(MalformedFrame, match="decoder already failed"):
            decoder.feed(later)
