"""One node of the cluster demo: a QuicFlow server in cluster mode, plus a ``demo`` handler.

    python -m examples.cluster.node --nats nats://127.0.0.1:4222 --node-id a --certs certs

The ``demo`` untyped message (JSON) lets the demo ask this node to push, send
with an ack, stream (``feed``) or broadcast, so each action visibly starts on a
chosen node.
A node needs nothing else than ``cluster_nats_urls``; from the shell the same
node is ``QUICFLOW_SERVER_CLUSTER_NATS_URLS=nats://... quicflow serve ...``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from notify.notify_pb2 import Event
from notify.notify_quicflow import NotifyStub

from quicflow import RpcError, Server, ServerConfig
from quicflow.cluster.node import ClusterBroadcastResult
from quicflow.dispatch import Message


async def act(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    """Do what one demo message asks, from this node."""
    op = request["op"]
    event = Event(seq=request.get("seq", 0), text=request.get("text", ""))
    try:
        if op == "push":
            ack = await NotifyStub(server.client(request["to"])).deliver(event)
            return {"ack": f"{ack.client_id} seq={ack.seq}"}
        if op == "feed":  # a client-streaming call: a routed stream if the client is remote
            events = [Event(seq=i, text=request.get("text", "")) for i in range(request["n"])]
            ack = await NotifyStub(server.client(request["to"])).feed(iter(events))
            return {"ack": f"{ack.client_id} acked {ack.seq} events"}
        if op == "async_send":
            promise = server.async_send(request["to"], lambda ch: NotifyStub(ch).deliver(event))
            ack = await promise
            return {"message_id": promise.message_id, "ack": f"{ack.client_id} seq={ack.seq}"}
        if op == "broadcast":
            result = await server.broadcast(
                lambda ch: NotifyStub(ch).deliver(event), labels={"role": "user"}
            )
            nodes = result.nodes if isinstance(result, ClusterBroadcastResult) else {}
            return {
                "clients": {c: d.status.value for c, d in sorted(result.deliveries.items())},
                "nodes": {
                    n: f"answered={o.answered} clients={o.clients}" for n, o in nodes.items()
                },
            }
        if op == "list":
            return {"clients": {i.client_id: i.node for i in server.list_clients()}}
    except RpcError as exc:
        return {"error": f"{exc.code.name}: {exc.message}"}
    return {"error": f"unknown op {op!r}"}


async def serve(args: argparse.Namespace) -> None:
    server = Server(
        ServerConfig(
            host="127.0.0.1",
            port=0,
            cert_file=str(args.certs / "server.pem"),
            key_file=str(args.certs / "server.key"),
            cluster_nats_urls=tuple(args.nats.split(",")),
            cluster_name="demo",
            cluster_node_id=args.node_id,
            cluster_node_refresh=0.5,
            cluster_node_ttl=2.0,
            heartbeat_interval=1.0,
            heartbeat_check_interval=0.5,
            min_heartbeat_interval=0.5,
            admin_token=args.admin_token,
            push_timeout=5.0,
        )
    )

    async def demo(message: Message) -> bytes:
        return json.dumps(await act(server, json.loads(message.payload))).encode()

    server.register_handler("demo", demo)
    await server.start()
    print(f"listening {server.port}", flush=True)
    await asyncio.Event().wait()  # until stopped


def main() -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nats", required=True, help="comma-separated NATS URLs")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--certs", type=Path, required=True)
    parser.add_argument("--admin-token", default=None)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
