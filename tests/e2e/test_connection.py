"""Connections end to end: loss, TLS, ALPN, connect timeouts, backpressure, hostile bytes,
graceful stop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest
from aioquic.asyncio.client import connect as aioquic_connect
from aioquic.quic.configuration import QuicConfiguration
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import (
    Client,
    ConnectionClosed,
    RpcError,
    StatusCode,
    UnaryUnaryCall,
)
from quicflow.certs import write_dev_certs
from quicflow.protocol import CallProtocol, Role, TrailersReceived
from quicflow.protocol.control import ControlProtocol, WelcomeReceived
from quicflow.testing import ClientFor, FakeClock
from quicflow.transport import QuicFlowProtocol, connect
from quicflow.transport.tls import client_configuration
from quicflow.wire import ErrorCode, FrameType, encode_frame
from tests.transport.listeners import CallsTo

from .service import TestEcho


async def test_connection_loss_fails_calls_in_flight_at_once() -> None:
    """Check that when the connection closes, in-flight unary and streaming calls fail with
    UNAVAILABLE at once, and new calls fail the same way."""
    service = TestEcho()
    harness = ClientFor([service])
    async with harness as client:
        stub = EchoStub(client)
        unary = asyncio.ensure_future(stub.say(EchoRequest(text="s", delay_ms=10_000)))
        got: list[int] = []

        async def consume() -> None:
            async for reply in stub.stream(EchoRequest(repeat=100, delay_ms=200)):
                got.append(reply.index)

        streaming = asyncio.ensure_future(consume())
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        loop = asyncio.get_running_loop()
        start = loop.time()
        [server_conn] = harness.server.connections
        server_conn.close(ErrorCode.INTERNAL_ERROR, "gone")
        for fut in (unary, streaming):
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(fut, 2.0)
            assert info.value.code is StatusCode.UNAVAILABLE
        assert loop.time() - start < 1.0
        assert len(got) < 100  # the stream did not look complete
        with pytest.raises(ConnectionClosed):
            await stub.say(EchoRequest(text="after"))
        assert not client.connected


async def test_silent_peer_is_detected_by_idle_timeout() -> None:
    """Check that a server that vanishes without a word fails in-flight calls with UNAVAILABLE
    once the QUIC idle timeout passes, not at the call's far deadline."""
    service = TestEcho()
    harness = ClientFor([service], client_options={"idle_timeout": 0.5})
    async with harness as client:
        call = EchoStub(client).say(EchoRequest(text="s", delay_ms=10_000), timeout=30)
        fut = asyncio.ensure_future(_await(call))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        endpoint = harness.server._listener
        assert endpoint is not None and endpoint._transport is not None
        endpoint._transport.abort()  # the socket goes; no CONNECTION_CLOSE is sent
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(fut, 5.0)
        assert info.value.code is StatusCode.UNAVAILABLE
        assert loop.time() - start < 3.0


async def _await(call: UnaryUnaryCall[EchoReply]) -> EchoReply:
    return await call


async def test_wrong_ca_and_wrong_name_are_refused(tmp_path: Path) -> None:
    """Check that a server certificate from another CA or for another name fails the
    handshake with a clear error."""
    other = write_dev_certs(tmp_path)
    harness = ClientFor([TestEcho()])
    async with harness:
        bad_ca = Client(harness.client_config(ca_file=str(other.ca_file)))
        with pytest.raises(ConnectionClosed) as info:
            await bad_ca.connect()
        assert info.value.code is StatusCode.UNAVAILABLE
        assert "certificate" in info.value.message.lower()
        bad_name = Client(harness.client_config(server_name="not-this-host.example"))
        with pytest.raises(ConnectionClosed):
            await bad_name.connect()


async def test_insecure_skip_verify_connects_and_warns(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Check that insecure_skip_verify accepts an untrusted certificate and logs a warning."""
    other = write_dev_certs(tmp_path)
    harness = ClientFor([TestEcho()])
    async with harness:
        config = harness.client_config(ca_file=str(other.ca_file), insecure_skip_verify=True)
        with caplog.at_level(logging.WARNING, logger="quicflow"):
            async with Client(config) as client:
                assert (await EchoStub(client).say(EchoRequest(text="x"))).text == "x"
        assert "insecure_skip_verify" in caplog.text


async def test_alpn_mismatch_is_refused() -> None:
    """Check that a QUIC client offering another ALPN cannot connect."""
    harness = ClientFor([TestEcho()])
    async with harness:
        config = QuicConfiguration(is_client=True, alpn_protocols=["h3"], server_name="localhost")
        config.load_verify_locations(cafile=str(harness.certs.ca_file))
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(5):
                async with aioquic_connect("127.0.0.1", harness.server.port, configuration=config):
                    pass


async def test_slow_reader_bounds_what_the_server_buffers() -> None:
    """Check that a client that stops reading stalls the server's stream (bounded buffers),
    and that every message still arrives once it reads."""
    service = TestEcho()
    window = 128 << 10
    async with ClientFor(
        [service],
        server_options={"send_buffer_limit": window},
        client_options={"stream_receive_window": window},
    ) as client:
        call = EchoStub(client).stream(EchoRequest(repeat=200, payload=b"p" * (32 << 10)))
        first = await call.read()
        assert first is not None and first.index == 0
        await asyncio.sleep(0.3)
        # 200 x 32 KiB = 6.4 MiB were asked for; at most ~window + send limit can be out.
        assert service.probe.yielded < 20, service.probe.yielded
        indexes = [first.index] + [r.index async for r in call]
        assert indexes == list(range(200))


async def _raw_connection(harness: ClientFor) -> QuicFlowProtocol:
    config = harness.client_config()
    quic = client_configuration(server_name="localhost", ca_file=config.ca_file)
    return await connect(
        "127.0.0.1", harness.server.port, quic, config.transport_settings(), connect_timeout=5
    )


class _RawControl:
    """The client end of a hand-driven control stream."""

    def __init__(self) -> None:
        self.protocol = ControlProtocol(Role.CALLER, max_frame_size=65536)
        self.events: list[object] = []
        self.welcomed = asyncio.Event()
        self.unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        for event in self.protocol.receive_data(data, end_stream):
            self.events.append(event)
            if isinstance(event, WelcomeReceived):
                self.welcomed.set()

    def stream_reset(self, error_code: int) -> None:
        pass

    def stop_sending(self, error_code: int) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        pass


async def _raw_session(harness: ClientFor, *, hello: bool = True) -> QuicFlowProtocol:
    """A raw QUIC connection with its control stream open (and HELLO answered)."""
    conn = await _raw_connection(harness)
    control = _RawControl()
    sid = conn.open_stream(control)
    if hello:
        conn.write(sid, control.protocol.send_hello("raw-peer"))
        await asyncio.wait_for(control.welcomed.wait(), 3.0)
    return conn


class _Recorder:
    """A bare stream handler that keeps what arrives."""

    def __init__(self) -> None:
        self.machine = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=65536)
        self.trailers: TrailersReceived | None = None
        self.done = asyncio.Event()
        self.unread_bytes = 0

    def data_received(self, data: bytes, end_stream: bool) -> None:
        for event in self.machine.receive_data(data, end_stream):
            if isinstance(event, TrailersReceived):
                self.trailers = event
        if end_stream:
            self.done.set()

    def stream_reset(self, error_code: int) -> None:
        self.done.set()

    def stop_sending(self, error_code: int) -> None:
        pass

    def connection_lost(self, exc: ConnectionClosed) -> None:
        self.done.set()


@pytest.mark.parametrize(
    ("raw", "code", "text"),
    [
        (b"\xff" * 12, StatusCode.INTERNAL, "unknown frame type"),
        (encode_frame(FrameType.DATA, b"x"), StatusCode.INTERNAL, "unexpected DATA"),
        (encode_frame(FrameType.HEADERS, b"\x0a\x05/nope"), StatusCode.UNIMPLEMENTED, "/nope"),
        (encode_frame(FrameType.HEADERS, b"\x99\x99"), StatusCode.INTERNAL, "malformed"),
        (
            encode_frame(FrameType.HEADERS, b"\x0a\x0e/echo.Echo/Say")
            + bytes([FrameType.DATA])
            + (2**31).to_bytes(4, "big"),
            StatusCode.RESOURCE_EXHAUSTED,
            "exceeds the limit",
        ),
        (encode_frame(FrameType.PING, b""), StatusCode.INTERNAL, "unexpected PING"),
    ],
)
async def test_hostile_bytes_end_only_their_stream(raw: bytes, code: StatusCode, text: str) -> None:
    """Check that malformed or oversize frames end that stream with a status while the
    connection and its other calls go on."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        conn = await _raw_session(harness)
        try:
            rec = _Recorder()
            sid = conn.open_stream(rec)
            conn.write(sid, raw)
            await asyncio.wait_for(rec.done.wait(), 3.0)
            assert rec.trailers is not None
            assert rec.trailers.status == code
            assert text in rec.trailers.message
            # the same raw connection still carries a proper call
            ok = _Recorder()
            sid2 = conn.open_stream(ok)
            call = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=65536)
            out = call.send_headers("/echo.Echo/Say") + call.send_message(
                EchoRequest(text="fine").SerializeToString()
            )
            conn.write(sid2, out, end_stream=True)
            await asyncio.wait_for(ok.done.wait(), 3.0)
            assert ok.trailers is not None and ok.trailers.status == 0
            # and so does everybody else's
            assert (await EchoStub(client).say(EchoRequest(text="y"))).text == "y"
        finally:
            await conn.aclose()


async def test_graceful_stop_lets_calls_finish_within_grace() -> None:
    """Check that stop(grace) refuses new calls, lets a short call finish, and keeps
    waiting for a long one until exactly its grace has passed (the server on a virtual
    clock: real time passing does not end it), then fails it with UNAVAILABLE."""
    service = TestEcho()
    clock = FakeClock()
    harness = ClientFor([service], clock=clock)
    async with harness as client:
        server = harness.server
        stub = EchoStub(client)
        short = asyncio.ensure_future(_await(stub.say(EchoRequest(text="short", delay_ms=200))))
        long = asyncio.ensure_future(_await(stub.say(EchoRequest(text="long", delay_ms=10_000))))
        async with asyncio.timeout(5):  # both handlers are running
            while server.active_calls < 2:  # noqa: ASYNC110 (no event to await)
                await asyncio.sleep(0.005)
        stopping = asyncio.ensure_future(server.stop(grace=0.6))
        await asyncio.sleep(0)  # stop() is under way: GOAWAY sent, new calls refused
        with pytest.raises(RpcError) as refused:
            await stub.say(EchoRequest(text="late"))
        assert refused.value.code is StatusCode.UNAVAILABLE
        assert (await short).text == "short"  # 0.2 s of real time: no grace used up
        assert not long.done() and not stopping.done()
        clock.advance(0.599)
        await asyncio.sleep(0.05)
        assert not long.done() and not stopping.done()
        clock.advance(0.001)
        with pytest.raises(RpcError) as info:
            await long
        assert info.value.code is StatusCode.UNAVAILABLE
        await stopping
        assert server.active_calls == 0


async def test_calls_before_hello_are_refused() -> None:
    """Check that a peer that has not completed HELLO cannot call anything."""
    harness = ClientFor([TestEcho()])
    async with harness:
        conn = await _raw_session(harness, hello=False)
        try:
            rec = _Recorder()
            sid = conn.open_stream(rec)
            call = CallProtocol(Role.CALLER, max_message_size=1 << 20, max_metadata_size=65536)
            out = call.send_headers("/echo.Echo/Say") + call.send_message(b"")
            conn.write(sid, out, end_stream=True)
            await asyncio.wait_for(rec.done.wait(), 3.0)
            assert rec.trailers is not None
            assert rec.trailers.status == StatusCode.UNAUTHENTICATED
            assert harness.server.list_clients() == [] or all(
                c.client_id != "raw-peer" for c in harness.server.list_clients()
            )
        finally:
            await conn.aclose()


async def test_garbage_on_the_control_stream_closes_only_that_connection() -> None:
    """Check that a malformed control stream closes its connection, not the server."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        conn = await _raw_connection(harness)
        try:
            control = _RawControl()
            sid = conn.open_stream(control)
            conn.write(sid, b"\x00\x00\x00\x00\x03abc")
            await asyncio.wait_for(conn.wait_closed(), 3.0)
            assert conn.close_code == ErrorCode.PROTOCOL_ERROR
            assert (await EchoStub(client).say(EchoRequest(text="ok"))).text == "ok"
        finally:
            await conn.aclose()


async def test_hello_of_another_protocol_version_is_refused() -> None:
    """Check that a HELLO with protocol_version 2 gets no WELCOME but CONNECTION_CLOSE
    PROTOCOL_ERROR naming both versions, and no session (wire-protocol.md §10.1)."""
    harness = ClientFor([TestEcho()])
    async with harness:
        conn = await _raw_connection(harness)
        try:
            control = _RawControl()
            sid = conn.open_stream(control)
            conn.write(sid, control.protocol.send_hello("future", protocol_version=2))
            await asyncio.wait_for(conn.wait_closed(), 3.0)
            assert conn.close_code == ErrorCode.PROTOCOL_ERROR
            assert conn.close_reason == (
                "control stream: unsupported protocol_version 2: this server speaks 1"
            )
            assert not control.welcomed.is_set()
            assert "future" not in [c.client_id for c in harness.server.list_clients()]
        finally:
            await conn.aclose()


async def test_client_closes_with_protocol_error_on_a_welcome_of_another_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that a client whose server answers WELCOME with protocol_version 2 closes the
    connection with PROTOCOL_ERROR and the cause (§9.1, §10.1), and connect() fails."""
    harness = ClientFor([TestEcho()])
    reasons: list[str] = []
    closed: list[QuicFlowProtocol] = []
    welcome = ControlProtocol.send_welcome

    def send_welcome_v2(self: ControlProtocol, *args: Any, **kwargs: Any) -> bytes:
        return welcome(self, *args, **{**kwargs, "protocol_version": 2})

    async with harness:
        before = set(harness.server.connections)
        harness.server.hooks.on_connect(
            lambda info: closed.extend(set(harness.server.connections) - before)
        )
        harness.server.hooks.on_disconnect(lambda info, reason: reasons.append(reason))
        monkeypatch.setattr(ControlProtocol, "send_welcome", send_welcome_v2)
        client = Client(harness.client_config(client_id="v1-only"))
        with pytest.raises(ConnectionClosed) as info:
            await client.connect()
        expected = "control stream: unsupported protocol_version 2: this client speaks 1"
        assert info.value.message == f"connection closed: {expected}"
        [server_side] = closed
        await asyncio.wait_for(server_side.wait_closed(), 3.0)
        assert server_side.close_code == ErrorCode.PROTOCOL_ERROR
        assert server_side.close_reason == expected
        await harness.server.hooks.drain()
        assert reasons == [expected]


async def test_unavailable_tells_a_refused_call_from_one_that_may_have_run() -> None:
    """Check that RpcError.may_have_run is False for a call the server refused unprocessed
    (REFUSED reset) and for one made while not connected, both safe to retry, and True for
    a call whose connection was lost while its handler ran (issue: all three were just
    UNAVAILABLE)."""
    service = TestEcho()
    harness = ClientFor([service], client_options={"backoff_initial": 5.0})
    async with harness as client:
        stub = EchoStub(client)
        [server_conn] = harness.server.connections
        refusing = CallsTo(server_conn, lambda stream_id: None)  # RESET_STREAM(REFUSED)
        with pytest.raises(RpcError) as refused:
            await stub.say(EchoRequest(text="refused"), timeout=2.0)
        assert refused.value.code is StatusCode.UNAVAILABLE
        assert refused.value.message == "the peer refused the call; safe to retry"
        assert refused.value.may_have_run is False
        assert service.probe.active == 0
        refusing.restore()
        running = asyncio.ensure_future(stub.say(EchoRequest(text="s", delay_ms=10_000)))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        server_conn.close(ErrorCode.INTERNAL_ERROR, "gone")
        with pytest.raises(RpcError) as lost:
            await asyncio.wait_for(running, 2.0)
        assert lost.value.code is StatusCode.UNAVAILABLE
        assert lost.value.message == "connection closed: gone"
        assert lost.value.may_have_run is True
        with pytest.raises(ConnectionClosed) as offline:
            await stub.say(EchoRequest(text="while reconnecting"))
        assert offline.value.code is StatusCode.UNAVAILABLE
        assert offline.value.may_have_run is False
        assert lost.value.may_have_run is True  # not changed by the later call's copy
