"""A real server process killed with SIGKILL and restarted on the same port."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientConfig, RpcError, StatusCode
from quicflow.client import ClientState
from quicflow.testing import dev_certs

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _start_server(port: int, certs: Path) -> asyncio.subprocess.Process:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "examples.echo.server",
        "--port",
        str(port),
        "--certs",
        str(certs),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = await proc.stdout.readline()
    assert b"listening" in line, line
    return proc


@pytest.mark.serial  # many clients / a real restart against real-time bounds
async def test_kill_9_and_restart_brings_the_client_back() -> None:
    """Check that after SIGKILL of the server process and a restart on the same port the
    client is CONNECTED again, and no call in between returned a false success."""
    certs = dev_certs()
    cert_dir = certs.cert_file.parent
    port = _free_port()
    server = await _start_server(port, cert_dir)
    config = ClientConfig(
        host="127.0.0.1",
        port=port,
        ca_file=str(certs.ca_file),
        server_name="localhost",
        heartbeat_interval=0.2,
        heartbeat_timeout=0.5,
        backoff_initial=0.1,
        backoff_max=0.5,
        connect_timeout=0.5,
    )
    results: list[tuple[str, str]] = []  # (sent, got or error code)
    stop = asyncio.Event()
    client = Client(config)
    await client.connect()

    async def caller() -> None:
        stub = EchoStub(client)
        i = 0
        while not stop.is_set():
            text = f"m{i}"
            i += 1
            try:
                reply = await stub.say(EchoRequest(text=text), timeout=0.5)
                results.append((text, reply.text))
            except RpcError as exc:
                results.append((text, exc.code.name))
            await asyncio.sleep(0.02)

    task = asyncio.ensure_future(caller())
    try:
        await asyncio.sleep(0.2)
        server.send_signal(signal.SIGKILL)
        await server.wait()
        async with asyncio.timeout(5):
            async for state in client.watch_state():
                if state is ClientState.RECONNECTING:
                    break
        server = await _start_server(port, cert_dir)
        async with asyncio.timeout(10):
            async for state in client.watch_state():
                if state is ClientState.CONNECTED:
                    break
        await asyncio.sleep(0.3)
    finally:
        stop.set()
        await task
        await client.close()
        server.send_signal(signal.SIGTERM)
        await server.wait()
    wrong = [(sent, got) for sent, got in results if got != sent and not got.isupper()]
    assert wrong == []  # every success carried its own reply
    failures = {got for sent, got in results if got != sent}
    assert failures and failures <= {
        StatusCode.UNAVAILABLE.name,
        StatusCode.DEADLINE_EXCEEDED.name,
    }
    assert results[-1][0] == results[-1][1]  # calls work again at the end
