"""A server killed with SIGKILL and restarted on the same port, with the same stateless
reset key, tells each client of its previous run that its connection is gone at the
client's next packet (RFC 9000 §10.3): the client reconnects at once, not after its
heartbeat timeout."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, RpcError, StatusCode
from quicflow.testing import dev_certs

from .harness import Figures, client_config
from .test_process import ENV, ROOT, _free_port

pytestmark = pytest.mark.faults


async def _start_server(
    port: int, key_file: Path, ticket_key_file: Path | None = None
) -> asyncio.subprocess.Process:
    tickets = ["--ticket-key-file", str(ticket_key_file)] if ticket_key_file else []
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "tests" / "faults" / "proc_server.py"),
        "--port", str(port), "--certs", str(dev_certs().cert_file.parent),
        "--hb-interval", "1.0", "--reset-key-file", str(key_file), *tickets,
        cwd=ROOT, env={**ENV, "QUICFLOW_QUIC_ENGINE": "aioquic"}, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = await proc.stdout.readline()
    assert line.startswith(b"listening"), line
    return proc


@pytest.mark.parametrize("client_engine", ["aioquic", "qh3"])
async def test_restarted_server_resets_old_connections(
    tmp_path: Path, figures: Figures, client_engine: str
) -> None:
    """Check that after SIGKILL and a restart with the same key file, the client's next
    call is answered by a stateless reset: the call fails UNAVAILABLE at once (without
    the reset the new server drops it and it times out), the connection ends with reason
    "stateless reset" (not "heartbeat timeout", 5 s of silence later; a qh3 client's core
    detects the reset itself and reports no reason), and the client reconnects to the
    new server process (an aioquic server: a qh3 server makes its own tokens)."""
    key_file = tmp_path / "reset.key"
    port = _free_port()
    server = await _start_server(port, key_file)
    assert key_file.stat().st_mode & 0o777 == 0o600
    reasons: list[str] = []
    connected = asyncio.Event()
    options = {"backoff_initial": 0.05, "backoff_max": 0.2, "quic_engine": client_engine}
    client = Client(client_config(port, **options))
    client.hooks.on_disconnect(reasons.append)
    client.hooks.on_connect(lambda client_id: connected.set())
    try:
        await client.connect()
        stub = EchoStub(client)
        assert (await stub.say(EchoRequest(text="before"), timeout=5)).text == "before"
        server.send_signal(signal.SIGKILL)
        await server.wait()
        server = await _start_server(port, key_file)
        connected.clear()
        start = time.monotonic()
        with pytest.raises(RpcError) as failed:
            await stub.say(EchoRequest(text="to the dead connection"), timeout=5)
        assert failed.value.code is StatusCode.UNAVAILABLE
        async with asyncio.timeout(10):
            await connected.wait()
        elapsed = round(time.monotonic() - start, 3)
        figures.add(f"stateless reset ({client_engine}): call to reconnected", elapsed, "s")
        assert len(reasons) == 1
        if client_engine == "aioquic":
            assert reasons == ["stateless reset"]
        assert (await stub.say(EchoRequest(text="after"), timeout=5)).text == "after"
    finally:
        await client.close()
        server.send_signal(signal.SIGKILL)
        await server.wait()


async def test_restarted_server_resumes_old_sessions(tmp_path: Path) -> None:
    """Check that with ``tls_ticket_key_file`` a server killed with SIGKILL and started
    again resumes the TLS session its previous process gave the client a ticket for: the
    client's reconnect to the new process is a resumed handshake (the new process opened
    the old ticket, and the handshake, whose PSK binder proves the secret, completed)."""
    reset_key, ticket_key = tmp_path / "reset.key", tmp_path / "ticket.key"
    port = _free_port()
    server = await _start_server(port, reset_key, ticket_key)
    assert ticket_key.stat().st_mode & 0o777 == 0o600
    assert len(ticket_key.read_bytes()) == 32
    connected = asyncio.Event()
    options = {"backoff_initial": 0.05, "backoff_max": 0.2, "quic_engine": "aioquic"}
    client = Client(client_config(port, **options))
    client.hooks.on_connect(lambda client_id: connected.set())
    try:
        await client.connect()
        assert await client.send_message("tickets.resumed") == b"0"  # a full handshake
        server.send_signal(signal.SIGKILL)
        await server.wait()
        server = await _start_server(port, reset_key, ticket_key)
        connected.clear()
        with pytest.raises(RpcError):  # the stateless reset ends the old connection
            await EchoStub(client).say(EchoRequest(text="to the dead connection"), timeout=5)
        async with asyncio.timeout(10):
            await connected.wait()
        assert await client.send_message("tickets.resumed") == b"1"
    finally:
        await client.close()
        server.send_signal(signal.SIGKILL)
        await server.wait()
