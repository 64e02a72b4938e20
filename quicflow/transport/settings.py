"""What both ends of a QuicFlow connection agree on before any connection exists:
the ALPN token, datagram sizes, `TransportSettings`, and UDP socket buffers."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import socket
from dataclasses import dataclass

from aioquic.quic.configuration import QuicConfiguration

__all__ = [
    "ALPN",
    "LOOPBACK_DATAGRAM_SIZE",
    "PATH_DATAGRAM_SIZE",
    "TransportSettings",
    "bind_error",
    "datagram_size_for",
    "grow_buffers",
]

ALPN = "quicflow/1"
"""The ALPN token of wire protocol v1 (docs/wire-protocol.md §2)."""

LOOPBACK_DATAGRAM_SIZE = 65000
"""Datagram size ``max_datagram_size=0`` ("auto") picks for a loopback peer: about
loopback's 64 KiB MTU, 54x fewer packets for bulk data than 1200. The handshake
still uses 1,200-byte datagrams, and a packet carries several STREAM frames of at
most 16,383 bytes (aioquic's 2-byte frame lengths: `engine_aioquic`)."""
PATH_DATAGRAM_SIZE = 1200
"""Datagram size "auto" picks for any other peer: the path MTU is unknown and
1200 is what every QUIC path must carry (RFC 9000 §14)."""


def datagram_size_for(host: object, configured: int) -> int:
    """The datagram size to use towards ``host``: ``configured``, or when it is 0
    ("auto") `LOOPBACK_DATAGRAM_SIZE` for a loopback address and
    `PATH_DATAGRAM_SIZE` otherwise."""
    if configured:
        return configured
    text = str(host)
    if text.startswith("::ffff:"):
        text = text[7:]
    try:
        loopback = ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        loopback = False
    return LOOPBACK_DATAGRAM_SIZE if loopback else PATH_DATAGRAM_SIZE


@dataclass(frozen=True, slots=True)
class TransportSettings:
    """QUIC knobs shared by client and server (copied from their configs)."""

    idle_timeout: float = 60.0
    """Seconds of silence after which QUIC itself drops the connection."""
    max_datagram_size: int = 0
    """Largest UDP payload we send; 0: auto per peer (`datagram_size_for`)."""
    congestion_control: str = "cubic"
    """aioquic's algorithm name: "reno" or "cubic"."""
    stream_receive_window: int = 1 << 20
    """Bytes a peer may send on one stream beyond what our runtime has consumed."""
    connection_receive_window: int = 4 << 20
    """Initial connection-level receive window (aioquic raises it as it is used)."""
    send_buffer_limit: int = 1 << 20
    """Unacknowledged bytes per stream above which `QuicFlowProtocol.drain` waits."""
    connection_send_limit: int = 32 << 20
    """Unacknowledged bytes over all streams above which `drain_connection` waits."""
    quic_engine: str = "auto"
    """"aioquic", "qh3", or "auto" (`resolve_engine`)."""
    connection_receive_limit: int = 16 << 20
    """Bytes of unfinished frames larger than half the stream window that one connection
    may hold at once (each reserves its whole size; `quicflow.protocol.budget`)."""
    receive_limit: int = 256 << 20
    """The same over all connections of a server."""
    frame_timeout: float = 30.0
    """Seconds a frame may stay unfinished (from its first byte, or from its reservation)."""

    def apply(self, config: QuicConfiguration) -> None:
        """Copy these settings into an aioquic configuration."""
        config.alpn_protocols = [ALPN]
        config.idle_timeout = self.idle_timeout
        config.max_datagram_size = self.max_datagram_size or PATH_DATAGRAM_SIZE
        config.congestion_control_algorithm = self.congestion_control
        config.max_stream_data = self.stream_receive_window
        config.max_data = self.connection_receive_window


_SOCKET_BUFFER = 4 << 20


def grow_buffers(sock: socket.socket) -> None:
    """Ask for 4 MiB socket buffers: the usual 208 KiB default drops datagrams in the
    bursts a fast sender makes on loopback (the kernel may grant less; that is fine)."""
    for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, option, _SOCKET_BUFFER)


_BIND_HINTS = {
    errno.EADDRINUSE: "another process (or server) already uses it: stop that one or pick "
    "another port",
    errno.EADDRNOTAVAIL: "no network interface of this machine has that address",
    errno.EACCES: "ports below 1024 need privileges: pick a higher port",
}


def bind_error(exc: OSError, what: str, host: str, port: int) -> OSError:
    """``exc``, raised binding ``what`` (e.g. "UDP") to ``host:port``, as an OSError of the
    same errno whose text names the address and what to do ("Address already in use" alone
    does not say which address)."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if exc.errno is None and isinstance(exc.__cause__, OSError):
        # uvloop raises OSError("could not bind to local_addr ...") without an errno, the
        # system's error ("Address already in use") as its cause.
        exc = exc.__cause__
    text = f"cannot bind {what} {where}: {exc.strerror or exc}"
    hint = _BIND_HINTS.get(exc.errno or 0)
    return OSError(exc.errno, f"{text} ({hint})" if hint else text)
