"""The message lane's framing, sans-IO (wire-protocol.md §11.1)."""

from __future__ import annotations

import pytest

from quicflow.lane import LaneDecoder, encode_lane_message, raw_size
from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

ID = bytes(range(16))


def test_messages_survive_any_split_and_keep_their_fields() -> None:
    """Check that lane frames decode to the same messages whatever the byte split."""
    stream = encode_lane_message("alert", b"disk full", (("zone", "eu"), ("k-bin", b"\0")), ID)
    stream += encode_lane_message("t", b"", (), b"")
    for cut in range(len(stream) + 1):
        decoder = LaneDecoder(max_message_size=1024, max_metadata_size=256)
        first, error1 = decoder.feed(stream[:cut], False)
        second, error2 = decoder.feed(stream[cut:], False)
        assert error1 is None and error2 is None
        alert, t = first + second
        assert alert.type == "alert" and alert.payload == b"disk full" and alert.message_id == ID
        assert alert.metadata == (("zone", "eu"), ("k-bin", b"\0"))
        assert (t.type, t.payload, t.metadata, t.message_id, t.size) == ("t", b"", (), b"", 8)


def test_the_worked_example_is_byte_exact() -> None:
    """Check the bytes of wire-protocol.md §11.1's example."""
    frame = encode_lane_message("alert", b"disk full", (("zone", "eu"),), b"")
    assert frame.hex(" ") == (
        "20 00 00 00 1e 0a 05 61 6c 65 72 74 12 09 64 69 73 6b 20 66 75 6c 6c "
        "1a 0a 0a 04 7a 6f 6e 65 12 02 65 75"
    )


@pytest.mark.parametrize(
    ("data", "end", "code", "reason"),
    [
        (encode_frame(FrameType.DATA, b"x"), False, ErrorCode.PROTOCOL_ERROR, "unexpected DATA"),
        (b"\x7f\0\0\0\0", False, ErrorCode.PROTOCOL_ERROR, "unknown frame type 0x7f"),
        (
            encode_frame(FrameType.MESSAGE, b"\x0a\xff"),
            False,
            ErrorCode.PROTOCOL_ERROR,
            "malformed",
        ),
        (encode_frame(FrameType.MESSAGE, b"\x12\x00"), False, ErrorCode.PROTOCOL_ERROR, "a type"),
        (
            encode_frame(
                FrameType.MESSAGE,
                pb.RawMessage(type="t", metadata=[{"key": "A"}]).SerializeToString(),
            ),
            False,
            ErrorCode.PROTOCOL_ERROR,
            "invalid metadata key",
        ),
        (b"\x20\0\0\x04\x01", False, ErrorCode.EXCESSIVE_LOAD, "of 1025 bytes exceeds the limit"),
        (b"\x01\xff\xff\xff\xff", False, ErrorCode.PROTOCOL_ERROR, "unexpected HEADERS frame"),
        (b"", True, ErrorCode.PROTOCOL_ERROR, "ended its message lane"),
        (b"\x20\0", True, ErrorCode.PROTOCOL_ERROR, "ended its message lane"),
    ],
    ids=[
        "data",
        "unknown",
        "bad-payload",
        "no-type",
        "bad-key",
        "too-large",
        "4GiB-headers",
        "fin",
        "fin-inside",
    ],
)
def test_malformed_lane_is_one_error_after_the_good_messages(
    data: bytes, end: bool, code: int, reason: str
) -> None:
    """Check that bad input yields the messages before it, then one error naming the cause,
    and that the decoder refuses everything after."""
    decoder = LaneDecoder(max_message_size=1024, max_metadata_size=256)
    good = encode_lane_message("t", b"ok", (), b"")
    messages, error = decoder.feed(good + data, end)
    assert [m.payload for m in messages] == [b"ok"]
    assert error is not None and error.code == code and reason in error.reason
    assert error.reason.startswith("message lane: ")
    after, again = decoder.feed(good, False)
    assert after == [] and again is not None and "already failed" in again.reason


@pytest.mark.parametrize(("type_len", "payload_len"), [(0, 0), (1, 0), (2, 64), (200, 20000)])
def test_raw_size_is_the_size_of_the_raw_message(type_len: int, payload_len: int) -> None:
    """Check that metrics count a lane message as many bytes as its RawMessage call did."""
    raw = pb.RawMessage(type="x" * type_len, payload=b"p" * payload_len)
    assert raw_size(type_len, payload_len) == raw.ByteSize()
