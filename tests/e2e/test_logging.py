"""What QuicFlow logs at INFO: each connection event once, with client id and reason;
nothing per call."""

from __future__ import annotations

import asyncio
import logging

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientState, RpcError, TokenAuthenticator
from quicflow.testing import ClientFor

from .service import TestEcho
from .test_lifecycle import _wait_state

# Eviction 1.2 s after the last ping: quick for the silent client, slack for the live one.
SERVER = {
    "heartbeat_interval": 0.4,
    "heartbeat_check_interval": 0.1,
    "max_missed_heartbeats": 3,
    "min_heartbeat_interval": 0.1,
}


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("quicflow")]


async def test_connection_events_logged_once_with_client_id_and_nothing_per_call(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that connect, disconnect, eviction and refusal are each logged once at INFO
    carrying client_id (and reason), and that 50 calls, OK or failing, add no INFO record."""
    caplog.set_level(logging.INFO, logger="quicflow")
    auth = TokenAuthenticator({"t": None})
    harness = ClientFor(
        [TestEcho()],
        server_options={**SERVER, "authenticator": auth},
        client_options={"client_id": "log1", "token": "t"},
    )
    async with harness as client:
        before = len(_records(caplog))
        stub = EchoStub(client)
        for i in range(40):
            await stub.say(EchoRequest(text=str(i)))
        for _ in range(10):
            with pytest.raises(RpcError):
                await stub.say(EchoRequest(text="abort:NOT_FOUND"))
        assert len(_records(caplog)) == before  # nothing per call at INFO

        mute = Client(harness.client_config(client_id="mute", reconnect=False))
        await mute.connect()
        assert mute._link is not None
        mute._link.stop()  # stops pinging: evicted
        await _wait_state(mute, ClientState.CLOSED, within=5.0)
        await mute.close()

        bad = Client(harness.client_config(client_id="intruder", token="wrong"))
        with pytest.raises(RpcError):
            await bad.connect()
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.05)

    def about(client_id: str, logger: str) -> list[str]:
        return [
            r.getMessage()
            for r in _records(caplog)
            if r.name == logger and getattr(r, "client_id", None) == client_id
        ]

    server_log1 = about("log1", "quicflow.server")
    assert len(server_log1) == 2, server_log1
    assert server_log1[0].startswith("client log1 connected from 127.0.0.1:")
    assert server_log1[1] == "client log1 disconnected: client closed"
    client_log1 = about("log1", "quicflow.client")
    assert client_log1 == [f"connected to 127.0.0.1:{harness.server.port} as log1"]

    server_mute = about("mute", "quicflow.server")
    assert len(server_mute) == 3, server_mute
    assert "evicted: no heartbeat" in server_mute[1]
    assert server_mute[2] == "client mute disconnected: no heartbeat: session expired"
    refused = about("intruder", "quicflow.server")
    assert len(refused) == 1 and "refused client 'intruder'" in refused[0]
    for record in _records(caplog):
        if record.name == "quicflow.server" and "disconnected" in record.getMessage():
            assert getattr(record, "reason", None)
