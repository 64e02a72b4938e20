"""QuicFlow's pacer: packets charged by size, and a loop whose clock moves in 1 ms
steps (uvloop)."""

from __future__ import annotations

import asyncio
from typing import Any

import uvloop
from aioquic.quic.recovery import QuicPacketPacer
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow.testing import ClientFor
from quicflow.transport.pacer import BytePacer, clock_resolution
from tests.e2e.service import TestEcho


def _drain(pacer: QuicPacketPacer, now: float) -> float | None:
    """Send until the pacer says wait (the clock standing still at ``now``)."""
    for _ in range(10_000):
        at: float | None = pacer.next_send_time(now=now)
        if at is not None:
            return at
        pacer.update_after_send(now=now)
    return None


def test_coarse_pacer_wakes_a_clock_step_later_and_banks_a_step_of_sending() -> None:
    """Check that on a fast path (1 MB window, 1 ms RTT) aioquic's pacer asks to be
    woken microseconds later, which a 1 ms clock cannot honour, while the coarse pacer
    asks for at least one clock step and lets a whole step's packets go in one burst."""
    plain = QuicPacketPacer(max_datagram_size=1200)
    coarse = BytePacer(max_datagram_size=1200, resolution=0.001)
    for pacer in (plain, coarse):
        pacer.update_rate(congestion_window=1_000_000, smoothed_rtt=0.001)
    assert plain.bucket_max < 0.001
    assert coarse.bucket_max >= 0.002
    now = 10.0
    plain_at, coarse_at = _drain(plain, now), _drain(coarse, now)
    assert plain_at is not None and plain_at - now < 0.001
    assert coarse_at is not None and coarse_at - now >= 0.001 - 1e-9
    # One clock step later the coarse pacer has a step's worth of packets to send.
    sent = 0
    while coarse.next_send_time(now=now + 0.001) is None and sent < 10_000:
        coarse.update_after_send(now=now + 0.001)
        sent += 1
    assert coarse.packet_time is not None
    assert sent >= 0.9 * 0.001 / coarse.packet_time


def test_byte_pacer_charges_small_packets_by_size_and_full_ones_as_aioquic() -> None:
    """Check that with 16 KiB datagrams aioquic's pacer lets only its bucket's count
    of small (1.5 KB) packets go at one instant, as if each were 16 KiB, while the
    byte pacer lets about 16384 / 1500 times as many go; full-size packets are
    paced exactly as aioquic paces them."""
    window, rtt = 245_000, 0.008  # measured at c=128: the peer's queueing is in srtt

    def sent_at_once(pacer: QuicPacketPacer, size: int) -> int:
        pacer.update_rate(congestion_window=window, smoothed_rtt=rtt)
        now = 10.0
        pacer.update_bucket(now=now - 1.0)
        pacer.update_bucket(now=now)  # a full bucket
        if isinstance(pacer, BytePacer):
            pacer.packet_size = lambda: size
        sent = 0
        while pacer.next_send_time(now=now) is None and sent < 100_000:
            pacer.update_after_send(now=now)
            sent += 1
        return sent

    plain_small = sent_at_once(QuicPacketPacer(max_datagram_size=16384), 1484)
    byte_small = sent_at_once(BytePacer(max_datagram_size=16384), 1484)
    assert 0 < plain_small <= 17
    assert byte_small >= 10 * plain_small
    plain_full = sent_at_once(QuicPacketPacer(max_datagram_size=16384), 16384)
    byte_full = sent_at_once(BytePacer(max_datagram_size=16384), 16384)
    assert byte_full == plain_full


def test_clock_resolution_by_loop() -> None:
    """Check that asyncio's own loop counts as precise and uvloop's as 1 ms steps."""
    for factory, expected in ((asyncio.new_event_loop, 0.0), (uvloop.new_event_loop, 0.001)):
        loop = factory()
        try:
            assert clock_resolution(loop) == expected
        finally:
            loop.close()


def test_a_call_under_uvloop_installs_the_coarse_pacer_and_completes() -> None:
    """Check that on uvloop both ends' connections get the coarse pacer and a 1 MiB
    request and reply go through (real time, one short call)."""

    async def main() -> None:
        options = {
            "max_message_size": 2 << 20,
            "max_datagram_size": 1200,
            "quic_engine": "aioquic",  # the pacer is aioquic's, whatever the env says
        }
        harness = ClientFor([TestEcho()], server_options=options, client_options=options)
        async with harness as client:
            text = "x" * (1 << 20)
            assert (await EchoStub(client).say(EchoRequest(text=text), timeout=20)).text == text
            conn = client.connection
            assert conn is not None
            [server_conn] = harness.server.connections
            for end in (conn, server_conn):
                quic: Any = end._quic  # aioquic's connection: its private recovery state
                pacer = quic._loss._pacer
                assert isinstance(pacer, BytePacer) and pacer.resolution == 0.001

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())
