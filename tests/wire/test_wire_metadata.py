"""Sans-IO tests for the wire form of metadata: `encode_metadata` and `decode_metadata`."""

from __future__ import annotations

import pytest

from quicflow.metadata import MetadataValue
from quicflow.wire.codec import ErrorCode, MalformedFrame, decode_metadata, encode_metadata
from quicflow.wire.v1 import frames_pb2 as pb

PAIRS: tuple[tuple[str, MetadataValue], ...] = (
    ("user-agent", "quicflow-test/1"),
    ("trace-bin", b"\x00\x01\xfe\xff"),
    ("greeting", "h\u00e9llo \u4e16\u754c"),
    ("user-agent", "second value, same key"),
    ("empty", ""),
    ("empty-bin", b""),
)


def test_encode_metadata_stores_text_as_utf8_and_bytes_as_is() -> None:
    """Check that text values go on the wire as UTF-8 and -bin values untouched, in order."""
    msg = pb.CallHeaders(method="/a.B/C")
    encode_metadata(msg, PAIRS)
    assert [(e.key, e.value) for e in msg.metadata] == [
        ("user-agent", b"quicflow-test/1"),
        ("trace-bin", b"\x00\x01\xfe\xff"),
        ("greeting", "h\u00e9llo \u4e16\u754c".encode()),
        ("user-agent", b"second value, same key"),
        ("empty", b""),
        ("empty-bin", b""),
    ]


@pytest.mark.parametrize("message_type", [pb.CallHeaders, pb.CallTrailers, pb.Hello])
def test_metadata_round_trip_through_every_carrier(
    message_type: type[pb.CallHeaders] | type[pb.CallTrailers] | type[pb.Hello],
) -> None:
    """Check that metadata survives encode, serialize, parse and decode in every carrier message."""
    msg = message_type()
    encode_metadata(msg, PAIRS)
    parsed = message_type.FromString(msg.SerializeToString())
    assert decode_metadata(parsed.metadata) == PAIRS


def test_encode_metadata_appends() -> None:
    """Check that encoding twice appends rather than replaces."""
    msg = pb.CallTrailers()
    encode_metadata(msg, [("a", "1")])
    encode_metadata(msg, [("b", "2")])
    assert decode_metadata(msg.metadata) == (("a", "1"), ("b", "2"))


def test_decode_metadata_empty() -> None:
    """Check that no entries decode to an empty tuple."""
    assert decode_metadata(pb.CallHeaders().metadata) == ()


def test_decode_metadata_rejects_non_utf8_text() -> None:
    """Check that a text key whose value is not UTF-8 is a MalformedFrame naming the key."""
    msg = pb.CallHeaders()
    msg.metadata.add(key="name", value=b"\xff\xfe")
    with pytest.raises(MalformedFrame, match="metadata value for 'name' is not UTF-8"):
        decode_metadata(msg.metadata)


def test_decode_metadata_keeps_non_utf8_bin_values() -> None:
    """Check that a -bin key may carry any bytes at all."""
    msg = pb.CallHeaders()
    msg.metadata.add(key="blob-bin", value=b"\xff\xfe")
    assert decode_metadata(msg.metadata) == (("blob-bin", b"\xff\xfe"),)


@pytest.mark.parametrize("key", ["", "Upper", "X-TRACE", "caf\u00e9"])
def test_decode_metadata_rejects_bad_keys(key: str) -> None:
    """Check that empty, upper-case and non-ASCII keys from the peer are MalformedFrame."""
    msg = pb.CallHeaders()
    msg.metadata.add(key=key, value=b"v")
    with pytest.raises(MalformedFrame, match="invalid metadata key"):
        decode_metadata(msg.metadata)


@pytest.mark.parametrize("key", ["bad key", "a\nb", "nul\x00", "grpc:status", "a/b"])
def test_decode_metadata_rejects_keys_outside_the_alphabet(key: str) -> None:
    """Check that a peer's key with characters outside 0-9 a-z - _ . is a MalformedFrame."""
    msg = pb.CallHeaders()
    msg.metadata.add(key=key, value=b"v")
    with pytest.raises(MalformedFrame):
        decode_metadata(msg.metadata)


def test_error_code_numbers_match_the_wire_protocol() -> None:
    """Check that the QUIC application error codes are the ones wire protocol v1 fixes."""
    assert {c.name: int(c) for c in ErrorCode} == {
        "NO_ERROR": 0x00,
        "CANCELLED": 0x01,
        "DEADLINE_EXCEEDED": 0x02,
        "REFUSED": 0x03,
        "EXCESSIVE_LOAD": 0x04,
        "PROTOCOL_ERROR": 0x05,
        "INTERNAL_ERROR": 0x06,
        "UNAUTHENTICATED": 0x07,
        "PERMISSION_DENIED": 0x08,
        "SESSION_REPLACED": 0x09,
        "SESSION_EXPIRED": 0x0A,
        "HELLO_TIMEOUT": 0x0B,
    }
