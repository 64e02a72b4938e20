"""Server CPU per connection teardown, by path, on real loopback (issue 16).

``python -m bench.teardown --clients 1000 --paths evict,close,idle,reset``

For each path a fresh `Server` runs in this process (logging at INFO to a file, as a
deployment's would) and fleets of `Client` objects (``bench.scale_fleet``, other
processes, nice 10) connect to it; then the teardown happens and this process's CPU
time is counted from the moment it starts until the server holds no session and no
connection of those clients (garbage collections in that window are reported apart:
another change owns them):

* ``evict``: the fleets are killed (SIGKILL); 1 s heartbeats, evicted 3 s after the last
  ping (heartbeat eviction: ``_check_heartbeat``, SESSION_EXPIRED).
* ``close``: every client closes at once (a CONNECTION_CLOSE each).
* ``idle``: the fleets are killed; the server's QUIC idle timeout (3 s) ends them first
  (eviction is far away: ``max_missed_heartbeats=100``).
* ``reset``: a server in another process is killed (SIGKILL) and this one starts on its
  port with the same stateless reset key; each client's next packet is answered by a
  stateless reset. Counted: the CPU of the datagrams that got a reset (the handshakes
  of the clients coming back are not teardown).

``--profile DIR`` writes a cProfile of each path's window (``DIR/teardown-<path>.prof``)
and prints its top functions; CPU per teardown is then inflated by the profiler, so
compare runs with the same flag. ``--bystander`` also runs a client that calls ``Say``
every 20 ms in this process and reports its p99 over the window (it shares this
process's CPU, as the scale run's does not: a coarse check).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import logging
import os
import pstats
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

import quicflow
from quicflow import Client, ClientConfig, Server, ServerConfig, ServicerContext
from quicflow.logs import configure_logging

from .common import percentile, raise_fd_limit
from .scale import Child, free_udp_port

PATHS = ("evict", "close", "idle", "reset")


class Echo(EchoBase):
    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text)


class GcTime:
    """CPU time spent in garbage collections while ``on``."""

    def __init__(self) -> None:
        self.total = 0.0
        self.worst = 0.0
        self.on = False
        self._start = 0.0
        gc.callbacks.append(self._cb)

    def _cb(self, phase: str, info: dict[str, Any]) -> None:
        if not self.on:
            return
        if phase == "start":
            self._start = time.thread_time()
        else:
            took = time.thread_time() - self._start
            self.total += took
            self.worst = max(self.worst, took)


def env() -> dict[str, str]:
    root = Path(__file__).resolve().parent.parent
    out = dict(os.environ)
    path = [str(root), str(root / "generated"), out.get("PYTHONPATH", "")]
    out["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    return out


async def start_fleets(
    args: argparse.Namespace, scratch: Path, port: int, hb: float, tag: str
) -> list[Child]:
    fleets = []
    per = -(-args.clients // args.fleets)
    for k in range(args.fleets):
        count = min(per, args.clients - k * per)
        child = Child(f"f{k}", scratch / f"{tag}-f{k}.log")
        argv = [sys.executable, "-m", "bench.scale_fleet", "--port", str(port), "--nice", "10"]
        argv += ["--ca", str(scratch / "certs" / "ca.pem"), "--count", str(count)]
        argv += ["--prefix", f"f{k}", "--gate", "32", "--backoff-max", "2"]
        if hb:
            argv += ["--hb-interval", str(hb)]
        await child.start(argv, env())
        fleets.append(child)
    for child in fleets:
        if not await child.wait_ready(180):
            raise RuntimeError(f"{child.name} did not connect")
    return fleets


async def bystander_loop(port: int, ca: str, out: list[tuple[float, float]]) -> None:
    client = Client(
        ClientConfig(
            host="127.0.0.1", port=port, ca_file=ca, server_name="localhost", client_id="bystander"
        )
    )
    await client.connect()
    stub = EchoStub(client)
    loop = asyncio.get_running_loop()
    try:
        while True:
            start = loop.time()
            with contextlib.suppress(Exception):
                await stub.say(EchoRequest(text="b"), timeout=10)
            out.append((start, loop.time() - start))
            await asyncio.sleep(0.02)
    finally:
        await client.close()


async def run_path(
    path: str, args: argparse.Namespace, scratch: Path, gct: GcTime
) -> dict[str, Any]:
    certs = scratch / "certs"
    settings: dict[str, Any] = {}
    hb = 0.0
    if path == "evict":
        hb = 1.0
        settings.update(
            heartbeat_interval=1.0, heartbeat_check_interval=1.0, min_heartbeat_interval=1.0
        )
    elif path == "idle":
        hb = 1.0
        settings.update(
            heartbeat_interval=1.0,
            heartbeat_check_interval=1.0,
            min_heartbeat_interval=1.0,
            max_missed_heartbeats=100,
            idle_timeout=3.0,
        )
    elif path == "reset":
        hb = 1.0
        settings.update(
            heartbeat_interval=1.0,
            min_heartbeat_interval=1.0,
            heartbeat_check_interval=1 / 3,
            stateless_reset_key_file=str(certs / "reset.key"),
        )
    # The GC governor's once-a-second look is not teardown work (another change owns it).
    settings["gc_walk_limit"] = 0
    config = ServerConfig(
        host="127.0.0.1",
        port=0,
        cert_file=str(certs / "server.pem"),
        key_file=str(certs / "server.key"),
        **settings,
    )
    old: Child | None = None
    if path == "reset":
        port = free_udp_port()
        old = Child("old-server", scratch / "reset-old-server.log")
        argv = [sys.executable, "-m", "bench.scale_server", "--port", str(port)]
        argv += ["--certs", str(certs), "--hb-interval", "1"]
        await old.start(argv, env())
        if not await old.wait_ready(60):
            raise RuntimeError("the old server did not start")
        fleets = await start_fleets(args, scratch, port, hb, path)
        await asyncio.sleep(1.0)
        await old.kill()
        server = Server(dataclasses.replace(config, port=port))
    else:
        server = Server(config)
    server.add_service(Echo())
    await server.start()
    listener = server._listener
    assert listener is not None
    if path != "reset":
        fleets = await start_fleets(args, scratch, server.port, hb, path)
        deadline = time.monotonic() + 60
        while len(server.sessions) < args.clients and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
    byst: list[tuple[float, float]] = []
    byst_task = None
    if args.bystander:
        byst_task = asyncio.ensure_future(bystander_loop(server.port, str(certs / "ca.pem"), byst))
    if path != "reset":
        await asyncio.sleep(1.0)
    n = args.clients if path == "reset" else len(server.sessions) - (1 if args.bystander else 0)
    keep = 1 if args.bystander else 0
    prof = cProfile.Profile() if args.profile else None
    loop = asyncio.get_running_loop()
    gct.total = gct.worst = 0.0
    resets0 = listener.resets_sent
    reset_cpu = [0.0, 0]
    if path == "reset":
        # Time only the datagrams that end in a stateless reset.
        route = listener._route

        def timed_route(data: bytes, addr: Any) -> None:
            before, sent = time.thread_time(), listener.resets_sent
            route(data, addr)
            if listener.resets_sent != sent:
                reset_cpu[0] += time.thread_time() - before
                reset_cpu[1] += 1

        listener._route = timed_route  # type: ignore[method-assign]
    # CPU time when the first session was seen gone (polled every 10 ms: no hook, since a
    # registered hook costs the server a ClientInfo per teardown).
    first: list[float] = []
    gct.on = True
    t0, cpu0 = loop.time(), time.process_time()
    if prof is not None:
        prof.enable()
    if path in ("evict", "idle"):
        await asyncio.gather(*(f.kill() for f in fleets))
    elif path == "close":
        await asyncio.gather(*(f.ask({"op": "close", "fraction": 1.0}, 120) for f in fleets))
    timeout = t0 + 90

    def done() -> bool:
        if path == "reset":
            # Every client reset, or back (a client whose packet came before this server
            # bound the port heard nothing, timed out its ping and reconnected instead).
            return listener.resets_sent - resets0 >= n or len(server.sessions) >= n
        return len(server.sessions) <= keep and len(listener.connections) <= keep

    sessions_gone = None
    while loop.time() < timeout:
        if not first and len(server.sessions) < n + keep:
            first.append(time.process_time())
        if sessions_gone is None and len(server.sessions) <= keep:
            sessions_gone = loop.time() - t0
        if done():
            break
        await asyncio.sleep(0.01)
    if prof is not None:
        prof.disable()
    cpu = time.process_time() - cpu0
    elapsed = loop.time() - t0
    gct.on = False
    if byst_task is not None:
        byst_task.cancel()
        await asyncio.gather(byst_task, return_exceptions=True)
    if path == "reset":
        listener._route = route  # type: ignore[method-assign]
    result: dict[str, Any] = {
        "path": path,
        "teardowns": n,
        "elapsed_s": round(elapsed, 2),
        "sessions_gone_s": None if sessions_gone is None else round(sessions_gone, 2),
        "left": len(listener.connections) - keep,
        "cpu_s": round(cpu, 3),
        "gc_cpu_s": round(gct.total, 3),
        "gc_worst_ms": round(gct.worst * 1000, 1),
        "us_per_teardown": round(1e6 * (cpu - gct.total) / max(1, n), 1),
    }
    if first and path != "reset":
        # From the first teardown on: what the teardowns cost, without the wait before.
        result["us_per_teardown_from_first"] = round(
            1e6 * (cpu0 + cpu - first[0] - gct.total) / max(1, n), 1
        )
    if path == "reset":
        result["resets"] = reset_cpu[1]
        result["us_per_reset"] = round(1e6 * reset_cpu[0] / max(1, reset_cpu[1]), 1)
    if byst:
        window = [d for s, d in byst if s >= t0]
        if window:
            result["bystander_p99_ms"] = round(1000 * percentile(window, 0.99), 1)
            result["bystander_max_ms"] = round(1000 * max(window), 1)
    if prof is not None:
        out = Path(args.profile) / f"teardown-{path}.prof"
        out.parent.mkdir(parents=True, exist_ok=True)
        prof.dump_stats(out)
        text = io.StringIO()
        stats = pstats.Stats(prof, stream=text)
        stats.sort_stats("tottime").print_stats(args.top)
        result["profile"] = str(out)
        print(text.getvalue(), file=sys.stderr)
    await asyncio.gather(*(f.stop() for f in fleets))
    await server.stop(grace=0.5)
    return result


async def main_async(args: argparse.Namespace) -> None:
    from quicflow.certs import write_dev_certs

    raise_fd_limit()
    gct = GcTime()
    with tempfile.TemporaryDirectory(prefix="quicflow-teardown-") as tmp:
        scratch = Path(tmp)
        write_dev_certs(scratch / "certs")
        log = (scratch / "server.log").open("w")
        configure_logging(args.log_level, stream=log)
        for path in args.paths.split(","):
            result = await run_path(path, args, scratch, gct)
            print(result, flush=True)
        log.close()
        size = (scratch / "server.log").stat().st_size
        print(f"server log: {size:,} bytes", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--fleets", type=int, default=2)
    parser.add_argument("--paths", default=",".join(PATHS))
    parser.add_argument("--profile", help="write cProfile output into this directory")
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--bystander", action="store_true")
    args = parser.parse_args()
    logging.getLogger("asyncio").setLevel(logging.ERROR)
    quicflow.run(main_async(args))


if __name__ == "__main__":
    main()
