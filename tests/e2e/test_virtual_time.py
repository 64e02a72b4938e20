"""The runtime's timers on a virtual clock, end to end over real QUIC.

Server and clients take a `FakeClock` (``ClientFor(..., clock=clock)``): the
hello timeout, heartbeat sending and eviction, the pong timeout and backoff
then fire exactly when the test advances the clock, however loaded the
machine is. Bytes still travel over loopback in real time, so after a step
that sends something the test waits (briefly, in real time) for it to
arrive before the next step; QUIC's own timers stay on the event loop.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from typing import Any

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientState, RpcError, StatusCode
from quicflow import server as server_module
from quicflow.sessions import ClientInfo
from quicflow.testing import ClientFor, FakeClock
from quicflow.wire import ErrorCode

from .service import TestEcho
from .test_connect_failures import _AlwaysBusy
from .test_connection import _raw_connection, _RawControl
from .test_lifecycle import FAST_SERVER, _kill


async def _until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait (real time) until ``condition()`` holds: bytes in flight over loopback."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - a poll: the condition has no event
            await asyncio.sleep(0.001)


def _has(items: list[Any], n: int) -> bool:
    return len(items) == n


def _outstanding(client: Client) -> int | None:
    """The sequence of the client's PING awaiting its PONG (None: none)."""
    link = client._link
    heartbeat = link.heartbeat if link is not None else None
    return heartbeat.outstanding if heartbeat is not None else None


EPSILON = 1e-6
"""Tests that step the clock start this far past 0, so that a step lands just past a
timer due at a multiple of the step, whatever the float error of the sum."""


async def _step(clock: FakeClock, client: Client, dt: float) -> bool:
    """Advance ``dt``; if the client sent a PING meanwhile, wait for its PONG (so the
    server has counted it at this virtual time). True if a PING went out."""
    clock.advance(dt)
    if _outstanding(client) is None:
        return False
    await _until(lambda: _outstanding(client) is None)
    return True


async def test_connection_without_hello_is_closed_exactly_at_hello_timeout() -> None:
    """Check that a connection that never sends HELLO is still open 9.999 s after it was
    accepted and is closed HELLO_TIMEOUT at exactly 10 s (the default hello_timeout)."""
    clock = FakeClock()
    harness = ClientFor([TestEcho()], clock=clock)
    async with harness:
        conn = await _raw_connection(harness)
        try:
            await _until(lambda: len(harness.server.connections) == 2)
            clock.advance(9.999)
            await asyncio.sleep(0.05)  # nothing may come: give it the chance to
            assert not conn.is_closed
            clock.advance(0.001)
            await asyncio.wait_for(conn.wait_closed(), 5.0)
            assert conn.close_code == ErrorCode.HELLO_TIMEOUT
        finally:
            await conn.aclose()


async def test_silent_client_is_evicted_exactly_three_intervals_after_hello() -> None:
    """Check that a client that says HELLO (0.2 s interval) and never pings is evicted at
    exactly 0.6 s of virtual time, not at 0.59 s, with heartbeat_timeout and disconnect
    hooks fired and the connection closed SESSION_EXPIRED."""
    clock = FakeClock()
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, clock=clock)
    evicted: list[float] = []
    reasons: list[str] = []
    harness.server.hooks.on_heartbeat_timeout(
        lambda info: evicted.append(clock.time()) if info.client_id == "mute" else None
    )
    harness.server.hooks.on_disconnect(
        lambda info, reason: reasons.append(reason) if info.client_id == "mute" else None
    )
    await harness.server.start()
    try:
        conn = await _raw_connection(harness)
        control = _RawControl()
        sid = conn.open_stream(control)
        conn.write(sid, control.protocol.send_hello("mute", heartbeat_interval=0.2))
        await asyncio.wait_for(control.welcomed.wait(), 5.0)
        clock.advance(0.59)
        assert evicted == [] and "mute" in [c.client_id for c in harness.server.list_clients()]
        clock.advance(0.01 + 1e-9)  # 3 x 0.2 is 0.6000000000000001 in floats
        assert evicted == [pytest.approx(0.6, abs=1e-9)]
        await asyncio.wait_for(conn.wait_closed(), 5.0)
        assert conn.close_code == ErrorCode.SESSION_EXPIRED
        assert len(reasons) == 1 and "expired" in reasons[0]
        assert harness.server.list_clients() == []
        await conn.aclose()
    finally:
        await harness.server.stop()


async def test_client_at_the_servers_minimum_interval_is_not_evicted() -> None:
    """Check that a client asking for a 1 s heartbeat from a default server (minimum 1 s,
    3 misses) pings at exactly 1, 2, 3 and 4 s of virtual time and keeps its one session
    past 4.5 s, when one pinging every max(interval, pong timeout) = 5 s was evicted at
    3 s (wire-protocol.md §9.3)."""
    clock = FakeClock()
    harness = ClientFor([TestEcho()], client_options={"heartbeat_interval": 1.0}, clock=clock)
    events: list[str] = []
    harness.server.hooks.on_heartbeat_timeout(lambda info: events.append("timeout"))
    harness.server.hooks.on_disconnect(lambda info, reason: events.append(reason))
    async with harness as client:
        client.hooks.on_disconnect(events.append)
        [info] = harness.server.list_clients()
        assert info.heartbeat_interval == 1.0
        pings: list[float] = []
        clock.advance(EPSILON)
        for _ in range(45):
            if await _step(clock, client, 0.1):
                pings.append(round(clock.time() - EPSILON, 6))
        assert pings == [1.0, 2.0, 3.0, 4.0]
        assert events == []
        [now] = harness.server.list_clients()
        assert now.connected_since == info.connected_since
        assert client.state is ClientState.CONNECTED


async def test_client_pings_at_the_granted_interval_not_the_one_it_asked_for() -> None:
    """Check that a client asking for 0.1 s from a server whose minimum is 0.4 s pings at
    exactly 0.4, 0.8 and 1.2 s of virtual time (§9.2: the interval both sides use), so a
    server allowing 5 PINGs a second keeps it."""
    server_options: dict[str, Any] = {
        **FAST_SERVER,
        "heartbeat_interval": 0.4,
        "min_heartbeat_interval": 0.4,
        "max_ping_rate": 5,
    }
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()],
        server_options=server_options,
        client_options={"heartbeat_interval": 0.1},
        clock=clock,
    )
    reasons: list[str] = []
    harness.server.hooks.on_disconnect(lambda info, reason: reasons.append(reason))
    async with harness as client:
        assert client.server_limits is not None
        assert client.server_limits.heartbeat_interval == 0.4
        pings: list[float] = []
        clock.advance(EPSILON)
        for _ in range(30):
            if await _step(clock, client, 0.05):
                pings.append(round(clock.time() - EPSILON, 6))
        assert pings == [0.4, 0.8, 1.2]
        [info] = harness.server.list_clients()
        assert info.last_heartbeat is not None
        assert reasons == [] and client.state is ClientState.CONNECTED


async def test_client_notices_a_vanished_server_one_interval_and_the_pong_timeout_later() -> None:
    """Check that a client (0.2 s interval) whose server vanished without a word sends its
    next PING at 0.2 s and gives up at exactly 0.5 s, using the 0.3 s pong timeout the
    server announced in WELCOME instead of its own 5 s (wire-protocol.md §9.2, §9.3)."""
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={"heartbeat_interval": 0.2, "reconnect": False},
        clock=clock,
    )
    async with harness as client:
        assert client.config.heartbeat_timeout == 5.0
        assert client.server_limits is not None
        assert client.server_limits.heartbeat_timeout == 0.3
        noticed: list[float] = []
        client.hooks.on_heartbeat_timeout(lambda: noticed.append(clock.time()))
        _kill(harness.server)  # silent: only the heartbeat can tell
        clock.advance(0.2)
        assert _outstanding(client) is not None  # the PING that will not be answered
        clock.advance(0.2999)
        assert noticed == []
        clock.advance(0.0001)
        assert noticed == [pytest.approx(0.5, abs=1e-9)]
        await _until(lambda: client.state is ClientState.CLOSED)


async def test_reconnect_waits_exactly_the_backoff_delays() -> None:
    """Check that a client whose server is gone retries at exactly the backoff schedule
    on virtual time (0.1, then 0.2, then 0.4 s capped; no jitter), reporting each wait in
    the reconnect hook, and makes no attempt before a delay has passed."""
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={
            "heartbeat_interval": 0.2,
            "backoff_initial": 0.1,
            "backoff_max": 0.4,
            "backoff_jitter": 0.0,
            "connect_timeout": 0.2,
        },
        clock=clock,
    )
    async with harness as client:
        waits: list[tuple[int, float, float]] = []
        client.hooks.on_reconnect(
            lambda attempt, delay: waits.append((attempt, delay, clock.time()))
        )
        await harness.server.stop()  # GOAWAY, then closed: the client starts reconnecting
        await _until(lambda: len(waits) == 1)
        start = waits[0][2]
        for attempt, delay in ((1, 0.1), (2, 0.2), (3, 0.4)):
            assert waits[-1][:2] == (attempt, delay)
            clock.advance(delay - 0.001)
            await asyncio.sleep(0.02)
            assert len(waits) == attempt  # nothing tried before the delay is over
            clock.advance(0.001)
            # The attempt fails (nothing listens; connect_timeout on the loop), then the
            # next wait starts.
            await _until(functools.partial(_has, waits, attempt + 1))
        assert [round(at - start, 6) for _, _, at in waits] == [0.0, 0.1, 0.3, 0.7]
        assert client.state is ClientState.RECONNECTING
        with pytest.raises(RpcError) as failed:
            await EchoStub(client).say(EchoRequest(text="x"))
        assert failed.value.code is StatusCode.UNAVAILABLE


async def test_silent_client_info_before_eviction() -> None:
    """Check that between HELLO and eviction the session's snapshot counts the missed
    heartbeats on virtual time: 0 at 0.19 s, 1 at 0.2 s, 2 at 0.4 s."""
    clock = FakeClock()
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, clock=clock)
    await harness.server.start()
    try:
        conn = await _raw_connection(harness)
        control = _RawControl()
        sid = conn.open_stream(control)
        conn.write(sid, control.protocol.send_hello("mute", heartbeat_interval=0.2))
        await asyncio.wait_for(control.welcomed.wait(), 5.0)

        def missed() -> int:
            info: ClientInfo = harness.server.get_client_info("mute")
            return info.missed_heartbeats

        seen = []
        for dt in (0.19, 0.01, 0.2):
            clock.advance(dt)
            seen.append(missed())
        assert seen == [0, 1, 2]
        await conn.aclose()
    finally:
        await harness.server.stop()


async def test_evictions_falling_due_together_are_closed_in_slices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that five silent sessions due at the same instant (0.6 s) all leave the
    registry then (heartbeat_timeout at 0.6 for each), while their connections are closed
    two per 10 ms slice: disconnects at 0.6, 0.6, 0.61, 0.61, 0.62, each SESSION_EXPIRED;
    and that a session waiting for its slice answers no PING."""
    monkeypatch.setattr(server_module, "EVICTIONS_PER_SLICE", 2)
    clock = FakeClock(start=EPSILON)
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, clock=clock)
    timed_out: list[float] = []
    gone: list[float] = []
    harness.server.hooks.on_heartbeat_timeout(lambda info: timed_out.append(clock.time()))
    harness.server.hooks.on_disconnect(
        lambda info, reason: gone.append(clock.time()) if "expired" in reason else None
    )
    await harness.server.start()
    conns = []
    try:
        controls = []
        for i in range(5):
            conn = await _raw_connection(harness)
            control = _RawControl()
            sid = conn.open_stream(control)
            conn.write(sid, control.protocol.send_hello(f"m{i}", heartbeat_interval=0.2))
            await asyncio.wait_for(control.welcomed.wait(), 5.0)
            conns.append(conn)
            controls.append((control, sid))
        clock.advance(0.6 + 1e-9)  # 3 x 0.2 is 0.6000000000000001 in floats
        assert timed_out == [pytest.approx(0.6 + EPSILON, abs=1e-9)] * 5
        assert harness.server.list_clients() == []
        assert gone == [pytest.approx(0.6 + EPSILON, abs=1e-9)] * 2
        # The last one waits for the slice at 0.62: its PING goes unanswered.
        last, (control, sid) = conns[-1], controls[-1]
        conn_pongs = len(control.events)
        last.write(sid, control.protocol.send_ping(1))
        await asyncio.sleep(0.1)
        assert len(control.events) == conn_pongs and not last.is_closed
        clock.advance(0.01 - 2e-9)
        assert len(gone) == 2  # not before 0.61
        clock.advance(2e-9)
        assert gone[2:] == [pytest.approx(0.61 + EPSILON, abs=1e-9)] * 2
        clock.advance(0.01)
        assert gone[4:] == [pytest.approx(0.62 + EPSILON, abs=1e-9)]
        for conn in conns:
            await asyncio.wait_for(conn.wait_closed(), 5.0)
            assert conn.close_code == ErrorCode.SESSION_EXPIRED
    finally:
        for conn in conns:
            await conn.aclose()
        await harness.server.stop()


async def test_an_evicted_session_whose_connection_ends_before_its_slice_is_lost_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that a session evicted at 0.6 s whose client closes its connection while the
    close waits for a later slice gets its disconnect then (with the client's reason), and
    none again when its slice comes; the others are closed SESSION_EXPIRED in their slices."""
    monkeypatch.setattr(server_module, "EVICTIONS_PER_SLICE", 1)
    clock = FakeClock(start=EPSILON)
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, clock=clock)
    gone: list[tuple[str, str]] = []
    harness.server.hooks.on_disconnect(lambda info, reason: gone.append((info.client_id, reason)))
    await harness.server.start()
    conns = []
    try:
        for i in range(3):
            conn = await _raw_connection(harness)
            control = _RawControl()
            sid = conn.open_stream(control)
            conn.write(sid, control.protocol.send_hello(f"m{i}", heartbeat_interval=0.2))
            await asyncio.wait_for(control.welcomed.wait(), 5.0)
            conns.append(conn)
        clock.advance(0.6 + 1e-9)
        assert [c for c, _ in gone] == ["m0"] and harness.server.list_clients() == []
        await conns[2].aclose(reason="bye")
        await _until(lambda: len(gone) == 2)
        assert gone[1] == ("m2", "bye")
        clock.advance(0.01)
        clock.advance(0.01)
        await asyncio.sleep(0.05)
        assert [c for c, _ in gone] == ["m0", "m2", "m1"]
        assert all("expired" in reason for c, reason in gone if c != "m2")
        await asyncio.wait_for(conns[1].wait_closed(), 5.0)
        assert conns[1].close_code == ErrorCode.SESSION_EXPIRED
    finally:
        for conn in conns:
            await conn.aclose()
        await harness.server.stop()


async def test_reconnect_comes_back_when_a_busy_server_asked() -> None:
    """Check that a reconnecting client turned away "server busy, retry in 250 ms" waits
    exactly 0.25 s (no jitter) of virtual time, not its next backoff delay, and that the
    busy answer does not grow its backoff (the hook reports attempt 1 both times); then
    it connects."""
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={
            "heartbeat_interval": 0.2,
            "backoff_initial": 0.1,
            "backoff_jitter": 0.0,
        },
        clock=clock,
    )
    async with harness as client:
        listener = harness.server._listener
        assert listener is not None
        admission = listener.admission
        listener.admission = _AlwaysBusy(0.25)  # type: ignore[assignment]
        waits: list[tuple[int, float, float]] = []
        client.hooks.on_reconnect(
            lambda attempt, delay: waits.append((attempt, delay, clock.time()))
        )
        for conn in harness.server.connections:
            conn.close()  # the client loses its connection and starts reconnecting
        await _until(lambda: len(waits) == 1)
        assert waits[0][:2] == (1, 0.1)
        clock.advance(0.1)  # the attempt: turned away at once
        await _until(functools.partial(_has, waits, 2))
        assert waits[1][:2] == (1, 0.25)
        assert round(waits[1][2] - waits[0][2], 6) == 0.1
        listener.admission = admission
        clock.advance(0.25 - 0.001)
        await asyncio.sleep(0.02)
        assert listener.busy_sent == 1  # nothing tried before the asked time
        clock.advance(0.001)
        await _until(lambda: client.state is ClientState.CONNECTED)
        assert len(waits) == 2
