"""Stateless reset: keys, tokens, the reset datagram, the rate bound, and a server
connection whose every connection ID carries a token derived from its key (sans-IO)."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicflow.certs import write_dev_certs
from quicflow.errors import ConfigError
from quicflow.transport.engine_aioquic import AioquicFlowConnection
from quicflow.transport.reset import (
    KEY_SIZE,
    ResetLimiter,
    load_reset_key,
    reset_token,
    stateless_reset,
)
from quicflow.transport.tls import client_configuration, server_configuration

SERVER_ADDR = ("127.0.0.1", 4433)
CLIENT_ADDR = ("127.0.0.1", 50000)


def test_key_file_is_created_private_then_reused(tmp_path: Path) -> None:
    """Check a missing key file is created with KEY_SIZE bytes, mode 0600, and the same
    key comes back on the next load; a short file or an unusable path is a ConfigError
    naming stateless_reset_key_file; None gives a fresh key each time."""
    path = tmp_path / "reset.key"
    key = load_reset_key(str(path))
    assert len(key) == KEY_SIZE and path.stat().st_mode & 0o777 == 0o600
    assert load_reset_key(str(path)) == key
    path.write_bytes(b"short")
    with pytest.raises(ConfigError) as short:
        load_reset_key(str(path))
    assert short.value.field == "stateless_reset_key_file"
    with pytest.raises(ConfigError):
        load_reset_key(str(tmp_path / "missing-dir" / "reset.key"))
    assert load_reset_key(None) != load_reset_key(None)


def test_reset_datagram_shape() -> None:
    """Check a reset is shorter than what it answers (no loops), at least 21 bytes, a
    short header with the fixed bit, ends with the token of the connection ID, and that
    a datagram of 21 bytes or fewer gets none."""
    key = b"k" * KEY_SIZE
    token = reset_token(key, b"12345678")
    assert token == reset_token(key, b"12345678") != reset_token(key, b"12345679")
    assert token != reset_token(b"j" * KEY_SIZE, b"12345678")
    for received, size in ((22, 21), (30, 29), (1200, 43)):
        packet = stateless_reset(key, b"12345678", received)
        assert packet is not None and len(packet) == size
        assert packet[0] & 0xC0 == 0x40 and packet[-16:] == token
    assert stateless_reset(key, b"12345678", 21) is None


def test_limiter_allows_rate_per_second() -> None:
    """Check the limiter gives a burst of `rate`, then one per 1/rate seconds."""
    limiter = ResetLimiter(rate=3)
    assert [limiter.allow(10.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.allow(10.2) is False
    assert limiter.allow(10.34) is True
    assert [limiter.allow(20.0) for _ in range(4)] == [True, True, True, False]


def test_server_connection_ids_carry_derived_tokens(tmp_path: Path) -> None:
    """Check that a server connection with a reset key announces, for its first
    connection ID (transport parameters) and every one it issues later, the token
    derived from the key, and that the client learns the token it must watch for."""
    certs = write_dev_certs(tmp_path / "certs")
    client_config = client_configuration(server_name="localhost", ca_file=str(certs.ca_file))
    server_config = server_configuration(
        cert_file=str(certs.cert_file), key_file=str(certs.key_file)
    )
    for config in (client_config, server_config):
        config.alpn_protocols = ["quicflow/1"]
    key = b"s" * KEY_SIZE
    client = AioquicFlowConnection(configuration=client_config, window=1 << 20)
    client.connect(SERVER_ADDR, now=0.0)
    [(first, _)] = client.datagrams_to_send(0.0)
    server = AioquicFlowConnection(
        configuration=server_config,
        window=1 << 20,
        reset_key=key,
        original_destination_connection_id=first[6 : 6 + first[5]],
    )
    server.receive_datagram(first, CLIENT_ADDR, 0.0)
    for _ in range(6):
        for sender, receiver, addr in (
            (server, client, SERVER_ADDR),
            (client, server, CLIENT_ADDR),
        ):
            for data, _ in sender.datagrams_to_send(0.0):
                receiver.receive_datagram(data, addr, 0.0)
    cids = server._host_cids
    assert len(cids) > 1  # NEW_CONNECTION_ID issued some after the handshake
    assert all(c.stateless_reset_token == reset_token(key, c.cid) for c in cids)
    assert client.peer_reset_token() == reset_token(key, client._peer_cid.cid)
    assert AioquicFlowConnection(configuration=client_config, window=1).reset_key is None
