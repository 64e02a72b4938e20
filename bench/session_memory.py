"""Where a server's memory per session goes (docs/scale.md "Memory per session").

``python -m bench.session_memory --clients 500`` runs one `Server` in this process under
``tracemalloc`` and a fleet of ``--clients`` `Client` objects (bench/scale_fleet.py: a
session and a push service each, default settings) in a child process, all on loopback.
Once every client connected and the fleet idled ``--idle`` seconds, it prints the bytes
per session the server holds (traced, and RSS), grouped by where they were allocated:
QuicFlow's modules, the QUIC engine (``QUICFLOW_QUIC_ENGINE``), asyncio, the rest; then
the top lines. The child fleet is ended by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import tracemalloc
from collections import defaultdict
from pathlib import Path

from .scale_server import Echo, rss_kib


def area(filename: str) -> str:
    """Which code an allocation belongs to, by its file."""
    for needle, name in (
        ("/quicflow/", "quicflow"),
        ("/qh3/", "qh3"),
        ("/aioquic/", "aioquic"),
        ("/asyncio/", "asyncio"),
        ("/cryptography/", "cryptography"),
        ("/google/protobuf", "protobuf"),
    ):
        if needle in filename:
            return name
    return "other"


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back (mallinfo2), 0 elsewhere."""
    import ctypes

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
    except (OSError, AttributeError):
        return 0
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


async def run(args: argparse.Namespace) -> None:
    from quicflow import Server, ServerConfig
    from quicflow.certs import write_dev_certs

    scratch = Path(tempfile.mkdtemp(prefix="quicflow-mem-"))
    write_dev_certs(scratch / "certs")
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(scratch / "certs" / "server.pem"),
            key_file=str(scratch / "certs" / "server.key"),
        )
    )
    server.add_service(Echo())
    await server.start()
    gc.collect()
    before = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    rss0 = rss_kib()
    heap0 = malloc_in_use()
    env = dict(os.environ)
    argv = [sys.executable, "-m", "bench.scale_fleet", "--port", str(server.port)]
    argv += ["--ca", str(scratch / "certs" / "ca.pem"), "--count", str(args.clients)]
    argv += ["--prefix", "m", "--gate", "16"]
    fleet = await asyncio.create_subprocess_exec(
        *argv, env=env, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert fleet.stdout is not None
        while True:
            line = await fleet.stdout.readline()
            if not line or b'"ready"' in line:
                break
        await asyncio.sleep(args.idle)
        gc.collect()
        if args.drop_tls:
            # Experiment (qh3): what the engine's TLS state still holds after the
            # handshake. Breaks the connections; RSS after it is meaningless. Run it
            # below the GC governor's first freeze (~1,000 clients), or the dropped
            # state stays frozen.
            held = malloc_in_use()
            assert server._listener is not None
            for conn in server._listener.connections:
                conn._quic._tls = None  # type: ignore[attr-defined]
            gc.collect()
            freed = (held - malloc_in_use()) / len(server.sessions)
            print(f"TLS state after the handshake: {freed:,.0f} B malloc per session")
        rss1 = rss_kib()
        n = len(server.sessions)
        print(f"engine {os.environ.get('QUICFLOW_QUIC_ENGINE', 'aioquic')}: {n} sessions")
        print(f"RSS per session {(rss1 - rss0) * 1024 / n / 1024:.1f} KiB ")
        heap1 = malloc_in_use()
        print(f"malloc in use per session {(heap1 - heap0) / n:,.0f} B (native + objects > 512 B)")
        if args.unfreeze:
            # How much of it is garbage the GC governor froze with the heap (cycles the
            # handshakes left), which only a thaw frees.
            frozen = gc.get_freeze_count()
            gc.unfreeze()
            found = gc.collect()
            print(
                f"frozen objects {frozen / n:,.1f} per session; a full collection after a "
                f"thaw found {found / n:,.1f} per session and freed "
                f"{(heap1 - malloc_in_use()) / n:,.0f} B malloc per session, "
                f"RSS per session now {(rss_kib() - rss0) / n:.1f} KiB"
            )
        if args.trim:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            rss2 = rss_kib()
            print(f"RSS per session after malloc_trim {(rss2 - rss0) / n:.1f} KiB")
        if before is None:
            return
        after = tracemalloc.take_snapshot()
        stats = after.compare_to(before, "traceback" if args.frames > 1 else "lineno")
        by_area: dict[str, int] = defaultdict(int)
        by_file: dict[str, int] = defaultdict(int)
        for stat in stats:
            frame = stat.traceback[0]
            by_area[area(frame.filename)] += stat.size_diff
            by_file[frame.filename.rsplit("site-packages/", 1)[-1]] += stat.size_diff
        total = sum(by_area.values())
        print(f"traced per session: {total / n:,.0f} B")
        for name, size in sorted(by_area.items(), key=lambda kv: -kv[1]):
            print(f"  {name:14} {size / n:8,.0f} B")
        print("by file:")
        for name, size in sorted(by_file.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  {size / n:8,.0f} B  {name}")
        print("by line:")
        for stat in stats[: args.top]:
            where = " <- ".join(
                f"{f.filename.rsplit('/', 2)[-2]}/{f.filename.rsplit('/', 1)[-1]}:{f.lineno}"
                for f in stat.traceback
            )
            print(f"  {stat.size_diff / n:8,.0f} B {stat.count_diff / n:6.1f} blk  {where}")
    finally:
        if fleet.returncode is None:
            fleet.kill()
            await fleet.wait()
        await server.stop(grace=0.5)


def main() -> None:
    """Parse arguments and measure."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--idle", type=float, default=3.0)
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--drop-tls", action="store_true", help="experiment (qh3 only)")
    parser.add_argument("--unfreeze", action="store_true", help="also thaw and collect")
    parser.add_argument("--trim", action="store_true", help="also RSS after malloc_trim(0)")
    parser.add_argument("--no-trace", action="store_true", help="RSS only (no tracemalloc)")
    args = parser.parse_args()
    if not args.no_trace:
        tracemalloc.start(args.frames)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
