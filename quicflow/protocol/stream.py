"""The one receive loop of a frame stream, shared by the call and control machines.

Both machines turn a stream's bytes into events the same way: decode the
frames the bytes complete (reporting them before any decoding error), let a
frame no state admits be refused by the machine with its state in the
message, and check that FIN comes on a frame boundary. What each frame or
the end *means* stays with the machine (``on_frame``, ``on_unexpected``,
``on_end``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ..errors import ProtocolError
from ..wire.codec import FrameDecoder, FrameType, MalformedFrame, UnexpectedFrame

__all__ = ["receive_frames"]

E = TypeVar("E")


def receive_frames(
    decoder: FrameDecoder,
    data: bytes,
    end_stream: bool,
    *,
    on_frame: Callable[[FrameType, bytes], E],
    on_unexpected: Callable[[FrameType], object],
    on_end: Callable[[], E],
    stream: str,
) -> tuple[list[E], ProtocolError | None]:
    """Feed ``data`` (and FIN when ``end_stream``) through ``decoder``.

    Returns the events of the frames completed, in order, then of the end,
    and the `ProtocolError` that stopped it (None: none). ``on_unexpected``
    is called for a frame type no state admits and should raise the
    machine's own error; ``stream`` names the stream in "<stream> ended
    inside a frame".
    """
    events: list[E] = []
    try:
        if data:
            # Frames completed before a decoding error are reported first.
            frames, decode_error = decoder.feed_until_error(data)
            for frame in frames:
                events.append(on_frame(frame.type, frame.payload))
            if decode_error is not None:
                if isinstance(decode_error, UnexpectedFrame):
                    # No state admits it: the machine says so with its state.
                    on_unexpected(decode_error.frame_type)
                raise decode_error
        if end_stream:
            if not decoder.at_boundary:
                raise MalformedFrame(f"{stream} ended inside a frame")
            events.append(on_end())
        return events, None
    except ProtocolError as exc:
        return events, exc
