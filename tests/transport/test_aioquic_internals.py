"""aioquic's private internals that QuicFlow relies on are all in one module, listed,
and still there in the installed aioquic.

`quicflow.transport.engine_aioquic.PRIVATE_USES` names each one. These tests fail,
naming it, when an aioquic upgrade renames or reshapes one (the behaviour that
depends on it would otherwise degrade silently: no backpressure, no client
certificate check, pacing by the wrong size), and when the module starts to use a
private name it does not list, or another transport module reaches into another
object's private state.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from pathlib import Path

import pytest
from aioquic import tls
from aioquic.buffer import Buffer  # type: ignore[attr-defined]
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import QuicProtocolVersion, pull_quic_header
from aioquic.quic.packet_builder import QuicPacketBuilder
from aioquic.quic.recovery import QuicPacketRecovery
from aioquic.quic.stream import QuicStreamReceiver, QuicStreamSender

from quicflow.testing import dev_certs
from quicflow.transport import engine_aioquic
from quicflow.transport.engine_aioquic import PRIVATE_USES, AioquicFlowConnection, PrivateUse
from quicflow.transport.pacer import BytePacer
from quicflow.transport.tls import client_configuration, server_configuration

TRANSPORT = Path(engine_aioquic.__file__).parent
ENGINE_MODULES = {"engine_aioquic.py", "engine_qh3.py"}
"""The modules allowed to touch an engine's private state (aioquic's, qh3's)."""


def _live_instances() -> dict[type, object]:
    """One instance of each class `PRIVATE_USES` names, in the state QuicFlow meets it."""
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    conn.connect(("127.0.0.1", 4433), now=0.0)  # creates the TLS context, spaces, paths
    conn.send_stream_data(0, b"x")
    stream = conn._streams[0]
    builder = QuicPacketBuilder(
        host_cid=b"\0" * 8,
        peer_cid=b"\1" * 8,
        version=QuicProtocolVersion.VERSION_1,
        is_client=True,
        max_datagram_size=1200,
    )
    return {
        QuicConnection: conn,
        QuicPacketRecovery: conn._loss,
        QuicStreamSender: stream.sender,
        QuicStreamReceiver: stream.receiver,
        QuicPacketBuilder: builder,
        tls.Context: conn.tls,
    }


@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda use: f"{use.owner.__name__}.{use.name}")
def test_private_name_still_exists_in_aioquic(use: PrivateUse) -> None:
    """Check that each private name engine_aioquic uses is still on aioquic's class (a
    method, with the parameters it is called or overridden with) or on a live instance
    (an attribute)."""
    assert_still_there(use, "aioquic", "engine_aioquic", _live_instances)


def assert_still_there(
    use: PrivateUse, library: str, engine: str, live_instances: Callable[[], dict[type, object]]
) -> None:
    """Assert that ``use`` is still in ``library``: a method of its owner with the
    parameters ``engine`` relies on, or else an attribute of the owner's live instance."""
    if use.params is not None:
        method = getattr(use.owner, use.name, None)
        assert callable(method), f"{library} no longer has {use.owner.__name__}.{use.name}"
        params = tuple(inspect.signature(method).parameters)
        assert params == use.params, (
            f"{library} changed {use.owner.__name__}.{use.name}{params}; "
            f"{engine} relies on {use.params} ({use.why})"
        )
    else:
        instance = live_instances()[use.owner]
        assert hasattr(instance, use.name), (
            f"{library}'s {use.owner.__name__} no longer has {use.name} ({use.why})"
        )


def private_names_used(path: Path) -> set[str]:
    """Private names (``_x``, not dunders) read, written or defined as methods on objects
    in ``path``: attributes of anything, and methods of its classes (overrides)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.ClassDef):
            names.update(
                item.name
                for item in node.body
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef)
            )
    return {n for n in names if n.startswith("_") and not n.startswith("__")}


def test_every_private_use_is_listed() -> None:
    """Check that the private names engine_aioquic.py uses are exactly those
    `PRIVATE_USES` lists (a new one must come with its entry, so with its check)."""
    used = private_names_used(TRANSPORT / "engine_aioquic.py")
    assert used == {use.name for use in PRIVATE_USES}


def test_no_other_transport_module_reaches_into_private_state() -> None:
    """Check that outside the engine modules, transport code reads private attributes only
    of its own objects (``self._x``), never of another (``conn._quic._x``)."""
    offenders: list[str] = []
    for path in sorted(TRANSPORT.glob("*.py")):
        if path.name in ENGINE_MODULES:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Attribute)
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
                and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
            ):
                offenders.append(f"{path.name}:{node.lineno} .{node.attr}")
    assert offenders == []


def test_pacer_is_charged_the_size_of_each_packet_sent() -> None:
    """Check that, between two aioquic connections talking in memory, the size
    `AioquicFlowConnection` shows `BytePacer` for each packet (read from aioquic's
    packet builder) is the size of the datagram that leaves, to the byte."""
    certs = dev_certs()
    client_config = client_configuration(server_name="localhost", ca_file=str(certs.ca_file))
    server_config = server_configuration(
        cert_file=str(certs.cert_file), key_file=str(certs.key_file)
    )
    for config in (client_config, server_config):
        config.alpn_protocols = ["quicflow/1"]
        config.max_datagram_size = 16384
    pacer = BytePacer(max_datagram_size=16384)
    client = AioquicFlowConnection(configuration=client_config, window=1 << 20, pacer=pacer)
    client_addr, server_addr = ("127.0.0.1", 1000), ("127.0.0.1", 2000)
    now = 1.0
    client.connect(server_addr, now=now)
    first = client.datagrams_to_send(now=now)
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = AioquicFlowConnection(
        configuration=server_config,
        window=1 << 20,
        original_destination_connection_id=header.destination_cid,
    )
    for data, _ in first:
        server.receive_datagram(data, client_addr, now=now)

    def exchange() -> list[bytes]:
        for data, _ in server.datagrams_to_send(now=now):
            client.receive_datagram(data, server_addr, now=now)
        sent = [data for data, _ in client.datagrams_to_send(now=now)]
        for data in sent:
            server.receive_datagram(data, client_addr, now=now)
        return sent

    for _ in range(4):  # the handshake
        exchange()
    assert client.tls.state == tls.State.CLIENT_POST_HANDSHAKE

    charged: list[int] = []
    charge = pacer.update_after_send

    def recording(now: float) -> None:
        assert pacer.packet_size is not None
        charged.append(pacer.packet_size())
        charge(now)

    pacer.update_after_send = recording  # type: ignore[method-assign]
    stream_id = client.reserve_stream()
    client.send_stream_data(stream_id, b"q" * 3000)
    sent = [data for data, _ in client.datagrams_to_send(now=now)]
    assert sent and charged == [len(data) for data in sent]
    assert pacer.packet_size is None  # shown only while packets are written
