"""Unfinished frames: the bytes a peer can pin with frames it never finishes, and how long.

A frame is buffered whole before it is decoded. A frame larger than half the
stream window gets receive credit beyond that only with a reservation of its
size from its connection's budget (``connection_receive_limit``) and the
server's (``receive_limit``); every frame has ``frame_timeout``. Bytes held are
read from the server's state (the decoders of its live calls), not from RSS.
"""

from __future__ import annotations

import asyncio
import gc

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Server, StatusCode
from quicflow.incoming import IncomingCall
from quicflow.testing import ClientFor
from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.codec import FRAME_HEADER_SIZE
from quicflow.wire.v1 import frames_pb2 as pb

from .harness import Echo, Figures, attack_setup

pytestmark = pytest.mark.faults

COLLECT = "/echo.Echo/Collect"  # client streaming: the handler waits for each message
WINDOW = 64 << 10
MESSAGE = 1 << 20
CONNECTION_LIMIT = 2 << 20


def _headers(method: str = COLLECT) -> bytes:
    return encode_frame(FrameType.HEADERS, pb.CallHeaders(method=method).SerializeToString())


def _unfinished_data(length: int, sent: int) -> bytes:
    """A DATA frame's prefix announcing ``length`` payload bytes, then ``sent`` of them."""
    return bytes([FrameType.DATA]) + length.to_bytes(4, "big") + b"\x00" * sent


def held_bytes(server: Server) -> int:
    """Bytes the server's live calls hold for the peer: unfinished frames in their
    decoders plus complete messages their handlers have not read."""
    gc.collect()
    return sum(
        o._machine.buffered + o.unread_bytes for o in gc.get_objects() if type(o) is IncomingCall
    )


async def _steady(server: Server, settle: float = 0.3, timeout: float = 10.0) -> int:
    """The held bytes once they stop growing for ``settle`` seconds."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    last = held_bytes(server)
    still_since = loop.time()
    while loop.time() < end:
        await asyncio.sleep(0.05)
        now = held_bytes(server)
        if now != last:
            last, still_since = now, loop.time()
        elif loop.time() - still_since >= settle:
            break
    return last


async def test_unfinished_frames_are_bounded_per_connection(figures: Figures) -> None:
    """Check that 24 streams each holding an unfinished 1 MiB DATA frame (the peer sends all
    but one byte) pin at most connection_receive_limit (2 MiB) plus one stream window
    (64 KiB) per stream, not 24 MiB: two frames reserve, the others wait within their
    window; the bystander keeps calling, and the reservations are all given back."""
    streams = 24
    async with attack_setup(
        stream_receive_window=WINDOW,
        max_message_size=MESSAGE,
        connection_receive_limit=CONNECTION_LIMIT,
        frame_timeout=60.0,
    ) as (harness, bystander, peer):
        server = harness.server
        await peer.hello("pinner")
        before = held_bytes(server)
        bystander.start()
        for _ in range(streams):
            peer.send_new(_headers() + _unfinished_data(MESSAGE, MESSAGE - 1))
        held = await _steady(server)
        await bystander.stop()
        bystander.report("24 unfinished 1 MiB frames", figures)
        figures.add("24 unfinished 1 MiB frames: server holds", held >> 10, "KiB")
        bound = CONNECTION_LIMIT + streams * (WINDOW + FRAME_HEADER_SIZE)
        assert before == 0
        assert held <= bound, f"{held} bytes held, bound {bound}"
        endpoint = server._listener
        assert endpoint is not None
        # Two whole frames reserved (one byte short each), the rest waiting in line.
        assert endpoint.receive_budget.used == 2 * MESSAGE
        assert held >= 2 * (MESSAGE - 1)
    assert endpoint.receive_budget.used == 0 and endpoint.receive_budget.waiting == 0


async def test_a_frame_left_unfinished_ends_at_frame_timeout(figures: Figures) -> None:
    """Check, in real time, that a frame left unfinished (a small one, and a large one
    that holds a reservation) ends its call DEADLINE_EXCEEDED naming frame_timeout with
    STOP_SENDING(DEADLINE_EXCEEDED) once frame_timeout (0.5 s) passed, while a stream
    whose frames each complete in time lives on and the bystander never fails."""
    async with attack_setup(
        stream_receive_window=WINDOW,
        max_message_size=MESSAGE,
        connection_receive_limit=CONNECTION_LIMIT,
        frame_timeout=0.5,
    ) as (_harness, bystander, peer):
        await peer.hello("slow")
        loop = asyncio.get_running_loop()
        bystander.start()
        t0 = loop.time()
        small = peer.send_new(_headers() + _unfinished_data(1000, 10))
        large = peer.send_new(_headers() + _unfinished_data(MESSAGE, MESSAGE - 1))
        steady = peer.send_new(_headers())
        message = encode_frame(FrameType.DATA, b"")  # an empty request message: a whole frame
        for _ in range(5):
            peer.send(steady, message)
            await asyncio.sleep(0.2)
        await peer.wait_stream_end(small)
        await peer.wait_stream_end(large)
        elapsed = loop.time() - t0
        await bystander.stop()
        bystander.report("frames left unfinished", figures)
        for sid in (small, large):
            log = peer.stream(sid)
            trailers = log.trailers()
            assert trailers is not None
            assert (trailers.status, trailers.message) == (
                StatusCode.DEADLINE_EXCEEDED,
                "a frame stayed unfinished for 0.5 s (frame_timeout)",
            )
            assert log.stop_code == ErrorCode.DEADLINE_EXCEEDED
        assert 0.5 <= elapsed < 5.0
        assert not peer.stream(steady).ended  # its frames all completed: still open
        peer.send(steady, b"", end_stream=True)
        log = await peer.wait_stream_end(steady)
        trailers = log.trailers()
        assert trailers is not None and trailers.status == StatusCode.OK


async def test_large_uploads_on_many_calls_all_complete_under_a_tight_limit() -> None:
    """Check that a well-behaved client uploading 900 KiB messages on 8 calls at once (3
    each, 21 MiB in all) through a 2 MiB connection_receive_limit gets every reply: the
    frames take turns with their reservations, none deadlocks or times out."""
    harness = ClientFor(
        [Echo()],
        server_options={
            "stream_receive_window": WINDOW,
            "max_message_size": MESSAGE,
            "connection_receive_limit": CONNECTION_LIMIT,
            "frame_timeout": 20.0,
        },
        client_options={"max_message_size": MESSAGE},
    )
    async with harness as client:
        stub = EchoStub(client)
        payload = b"p" * (900 << 10)

        async def upload(n: int) -> str:
            requests = [EchoRequest(text=f"{n}.{i} ", payload=payload) for i in range(3)]
            reply = await stub.collect(requests, timeout=30.0)
            return reply.text

        replies = await asyncio.gather(*(upload(n) for n in range(8)))
        assert replies == [f"{n}.0 {n}.1 {n}.2 " for n in range(8)]
        endpoint = harness.server._listener
        assert endpoint is not None and endpoint.receive_budget.used == 0
