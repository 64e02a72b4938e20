"""What metrics and hooks cost: unary calls/s with both on vs both off, same run.

    PYTHONPATH=.:generated python -m bench.metrics_cost [--blocks 10] [--seconds 1]

Two servers run in their own processes (``serve`` below), one with metrics
and hooks on, one with both off; this process holds a matching client for
each. "On" means ``metrics=True`` on both sides plus a no-op sync hook for every
event (message_sent, message_received, connect, disconnect) on both sides;
"off" means ``metrics=False`` and no hooks. Short blocks alternate (off-on,
on-off, ...), so drift in a shared machine's load hits both alike; reported
are the median rate per mode and the median on/off ratio of adjacent pairs.
Results go to docs/observability.md by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, ClientConfig, Server, ServerConfig, ServicerContext, allow_all
from quicflow.certs import write_dev_certs
from quicflow.hooks import Hooks

EVENTS = ("message_sent", "message_received", "connect", "disconnect")


def _noop(*args: object) -> None:
    pass


def _hook_everything(hooks: Hooks) -> None:
    for event in EVENTS:
        hooks.add(event, _noop)


class _Echo(EchoBase):
    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text)


async def serve(certs: Path, on: bool) -> None:
    """Serve Echo until stdin closes; print ``ready <port>``."""
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(certs / "server.pem"),
            key_file=str(certs / "server.key"),
            metrics=on,
            authenticator=allow_all,
        )
    )
    server.add_service(_Echo())
    if on:
        _hook_everything(server.hooks)
    await server.start()
    print(f"ready {server.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def _connect(port: int, certs: Path, on: bool) -> Client:
    client = Client(
        ClientConfig(
            host="127.0.0.1",
            port=port,
            ca_file=str(certs / "ca.pem"),
            server_name="localhost",
            metrics=on,
        )
    )
    if on:
        _hook_everything(client.hooks)
    await client.connect()
    return client


def _cpu_ns(pid: int) -> int:
    """CPU time the process's main thread has used (Linux schedstat, nanoseconds)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[0])


class Sample(NamedTuple):
    """One block: throughput, and CPU microseconds per call in this process and the server."""

    rate: float
    client_us: float
    server_us: float


async def block(client: Client, server_pid: int, concurrency: int, seconds: float) -> Sample:
    """Unary calls with ``concurrency`` callers on ``client`` for ``seconds``."""
    stub = EchoStub(client)
    request = EchoRequest(text="ping")
    loop = asyncio.get_running_loop()
    count = 0
    stop_at = loop.time() + seconds

    async def caller() -> None:
        nonlocal count
        while loop.time() < stop_at:
            await stub.say(request)
            count += 1

    start = loop.time()
    cpu0, server0 = time.thread_time_ns(), _cpu_ns(server_pid)
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    elapsed = loop.time() - start
    cpu1, server1 = time.thread_time_ns(), _cpu_ns(server_pid)
    n = max(count, 1)
    return Sample(count / elapsed, (cpu1 - cpu0) / n / 1000, (server1 - server0) / n / 1000)


async def compare(
    servers: dict[bool, tuple[int, int]],
    certs: Path,
    concurrency: list[int],
    blocks: int,
    seconds: float,
) -> dict[tuple[bool, int], list[Sample]]:
    """Alternate blocks on the "off" and "on" pairs (off-on, on-off, ...) per concurrency."""
    clients = {on: await _connect(port, certs, on) for on, (_, port) in servers.items()}
    results: dict[tuple[bool, int], list[Sample]] = {}
    try:
        for c in concurrency:
            for on in (False, True):
                await block(clients[on], servers[on][0], c, 0.5)  # warm-up
            for i in range(blocks):
                for on in (False, True) if i % 2 == 0 else (True, False):
                    sample = await block(clients[on], servers[on][0], c, seconds)
                    results.setdefault((on, c), []).append(sample)
                    mode = "on " if on else "off"
                    print(
                        f"block {i + 1:2} {mode} c={c:<4} {sample.rate:8.0f} calls/s, CPU/call: "
                        f"client {sample.client_us:5.1f} us, server {sample.server_us:5.1f} us",
                        flush=True,
                    )
    finally:
        for client in clients.values():
            await client.close()
    return results


def _start_server(certs: Path, on: bool) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.metrics_cost", "serve", str(certs), "on" if on else "off"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("ready "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, int(line.split()[1])


def main() -> None:
    """Run the comparison and print a table."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--blocks", type=int, default=10, help="blocks per mode")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one block")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 128])
    args, rest = parser.parse_known_args()
    if rest[:1] == ["serve"]:
        asyncio.run(serve(Path(rest[1]), rest[2] == "on"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_dev_certs(certs)
        servers = {on: _start_server(certs, on) for on in (False, True)}
        try:
            pids = {on: (proc.pid, port) for on, (proc, port) in servers.items()}
            results = asyncio.run(compare(pids, certs, args.concurrency, args.blocks, args.seconds))
        finally:
            for proc, _ in servers.values():
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout=30)
        print()
        print(
            "| concurrency | calls/s off | calls/s on | on/off (median of pairs) "
            "| CPU us/call off (client + server) | CPU us/call on (client + server) |"
        )
        print("| --- | --- | --- | --- | --- | --- |")
        med = statistics.median
        for c in args.concurrency:
            offs, ons = results[(False, c)], results[(True, c)]
            ratio = med(b.rate / a.rate for a, b in zip(offs, ons, strict=True))
            cpu = {
                on: (med(x.client_us for x in xs), med(x.server_us for x in xs))
                for on, xs in ((False, offs), (True, ons))
            }
            print(
                f"| {c} | {med(x.rate for x in offs):.0f} | {med(x.rate for x in ons):.0f} "
                f"| {ratio:.3f} | {cpu[False][0]:.1f} + {cpu[False][1]:.1f} "
                f"| {cpu[True][0]:.1f} + {cpu[True][1]:.1f} |"
            )
        when = time.ctime()
        print(f"\n({args.blocks} alternating blocks of {args.seconds:g} s per mode; {when})")


if __name__ == "__main__":
    main()
