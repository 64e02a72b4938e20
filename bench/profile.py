"""Profile one QuicFlow workload with cProfile: server and client in separate processes.

    PYTHONPATH=.:generated .venv/bin/python -m bench.profile WORKLOAD [--n N] [--out DIR]

WORKLOAD is ``unary1`` (one call at a time), ``unary128`` (128 concurrent calls
on one connection), ``oneway`` (untyped messages without acks, 16 senders),
``stream1m`` (server streaming, 1 MiB replies), ``connect`` (a new `Client`:
connect, one call, close; per connection; a full TLS handshake each) or
``resume`` (the same, each resuming the TLS session of the one before). Writes ``server.prof`` and
``client.prof`` to DIR and prints the top functions of each by own time, with
µs per call/message. Used to write the per-call breakdown in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import os
import pstats
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoRequest

from quicflow.certs import write_dev_certs

from .common import HOST, ONEWAY_TYPE, SERVER_NAME, datagram_size, payload

SMALL = 64


async def _client(
    port: int, certs: Path, workload: str, n: int, prof: cProfile.Profile, server_stdin: Any
) -> tuple[float, float]:
    from echo.echo_quicflow import EchoStub

    from quicflow import Client, ClientConfig

    config = ClientConfig(
        host=HOST,
        port=port,
        ca_file=str(certs / "ca.pem"),
        server_name=SERVER_NAME,
        max_message_size=8 << 20,
        max_datagram_size=datagram_size(),
    )
    client = Client(config)
    await client.connect()
    stub = EchoStub(client)
    request = EchoRequest(payload=payload(SMALL))
    for _ in range(200):  # warm up
        await stub.say(request)
    from . import counters

    counted = counters.snapshot()
    server_stdin.write("start\n")
    server_stdin.flush()
    prof.enable()
    cpu = time.process_time()
    t0 = time.perf_counter()
    if workload == "unary1":
        for _ in range(n):
            await stub.say(request)
    elif workload == "unary128":
        left = n

        async def lane() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await stub.say(request)

        await asyncio.gather(*(lane() for _ in range(128)))
    elif workload == "oneway":
        body = payload(SMALL)
        left = n

        async def sender() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                await client.send_message(ONEWAY_TYPE, body, wait_ack=False)

        await asyncio.gather(*(sender() for _ in range(16)))
        # Done when the server has handled all of them (a message lane is not ordered
        # with calls, so one more call proves nothing).
        while int(await client.send_message(ONEWAY_TYPE + ".count") or b"0") < n:  # noqa: ASYNC110
            await asyncio.sleep(0.001)
    elif workload == "stream1m":
        big = EchoRequest(text=str(1 << 20), repeat=n)
        async for _ in stub.stream(big):
            pass
    elif workload in ("connect", "resume"):
        # connect: a full handshake each time; resume: each resumes the session of the last
        resume = workload == "resume"
        for _ in range(n):
            fresh = Client(dataclasses.replace(config, tls_resumption=resume))
            await fresh.connect()
            await EchoStub(fresh).say(request)
            await fresh.close()
    elapsed = time.perf_counter() - t0
    cpu = time.process_time() - cpu
    prof.disable()
    if os.environ.get("BENCH_COUNT"):
        print(f"client per unit: {counters.per_unit(counted, counters.snapshot(), n)}")
    await client.close()
    return elapsed, cpu


def _use_uvloop() -> None:
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


AREAS = (
    ("idle: waiting in epoll", ("'poll' of 'select.epoll'",)),
    ("TLS crypto (AEAD, header protection)", ("aioquic/_crypto", "aioquic/quic/crypto", "openssl")),
    ("aioquic packets, streams, recovery", ("aioquic/",)),
    ("QuicFlow framing (wire, protocol)", ("quicflow/wire/", "quicflow/protocol/")),
    ("protobuf", ("google/protobuf", "_pb2", "upb", "SerializeToString", "FromString")),
    ("QuicFlow transport adapter", ("quicflow/transport/",)),
    ("QuicFlow calls, server, dispatch", ("quicflow/",)),
    ("UDP syscalls", ("sendto", "recvfrom")),
    ("asyncio (loop, tasks, futures, timers)", ("asyncio/", "select", "_asyncio", "create_task")),
)
"""Where own time is counted: the first area whose pattern the function's file or name
contains (so aioquic's crypto goes to crypto, the rest of aioquic to packets)."""


def by_area(stats: pstats.Stats) -> dict[str, float]:
    """Own time (seconds) per area; "other" for the rest (enum, builtins, the bench)."""
    totals: dict[str, float] = {}
    for (filename, _, name), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        key = f"{filename}:{name}"
        area = next(
            (label for label, patterns in AREAS if any(p in key for p in patterns)), "other"
        )
        totals[area] = totals.get(area, 0.0) + tottime
    return totals


class _NoProfile(cProfile.Profile):
    def enable(self, *args: object, **kwargs: object) -> None:
        pass

    def disable(self) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument(
        "workload", choices=["unary1", "unary128", "oneway", "stream1m", "connect", "resume"]
    )
    parser.add_argument("--n", type=int, default=0)
    parser.add_argument("--out", default="")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    parser.add_argument(
        "--no-profile", action="store_true", help="only time it (no cProfile on either side)"
    )
    parser.add_argument(
        "--cpu",
        action="store_true",
        help="profile process CPU time, not wall time (sendto's wall time is mostly scheduling)",
    )
    parser.add_argument(
        "--count",
        action="store_true",
        help="count datagrams, transmits and timer wake-ups per unit on each side",
    )
    args = parser.parse_args()
    n = (
        args.n
        or {
            "unary1": 2000,
            "unary128": 20000,
            "oneway": 20000,
            "stream1m": 64,
            "connect": 100,
            "resume": 100,
        }[args.workload]
    )
    out = Path(args.out or tempfile.mkdtemp(prefix="qfprof-"))
    out.mkdir(parents=True, exist_ok=True)
    certs = out / "certs"
    write_dev_certs(certs)
    env = dict(os.environ, QUICFLOW_PROFILE_OUT=str(out / "server.prof"))
    if args.no_profile:
        env["QUICFLOW_PROFILE_OUT"] = ""
    if args.cpu:
        env["BENCH_PROFILE_CPU"] = "1"
    if args.count:
        from . import counters

        counters.install()
        env["BENCH_COUNT"] = os.environ["BENCH_COUNT"] = "1"
    if args.uvloop:
        env["BENCH_UVLOOP"] = "1"
        _use_uvloop()
    server = subprocess.Popen(
        [sys.executable, "-m", "bench.profile_server", str(certs)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdin is not None
        port = int(server.stdout.readline().split()[1])
        prof = cProfile.Profile(time.process_time) if args.cpu else cProfile.Profile()
        elapsed, client_cpu = asyncio.run(
            _client(
                port,
                certs,
                args.workload,
                n,
                _NoProfile() if args.no_profile else prof,
                server.stdin,
            )
        )
        server.stdin.close()
        server_cpu = float(server.stdout.readline().split()[1])
        if args.count:
            totals = dict(kv.split("=") for kv in server.stdout.readline().split()[1:])
            per = " ".join(f"{k}={float(v) / n:.2f}" for k, v in totals.items())
            print(f"server per unit: {per}")
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
    what = "not profiled" if args.no_profile else "profiled"
    print(f"{args.workload}: n={n} elapsed={elapsed:.3f}s ({n / elapsed:,.1f}/s, {what})")
    print(
        f"CPU per unit: client {client_cpu / n * 1e6:.1f} µs, server {server_cpu / n * 1e6:.1f} µs"
    )
    if args.no_profile:
        return
    prof.dump_stats(out / "client.prof")
    unit = n  # per call / message / MiB
    for side in ("client", "server"):
        stats = pstats.Stats(str(out / f"{side}.prof"))
        total = stats.total_tt  # type: ignore[attr-defined]
        print(f"\n== {side}: {total / unit * 1e6:.1f} µs own time per unit ==")
        for area, seconds in sorted(by_area(stats).items(), key=lambda kv: -kv[1]):
            print(f"   {seconds / unit * 1e6:8.1f} µs  {seconds / total:5.1%}  {area}")
        stats.sort_stats("tottime").print_stats(args.top)
    print(f"profiles in {out}")


if __name__ == "__main__":
    main()
