"""The server of the scale run (``bench.scale``): one QuicFlow `Server`, default settings.

``python -m bench.scale_server --port P --certs DIR`` serves Echo on 127.0.0.1 and prints
``ready <port>`` once it accepts connections. It watches itself: the longest garbage
collection (``gc.callbacks``) and the longest event-loop lag (a 50 ms sleeper that
measures how late it wakes) since the last ``reset``, and which clients it evicted for
missed heartbeats. Commands, one JSON line each on stdin, one JSON answer on stdout:

* ``{"op": "stats"}`` (``"reset": true`` also starts the worst-case watches afresh);
* ``{"op": "broadcast", "timeout": s}``: a 64 B ``Say`` with its reply (the ack) to every
  connected client (`Server.broadcast`), timed (wall and process CPU seconds);
* ``{"op": "profile", "path": p, "seconds": s}`` (or ``"broadcast": timeout``): a cProfile
  of the server for that long (or of one broadcast), written to ``p``.

It stops when stdin closes, or is killed (the restart phase sends SIGKILL).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import logging
import os
import resource
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

import quicflow
from quicflow import ClientInfo, Server, ServerConfig, ServicerContext
from quicflow.transport import server_endpoint

from .common import HOST, SMALL, encode, payload


def rss_kib(pid: int | str = "self") -> int:
    """VmRSS of ``pid`` (default: this process) in KiB, from /proc; 0 if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


class Echo(EchoBase):
    """The unary call the clients make."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        return EchoReply(text=request.text)


class Watch:
    """Worst GC pause and worst event-loop lag since the last reset."""

    def __init__(self) -> None:
        self.gc_worst = 0.0
        self.gc_worst_gen = -1
        self.gc_worst_cpu = 0.0
        self.gc_count = 0
        self.lag_worst = 0.0
        self._gc_start = self._gc_start_cpu = 0.0
        gc.callbacks.append(self._gc)

    def _gc(self, phase: str, info: dict[str, Any]) -> None:
        # Wall time is the pause everyone waits through; CPU time is what the collection
        # itself cost (on a shared machine the wall time also counts being descheduled).
        if phase == "start":
            self._gc_start, self._gc_start_cpu = time.perf_counter(), time.thread_time()
            return
        took = time.perf_counter() - self._gc_start
        self.gc_worst_cpu = max(self.gc_worst_cpu, time.thread_time() - self._gc_start_cpu)
        self.gc_count += 1
        if took > self.gc_worst:
            self.gc_worst, self.gc_worst_gen = took, int(info.get("generation", -1))

    async def lag(self) -> None:
        period = 0.05
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(period)
            self.lag_worst = max(self.lag_worst, loop.time() - before - period)

    def reset(self) -> None:
        self.gc_worst, self.gc_worst_gen, self.gc_count, self.lag_worst = 0.0, -1, 0, 0.0
        self.gc_worst_cpu = 0.0


async def serve(args: argparse.Namespace) -> None:
    settings: dict[str, Any] = {}
    if args.broadcast_window:
        settings["broadcast_max_in_flight"] = args.broadcast_window
    if not args.no_reset_key:
        # The deployment a restart should recover fast in: the stateless reset key survives
        # the restart, so the new server resets each old client at its next packet.
        settings["stateless_reset_key_file"] = str(args.certs / "reset.key")
    if not args.no_ticket_key:
        # ... and its session tickets are sealed under a key file that survives it too, so
        # the clients' reconnects after the restart are resumed handshakes.
        settings["tls_ticket_key_file"] = str(args.certs / "ticket.key")
    if args.gc != "default":
        settings["gc_walk_limit"] = 0
    if args.hb_interval:
        settings.update(
            heartbeat_interval=args.hb_interval,
            heartbeat_check_interval=args.hb_interval / 3,
            min_heartbeat_interval=min(1.0, args.hb_interval),
        )
    server = Server(
        ServerConfig(
            host=HOST,
            port=args.port,
            cert_file=str(args.certs / "server.pem"),
            key_file=str(args.certs / "server.key"),
            **settings,
        )
    )
    server.add_service(Echo())
    watch = Watch()
    evicted: Counter[str] = Counter()
    # When the last eviction happened (time.monotonic: the orchestrator's clock too, so it
    # can tell the server's own eviction time from its once-a-second poll) and the longest
    # silence an evicted client had kept (from its last PING, or its session's start).
    eviction = {"last": 0.0, "silence": 0.0}

    def timed_out(info: ClientInfo) -> None:
        evicted[info.client_id.rsplit("-", 1)[0]] += 1
        eviction["last"] = time.monotonic()
        since = info.last_heartbeat if info.last_heartbeat is not None else info.connected_since
        eviction["silence"] = max(eviction["silence"], time.time() - since)

    server.hooks.on_heartbeat_timeout(timed_out)
    admitted = Counter[str]()

    def connected(info: ClientInfo) -> None:
        admitted["sessions"] += 1

    def disconnected(info: ClientInfo, reason: str) -> None:
        admitted[f"lost: {reason}"] += 1

    server.hooks.on_connect(connected)
    server.hooks.on_disconnect(disconnected)
    lagger = asyncio.ensure_future(watch.lag())
    background = [lagger]
    await server.start()
    if args.no_busy and server._listener is not None:
        server._listener.admission = None  # every Initial waits in the backlog, or is shed
    if args.gc == "freeze":
        gc.freeze()
    small = payload(SMALL)

    async def control(cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd.get("op")
        if op == "stats":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            answer = {
                # The bystander (bench.scale) is not one of the fleets' clients.
                # A count, not list_clients(): a snapshot of every session would cost the
                # server ~5 us each per poll (50 ms at 10,000, 4 polls a second closing).
                "sessions": len(server.sessions) - ("bystander-0" in server.sessions),
                "connections": len(server.connections),
                "rss_kib": rss_kib(),
                "cpu_s": usage.ru_utime + usage.ru_stime,
                "gc_worst_ms": watch.gc_worst * 1000,
                "gc_worst_gen": watch.gc_worst_gen,
                "gc_worst_cpu_ms": watch.gc_worst_cpu * 1000,
                "gc_count": watch.gc_count,
                "lag_worst_ms": watch.lag_worst * 1000,
                "evicted": dict(evicted),
                "evicted_last_mono": eviction["last"],
                "evict_silence_max_s": eviction["silence"],
                "gc_counts": gc.get_count(),
                # The endpoint's counter of shed handshakes (no public accessor yet).
                "handshakes_shed": getattr(server._listener, "handshakes_shed", 0),
                # Where each connection attempt went (the endpoint's counters).
                "endpoint": {
                    name: getattr(server._listener, name, 0)
                    for name in (
                        "handshakes_shed",
                        "handshakes_shed_stale",
                        "handshakes_started",
                        "handshakes_completed",
                        "handshakes_failed",
                        "backlog_waited",
                        "retries_sent",
                        "busy_sent",
                        "resets_sent",
                        "connections_refused",
                    )
                },
                "admitted": dict(admitted),
                # Session tickets this process opened (resumed handshakes, restart phase).
                "tickets_resumed": getattr(
                    getattr(server._listener, "tickets", None), "resumed", 0
                ),
                "admission_spacing_ms": round(
                    1000 * getattr(getattr(server._listener, "admission", None), "spacing", 0.0), 3
                ),
                "gc_freezes": server._gc[0].freezes if server._gc else 0,
                "gc_thaws": server._gc[0].thaws if server._gc else 0,
            }
            if cmd.get("objects"):  # objects the collector tracks (a full scan: idle only)
                answer["gc_objects"] = len(gc.get_objects())
                # Walks every frozen object too (~20 ms per 230,000): not in every poll.
                answer["gc_frozen"] = gc.get_freeze_count()
            if cmd.get("reset"):
                watch.reset()
                evicted.clear()
                eviction.update(last=0.0, silence=0.0)
            return answer
        if op == "profile":
            # A cProfile of the server for ``seconds`` (the idle load as it is), or of one
            # broadcast (``broadcast``: its timeout), written to ``path``; with the CPU
            # seconds the process spent meanwhile, so a profile's overhead can be told.
            profiler = cProfile.Profile()
            usage0 = resource.getrusage(resource.RUSAGE_SELF)
            profiler.enable()
            if cmd.get("broadcast"):
                inner = await control({"op": "broadcast", "timeout": cmd["broadcast"]})
            else:
                await asyncio.sleep(float(cmd["seconds"]))
                inner = {}
            profiler.disable()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            profiler.dump_stats(cmd["path"])
            return {
                **inner,
                "cpu_s": usage.ru_utime + usage.ru_stime - usage0.ru_utime - usage0.ru_stime,
            }
        if op == "broadcast":
            cpu0 = time.process_time()
            start = time.perf_counter()
            result = await server.broadcast(
                lambda ch: EchoStub(ch).say(EchoRequest(text="b", payload=small)),
                client_timeout=float(cmd["timeout"]),
            )
            return {
                "elapsed": time.perf_counter() - start,
                "cpu_s": time.process_time() - cpu0,
                "clients": len(result),
                "delivered": result.delivered,
                "failed": result.failed,
                "timed_out": result.timed_out,
            }
        return {"error": f"unknown op {op!r}"}

    print(f"ready {server.port}", flush=True)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    try:
        while line := await reader.readline():
            print(encode(await control(json.loads(line))), flush=True)
    finally:
        for task in background:
            task.cancel()
        await server.stop(grace=1.0)


def tax_handshakes(seconds: float) -> None:
    """Make every new connection cost ``seconds`` more CPU (harness only: a private hook)."""
    accept = server_endpoint.QuicFlowServer._accept

    def taxed(self: server_endpoint.QuicFlowServer, *args: Any) -> Any:
        end = time.thread_time() + seconds
        while time.thread_time() < end:
            pass
        return accept(self, *args)

    server_endpoint.QuicFlowServer._accept = taxed  # type: ignore[method-assign,assignment]


def main() -> None:
    """Parse arguments and serve until stdin closes."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--hb-interval", type=float, default=0.0, help="0: the default")
    # Levers measured against each other (docs/scale.md "What helped").
    parser.add_argument("--intake-batch", type=int, help="datagrams read per loop pass")
    parser.add_argument("--broadcast-window", type=int, default=0, help="0: the default")
    parser.add_argument("--no-reset-key", action="store_true", help="no stateless reset key")
    parser.add_argument(
        "--no-ticket-key", action="store_true", help="session tickets in memory (lost on restart)"
    )
    parser.add_argument("--no-busy", action="store_true", help="no busy answers: queue/shed")
    parser.add_argument("--handshakes-per-pass", type=int, help="0: no limit")
    parser.add_argument("--shed-reads", type=int, help="reads past the batch while shedding")
    parser.add_argument(
        "--handshake-tax-ms",
        type=float,
        default=0.0,
        help="burn this much CPU per connection started: a slower server (as at 10,000 "
        "clients), so a 2,000-client storm is server-bound as a 10,000-client one is",
    )
    parser.add_argument(
        "--gc",
        choices=("default", "off", "freeze"),
        default="default",
        help="default: the server's gc_walk_limit; off: 0; freeze: 0 and gc.freeze() at start",
    )
    args = parser.parse_args()
    if args.intake_batch is not None:
        server_endpoint.INTAKE_BATCH = args.intake_batch
    if args.shed_reads is not None:
        server_endpoint.SHED_READS = args.shed_reads
    if args.handshakes_per_pass is not None:
        server_endpoint.HANDSHAKES_PER_PASS = args.handshakes_per_pass
    if args.handshake_tax_ms:
        tax_handshakes(args.handshake_tax_ms / 1000)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    print(f"pid {os.getpid()}", file=sys.stderr, flush=True)
    quicflow.run(serve(args))


if __name__ == "__main__":
    main()
