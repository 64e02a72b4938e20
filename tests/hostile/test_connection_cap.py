"""max_connections: one connection over the cap is refused cleanly, the others go on."""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import Client, ClientConfig, ConnectionClosed, StatusCode

from .harness import attack_setup

pytestmark = pytest.mark.faults


async def test_connection_over_the_cap_is_refused_and_others_keep_working() -> None:
    """Check that with max_connections=2 (the bystander and a raw peer), a third client's
    connect fails UNAVAILABLE naming "too many connections", the two connections are
    untouched, and once one leaves a new client connects and calls."""
    async with attack_setup(max_connections=2) as (harness, bystander, peer):
        await peer.hello("second")
        config = ClientConfig(
            host="127.0.0.1",
            port=harness.server.port,
            ca_file=str(harness.certs.ca_file),
            connect_timeout=3.0,
        )
        third = Client(config)
        with pytest.raises(ConnectionClosed) as refused:
            await third.connect()
        assert refused.value.code is StatusCode.UNAVAILABLE
        assert "too many connections" in refused.value.message
        await bystander.calls(3)  # the connections already there are untouched
        assert not peer.closed
        assert harness.server.get_metrics().connections_refused == 1
        await peer.aclose()
        for _ in range(500):  # the server forgets it after QUIC's draining period
            if len(harness.server.connections) < 2:
                break
            await asyncio.sleep(0.01)
        async with Client(config) as fourth:
            reply = await EchoStub(fourth).say(EchoRequest(text="in"), timeout=5.0)
            assert reply.text == "in"
