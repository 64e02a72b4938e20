"""A connection's stream registry (`quicflow.transport.streams.StreamRegistry`) against a
fake engine: who waits, who is woken, and what the end does to them."""

from __future__ import annotations

import asyncio

import pytest

from quicflow.errors import ConnectionClosed
from quicflow.transport.streams import StreamHandler, StreamRegistry


class _Engine:
    def __init__(self) -> None:
        self.buffered: dict[int, int] = {}
        self.slots = 0

    def send_buffered(self, stream_id: int) -> int:
        return self.buffered.get(stream_id, 0)

    def free_bidi_slots(self) -> int:
        return self.slots


class _Handler:
    unread_bytes = 0

    def __init__(self) -> None:
        self.lost: ConnectionClosed | None = None

    def data_received(self, data: bytes, end_stream: bool) -> None: ...

    def stream_reset(self, error_code: int) -> None: ...

    def stop_sending(self, error_code: int) -> None: ...

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.lost = exc


def _registry(engine: _Engine) -> StreamRegistry:
    handlers: dict[int, StreamHandler] = {}
    return StreamRegistry(engine, handlers, is_client=True, send_buffer_limit=100, send_limit=1000)


async def test_credit_waiters_wake_one_per_free_slot_oldest_first() -> None:
    """Check that with three openers waiting and one slot freed only the oldest wakes,
    and that it giving up (cancelled after being woken) passes the slot to the next, the
    third still waiting."""
    engine = _Engine()
    streams = _registry(engine)
    woken: list[int] = []

    async def opener(n: int) -> None:
        await streams.wait_credit()
        woken.append(n)

    tasks = [asyncio.create_task(opener(n)) for n in range(3)]
    await asyncio.sleep(0)
    assert streams.credit_waiting == 3
    engine.slots = 1
    streams.progressed()
    assert streams.credit_waiting == 2
    tasks[0].cancel()  # woken, but gives up before it runs
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert woken == [1] and streams.credit_waiting == 1
    tasks[2].cancel()


async def test_drain_waits_per_stream_and_the_end_fails_every_waiter() -> None:
    """Check that a writer over send_buffer_limit waits until its stream's bytes are
    acknowledged, and that `fail` raises the connection's error in drain, budget and
    credit waiters, wakes idle waiters, and returns the live handlers."""
    engine = _Engine()
    streams = _registry(engine)
    call, lane = _Handler(), _Handler()
    streams.add(0, call)
    streams.add(2, lane, lane=True)
    assert streams.call_count == 1
    engine.buffered[0] = 150
    draining = asyncio.create_task(streams.drain(0))
    await asyncio.sleep(0)
    assert streams.drain_waiting == 1
    engine.buffered[0] = 100
    streams.progressed()
    await draining
    engine.buffered[0] = 1500  # over the stream's limit and the connection's
    streams.wrote(0, 1500)
    waits = [
        asyncio.create_task(streams.drain(0)),
        asyncio.create_task(streams.drain_connection()),
        asyncio.create_task(streams.wait_credit()),
    ]
    idle = asyncio.create_task(streams.wait_idle())
    await asyncio.sleep(0)
    assert streams.drain_waiting == 1 and streams.budget_waiting
    assert streams.credit_waiting == 1
    closed = ConnectionClosed(message="connection closed: gone")
    assert streams.fail(closed) == [call, lane]
    for task in waits:
        with pytest.raises(ConnectionClosed):
            await task
    await idle
    assert streams.call_count == 0 and streams.closed is closed


async def test_budget_bound_rises_with_writes_and_a_scan_makes_it_exact() -> None:
    """Check that writes raise the bound without asking the engine, and that past the
    limit a scan replaces it by the bytes really queued, forgetting empty streams."""
    engine = _Engine()
    streams = _registry(engine)
    streams.wrote(0, 800)
    streams.wrote(4, 800)
    assert streams.unsent_bound == 1600
    engine.buffered = {0: 300}  # stream 4 was acknowledged meanwhile
    assert not streams.budget_exceeded()
    assert streams.unsent_bound == 300
    streams.wrote(4, 10)
    assert streams.unsent_bound == 310


async def test_a_peer_stream_is_new_once_even_when_packets_reorder() -> None:
    """Check that a client's registry takes server streams 1, 5, 9 as new whatever order
    they arrive in (9 first opens 1 and 5 implicitly), each only once, and that stream 0
    is not one the peer opens."""
    streams = _registry(_Engine())
    assert [streams.peer_stream_is_new(s) for s in (9, 1, 1, 5, 9, 13)] == [
        True,
        True,
        False,
        True,
        False,
        True,
    ]
    assert streams.is_peer_call(5) and not streams.is_peer_call(0)


async def test_a_writer_waiting_to_drain_returns_when_its_stream_is_released() -> None:
    """Check that a writer waiting for its stream's send buffer returns when the stream
    is released (reset, or its call ended) instead of waiting forever."""
    engine = _Engine()
    streams = _registry(engine)
    streams.add(0, _Handler())
    engine.buffered[0] = 150
    draining = asyncio.create_task(streams.drain(0))
    await asyncio.sleep(0)
    streams.release(0)
    await asyncio.wait_for(draining, 1.0)
    assert streams.drain_waiting == 0
