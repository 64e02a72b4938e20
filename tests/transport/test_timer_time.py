"""The engine's timer, fired early by the loop (uvloop runs timers up to 0.5 ms early: its
clock counts whole milliseconds): the engine hears the time it asked for, both when it
handles the timer and in the transmit that follows."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any, cast

from quicflow.transport.engine import EngineConnection
from quicflow.transport.quic import QuicFlowProtocol
from quicflow.transport.settings import TransportSettings


class _Engine:
    """Just what `QuicFlowProtocol` asks of an engine around a timer; it records the times
    it was given and, like qh3 and aioquic with an ACK or a paced packet, asks for the
    same deadline again until it hears a time at or past it."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.configuration = SimpleNamespace(is_client=True)
        self.flow_handlers: dict[int, Any] = {}
        self.handled: list[float] = []
        self.sent_at: list[float] = []
        self.received_at: list[float] = []

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)

    def next_event(self) -> None:
        return None

    def receive_datagram(self, data: bytes, addr: Any, now: float) -> None:
        self.received_at.append(now)

    def active_path(self) -> None:
        return None

    def close_event(self) -> None:
        return None

    def datagrams_to_send(self, now: float) -> list[tuple[bytes, Any]]:
        self.sent_at.append(now)
        if now >= self.deadline:
            self.deadline = now + 15.0  # sent: the next deadline is the idle one
        return []

    def get_timer(self) -> float:
        return self.deadline


class _Loop:
    """The protocol's view of the loop: a clock that reads ``now`` and timers recorded."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.timers: list[float] = []

    def time(self) -> float:
        return self.now

    def call_at(self, when: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        self.timers.append(when)
        return cast(asyncio.TimerHandle, SimpleNamespace(cancel=lambda: None))


async def test_a_timer_fired_early_transmits_at_its_own_time() -> None:
    """Check that a timer due at 10.0 s that the loop runs at 9.9995 s hands 10.0 to the
    engine's handle_timer and to the transmit after it, so what was due then is sent and
    the timer moves on (15 s later), not re-armed at 10.0 to fire again next loop pass."""
    engine = _Engine(deadline=10.0)
    protocol = QuicFlowProtocol(
        cast(EngineConnection, engine), settings=TransportSettings(), router=None
    )
    loop = _Loop(now=9.9995)
    protocol._loop = cast(asyncio.AbstractEventLoop, loop)
    protocol._transport = cast(asyncio.DatagramTransport, SimpleNamespace(sendto=print))
    protocol.transmit()
    assert loop.timers == [10.0] and engine.sent_at == [9.9995]
    protocol._handle_timer()
    assert engine.handled == [10.0]
    assert engine.sent_at == [9.9995, 10.0]
    assert loop.timers == [10.0, 25.0]


async def test_time_handed_to_the_engine_never_goes_back() -> None:
    """Check that after a timer handled at its own 10.0 s while the loop read 9.9995 s, a
    datagram received and the transmits that follow in that same millisecond hand the
    engine 10.0, not the loop's earlier time (qh3 fails the connection with InvalidTime
    when time goes backwards), and the loop's time again once it is later."""
    engine = _Engine(deadline=10.0)
    protocol = QuicFlowProtocol(
        cast(EngineConnection, engine), settings=TransportSettings(), router=None
    )
    loop = _Loop(now=9.9995)
    protocol._loop = cast(asyncio.AbstractEventLoop, loop)
    protocol._transport = cast(asyncio.DatagramTransport, SimpleNamespace(sendto=print))
    protocol.transmit()
    protocol._handle_timer()
    loop.now = 9.9997
    protocol.datagram_received(b"x", ("127.0.0.1", 1))
    protocol.transmit()
    assert engine.received_at == [10.0]
    assert engine.sent_at[-1] == 10.0 and min(engine.sent_at[1:]) == 10.0
    loop.now = 10.002
    protocol.datagram_received(b"y", ("127.0.0.1", 1))
    assert engine.received_at == [10.0, 10.002]
