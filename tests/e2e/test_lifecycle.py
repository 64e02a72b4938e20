"""Long-lived connections end to end: identity, heartbeat, eviction, reconnect, GOAWAY.

Intervals here are tenths of a second; the exact schedules are pinned on a
virtual clock in tests/protocol/test_heartbeat.py and test_backoff.py, and end
to end (a `FakeClock` driving a real server and client) in test_virtual_time.py.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import (
    Client,
    ClientNotConnected,
    ConnectionClosed,
    RpcError,
    Server,
    ServerConfig,
    StatusCode,
)
from quicflow.auth import TokenAuthenticator
from quicflow.client import ClientState
from quicflow.protocol.call import Role
from quicflow.protocol.control import ControlProtocol
from quicflow.sessions import ClientInfo
from quicflow.testing import ClientFor, FakeClock
from quicflow.wire import ErrorCode

from .service import TestEcho
from .test_connection import _raw_connection, _RawControl

FAST_SERVER: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_check_interval": 0.05,
    "max_missed_heartbeats": 3,
    "heartbeat_timeout": 0.3,
    "min_heartbeat_interval": 0.05,
    "hello_timeout": 0.5,
}
FAST_CLIENT: dict[str, Any] = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.3,
    "backoff_initial": 0.1,
    "backoff_max": 0.4,
    "connect_timeout": 0.5,
}


def _kill(server: Server) -> int:
    """Make the server vanish like a killed process: no CONNECTION_CLOSE, socket gone."""
    port = server.port
    endpoint = server._listener
    assert endpoint is not None and endpoint._transport is not None
    for conn in list(endpoint.connections):
        if conn._timer is not None:
            conn._timer.cancel()
        conn._timer = None
    endpoint._transport.abort()
    return port


async def _restart(harness: ClientFor, port: int) -> Server:
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=port,
            cert_file=str(harness.certs.cert_file),
            key_file=str(harness.certs.key_file),
            **FAST_SERVER,
        )
    )
    server.add_service(TestEcho())
    await server.start()
    return server


async def _wait_state(client: Client, state: ClientState, within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        async for current in client.watch_state():
            if current is state:
                return


async def test_session_registry_reports_connected_clients() -> None:
    """Check that list_clients/get_client_info describe a connected client and forget it when it
    leaves, firing connect and disconnect hooks."""
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={**FAST_CLIENT, "client_id": "alpha", "labels": {"zone": "eu"}},
        clock=clock,
    )
    events: list[str] = []
    harness.server.hooks.on_connect(lambda info: events.append(f"connect {info.client_id}"))
    harness.server.hooks.on_disconnect(
        lambda info, reason: events.append(f"disconnect {info.client_id}")
    )
    async with harness as client:
        assert client.client_id == "alpha"
        assert client.state is ClientState.CONNECTED
        await EchoStub(client).say(EchoRequest(text="x"))
        assert harness.server.get_client_info("alpha").last_heartbeat is None
        clock.advance(0.2)  # the first heartbeat is due: the client pings
        async with asyncio.timeout(5):
            while harness.server.get_client_info("alpha").last_heartbeat is None:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
        [info] = harness.server.list_clients()
        assert info == harness.server.get_client_info("alpha")
        assert info.client_id == "alpha"
        assert info.labels == {"zone": "eu"}
        assert info.remote_address.startswith("127.0.0.1:")
        assert info.calls_in == 1
        assert info.bytes_in > 0 and info.bytes_out > 0
        assert info.last_heartbeat is not None
        assert info.heartbeat_interval == pytest.approx(0.2)
        assert info.rtt is not None and info.rtt < 0.5
        with pytest.raises(ClientNotConnected) as missing:
            harness.server.get_client_info("nobody")
        assert missing.value.code is StatusCode.UNAVAILABLE
    await asyncio.sleep(0.05)
    assert events == ["connect alpha", "disconnect alpha"]
    assert harness.server.list_clients() == []


async def test_token_authenticator_accepts_and_refuses() -> None:
    """Check that a known token connects under its bound id, and unknown or misused tokens are
    refused with UNAUTHENTICATED / PERMISSION_DENIED."""
    auth = TokenAuthenticator({"good": "sensor-1", "any": None})
    harness = ClientFor(
        [TestEcho()], server_options={"authenticator": auth}, client_options={"token": "any"}
    )
    async with harness:
        async with Client(harness.client_config(token="good")) as client:
            assert client.client_id == "sensor-1"
            assert (await EchoStub(client).say(EchoRequest(text="hi"))).text == "hi"
        async with Client(harness.client_config(token="any", client_id="free")) as client:
            assert client.client_id == "free"
        bad = Client(harness.client_config(token="wrong"))
        with pytest.raises(RpcError) as info:
            await bad.connect()
        assert info.value.code is StatusCode.UNAUTHENTICATED
        assert bad.state is ClientState.CLOSED
        no_token = Client(harness.client_config(token=None))
        with pytest.raises(RpcError) as info:
            await no_token.connect()
        assert info.value.code is StatusCode.UNAUTHENTICATED
        thief = Client(harness.client_config(token="good", client_id="admin"))
        with pytest.raises(RpcError) as info:
            await thief.connect()
        assert info.value.code is StatusCode.PERMISSION_DENIED
        assert len(harness.server.list_clients()) == 1  # the harness's own client


async def test_silent_client_is_evicted_after_missed_heartbeats() -> None:
    """Check that a client that says HELLO and then never pings is evicted after three
    intervals, with heartbeat_timeout and disconnect hooks fired."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    timeouts: list[ClientInfo] = []
    reasons: list[str] = []
    harness.server.hooks.on_heartbeat_timeout(timeouts.append)
    harness.server.hooks.on_disconnect(
        lambda info, reason: reasons.append(reason) if info.client_id == "mute" else None
    )
    async with harness:
        conn = await _raw_connection(harness)
        try:
            control = _RawControl()
            sid = conn.open_stream(control)
            loop = asyncio.get_running_loop()
            conn.write(sid, control.protocol.send_hello("mute", heartbeat_interval=0.2))
            await asyncio.wait_for(control.welcomed.wait(), 2.0)
            hello_at = loop.time()
            assert "mute" in [c.client_id for c in harness.server.list_clients()]
            await asyncio.wait_for(conn.wait_closed(), 3.0)
            evicted_after = loop.time() - hello_at
            assert conn.close_code == ErrorCode.SESSION_EXPIRED
            # 3 x 0.2 s after the last ping; the exact schedule is pinned on a virtual clock
            # in tests/protocol/test_heartbeat.py, the upper bound here is slack for load.
            assert 0.5 <= evicted_after < 2.0, evicted_after
            # Only "mute" is counted: under load the harness's own client may miss too.
            assert [t.client_id for t in timeouts if t.client_id == "mute"] == ["mute"]
            assert len(reasons) == 1 and "expired" in reasons[0]
            assert "mute" not in [c.client_id for c in harness.server.list_clients()]
        finally:
            await conn.aclose()


async def test_client_waits_for_a_pong_no_longer_than_the_server_suggests() -> None:
    """Check that a client configured with the default 5 s pong timeout adopts the shorter
    heartbeat_timeout a server announces in WELCOME (0.3 s), so a server that vanished is
    noticed one interval and 0.3 s later, not 5 s (wire-protocol.md §9.2, §9.3)."""
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={"heartbeat_interval": 0.2, "reconnect": False},
    )
    async with harness as client:
        assert client.config.heartbeat_timeout == 5.0
        assert client.server_limits is not None
        assert client.server_limits.heartbeat_timeout == 0.3
        loop = asyncio.get_running_loop()
        noticed = loop.create_future()
        client.hooks.on_heartbeat_timeout(lambda: noticed.set_result(loop.time()))
        killed_at = loop.time()
        _kill(harness.server)  # silent: only the heartbeat can tell
        after = await asyncio.wait_for(noticed, 4.0) - killed_at
        # At most one 0.2 s interval to the next PING, then 0.3 s; slack for load only.
        assert after < 2.0, after
        await client.close()


async def test_connection_without_hello_is_closed() -> None:
    """Check that a connection that never sends HELLO is closed after hello_timeout."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    async with harness:
        conn = await _raw_connection(harness)
        try:
            await asyncio.wait_for(conn.wait_closed(), 3.0)
            assert conn.close_code == ErrorCode.HELLO_TIMEOUT
        finally:
            await conn.aclose()


async def test_client_reconnects_after_server_dies_and_returns() -> None:
    """Check that a server killed without a word is detected by the heartbeat, calls fail
    UNAVAILABLE meanwhile, and the client is back once a server listens on the port again."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, client_options=FAST_CLIENT)
    states: list[ClientState] = []
    async with harness as client:
        client.hooks.on_state_change(lambda old, new: states.append(new))
        stub = EchoStub(client)
        port = _kill(harness.server)
        await _wait_state(client, ClientState.RECONNECTING, within=3.0)
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="during"))
        assert info.value.code is StatusCode.UNAVAILABLE
        server2 = await _restart(harness, port)
        try:
            await _wait_state(client, ClientState.CONNECTED, within=5.0)
            assert (await stub.say(EchoRequest(text="back"))).text == "back"
            assert states[0] is ClientState.RECONNECTING
            assert states[-1] is ClientState.CONNECTED
            assert [c.client_id for c in server2.list_clients()] == [client.client_id]
        finally:
            await client.close()
            await server2.stop()


@pytest.mark.serial  # many clients / a real restart against real-time bounds
async def test_fifty_clients_return_spread_out() -> None:
    """Check that 50 clients reconnect after a restart without all returning at the same
    instant, and measure how long until all are back."""
    harness = ClientFor(
        [TestEcho()],
        # Wider timeouts than FAST_*: 50 handshakes at once on a loaded 2-core machine can
        # take longer than 0.5 s, and a pong late by 0.3 s must not look like a loss.
        server_options={**FAST_SERVER, "max_missed_heartbeats": 10},
        client_options={
            **FAST_CLIENT,
            "backoff_initial": 0.3,
            "backoff_jitter": 0.5,
            "connect_timeout": 3.0,
            "heartbeat_timeout": 1.0,
        },
    )
    async with harness as first:
        clients = [first]
        for _ in range(49):
            c = Client(harness.client_config())
            await c.connect()
            clients.append(c)
        assert len(harness.server.list_clients()) == 50
        loop = asyncio.get_running_loop()
        back_at: dict[str, float] = {}
        for c in clients:
            c.hooks.on_connect(lambda cid: back_at.setdefault(cid, loop.time()))
        port = _kill(harness.server)
        await asyncio.gather(*(_wait_state(c, ClientState.RECONNECTING, 3.0) for c in clients))
        server2 = await _restart(harness, port)
        restarted = loop.time()
        try:
            await asyncio.gather(*(_wait_state(c, ClientState.CONNECTED, 10.0) for c in clients))
            assert len(back_at) == 50
            times = sorted(back_at.values())
            spread = statistics.pstdev(times)
            print(
                f"50 clients back {times[-1] - restarted:.2f} s after the restart "
                f"(first {times[0] - restarted:.2f} s, spread stdev={spread * 1000:.0f} ms)"
            )
            assert spread > 0.02
            # The server registers a session a moment after WELCOME; on a loaded machine a
            # client may also miss a pong once and come back after its backoff: allow 10 s
            # (as for the reconnects above), polled, so a quiet run still takes milliseconds.
            for _ in range(200):
                if len(server2.list_clients()) == 50:
                    break
                await asyncio.sleep(0.05)
            assert len(server2.list_clients()) == 50
        finally:
            # Together: each close waits out QUIC's closing period (3 PTO, ~0.1 s).
            await asyncio.gather(*(c.close() for c in clients[1:]))
            await first.close()
            await server2.stop()


async def test_same_client_id_replaces_the_old_session() -> None:
    """Check that connecting again under a client id replaces the old session at once."""
    harness = ClientFor(
        [TestEcho()],
        server_options=FAST_SERVER,
        client_options={**FAST_CLIENT, "client_id": "dup", "reconnect": False},
    )
    reasons: list[str] = []
    harness.server.hooks.on_disconnect(lambda info, reason: reasons.append(reason))
    async with harness as old:
        new = Client(harness.client_config())
        await new.connect()
        try:
            await _wait_state(old, ClientState.CLOSED, within=3.0)
            [info] = harness.server.list_clients()
            assert info.client_id == "dup"
            new_conn = new.connection
            assert new_conn is not None
            assert (await EchoStub(new).say(EchoRequest(text="new"))).text == "new"
            with pytest.raises(ConnectionClosed):
                await EchoStub(old).say(EchoRequest(text="old"))
            assert reasons == ["replaced by a newer connection"]
        finally:
            await new.close()


async def test_goaway_lets_calls_finish_and_client_reconnects() -> None:
    """Check that a graceful stop sends GOAWAY: the call in flight finishes, the client goes
    RECONNECTING and comes back to a new server on the same port."""
    service = TestEcho()
    harness = ClientFor([service], server_options=FAST_SERVER, client_options=FAST_CLIENT)
    async with harness as client:
        stub = EchoStub(client)
        slow = asyncio.ensure_future(_say(stub, "slow", 300))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        port = harness.server.port
        stopping = asyncio.ensure_future(harness.server.stop(grace=2.0))
        await _wait_state(client, ClientState.RECONNECTING, within=2.0)
        assert await slow == "slow"
        await stopping
        server2 = await _restart(harness, port)
        try:
            await _wait_state(client, ClientState.CONNECTED, within=5.0)
            assert (await stub.say(EchoRequest(text="again"))).text == "again"
        finally:
            await client.close()
            await server2.stop()


async def _say(stub: EchoStub, text: str, delay_ms: int = 0) -> str:
    reply = await stub.say(EchoRequest(text=text, delay_ms=delay_ms))
    return reply.text


async def test_wait_for_ready_waits_and_fail_fast_does_not() -> None:
    """Check that calls made while reconnecting fail fast by default, and wait for the
    connection with wait_for_ready=True: until exactly their deadline (on the client's
    virtual clock: 0.2 s, not 0.199), or until the client is back."""
    clock = FakeClock()
    harness = ClientFor(
        [TestEcho()], server_options=FAST_SERVER, client_options=FAST_CLIENT, clock=clock
    )
    async with harness as client:
        stub = EchoStub(client)
        port = _kill(harness.server)
        clock.advance(0.2)  # the next PING goes out, and is never answered
        clock.advance(0.3)  # the pong timeout the server announced: connection lost
        await _wait_state(client, ClientState.RECONNECTING, within=3.0)
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="now"))  # no clock moved: it failed at once
        assert info.value.code is StatusCode.UNAVAILABLE
        short = asyncio.ensure_future(
            _await_reply(stub.say(EchoRequest(text="short"), wait_for_ready=True, timeout=0.2))
        )
        await asyncio.sleep(0.01)
        clock.advance(0.199)
        await asyncio.sleep(0.01)
        assert not short.done()
        clock.advance(0.001)
        with pytest.raises(RpcError) as info:
            await short
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        waiting = asyncio.ensure_future(
            _await_reply(stub.say(EchoRequest(text="patient"), wait_for_ready=True, timeout=5))
        )
        server2 = await _restart(harness, port)
        try:
            # Step the client's backoff (at most 0.4 s) until an attempt reaches server2;
            # each attempt itself runs in real time.
            for _ in range(100):
                if waiting.done():
                    break
                clock.advance(0.1)
                await asyncio.sleep(0.02)
            assert await waiting == "patient"
        finally:
            await client.close()
            await server2.stop()


async def _await_reply(call: Any) -> str:
    reply = await call
    return str(reply.text)


async def test_close_leaves_no_task_timer_or_socket() -> None:
    """Check that client.close() ends reconnecting, heartbeat and watchers, leaving no task."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER, client_options=FAST_CLIENT)
    async with harness as client:
        before = asyncio.all_tasks()
        watched: list[ClientState] = []

        async def watch() -> None:
            async for state in client.watch_state():
                watched.append(state)

        watcher = asyncio.ensure_future(watch())
        _kill(harness.server)
        await _wait_state(client, ClientState.RECONNECTING, within=3.0)
        await client.close()
        await asyncio.wait_for(watcher, 1.0)
        assert watched[0] is ClientState.CONNECTED
        assert watched[-1] is ClientState.CLOSED
        assert client.state is ClientState.CLOSED
        assert asyncio.all_tasks() <= before
        with pytest.raises(ConnectionClosed):
            await EchoStub(client).say(EchoRequest())


async def test_raising_and_slow_hooks_do_not_break_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that a hook that raises is logged and a slow async hook does not delay calls."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)

    def broken(info: ClientInfo) -> None:
        raise RuntimeError("hook bug")

    slow_started = asyncio.Event()

    async def slow(info: ClientInfo) -> None:
        slow_started.set()
        await asyncio.sleep(30)

    harness.server.hooks.on_connect(broken)
    harness.server.hooks.on_connect(slow)
    async with harness as client:
        await asyncio.wait_for(slow_started.wait(), 2.0)
        reply = await asyncio.wait_for(EchoStub(client).say(EchoRequest(text="ok")), 1.0)
        assert reply.text == "ok"
        assert "hook bug" in caplog.text or "connect hook" in caplog.text
        for task in list(harness.server.hooks._tasks):
            task.cancel()


async def test_control_protocol_rejects_hello_twice() -> None:
    """Check that a second HELLO on the control stream closes that connection."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    async with harness:
        conn = await _raw_connection(harness)
        try:
            control = _RawControl()
            sid = conn.open_stream(control)
            conn.write(sid, control.protocol.send_hello("twice"))
            await asyncio.wait_for(control.welcomed.wait(), 2.0)
            again = ControlProtocol(Role.CALLER, max_frame_size=65536)
            conn.write(sid, again.send_hello("twice"))
            await asyncio.wait_for(conn.wait_closed(), 3.0)
            assert conn.close_code == ErrorCode.PROTOCOL_ERROR
        finally:
            await conn.aclose()


async def test_client_close_with_grace_lets_its_calls_finish() -> None:
    """Check that client.close(grace) waits for a call in flight, and close() without grace
    fails one with UNAVAILABLE."""
    service = TestEcho()
    harness = ClientFor([service], server_options=FAST_SERVER, client_options=FAST_CLIENT)
    async with harness as client:
        stub = EchoStub(client)
        slow = asyncio.ensure_future(_say(stub, "slow", 200))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        await client.close(grace=3.0)
        assert await slow == "slow"
    harness2 = ClientFor([TestEcho()], server_options=FAST_SERVER, client_options=FAST_CLIENT)
    async with harness2 as client2:
        stuck = asyncio.ensure_future(_say(EchoStub(client2), "stuck", 5000))
        await asyncio.sleep(0.1)
        await client2.close()
        with pytest.raises(RpcError) as info:
            await stuck
        assert info.value.code is StatusCode.UNAVAILABLE


async def test_evictions_due_together_are_closed_in_slices_on_the_real_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check on the real event loop (short real time) that three silent sessions due
    together with one close per slice all leave the registry, get SESSION_EXPIRED and a
    disconnect each, and leave no eviction waiting."""
    from quicflow import server as server_module

    monkeypatch.setattr(server_module, "EVICTIONS_PER_SLICE", 1)
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    loop = asyncio.get_running_loop()
    gone: list[tuple[str, float]] = []
    harness.server.hooks.on_disconnect(
        lambda info, reason: (
            gone.append((info.client_id, loop.time())) if "expired" in reason else None
        )
    )
    await harness.server.start()
    conns = []
    try:
        conns = [await _raw_connection(harness) for _ in range(3)]
        controls = [_RawControl() for _ in conns]
        for i, (conn, control) in enumerate(zip(conns, controls, strict=True)):
            sid = conn.open_stream(control)  # the three HELLOs leave in one loop turn
            conn.write(sid, control.protocol.send_hello(f"s{i}", heartbeat_interval=0.2))
        async with asyncio.timeout(5.0):
            for conn in conns:
                await conn.wait_closed()
                assert conn.close_code == ErrorCode.SESSION_EXPIRED
        assert sorted(c for c, _ in gone) == ["s0", "s1", "s2"]
        times = [t for _, t in gone]
        # One close per 10 ms slice: the three are at least a slice apart.
        assert times[1] - times[0] >= 0.009 and times[2] - times[1] >= 0.009
        assert harness.server.list_clients() == []
        assert not harness.server._evictions and harness.server._eviction_timer is None
    finally:
        for conn in conns:
            await conn.aclose()
        await harness.server.stop()
