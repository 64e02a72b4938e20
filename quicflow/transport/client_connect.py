"""The client side: open a QUIC connection to a server (`connect`)."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from typing import cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress

from ..errors import ConnectionClosed
from .engine import make_connection
from .quic import QuicFlowProtocol
from .settings import TransportSettings, datagram_size_for, grow_buffers

__all__ = ["connect"]


async def connect(
    host: str,
    port: int,
    configuration: QuicConfiguration,
    settings: TransportSettings,
    *,
    connect_timeout: float,
) -> QuicFlowProtocol:
    """Open a QUIC connection and finish the TLS 1.3 handshake.

    Raises:
        ConnectionClosed: the handshake failed (its reason is in the message) or
            did not finish within ``connect_timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    settings.apply(configuration)
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    except OSError as exc:
        raise ConnectionClosed(message=f"cannot resolve {host!r}: {exc}") from exc
    family, _, _, _, addr = infos[0]
    size = datagram_size_for(addr[0], settings.max_datagram_size)
    if size != configuration.max_datagram_size:
        configuration = dataclasses.replace(configuration, max_datagram_size=size)
    connection = make_connection(configuration, settings)
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        grow_buffers(sock)
        sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
        transport, proto = await loop.create_datagram_endpoint(
            lambda: QuicFlowProtocol(connection, settings=settings), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    protocol = proto
    try:
        protocol.connect(cast(NetworkAddress, addr))
        async with asyncio.timeout(connect_timeout):
            await protocol.wait_connected()
    except TimeoutError:
        transport.close()
        raise ConnectionClosed(
            message=f"could not connect to {host}:{port} within {connect_timeout} s"
        ) from None
    except ConnectionError as exc:
        transport.close()
        why = protocol.closed_error.message if protocol.closed_error else "handshake failed"
        raise ConnectionClosed(message=f"could not connect to {host}:{port}: {why}") from exc
    except BaseException:
        transport.close()
        raise
    return protocol
