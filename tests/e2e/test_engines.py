"""Mixed QUIC engines: a qh3 client with an aioquic server, and the other way round."""

from __future__ import annotations

import asyncio

import pytest
from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import ConfigError
from quicflow.testing import ClientFor, dev_certs
from quicflow.transport.engine import resolve_engine
from quicflow.transport.engine_aioquic import AioquicFlowConnection
from quicflow.transport.engine_qh3 import Qh3FlowConnection, qh3_configuration
from quicflow.transport.tls import server_configuration

from .service import TestEcho


@pytest.mark.parametrize(
    ("client_engine", "server_engine"),
    [("qh3", "aioquic"), ("aioquic", "qh3")],
)
async def test_qh3_and_aioquic_talk_to_each_other(client_engine: str, server_engine: str) -> None:
    """Check that each engine's client completes unary and streaming calls (a 1 MiB
    message, 300 concurrent calls: past qh3's 100-stream limit) against the other's server,
    and that each side really runs the engine it was given. aioquic -> qh3 needs the
    padding fix in engine_qh3 (`Qh3FlowConnection._receive_padded`): without it qh3's
    server fails the handshake with "packet builder capacity exhausted"."""
    options = {"max_message_size": 2 << 20}
    harness = ClientFor(
        [TestEcho()],
        server_options={**options, "quic_engine": server_engine},
        client_options={**options, "quic_engine": client_engine},
    )
    kinds = {"qh3": Qh3FlowConnection, "aioquic": AioquicFlowConnection}
    async with harness as client:
        conn = client.connection
        assert conn is not None
        [server_conn] = harness.server.connections
        assert isinstance(conn._quic, kinds[client_engine])
        assert isinstance(server_conn._quic, kinds[server_engine])
        stub = EchoStub(client)
        big = "x" * (1 << 20)
        assert (await stub.say(EchoRequest(text=big), timeout=10)).text == big
        texts = [str(i) for i in range(300)]

        replies = await asyncio.gather(*(stub.say(EchoRequest(text=t), timeout=20) for t in texts))
        assert [r.text for r in replies] == texts


def test_engine_names_are_checked() -> None:
    """Check that "auto" resolves to an engine and an unknown one fails naming the field."""
    assert resolve_engine("auto") in ("aioquic", "qh3")
    assert resolve_engine("qh3") == "qh3"
    with pytest.raises(ConfigError, match=r"^quic_engine: must be one of"):
        resolve_engine("quiche")


def test_a_qh3_server_refuses_to_ask_for_client_certificates() -> None:
    """Check that mutual TLS on a qh3 server fails naming quic_engine (qh3 2.1's TLS server
    cannot send CertificateRequest); qh3 clients with certificates are tested in
    test_security.py on the qh3 run."""
    certs = dev_certs()
    config = server_configuration(
        cert_file=str(certs.cert_file),
        key_file=str(certs.key_file),
        client_ca_file=str(certs.ca_file),
        client_cert_mode="optional",
    )
    with pytest.raises(ConfigError, match=r"^quic_engine: a qh3 server cannot ask for client"):
        qh3_configuration(config)
