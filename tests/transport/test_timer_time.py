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

    def handle_timer(self, now: float) -> None:
        self.handled.append(now)

    def next_event(self) -> None:
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
