"""Hostile peers abusing streams: rapid reset, streams left idle (slowloris), ping floods."""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoRequest

from quicflow import StatusCode
from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

from .harness import Echo, Figures, attack_setup
from .peer import HostilePeer

# Figures for make chaos's table (it runs -m 'chaos or faults'); short versions run in make test.
pytestmark = pytest.mark.faults

SAY = "/echo.Echo/Say"
CALL = encode_frame(
    FrameType.HEADERS, pb.CallHeaders(method=SAY).SerializeToString()
) + encode_frame(FrameType.DATA, EchoRequest(text="r").SerializeToString())


async def _rapid_reset(peer: HostilePeer, streams: int) -> tuple[int, int]:
    """Open ``streams`` calls and reset each at once, half of them after their HEADERS and
    request left in a datagram of their own; return (answered, reset) by the server."""
    sids = []
    for i in range(streams):
        if not peer.can_open_stream():
            await peer.wait_stream_credit()
        sid = peer.open_stream()
        if i % 2:
            peer.send(sid, CALL)  # transmitted now: the server sees HEADERS, then the reset
            peer.reset(sid, ErrorCode.CANCELLED)
        else:
            peer.quic.send_stream_data(sid, CALL)
            peer.reset(sid, ErrorCode.CANCELLED)  # both leave together (or the data never)
        sids.append(sid)
        if i % 64 == 63:
            await asyncio.sleep(0)
    # Every stream ends on the server's side: reset (CANCELLED) or answered before the reset.
    pending = set(sids)

    def all_ended() -> bool:
        # Checked after every datagram: prune, so the whole wait stays linear in streams.
        pending.difference_update(
            [s for s in pending if peer.stream(s).ended or s not in peer.quic._streams]
        )
        return not pending

    try:
        await peer.wait_for(all_ended, 120.0)
    except TimeoutError:
        left = sorted(pending)
        raise AssertionError(
            f"{len(left)} streams never ended, e.g. {left[:3]}: "
            f"{[peer.stream(s) for s in left[:3]]}; connection closed: {peer.closed}"
        ) from None
    answered = sum(1 for s in sids if peer.stream(s).fin)
    reset = sum(1 for s in sids if peer.stream(s).reset_code is not None)
    return answered, reset


async def _rapid_reset_case(streams: int, figures: Figures) -> None:
    service = Echo()
    async with attack_setup(service) as (harness, bystander, peer):
        await peer.hello("resetter")
        bystander.start()
        answered, reset = await _rapid_reset(peer, streams)
        await bystander.stop()
        bystander.report(f"rapid reset x{streams:,}", figures)
        figures.add(
            f"rapid reset x{streams:,}: handlers run / streams answered / streams reset",
            f"{service.says} / {answered} / {reset}",
        )
        # The connection survived and still serves a proper call.
        ok = peer.send_new(CALL, end_stream=True)
        assert (await peer.wait_stream_end(ok)).trailers() == pb.CallTrailers()
        assert not peer.closed
        # Handlers ran at most for streams whose request arrived before their reset.
        assert service.says <= streams // 2 + 1
        assert harness.server.active_calls == 0


async def test_rapid_reset_leaves_nothing_behind(figures: Figures) -> None:
    """Check that 2,000 calls opened and reset at once run (almost) no handlers, leave no
    call, task or stream state on the server, and do not stop a bystander's calls."""
    await _rapid_reset_case(2_000, figures)


@pytest.mark.chaos
async def test_rapid_reset_long(figures: Figures) -> None:
    """The long version: 50,000 opened-and-reset streams on one connection."""
    await _rapid_reset_case(50_000, figures)


async def test_streams_left_without_headers_end_after_header_timeout() -> None:
    """Check that streams opened with a partial frame and then left idle (slowloris) end with
    DEADLINE_EXCEEDED and STOP_SENDING(DEADLINE_EXCEEDED) after header_timeout, while a call
    that sent its HEADERS at once is not affected."""
    async with attack_setup(header_timeout=0.3) as (_, bystander, peer):
        await peer.hello("slow")
        bystander.start()
        one_byte = peer.send_new(b"\x01")
        half_headers = peer.send_new(CALL[:9])
        logs = [await peer.wait_stream_end(s) for s in (one_byte, half_headers)]
        await bystander.stop()
        for log in logs:
            trailers = log.trailers()
            assert trailers is not None
            assert trailers.status == StatusCode.DEADLINE_EXCEEDED
            assert trailers.message == "no call HEADERS within 0.3 s (header_timeout)"
        for sid in (one_byte, half_headers):
            await peer.wait_for(lambda: peer.stream(sid).stop_code is not None)  # noqa: B023
            assert peer.stream(sid).stop_code == ErrorCode.DEADLINE_EXCEEDED
        assert not peer.closed


async def test_ping_flood_closes_the_connection() -> None:
    """Check that PINGs within max_ping_rate are all answered, and that a flood beyond it
    closes the connection with EXCESSIVE_LOAD "ping flood" after a bounded number of PONGs."""
    async with attack_setup(max_ping_rate=100) as (_, bystander, peer):
        await peer.hello("pinger")
        assert peer.control_id is not None
        control = peer.control_id
        peer.ping(50)
        await peer.wait_for(lambda: len(peer.stream(control).frames()) == 51)  # WELCOME + 50
        assert [f for f, _ in peer.stream(control).frames()[1:]] == [FrameType.PONG] * 50
        bystander.start()
        for start in range(51, 100_000, 500):
            if peer.closed:
                break
            peer.ping(500, start=start)
            await asyncio.sleep(0)
        close_code, reason = await peer.wait_closed()
        await bystander.stop()
        assert (close_code, reason) == (ErrorCode.EXCESSIVE_LOAD, "ping flood")
        # At most max_ping_rate PONGs per second were ever owed.
        assert len(peer.stream(control).frames()) <= 1 + 50 + 100
