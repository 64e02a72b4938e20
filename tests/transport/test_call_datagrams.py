"""One call at a time: the request and the reply each carry the ACK of the other, so no
ACK-only datagram sits on the critical path, and the reply leaves without a loop turn."""

from __future__ import annotations

from typing import Any

import pytest
from aioquic import tls
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow.testing import ClientFor
from quicflow.transport.quic import QuicFlowProtocol
from tests.e2e.service import TestEcho


def _in_flight(conn: QuicFlowProtocol) -> int:
    """Ack-eliciting 1-RTT packets the peer has not acknowledged yet."""
    quic: Any = conn._quic
    return int(quic._spaces[tls.Epoch.ONE_RTT].ack_eliciting_in_flight)


async def test_sequential_calls_piggyback_acks() -> None:
    """Check that after each of 20 sequential calls the client has nothing in flight
    (the reply acknowledged the request) and the server only its last reply (the
    request acknowledged the previous reply): without piggybacking, aioquic holds
    each ACK back 1 ms, so a fast reply went without it."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        stub = EchoStub(client)
        await stub.say(EchoRequest(text="warm-up"))
        conn = client.connection
        assert conn is not None
        [server_conn] = harness.server.connections
        if getattr(conn._quic, "engine", "") != "aioquic":
            pytest.skip("ACK piggybacking is done for the aioquic engine")
        for i in range(20):
            reply = await stub.say(EchoRequest(text=str(i)))
            assert reply.text == str(i)
            assert _in_flight(conn) == 0, f"call {i}: the reply did not acknowledge the request"
            assert _in_flight(server_conn) <= 1, f"call {i}: the request did not ack the reply"
