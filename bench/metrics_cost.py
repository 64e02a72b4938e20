"""What metrics and hooks cost: unary calls/s with both on vs both off, same run.

    PYTHONPATH=.:generated python -m bench.metrics_cost [--rounds 3] [--seconds 3]

The server runs in its own process (``serve`` below), started afresh for each
measurement with metrics and hooks on or off; the client process matches it.
"On" means ``metrics=True`` on both sides plus a no-op sync hook for every
event (message_sent, message_received, connect, disconnect) on both sides;
"off" means ``metrics=False`` and no hooks. Modes alternate round by round, so
drift in the machine's load hits both alike; the figure reported is the median
per mode and concurrency. Results go to docs/observability.md by hand.
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

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, ClientConfig, Server, ServerConfig, ServicerContext
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
        )
    )
    server.add_service(_Echo())
    if on:
        _hook_everything(server.hooks)
    await server.start()
    print(f"ready {server.port}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    await server.stop()


async def measure(port: int, certs: Path, on: bool, concurrency: int, seconds: float) -> float:
    """Unary calls/s with ``concurrency`` callers on one connection for ``seconds``."""
    config = ClientConfig(
        host="127.0.0.1",
        port=port,
        ca_file=str(certs / "ca.pem"),
        server_name="localhost",
        metrics=on,
    )
    client = Client(config)
    if on:
        _hook_everything(client.hooks)
    await client.connect()
    stub = EchoStub(client)
    request = EchoRequest(text="ping")
    count = 0
    stop_at = 0.0

    async def caller() -> None:
        nonlocal count
        loop = asyncio.get_running_loop()
        while loop.time() < stop_at:
            await stub.say(request)
            count += 1

    try:
        loop = asyncio.get_running_loop()
        stop_at = loop.time() + 0.5  # warm-up
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        count = 0
        start = loop.time()
        stop_at = start + seconds
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        return count / (loop.time() - start)
    finally:
        await client.close()


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
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 128])
    args, rest = parser.parse_known_args()
    if rest[:1] == ["serve"]:
        asyncio.run(serve(Path(rest[1]), rest[2] == "on"))
        return
    with tempfile.TemporaryDirectory() as tmp:
        certs = Path(tmp)
        write_dev_certs(certs)
        results: dict[tuple[bool, int], list[float]] = {}
        for round_ in range(args.rounds):
            for on in (False, True) if round_ % 2 == 0 else (True, False):
                for c in args.concurrency:
                    proc, port = _start_server(certs, on)
                    try:
                        rate = asyncio.run(measure(port, certs, on, c, args.seconds))
                    finally:
                        assert proc.stdin is not None
                        proc.stdin.close()
                        proc.wait(timeout=30)
                    results.setdefault((on, c), []).append(rate)
                    mode = "on " if on else "off"
                    print(f"round {round_ + 1} {mode} c={c:<4} {rate:8.0f} calls/s", flush=True)
        print()
        print("| concurrency | metrics+hooks off | metrics+hooks on | cost |")
        print("| --- | --- | --- | --- |")
        for c in args.concurrency:
            off = statistics.median(results[(False, c)])
            on_ = statistics.median(results[(True, c)])
            print(
                f"| {c} | {off:.0f} calls/s | {on_:.0f} calls/s | {(1 - on_ / off) * 100:.1f} % |"
            )
        print(f"\n(median of {args.rounds} rounds, {args.seconds:.0f} s each; {time.ctime()})")


if __name__ == "__main__":
    main()
