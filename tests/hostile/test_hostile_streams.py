"""Hostile peers abusing streams: rapid reset, streams left idle (slowloris), ping floods."""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoRequest

from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

from .harness import Echo, attack_setup
from .peer import HostilePeer

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
    await peer.wait_for(
        lambda: all(peer.stream(s).ended or s not in peer.quic._streams for s in sids), 30.0
    )
    answered = sum(1 for s in sids if peer.stream(s).fin)
    reset = sum(1 for s in sids if peer.stream(s).reset_code is not None)
    return answered, reset


async def _rapid_reset_case(streams: int) -> None:
    service = Echo()
    async with attack_setup(service) as (harness, bystander, peer):
        await peer.hello("resetter")
        bystander.start()
        answered, reset = await _rapid_reset(peer, streams)
        await bystander.stop()
        bystander.report(f"rapid reset x{streams}")
        print(
            f"rapid reset x{streams}: handler ran {service.says} times, server answered "
            f"{answered}, reset {reset}"
        )
        # The connection survived and still serves a proper call.
        ok = peer.send_new(CALL, end_stream=True)
        assert (await peer.wait_stream_end(ok)).trailers() == pb.CallTrailers()
        assert not peer.closed
        # Handlers ran at most for streams whose request arrived before their reset.
        assert service.says <= streams // 2 + 1
        assert harness.server.active_calls == 0


async def test_rapid_reset_leaves_nothing_behind() -> None:
    """Check that 2,000 calls opened and reset at once run (almost) no handlers, leave no
    call, task or stream state on the server, and do not stop a bystander's calls."""
    await _rapid_reset_case(2_000)


@pytest.mark.chaos
async def test_rapid_reset_long() -> None:
    """The long version: 50,000 opened-and-reset streams on one connection."""
    await _rapid_reset_case(50_000)
