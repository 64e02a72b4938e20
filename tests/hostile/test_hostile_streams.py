"""Hostile peers abusing streams: rapid reset, streams left idle (slowloris), ping floods."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
from echo.echo_pb2 import EchoRequest

from quicflow import StatusCode
from quicflow.wire import ErrorCode, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb

from .harness import Echo, Figures, attack_setup
from .peer import HostilePeer

# Figures for make chaos's table (it runs -m 'chaos or faults'); short versions run in make test.
pytestmark = pytest.mark.faults

REPO = str(Path(__file__).resolve().parents[2])
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


async def test_rapid_reset_beyond_the_budget_closes_that_connection() -> None:
    """Check that a connection resetting calls faster than max_reset_rate is closed with
    EXCESSIVE_LOAD "rapid reset" (counted once in the metrics), without running a handler,
    while a bystander's calls go on and the server's state returns to its baseline."""
    service = Echo()
    async with attack_setup(service, max_reset_rate=50) as (harness, bystander, peer):
        await peer.hello("resetter")
        says = service.says
        bystander.start()
        sent = 0
        while not peer.closed and sent < 2_000:
            if not peer.can_open_stream():
                await peer.wait_stream_credit()
                continue
            sid = peer.open_stream()
            peer.quic.send_stream_data(sid, CALL)
            peer.reset(sid, ErrorCode.CANCELLED)
            sent += 1
            if sent % 16 == 0:
                await asyncio.sleep(0)
        assert await peer.wait_closed() == (ErrorCode.EXCESSIVE_LOAD, "rapid reset")
        await bystander.stop()
        assert 50 < sent < 2_000  # the bucket holds one second's worth, then it is closed
        # Only the bystander's handlers ran (its last call may have been cut short by stop).
        assert service.says - says - len(bystander.latencies["during"]) in (0, 1)
        assert harness.server.get_metrics().rapid_reset_closes == 1


@pytest.mark.chaos
async def test_rapid_reset_long(figures: Figures) -> None:
    """The long version: 50,000 opened-and-reset streams from an attacker in a process of
    its own (so it attacks at the rate the server takes, not at the rate it can share a
    CPU with it), reconnecting whenever it is closed; with the default budget."""
    service = Echo()
    async with attack_setup(service) as (harness, bystander, peer):
        await peer.aclose()
        bystander.start()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.hostile.attack",
            str(harness.server.port),
            str(harness.certs.ca_file),
            "50000",
            stdout=asyncio.subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(["generated", "."])},
        )
        out, _ = await proc.communicate()
        await bystander.stop()
        assert proc.returncode == 0
        result = json.loads(out)
        bystander.report("rapid reset x50,000 (attacker process)", figures)
        figures.add(
            "rapid reset x50,000: seconds / connections used / closed for it",
            f"{result['seconds']:.1f} / {result['connections']} / {result['closed']}",
        )
        assert result["streams"] == 50_000
        assert all(tuple(c) == (ErrorCode.EXCESSIVE_LOAD, "rapid reset") for c in result["closes"])
        assert harness.server.get_metrics().rapid_reset_closes == result["closed"]


def _headers(method: str) -> bytes:
    return encode_frame(FrameType.HEADERS, pb.CallHeaders(method=method).SerializeToString())


async def test_streams_left_without_headers_or_request_end_after_header_timeout() -> None:
    """Check that streams opened with a partial frame and then left idle (slowloris), and
    unary / server-streaming calls whose request never completes, end with DEADLINE_EXCEEDED
    and STOP_SENDING(DEADLINE_EXCEEDED) after header_timeout without running a handler;
    a client-streaming call left idle after its HEADERS is legitimately kept."""
    service = Echo()
    async with attack_setup(service, header_timeout=0.3) as (_, bystander, peer):
        await peer.hello("slow")
        says = service.says
        one_byte = peer.send_new(b"\x01")
        half_headers = peer.send_new(CALL[:9])
        headers_only = peer.send_new(_headers(SAY))
        no_fin = peer.send_new(CALL)  # HEADERS and the request, but never FIN
        stream_no_request = peer.send_new(_headers("/echo.Echo/Stream"))
        upload = peer.send_new(_headers("/echo.Echo/Collect"))
        no_headers = (one_byte, half_headers)
        no_request = (headers_only, no_fin, stream_no_request)
        logs = {s: await peer.wait_stream_end(s) for s in no_headers + no_request}
        assert service.says == says  # no handler ran
        await bystander.calls(3)  # other clients are served meanwhile
        for sid, log in logs.items():
            trailers = log.trailers()
            assert trailers is not None
            assert trailers.status == StatusCode.DEADLINE_EXCEEDED
            what = "call HEADERS" if sid in no_headers else "complete request"
            assert trailers.message == f"no {what} within 0.3 s (header_timeout)"
            await peer.wait_for(lambda: peer.stream(sid).stop_code is not None)  # noqa: B023
            assert peer.stream(sid).stop_code == ErrorCode.DEADLINE_EXCEEDED
        # The upload is still open (its client may legitimately pause); it completes.
        assert not peer.stream(upload).ended
        request = EchoRequest(text="up").SerializeToString()
        peer.send(upload, encode_frame(FrameType.DATA, request), end_stream=True)
        log = await peer.wait_stream_end(upload)
        assert log.trailers() == pb.CallTrailers()
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
