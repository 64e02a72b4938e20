"""What the benchmark's processes share: system names, payloads, the line protocol."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import resource
import signal
from collections.abc import Sequence
from typing import Any

VARIANTS: dict[str, dict[str, str]] = {
    "quicflow-qh3": {"QUICFLOW_QUIC_ENGINE": "qh3"},
    "quicflow-1200": {"BENCH_DATAGRAM_SIZE": "1200"},
}
"""QuicFlow run differently, by the environment of its server and client processes:
on the qh3 engine, and with a real path's 1200-byte datagrams instead of auto (16 KiB
on loopback)."""

SYSTEMS = ("quicflow", *VARIANTS, "grpcaio", "grpclib")
"""The systems compared, QuicFlow (default settings) first."""

QUICFLOW_SYSTEMS = ("quicflow", *VARIANTS)

LABELS = {
    "quicflow": "QuicFlow",
    "quicflow-qh3": "QuicFlow qh3",
    "quicflow-1200": "QuicFlow 1200 B",
    "grpcaio": "grpc.aio",
    "grpclib": "grpclib",
}


def is_quicflow(system: str) -> bool:
    """True for QuicFlow and its variants."""
    return system in QUICFLOW_SYSTEMS


def datagram_size() -> int:
    """QuicFlow's ``max_datagram_size`` for this process (0: auto)."""
    return int(os.environ.get("BENCH_DATAGRAM_SIZE", "0"))


HOST = "127.0.0.1"
"""Everything runs on loopback."""

SERVER_NAME = "localhost"
"""The name the development server certificate carries."""

SMALL = 64
"""Bytes of payload in a "64 B" message."""

MIB = 1 << 20

MAX_MESSAGE = 32 * MIB
"""Largest message any system is configured to take (the 1 MiB stream fits easily)."""

IDLE_CLIENT_PREFIX = "idle-"
"""Client ids of QuicFlow's idle clients (RSS and broadcast); the main client is MAIN_ID."""

MAIN_ID = "bench-main"

ONEWAY_TYPE = "bench.oneway"
"""Untyped message type the QuicFlow server counts for the one-way measurement."""


def payload(size: int) -> bytes:
    """``size`` bytes of payload."""
    return b"x" * size


COMPRESS_TEXT = "gzip"
"""A Say request with this ``text`` asks the server to gzip its reply (the compressed row)."""


def compressible(size: int) -> bytes:
    """``size`` bytes of text-like payload (numbered records) that gzip shrinks about 4x,
    unlike `payload`'s one repeated byte, which no real message resembles."""
    out = bytearray()
    i = 0
    while len(out) < size:
        out += b'{"id":%d,"name":"item-%x","ok":true,"score":%d},' % (i, i * 7919, i % 997)
        i += 1
    return bytes(out[:size])


def size_of(text: str) -> int:
    """The reply size a streaming request asks for: its ``text`` is the size in bytes."""
    try:
        value = int(text)
    except ValueError:
        return SMALL
    return max(0, min(value, MAX_MESSAGE - 1024))


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def encode(message: dict[str, Any]) -> str:
    """One protocol line: a JSON object."""
    return json.dumps(message, separators=(",", ":"))


def raise_fd_limit() -> None:
    """Raise the soft open-file limit to the hard one (a connection per idle client)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def stop_child(process: asyncio.subprocess.Process | None, grace: float) -> None:
    """Stop a child by PID: close its stdin (its signal to stop), then SIGTERM, then SIGKILL,
    waiting up to ``grace`` seconds after each; returns at once if it has already exited."""
    if process is None or process.returncode is not None:
        return
    if process.stdin is not None:
        with contextlib.suppress(Exception):
            process.stdin.close()
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        if sig is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.wait(), grace)
            return
