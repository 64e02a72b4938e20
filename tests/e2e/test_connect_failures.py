"""A connect attempt that fails says why at once and leaves nothing behind: a closed port
(ICMP port unreachable, seen by the client's connected UDP socket), a silent one, a bad
``ca_file``, a certificate for another name or from another CA, a port already bound."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

import quicflow
from quicflow import Client, ClientConfig, ConfigError, ConnectionClosed, Server, ServerConfig
from quicflow.certs import write_dev_certs
from quicflow.testing import ClientFor, dev_certs
from quicflow.transport import client_connect
from quicflow.transport.engine import resolve_engine

from .service import TestEcho


def _closed_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody listens on (bound once, then released)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port with a socket on it that never answers (a server that hangs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def _config(port: int, host: str = "127.0.0.1", **options: Any) -> ClientConfig:
    certs = dev_certs()
    return ClientConfig(
        host=host, port=port, ca_file=str(certs.ca_file), server_name="localhost", **options
    )


def _aioquic_timers(loop: asyncio.AbstractEventLoop) -> list[asyncio.TimerHandle]:
    """aioquic's connection timers still armed on ``loop`` (asyncio's own loop)."""
    scheduled: list[asyncio.TimerHandle] = getattr(loop, "_scheduled", [])
    return [h for h in scheduled if not h.cancelled() and "_handle_timer" in repr(h)]


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
async def test_a_closed_port_fails_the_attempt_at_once_naming_it(host: str) -> None:
    """Check that connecting to a port nobody listens on fails with "nothing answers at
    HOST:PORT" (the OS's port-unreachable answer), not after the 5 s connect_timeout."""
    try:
        port = _closed_port(host)
    except OSError:
        pytest.skip(f"no {host} on this machine")
    client = Client(_config(port, host))
    with pytest.raises(ConnectionClosed) as info:
        await client.connect()
    assert info.value.message == (
        f"nothing answers at {host}:{port} (no server listens on that UDP port)"
    )


async def test_a_silent_port_times_out_after_connect_timeout(silent_port: int) -> None:
    """Check that a port that takes datagrams and never answers fails after connect_timeout,
    saying so."""
    client = Client(_config(silent_port, connect_timeout=0.3))
    with pytest.raises(ConnectionClosed) as info:
        await client.connect()
    assert info.value.message == (
        f"could not connect to 127.0.0.1:{silent_port}: no answer within 0.3 s"
    )


async def test_a_failed_attempt_leaves_no_timer_running(silent_port: int) -> None:
    """Check that after a timed-out and a refused attempt no aioquic timer is left armed (it
    would fire into the closed socket: "'NoneType' object has no attribute 'sendto'") and
    the loop reports no error."""
    loop = asyncio.get_running_loop()
    if not hasattr(loop, "_scheduled"):
        pytest.skip("needs asyncio's own event loop")
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        for port, timeout in ((silent_port, 0.2), (_closed_port(), 5.0)):
            with pytest.raises(ConnectionClosed):
                await Client(_config(port, connect_timeout=timeout)).connect()
            assert _aioquic_timers(loop) == []
        await asyncio.sleep(0.3)  # a turn of whatever would still have fired
        assert errors == []
    finally:
        loop.set_exception_handler(None)


async def test_reconnect_backs_off_as_usual_against_a_closed_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that with the server gone, reconnect attempts fail at once ("nothing answers")
    yet the loop still waits its backoff delays (1x, 2x, 4x the initial one) between them."""
    options = {"backoff_initial": 0.05, "backoff_jitter": 0.0, "backoff_max": 1.0}
    harness = ClientFor([TestEcho()], client_options=options)
    delays: list[float] = []
    four = asyncio.Event()
    async with harness as client:

        def record(attempt: int, delay: float) -> None:
            delays.append(delay)
            if attempt >= 4:
                four.set()

        client.hooks.on_reconnect(record)
        with caplog.at_level(logging.DEBUG, logger="quicflow"):
            await harness.server.stop()
            await asyncio.wait_for(four.wait(), 10)
        failures = [r.getMessage() for r in caplog.records if "failed:" in r.getMessage()]
        assert delays[:4] == [0.05, 0.1, 0.2, 0.4]
        assert len(failures) >= 3
        assert all("nothing answers at 127.0.0.1:" in f for f in failures), failures


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "cannot read"),
        (b"-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n",
         "holds no PEM certificate (it holds a private key)"),
        (b"not a certificate", "holds no PEM certificate"),
    ],
)  # fmt: skip
async def test_a_bad_ca_file_fails_connect_at_once_naming_the_field(
    tmp_path: Path, content: bytes | None, expected: str
) -> None:
    """Check that a ca_file that is missing, or holds a key or garbage instead of a
    certificate, fails connect() with ConfigError naming ca_file (as a bad cert_file does),
    before any datagram is sent."""
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    client = Client(ClientConfig(port=_closed_port(), ca_file=str(path)))
    with pytest.raises(ConfigError) as info:
        await client.connect()
    assert info.value.field == "ca_file"
    assert expected in str(info.value)


async def test_the_real_key_file_as_ca_file_is_refused(tmp_path: Path) -> None:
    """Check that the mistake a user makes, the server's key given as ca_file, is named."""
    certs = write_dev_certs(tmp_path)
    client = Client(ClientConfig(port=_closed_port(), ca_file=str(certs.key_file)))
    with pytest.raises(ConfigError, match=r"^ca_file: .* holds no PEM certificate"):
        await client.connect()


async def test_untrusted_and_misnamed_certificates_say_what_to_do(tmp_path: Path) -> None:
    """Check that a server certificate from a CA we do not trust points at ca_file, and one
    for another name lists the names it carries (not pattern reprs) and points at
    server_name."""
    other = write_dev_certs(tmp_path)
    harness = ClientFor([TestEcho()])
    async with harness as client:
        with pytest.raises(ConnectionClosed) as untrusted:
            await Client(harness.client_config(ca_file=str(other.ca_file))).connect()
        assert "ca_file (--ca FILE)" in untrusted.value.message
        with pytest.raises(ConnectionClosed) as misnamed:
            await Client(harness.client_config(server_name="elsewhere.example")).connect()
        text = misnamed.value.message
        assert "server_name" in text and "'elsewhere.example'" in text
        if resolve_engine("auto") == "aioquic":  # qh3 does not say which names it found
            assert "certificate is for localhost, 127.0.0.1, ::1, not 'elsewhere.example'" in text
            assert "Pattern(" not in text
        assert (await EchoStub(client).say(EchoRequest(text="ok"))).text == "ok"


async def test_a_port_in_use_names_the_address(silent_port: int) -> None:
    """Check that a server whose port is taken fails start with an OSError naming the
    address (not only "Address already in use")."""
    certs = dev_certs()
    server = Server(
        ServerConfig(port=silent_port, cert_file=str(certs.cert_file), key_file=str(certs.key_file))
    )
    with pytest.raises(OSError) as info:
        await server.start()
    assert f"127.0.0.1:{silent_port}" in str(info.value)
    assert "in use" in str(info.value)
    await asyncio.wait_for(server.stop(), 5)  # nothing to stop: returns (it used to hang)


# uvloop (0.23) leaves its own UDPTransport unclosed when the bind fails, as a bare
# loop.create_datagram_endpoint shows: a ResourceWarning QuicFlow cannot close.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_port_in_use_names_the_address_and_the_cause_on_uvloop(silent_port: int) -> None:
    """Check that on uvloop (what quicflow.run and `quicflow serve` pick when installed) a
    taken port also says "Address already in use" with its hint: uvloop raises an OSError
    without an errno ("could not bind to local_addr ..."), the real error as its cause."""
    pytest.importorskip("uvloop")
    certs = dev_certs()
    config = ServerConfig(
        port=silent_port, cert_file=str(certs.cert_file), key_file=str(certs.key_file)
    )

    async def start() -> OSError:
        server = Server(config)
        try:
            await server.start()
        except OSError as exc:
            return exc
        finally:
            await asyncio.wait_for(server.stop(), 5)
        raise AssertionError("the server started on a port in use")

    error = quicflow.run(start(), event_loop="uvloop")
    assert f"127.0.0.1:{silent_port}" in str(error)
    assert "Address already in use" in str(error)
    assert "another process (or server) already uses it" in str(error)
    assert error.errno == errno.EADDRINUSE


async def test_a_metrics_port_in_use_names_the_address() -> None:
    """Check that a metrics endpoint whose TCP port is taken fails start naming it."""
    certs = dev_certs()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        server = Server(
            ServerConfig(
                port=0,
                cert_file=str(certs.cert_file),
                key_file=str(certs.key_file),
                metrics_port=port,
            )
        )
        with pytest.raises(OSError) as info:
            await server.start()
        await asyncio.wait_for(server.stop(), 5)
    assert f"TCP 127.0.0.1:{port}" in str(info.value)


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.fixture
async def dual_stack_name(monkeypatch: pytest.MonkeyPatch) -> str:
    """A host name that resolves to ::1 first, then 127.0.0.1 (as "localhost" does on many
    systems), through the running loop's resolver."""
    if not _has_ipv6_loopback():
        pytest.skip("no ::1 on this machine")
    loop = asyncio.get_running_loop()
    real = loop.getaddrinfo

    async def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "dual.test":
            return await real(host, port, *args, **kwargs)
        udp = (socket.SOCK_DGRAM, socket.IPPROTO_UDP, "")
        return [
            (socket.AF_INET6, *udp, ("::1", port, 0, 0)),
            (socket.AF_INET, *udp, ("127.0.0.1", port)),
        ]

    monkeypatch.setattr(loop, "getaddrinfo", getaddrinfo)
    return "dual.test"


async def test_a_name_whose_first_address_is_closed_connects_by_the_next(
    dual_stack_name: str,
) -> None:
    """Check that when the first address of the server's name is refused (::1, while the
    server listens on 127.0.0.1 only) the client connects by the next one at once."""
    harness = ClientFor([TestEcho()])
    async with harness:
        config = harness.client_config(host=dual_stack_name)
        async with Client(config) as client:
            assert (await EchoStub(client).say(EchoRequest(text="v4"))).text == "v4"
            assert client.connection is not None
            peer = client.connection.peer_address
            assert peer is not None and peer[0] == "127.0.0.1"


async def test_every_address_closed_names_them_all(dual_stack_name: str) -> None:
    """Check that when every address of the name is refused the error lists them."""
    port = _closed_port()
    with pytest.raises(ConnectionClosed) as info:
        await Client(_config(port, dual_stack_name)).connect()
    assert info.value.message == (
        f"nothing answers at dual.test:{port} "
        "(no server listens on that UDP port; tried ::1, 127.0.0.1)"
    )


async def test_a_handshake_completing_as_the_attempt_times_out_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that when the server's handshake flight is handled in the loop turn the connect
    timeout fires (a loop lagging in a reconnect storm: I/O is handled before timers), the
    handshake the server finished is kept: the client connects (HELLO, WELCOME) instead of
    throwing it away and trying again, and no future is left failed and unread. Before,
    the attempt failed "no answer within 0.5 s" and the server's session was wasted."""
    loop = asyncio.get_running_loop()
    timeout = 0.5  # the server's flight comes well before (a handshake: ~10 ms)
    completed: list[bool] = []
    plain = client_connect._ClientProtocol.datagram_received
    errors: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        # Both ends aioquic, whatever the env says: a qh3 server's flight can take
        # another turn of the client's loop (see below).
        harness = ClientFor([TestEcho()], server_options={"quic_engine": "aioquic"})
        async with harness:
            started = loop.time()

            def lagging(self: Any, data: bytes, addr: Any) -> None:
                if not completed:
                    # The loop stalls past the deadline with the server's flight queued:
                    # flight and timeout are then handled in one turn (I/O first).
                    time.sleep(max(0.0, started + timeout + 0.05 - loop.time()))
                plain(self, data, addr)
                completed.append(self._connected)

            monkeypatch.setattr(client_connect._ClientProtocol, "datagram_received", lagging)
            # aioquic: its client completes the handshake from the flight read in that one
            # turn (qh3's needs another turn, so there the attempt rightly times out).
            client = Client(harness.client_config(connect_timeout=timeout, quic_engine="aioquic"))
            await client.connect()
            monkeypatch.undo()
            try:
                assert completed[:1] == [True]  # the handshake completed as time ran out
                assert loop.time() - started > timeout
                reply = await EchoStub(client).say(EchoRequest(text="kept"))
                assert reply.text == "kept"
                assert client.client_id in {i.client_id for i in harness.server.list_clients()}
            finally:
                await client.close()
            gc.collect()
            await asyncio.sleep(0)
        assert [(e.get("message"), repr(e.get("exception"))) for e in errors] == []
    finally:
        loop.set_exception_handler(None)


async def test_welcome_has_its_own_connect_timeout_after_a_late_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that a handshake that took most of ``connect_timeout`` still gets WELCOME: the
    WELCOME is awaited up to ``connect_timeout`` after the handshake completed, so a
    server that is slow to answer HELLO just after a slow handshake (a reconnect storm)
    does not have its finished handshake and session thrown away. Before, the attempt
    failed "no WELCOME within 0.5 s" at the first deadline."""
    loop = asyncio.get_running_loop()
    timeout = 0.5
    plain = client_connect._ClientProtocol.datagram_received
    late: list[float] = []

    async def slow(hello: Any, peer: Any) -> str:
        await asyncio.sleep(0.3)  # HELLO handled slowly: the WELCOME passes the deadline
        return str(hello.client_id or "late-1")

    harness = ClientFor([TestEcho()], server_options={"authenticator": slow})
    async with harness:
        started = loop.time()

        def lagging(self: Any, data: bytes, addr: Any) -> None:
            if not late:
                late.append(loop.time())
                time.sleep(max(0.0, started + 0.35 - loop.time()))  # most of the timeout
            plain(self, data, addr)

        monkeypatch.setattr(client_connect._ClientProtocol, "datagram_received", lagging)
        client = Client(harness.client_config(connect_timeout=timeout))
        try:
            await client.connect()
            monkeypatch.undo()
            assert loop.time() - started > timeout  # WELCOME came after the first deadline
            reply = await EchoStub(client).say(EchoRequest(text="welcomed"))
            assert reply.text == "welcomed"
        finally:
            await client.close()


class _AlwaysBusy:
    """A handshake admission that turns every new connection away, asking for ``delay``."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    def admit(self, now: float, waiting: int) -> float | None:
        return self.delay

    def started(self, now: float, cost: float, more: bool) -> None:
        pass


async def test_a_busy_server_turns_the_attempt_away_saying_when_to_come_back() -> None:
    """Check that a server answering "server busy, retry in 250 ms" (CONNECTION_REFUSED in
    its first Initial, no connection made) fails connect() with ServerBusy (a
    ConnectionClosed, UNAVAILABLE) carrying retry_after 0.25, and leaves nothing behind;
    at once, not when aioquic's draining period (3 PTO, ~3 s) after the close ends: the
    1 s connect_timeout would fire first."""
    harness = ClientFor([TestEcho()])
    async with harness:
        listener = harness.server._listener
        assert listener is not None
        listener.admission = _AlwaysBusy(0.25)  # type: ignore[assignment]
        before = len(harness.server.connections)
        with pytest.raises(client_connect.ServerBusy) as info:
            await Client(harness.client_config(connect_timeout=1.0)).connect()
        assert info.value.retry_after == 0.25
        assert info.value.message.endswith(": server busy, retry in 250 ms")
        assert isinstance(info.value, ConnectionClosed) and not info.value.may_have_run
        assert (listener.busy_sent, len(harness.server.connections)) == (1, before)
