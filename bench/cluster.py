"""Cluster mode measured: what a cross-node push costs over a local one.

    PYTHONPATH=.:generated .venv/bin/python -m bench.cluster [--quick] [--clients 3000]

Starts one nats-server and three QuicFlow nodes (a, b, c), each in its own
process, and client fleets in their own processes, all on 127.0.0.1. Then:

* **latency**: node b pushes to its own client (local), then node a pushes to
  the same client (routed through NATS to b), one at a time; p50/p99 of each
  and the p50/p99 *added* by the hop;
* **throughput**: the same two with 64 in flight: pushes/s, and the ratio
  (cross-node / local);
* **CPU per message**: process CPU of the nodes (utime + stime) over each
  throughput run, divided by the pushes (for a routed push: node a's and
  node b's together, and node a's part alone);
* **broadcast**: ``--clients`` clients spread evenly over the three nodes;
  node a broadcasts to all, reporting wall time and per-node answers.

Prints one Markdown table (the one in docs/cluster.md) and writes
``bench/results/cluster-<date>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}


# -- the node process --


async def node_main(args: argparse.Namespace) -> None:
    """A cluster node driven by ``bench`` messages (JSON in, JSON out)."""
    from notify.notify_pb2 import Event
    from notify.notify_quicflow import NotifyStub

    from quicflow import RpcError, Server, ServerConfig
    from quicflow.dispatch import Message

    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(Path(args.certs) / "server.pem"),
            key_file=str(Path(args.certs) / "server.key"),
            cluster_nats_urls=(args.nats,),
            cluster_name="bench",
            cluster_node_id=args.node_id,
            push_timeout=30.0,
            max_connections=20_000,
            broadcast_max_in_flight=200,
            metrics=False,
            handler_timeout=600.0,
            # A shared 2-core box stalls loops for seconds under 1,000s of handshakes: the
            # bench measures pushes, not heartbeat evictions.
            heartbeat_timeout=60.0,
        )
    )

    async def push_n(to: str, n: int, concurrency: int) -> dict[str, Any]:
        latencies: list[float] = []
        errors = 0
        stub = NotifyStub(server.client(to))
        loop = asyncio.get_running_loop()
        left = n

        async def worker() -> None:
            nonlocal left, errors
            while left > 0:
                left -= 1
                start = loop.time()
                try:
                    await stub.deliver(Event(seq=1))
                except RpcError:
                    errors += 1
                latencies.append(loop.time() - start)

        start = loop.time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return {"elapsed": loop.time() - start, "latencies": latencies, "errors": errors}

    async def feed_n(to: str, n: int) -> dict[str, Any]:
        """One client-streaming call of ``n`` small events (a routed stream when ``to``
        is on another node)."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        ack = await NotifyStub(server.client(to)).feed(Event(seq=1) for _ in range(n))
        return {"elapsed": loop.time() - start, "acked": ack.seq}

    async def handle(message: Message) -> bytes:
        req = json.loads(message.payload)
        op = req["op"]
        if op == "push_n":
            out = await push_n(req["to"], req["n"], req["concurrency"])
        elif op == "feed_n":
            out = await feed_n(req["to"], req["n"])
        elif op == "cpu":
            times = os.times()
            out = {"cpu": times.user + times.system}
        elif op == "count":
            out = {"clients": len(server.list_clients())}
        elif op == "broadcast":
            loop = asyncio.get_running_loop()
            start = loop.time()
            result = await server.broadcast(
                lambda ch: NotifyStub(ch).deliver(Event(seq=2)),
                labels={"role": "fleet"},
                client_timeout=req["timeout"],
            )
            nodes = getattr(result, "nodes", {})
            out = {
                "elapsed": loop.time() - start,
                "delivered": result.delivered,
                "failed": result.failed,
                "timed_out": result.timed_out,
                "nodes": {n: [o.answered, o.clients] for n, o in nodes.items()},
            }
        else:
            out = {"error": op}
        return json.dumps(out).encode()

    server.register_handler("bench", handle)
    await server.start()
    print(f"listening {server.port}", flush=True)
    await asyncio.Event().wait()


# -- the fleet process --


async def fleet_main(args: argparse.Namespace) -> None:
    """``--count`` clients of the node on ``--port``, answering pushes; until stdin closes."""
    from notify.notify_pb2 import Ack, Event
    from notify.notify_quicflow import NotifyBase

    from quicflow import Client, ClientConfig, ServicerContext

    class Inbox(NotifyBase):
        async def deliver(self, request: Event, context: ServicerContext) -> Ack:
            return Ack(seq=request.seq)

        async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
            return Ack(seq=sum([e.seq async for e in requests]))

    gate = asyncio.Semaphore(8)  # a handshake storm on a shared 2-core box measures nothing

    async def one(i: int) -> Client:
        async with gate:
            client = Client(
                ClientConfig(
                    host="127.0.0.1",
                    port=args.port,
                    ca_file=str(Path(args.certs) / "ca.pem"),
                    server_name="localhost",
                    client_id=f"{args.prefix}{i}",
                    labels={"role": "fleet"},
                    heartbeat_interval=60.0,
                    heartbeat_timeout=120.0,
                    connect_timeout=30.0,
                    metrics=False,
                )
            )
            client.add_service(Inbox())
            await client.connect()
            return client

    clients = await asyncio.gather(*(one(i) for i in range(args.count)))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.read)
    await asyncio.gather(*(c.close() for c in clients))


# -- the driver --


class Proc:
    """A child process of this bench (ended by its PID)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    async def line(self, timeout: float = 120.0) -> str:
        assert self.proc.stdout is not None
        async with asyncio.timeout(timeout):
            return (await self.proc.stdout.readline()).decode().strip()

    def cpu(self) -> float:
        """utime + stime of the process, in seconds (from /proc)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    async def end(self) -> None:
        if self.proc.returncode is None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
                return
            except TimeoutError:
                pass
            self.proc.kill()
            await self.proc.wait()


async def _spawn(*args: str, stdin: bool = False) -> Proc:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bench.cluster",
        *args,
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
    )
    return Proc(proc)


async def _until_count(bench: Any, count: int) -> None:
    """Poll node a until it lists ``count`` clients cluster-wide."""
    while True:
        if (await bench("a", "count"))["clients"] >= count:
            return
        await asyncio.sleep(0.1)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def drive(args: argparse.Namespace) -> dict[str, Any]:
    from quicflow import Client, ClientConfig
    from quicflow.cluster.natsserver import NatsServer
    from quicflow.testing import dev_certs

    certs = str(dev_certs().cert_file.parent)
    nats = NatsServer()
    nats.start()
    nodes: dict[str, Proc] = {}
    ports: dict[str, int] = {}
    fleets: list[Proc] = []
    ctl: dict[str, Client] = {}
    try:
        for name in "abc":
            proc = await _spawn("--node", "--nats", nats.url, "--node-id", name, "--certs", certs)
            nodes[name] = proc
            ports[name] = int((await proc.line()).split()[1])

        async def bench(node: str, op: str, **fields: Any) -> dict[str, Any]:
            reply = await ctl[node].send_message(
                "bench", json.dumps({"op": op, **fields}).encode(), timeout=600.0
            )
            assert reply is not None
            result: dict[str, Any] = json.loads(reply)
            return result

        for name in "abc":
            ctl[name] = Client(
                ClientConfig(
                    host="127.0.0.1",
                    port=ports[name],
                    ca_file=str(Path(certs) / "ca.pem"),
                    server_name="localhost",
                    client_id=f"ctl-{name}",
                    metrics=False,
                    heartbeat_timeout=120.0,  # a loaded node must not drop its controller
                )
            )
            await ctl[name].connect()
        # The push target: one client on node b.
        target = await _spawn(
            "--fleet", "--port", str(ports["b"]), "--count", "1", "--prefix", "target-",
            "--certs", certs, stdin=True,
        )  # fmt: skip
        fleets.append(target)
        assert await target.line() == "ready"
        await _until_count(bench, 4)  # 3 control clients + the target

        n_lat = 300 if args.quick else 2000
        n_tput = 1000 if args.quick else 5000
        results: dict[str, Any] = {}
        # warm up both paths
        await bench("b", "push_n", to="target-0", n=200, concurrency=8)
        await bench("a", "push_n", to="target-0", n=200, concurrency=8)
        local = await bench("b", "push_n", to="target-0", n=n_lat, concurrency=1)
        cross = await bench("a", "push_n", to="target-0", n=n_lat, concurrency=1)
        for key, run in (("local", local), ("cross", cross)):
            results[f"{key}_p50_ms"] = _pct(run["latencies"], 0.50) * 1000
            results[f"{key}_p99_ms"] = _pct(run["latencies"], 0.99) * 1000
            results[f"{key}_errors"] = run["errors"]
        results["added_p50_ms"] = results["cross_p50_ms"] - results["local_p50_ms"]
        results["added_p99_ms"] = results["cross_p99_ms"] - results["local_p99_ms"]

        # Interleaved repeats (local, cross, local, cross, ...): the machine's drift hits
        # both alike; each figure is the median over the repeats.
        samples: dict[str, list[dict[str, float]]] = {"local": [], "cross": []}
        for _ in range(args.repeats):
            for key, sender in (("local", "b"), ("cross", "a")):
                cpu_a, cpu_b = nodes["a"].cpu(), nodes["b"].cpu()
                run = await bench(sender, "push_n", to="target-0", n=n_tput, concurrency=64)
                da, db = nodes["a"].cpu() - cpu_a, nodes["b"].cpu() - cpu_b
                samples[key].append(
                    {
                        "per_s": n_tput / run["elapsed"],
                        "errors": run["errors"],
                        "cpu": (da + db) / n_tput * 1e6,
                        "sender": da / n_tput * 1e6,
                        "owner": db / n_tput * 1e6,
                    }
                )
        for key, runs in samples.items():

            def med(field: str, runs: list[dict[str, float]] = runs) -> float:
                return statistics.median(r[field] for r in runs)

            results[f"{key}_per_s"] = med("per_s")
            results[f"{key}_tput_errors"] = sum(r["errors"] for r in runs)
            results[f"{key}_cpu_us_per_msg"] = med("cpu")
            if key == "cross":
                results["cross_cpu_us_sender"] = med("sender")
                results["cross_cpu_us_owner"] = med("owner")
        results["repeats"] = args.repeats
        results["cross_vs_local"] = results["cross_per_s"] / results["local_per_s"]

        # Streaming: one client-streaming call of n_stream events, local then routed (a
        # routed stream: a credit window of 16 messages each way), interleaved.
        n_stream = 5000 if args.quick else 20000
        await bench("a", "feed_n", to="target-0", n=500)  # warm-up
        streamed: dict[str, list[dict[str, float]]] = {"local": [], "cross": []}
        for _ in range(args.repeats):
            for key, sender in (("local", "b"), ("cross", "a")):
                cpu_a, cpu_b = nodes["a"].cpu(), nodes["b"].cpu()
                run = await bench(sender, "feed_n", to="target-0", n=n_stream)
                assert run["acked"] == n_stream, run
                da, db = nodes["a"].cpu() - cpu_a, nodes["b"].cpu() - cpu_b
                streamed[key].append(
                    {"per_s": n_stream / run["elapsed"], "cpu": (da + db) / n_stream * 1e6}
                )
        for key, runs in streamed.items():
            results[f"stream_{key}_per_s"] = statistics.median(r["per_s"] for r in runs)
            results[f"stream_{key}_cpu_us_per_msg"] = statistics.median(r["cpu"] for r in runs)
        results["stream_messages"] = n_stream

        # Broadcast: clients spread over three nodes.
        per_node = max(1, args.clients // 3)
        spawned = []
        for name in "abc":
            fleet = await _spawn(
                "--fleet", "--port", str(ports[name]), "--count", str(per_node),
                "--prefix", f"f{name}-", "--certs", certs, stdin=True,
            )  # fmt: skip
            fleets.append(fleet)
            spawned.append(fleet)
        for fleet in spawned:
            assert await fleet.line(timeout=600) == "ready"
        await _until_count(bench, 4 + 3 * per_node)
        await bench("a", "broadcast", timeout=30.0)  # warm-up
        runs = [await bench("a", "broadcast", timeout=30.0) for _ in range(3)]
        best = min(runs, key=lambda r: float(r["elapsed"]))
        results["broadcast_clients"] = best["delivered"] + best["failed"] + best["timed_out"]
        results["broadcast_s"] = statistics.median(float(r["elapsed"]) for r in runs)
        results["broadcast_delivered"] = best["delivered"]
        results["broadcast_nodes"] = best["nodes"]
        return results
    finally:
        for client in ctl.values():
            await client.close()
        for fleet in fleets:
            await fleet.end()
        for proc in nodes.values():
            if proc.proc.returncode is None:
                proc.proc.terminate()
                await proc.proc.wait()
        nats.close()


def table(r: dict[str, Any]) -> str:
    rows = [
        ("push latency p50, local (b -> its client)", f"{r['local_p50_ms']:.3f} ms"),
        ("push latency p50, cross-node (a -> b's client)", f"{r['cross_p50_ms']:.3f} ms"),
        ("added by the hop, p50", f"{r['added_p50_ms']:.3f} ms"),
        (
            "push latency p99, local / cross-node",
            f"{r['local_p99_ms']:.2f} / {r['cross_p99_ms']:.2f} ms",
        ),
        ("added by the hop, p99", f"{r['added_p99_ms']:.2f} ms"),
        ("pushes/s at 64 in flight, local (median)", f"{r['local_per_s']:,.0f}"),
        ("pushes/s at 64 in flight, cross-node (median)", f"{r['cross_per_s']:,.0f}"),
        ("cross-node / local throughput", f"{r['cross_vs_local'] * 100:.0f} %"),
        ("node CPU per push, local", f"{r['local_cpu_us_per_msg']:.0f} µs"),
        (
            "node CPU per routed push (sender + owner)",
            f"{r['cross_cpu_us_per_msg']:.0f} µs "
            f"({r['cross_cpu_us_sender']:.0f} + {r['cross_cpu_us_owner']:.0f})",
        ),
        (
            f"streamed messages/s, one client-streaming call of {r['stream_messages']:,}, "
            "local / cross-node (median)",
            f"{r['stream_local_per_s']:,.0f} / {r['stream_cross_per_s']:,.0f}",
        ),
        (
            "node CPU per streamed message, local / cross-node (both nodes)",
            f"{r['stream_local_cpu_us_per_msg']:.0f} / {r['stream_cross_cpu_us_per_msg']:.0f} µs",
        ),
        (
            f"broadcast to {r['broadcast_clients']:,} clients on 3 nodes (median of 3)",
            f"{r['broadcast_s'] * 1000:.0f} ms, {r['broadcast_delivered']:,} delivered",
        ),
    ]  # fmt: skip
    lines = ["| measure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def main() -> None:
    """Parse arguments and run one role: driver (default), node or fleet."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--node", action="store_true")
    parser.add_argument("--fleet", action="store_true")
    parser.add_argument("--nats", default="")
    parser.add_argument("--node-id", default="")
    parser.add_argument("--certs", default="")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--count", type=int, default=0)
    parser.add_argument("--prefix", default="")
    parser.add_argument("--quick", action="store_true", help="fewer pushes, 300 clients")
    parser.add_argument("--clients", type=int, default=3000, help="broadcast clients in all")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved throughput runs")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    if args.node:
        asyncio.run(node_main(args))
        return
    if args.fleet:
        asyncio.run(fleet_main(args))
        return
    if args.quick:
        args.clients = min(args.clients, 300)
        args.repeats = min(args.repeats, 3)
    results = asyncio.run(drive(args))
    results["machine"] = (
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    results["date"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    print(table(results))
    if not args.no_write:
        RESULTS.mkdir(exist_ok=True)
        path = RESULTS / f"cluster-{datetime.date.today().isoformat()}.json"
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
