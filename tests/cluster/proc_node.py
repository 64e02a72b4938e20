"""A cluster node in its own process, for the multi-process tests (and the demo).

``python -m tests.cluster.proc_node --nats URL[,URL] --node-id a --port P`` serves a
node of cluster ``t`` and prints ``listening <port>`` once it has joined. A client may
drive it with untyped ``ctl`` messages (JSON in, JSON out): ``push``, ``async_send``,
``broadcast``, ``list``, ``stats``, and the streaming calls ``stream``, ``collect``,
``chat`` to a client's Echo service (see `handle`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

from echo.echo_pb2 import EchoRequest
from echo.echo_quicflow import EchoStub
from notify.notify_pb2 import Event
from notify.notify_quicflow import NotifyStub

from quicflow import RpcError, Server
from quicflow.cluster.node import ClusterBroadcastResult
from quicflow.dispatch import Message

from .nodes import node_config


def _error(exc: RpcError) -> dict[str, Any]:
    return {"error": exc.code.name, "message": exc.message}


async def handle(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    """Do what one control message asks, on this node."""
    op = request["op"]
    if op == "push":
        try:
            ack = await NotifyStub(server.client(request["to"])).deliver(
                Event(seq=request.get("seq", 0), delay_ms=request.get("delay_ms", 0)),
                timeout=request.get("timeout"),
            )
        except RpcError as exc:
            return _error(exc)
        return {"client_id": ack.client_id, "seq": ack.seq}
    if op == "async_send":
        try:
            promise = server.async_send(
                request["to"],
                lambda ch: NotifyStub(ch).deliver(
                    Event(seq=request.get("seq", 0), delay_ms=request.get("delay_ms", 0))
                ),
                timeout=request.get("timeout", 5.0),
            )
            ack = await promise
        except RpcError as exc:
            return _error(exc)
        return {"client_id": ack.client_id, "seq": ack.seq, "message_id": promise.message_id}
    if op == "broadcast":
        result = await server.broadcast(
            lambda ch: NotifyStub(ch).deliver(
                Event(seq=request.get("seq", 0), delay_ms=request.get("delay_ms", 0))
            ),
            labels=request.get("labels"),
            client_timeout=request.get("timeout", 2.0),
        )
        nodes = (
            {n: [o.answered, o.clients] for n, o in result.nodes.items()}
            if isinstance(result, ClusterBroadcastResult)
            else {}
        )
        return {
            "deliveries": {c: d.status.value for c, d in result.deliveries.items()},
            "nodes": nodes,
        }
    if op in ("stream", "collect", "chat"):
        return await _streaming(server, request)
    if op == "list":
        return {"clients": [[i.client_id, i.node] for i in server.list_clients()]}
    if op == "stats":
        assert server.cluster is not None
        return {"stats": server.cluster.stats.as_dict(), "nodes": server.cluster.nodes()}
    return {"error": "INVALID_ARGUMENT", "message": f"unknown op {op!r}"}


async def _streaming(server: Server, request: dict[str, Any]) -> dict[str, Any]:
    """One routed streaming call; ``cancel_after`` replies read, it is cancelled."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    stub = EchoStub(server.client(request["to"]))
    timeout = request.get("timeout", 5.0)
    texts: list[str] = request.get("texts", [])
    replies: list[str] = []
    op = request["op"]
    try:
        if op == "collect":
            pad = bytes(request.get("pad", 0))
            reply = await stub.collect(
                (EchoRequest(text=t, payload=pad) for t in texts), timeout=timeout
            )
            replies.append(reply.text)
        else:
            call = (
                stub.stream(
                    EchoRequest(
                        text=request.get("text", "x"),
                        repeat=request.get("repeat", 1),
                        delay_ms=request.get("delay_ms", 0),
                    ),
                    timeout=timeout,
                )
                if op == "stream"
                else stub.chat((EchoRequest(text=t) for t in texts), timeout=timeout)
            )
            cancel_after = request.get("cancel_after")
            async for item in call:
                replies.append(item.text)
                if cancel_after is not None and len(replies) >= cancel_after:
                    call.cancel()
    except RpcError as exc:
        return {**_error(exc), "replies": replies, "elapsed": loop.time() - start}
    return {"replies": replies, "elapsed": loop.time() - start}


async def serve(args: argparse.Namespace) -> None:
    urls = tuple(u for u in args.nats.split(",") if u)
    server = Server(
        node_config(
            urls,
            args.node_id,
            port=args.port,
            cert_file=str(args.certs / "server.pem"),
            key_file=str(args.certs / "server.key"),
            hold_max_count=args.hold,
            cluster_replicas=args.replicas,
            cluster_node_ttl=args.node_ttl,
            heartbeat_interval=0.5,
            heartbeat_check_interval=0.1,
            min_heartbeat_interval=0.1,
        )
    )

    async def ctl(message: Message) -> bytes:
        return json.dumps(await handle(server, json.loads(message.payload))).encode()

    server.register_handler("ctl", ctl)
    await server.start()
    assert server.cluster is not None
    print(f"listening {server.port}", flush=True)
    await asyncio.Event().wait()  # until killed


def main() -> None:
    """Parse arguments and serve until killed."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nats", required=True, help="comma-separated NATS URLs")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--certs", type=Path, required=True, help="dev_certs() directory")
    parser.add_argument("--hold", type=int, default=0, help="hold_max_count")
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--node-ttl", type=float, default=1.0)
    asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
