"""qh3's private internals that the qh3 engine relies on are listed, and still there in
the installed qh3 (see test_aioquic_internals.py for the same about aioquic)."""

from __future__ import annotations

from pathlib import Path

import pytest
from qh3 import tls as qh3_tls  # type: ignore[import-untyped,unused-ignore]
from qh3._hazmat import (  # type: ignore[import-untyped,unused-ignore]
    QuicConnectionCore,
    pull_quic_header,
)
from qh3.quic.configuration import (  # type: ignore[import-untyped,unused-ignore]
    QuicConfiguration,
)
from qh3.quic.connection import QuicConnection  # type: ignore[import-untyped,unused-ignore]

from quicflow.transport import engine_qh3
from quicflow.transport.engine_aioquic import PrivateUse
from quicflow.transport.engine_qh3 import PRIVATE_USES, Qh3FlowConnection
from tests.transport.test_aioquic_internals import assert_still_there, private_names_used


def _live_instances() -> dict[type, object]:
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    conn.connect(("127.0.0.1", 4433), now=0.0)  # creates the Rust core and the TLS
    assert conn._tls is not None
    return {QuicConnection: conn, QuicConnectionCore: conn._core, qh3_tls.Context: conn._tls.tls}


@pytest.mark.parametrize("use", PRIVATE_USES, ids=lambda use: f"{use.owner.__name__}.{use.name}")
def test_private_name_still_exists_in_qh3(use: PrivateUse) -> None:
    """Check that each private name of qh3 the engine uses is still there: a method with
    the parameters it is called with, or an attribute of a live instance."""
    assert_still_there(use, "qh3", "engine_qh3", _live_instances)


def test_every_private_use_of_qh3_is_listed() -> None:
    """Check that the private names engine_qh3.py uses, besides those of its own class (but
    qh3 methods it overrides) and the cached configuration it keeps on aioquic's, are
    exactly those listed."""
    overridden = {use.name for use in PRIVATE_USES if use.why.startswith("overridden")}
    own = {
        name
        for name in vars(Qh3FlowConnection)
        if name.startswith("_") and not name.startswith("__") and name not in overridden
    } | {"_peer_address", "_path", "_quicflow_qh3"}
    used = private_names_used(Path(engine_qh3.__file__)) - own
    assert used == {use.name for use in PRIVATE_USES if use.name.startswith("_")}


def test_header_parser_still_returns_the_packet_end_at_index_9() -> None:
    """Check that qh3's header parser still answers a tuple whose item 9 is where the
    packet ends, which `engine_qh3._padding_start` walks padded datagrams with."""
    conn = QuicConnection(configuration=QuicConfiguration(is_client=True))
    conn.connect(("127.0.0.1", 4433), now=0.0)
    datagram = conn.datagrams_to_send(now=0.0)[0][0]
    end = pull_quic_header(datagram, 0, 8)[9]
    assert isinstance(end, int) and 0 < end <= len(datagram)


def test_a_qh3_client_announces_its_datagram_size() -> None:
    """Check that a qh3 client's transport parameters announce its max_datagram_size as
    max_udp_payload_size (qh3 itself always says 1,472, which kept a qh3 server's
    datagrams to it small), and leave 1,472 when the size is smaller."""
    from qh3 import tls as qh3_tls  # type: ignore[import-untyped,unused-ignore]
    from qh3._hazmat import Buffer  # type: ignore[import-untyped,unused-ignore]
    from qh3.quic.packet import (  # type: ignore[import-untyped,unused-ignore]
        pull_quic_transport_parameters,
    )

    from quicflow.transport.engine_qh3 import Qh3FlowConnection

    for size, announced in ((65000, 65000), (1200, 1472)):
        config = QuicConfiguration(is_client=True, server_name="localhost")
        config.max_datagram_size = size
        conn = Qh3FlowConnection(configuration=config, window=1 << 20)
        conn.connect(("127.0.0.1", 4433), now=0.0)
        bridge = conn._tls
        assert bridge is not None
        [data] = [
            data
            for kind, data in bridge.tls.handshake_extensions
            if kind == qh3_tls.ExtensionType.QUIC_TRANSPORT_PARAMETERS
        ]
        parameters = pull_quic_transport_parameters(Buffer(data=data))
        assert parameters.max_udp_payload_size == announced
