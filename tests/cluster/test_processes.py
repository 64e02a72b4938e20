"""Cluster mode with every node in its own process and real nats-server processes.

Each test starts NATS and three nodes (a, b, c), connects clients in this
process to chosen nodes, and drives the nodes through control messages.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from quicflow import Client
from quicflow.cluster.natsserver import NatsCluster, NatsServer

from .nodes import Inbox, StreamEcho, client_config, until
from .procs import NodeProc

pytestmark = pytest.mark.faults

NODE_TTL = 1.0  # tests/cluster/nodes.py node_config


async def _nodes(urls: tuple[str, ...], **options: object) -> list[NodeProc]:
    return list(
        await asyncio.gather(*(NodeProc(n, urls, **options).start() for n in ("a", "b", "c")))
    )


@pytest.fixture
async def nodes(nats_server: NatsServer) -> AsyncIterator[list[NodeProc]]:
    """Nodes a, b, c (child processes) on one nats-server, holding on."""
    started = await _nodes((nats_server.url,), hold=10)
    try:
        yield started
    finally:
        await asyncio.gather(*(n.close() for n in started))


class Clients:
    """Clients of this test, closed at its end."""

    def __init__(self) -> None:
        self.all: list[Client] = []

    async def connect(
        self,
        node: NodeProc,
        client_id: str,
        *more: NodeProc,
        echo: StreamEcho | None = None,
        **overrides: object,
    ) -> tuple[Client, Inbox]:
        inbox = Inbox(client_id)
        config = client_config(
            node.port,
            client_id,
            servers=[f"127.0.0.1:{m.port}" for m in more],
            heartbeat_interval=0.2,
            heartbeat_timeout=0.3,
            labels={"role": "c"},
            **overrides,
        )
        client = Client(config)
        client.add_service(inbox)
        if echo is not None:
            client.add_service(echo)
        await client.connect()
        self.all.append(client)
        return client, inbox

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.all))


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """Clients made by the test, closed after it."""
    made = Clients()
    try:
        yield made
    finally:
        await made.close()


async def _listed(node: NodeProc, expected: list[tuple[str, str]], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (seen := await node.listing()) != expected:
        assert loop.time() < deadline, f"{node.node_id} lists {seen}, expected {expected}"
        await asyncio.sleep(0.05)


async def test_push_from_a_to_a_client_on_c_with_ack(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that node a's push reaches the client on node c and returns its ack."""
    a, _, c = nodes
    _, inbox = await clients.connect(c, "on-c")
    await _listed(a, [("on-c", "c")])
    answer = await a.do("push", to="on-c", seq=11)
    assert answer == {"client_id": "on-c", "seq": 11}
    assert [e.seq for e in inbox.events] == [11]
    assert (await a.do("push", to="nowhere"))["error"] == "UNAVAILABLE"


@pytest.mark.serial  # measures a real-time bound
async def test_list_is_the_union_and_a_dead_nodes_clients_go(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that every node lists the union, and after c is SIGKILLed its clients leave
    a's listing within the node TTL (plus refresh slack)."""
    a, b, c = nodes
    await clients.connect(a, "x-a", reconnect=False)
    await clients.connect(b, "x-b", reconnect=False)
    await clients.connect(c, "x-c1", reconnect=False)
    await clients.connect(c, "x-c2", reconnect=False)
    union = [("x-a", "a"), ("x-b", "b"), ("x-c1", "c"), ("x-c2", "c")]
    for node in nodes:
        await _listed(node, union)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    c.kill()
    await _listed(a, [("x-a", "a"), ("x-b", "b")], timeout=NODE_TTL + 2.0)
    assert loop.time() - killed < NODE_TTL + 1.0
    await _listed(b, [("x-a", "a"), ("x-b", "b")], timeout=1.0)


@pytest.mark.serial  # measures a real-time bound
async def test_broadcast_across_three_nodes_with_one_killed_mid_way(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that a broadcast with node c SIGKILLed while its clients work returns by its
    deadline, delivered on a and b, with c reported missing and its clients timed out."""
    a, b, c = nodes
    for node, count in ((a, 2), (b, 2), (c, 2)):
        for i in range(count):
            await clients.connect(node, f"{node.node_id}-{i}", reconnect=False)
    await _listed(a, sorted((f"{n}-{i}", n) for n in "abc" for i in range(2)))
    loop = asyncio.get_running_loop()
    start = loop.time()
    broadcast = asyncio.ensure_future(
        a.do("broadcast", 30.0, labels={"role": "c"}, seq=1, delay_ms=300, timeout=1.0)
    )
    await asyncio.sleep(0.1)
    c.kill()
    result = await broadcast
    elapsed = loop.time() - start
    assert elapsed < 1.0 + 1.0 + 1.0  # per-client timeout + broadcast grace + slack
    deliveries = result["deliveries"]
    assert {k: v for k, v in deliveries.items() if k[0] in "ab"} == {
        "a-0": "delivered",
        "a-1": "delivered",
        "b-0": "delivered",
        "b-1": "delivered",
    }
    assert deliveries["c-0"] == deliveries["c-1"] == "timed_out"
    assert result["nodes"] == {"a": [True, 2], "b": [True, 2], "c": [False, 2]}


async def test_async_send_while_the_target_moves_is_delivered_once(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that an acked send made while its client's node dies (mid-handler) resolves
    once the client is on another node, and the handler ran once per message id."""
    a, b, c = nodes
    client, inbox = await clients.connect(b, "mover", c)
    await _listed(a, [("mover", "b")])
    send = asyncio.ensure_future(a.do("async_send", to="mover", seq=5, delay_ms=200, timeout=8.0))
    await until(lambda: len(inbox.events) == 1)
    b.kill()  # the reply to the first attempt is lost with b
    answer = await send
    assert answer["seq"] == 5 and answer["client_id"] == "mover"
    assert client.server_address[1] == c.port
    assert len(set(inbox.message_ids)) == 1 and inbox.message_ids[0] == answer["message_id"]
    assert [e.seq for e in inbox.events] == [5]  # the repeat was answered from the cache


async def test_duplicate_client_id_on_two_nodes(nodes: list[NodeProc], clients: Clients) -> None:
    """Check that the same id connecting to b while on a ends a's session; every node then
    routes to b, and a's late unregister does not remove b's registration."""
    a, b, c = nodes
    first, first_inbox = await clients.connect(a, "twin", reconnect=False)
    await _listed(c, [("twin", "a")])
    _, second_inbox = await clients.connect(b, "twin")
    await _listed(c, [("twin", "b")])
    await until(lambda: first.state.name == "CLOSED")
    assert (await c.do("push", to="twin", seq=2))["seq"] == 2
    assert [e.seq for e in second_inbox.events] == [2] and first_inbox.events == []
    await asyncio.sleep(0.5)
    for node in nodes:
        assert await node.listing() == [("twin", "b")]


async def test_one_nats_server_killed_in_a_three_server_nats_cluster(
    nats_cluster: NatsCluster, clients: Clients
) -> None:
    """Check that with NATS as three servers (replicas 3), SIGKILLing one leaves routing,
    registration and listings working."""
    # The default node TTL (3 s): a NATS failover (a few seconds of JetStream leader
    # election) must not make the nodes declare each other dead.
    started = await _nodes(nats_cluster.urls, replicas=3, node_ttl=3.0)
    try:
        a, b, c = started
        await clients.connect(c, "before")
        # A fresh NATS cluster elects a leader per replicated bucket first: allow for it.
        await _listed(a, [("before", "c")], timeout=15.0)
        nats_cluster.servers[0].kill()
        await asyncio.sleep(0.2)
        answer = {}
        for _ in range(50):  # a node whose NATS server died reconnects to another one
            answer = await a.do("push", to="before", seq=1)
            if "seq" in answer:
                break
            await asyncio.sleep(0.1)
        assert answer.get("seq") == 1, answer
        await clients.connect(b, "after")
        await _listed(a, [("after", "b"), ("before", "c")], timeout=15.0)
        assert (await c.do("push", to="after", seq=2))["seq"] == 2
    finally:
        await asyncio.gather(*(n.close() for n in started))


async def test_all_nats_down_and_back(
    nats_server: NatsServer, nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that with NATS gone local pushes work and cross-node ones fail UNAVAILABLE
    fast, and that once NATS is back (same port and store) everything is registered again."""
    a, b, _ = nodes
    await clients.connect(a, "here")
    await clients.connect(b, "there")
    await _listed(a, [("here", "a"), ("there", "b")])
    nats_server.kill()
    await asyncio.sleep(0.3)
    assert (await a.do("push", to="here", seq=1))["seq"] == 1
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert (await a.do("push", to="there", seq=2))["error"] == "UNAVAILABLE"
    assert loop.time() - start < 0.5
    assert await a.listing() == [("here", "a")]
    nats_server.start()
    await _listed(a, [("here", "a"), ("there", "b")], timeout=10.0)
    await _listed(b, [("here", "a"), ("there", "b")], timeout=5.0)
    assert (await a.do("push", to="there", seq=3))["seq"] == 3


async def test_streaming_calls_from_a_to_a_client_on_c(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that server-streaming, client-streaming and bidirectional calls made on node a
    reach the client on node c and every reply comes back in order."""
    a, _, c = nodes
    echo = StreamEcho()
    await clients.connect(c, "echo-c", echo=echo)
    await _listed(a, [("echo-c", "c")])
    answer = await a.do("stream", to="echo-c", text="s", repeat=50)
    assert answer["replies"] == ["s"] * 50 and "error" not in answer
    texts = [f"r{i}" for i in range(40)]  # 40 x 20 kB: over the 256 KiB credit window
    answer = await a.do("collect", to="echo-c", texts=texts, pad=20_000)
    assert answer["replies"] == [",".join(texts)]
    echo.received.clear()
    answer = await a.do("chat", to="echo-c", texts=["a", "b", "c"])
    assert answer["replies"] == ["A", "B", "C"] and echo.received == ["a", "b", "c"]
    answer = await a.do("chat", to="echo-c", texts=["a", "stop"])
    assert answer["error"] == "FAILED_PRECONDITION" and answer["replies"] == ["A"]
    assert (await a.do("stream", to="nowhere"))["error"] == "UNAVAILABLE"


async def test_cancel_mid_stream_resets_the_stream_on_the_owning_node(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that a routed stream cancelled on node a (after 3 replies) cancels the
    handler of the client on node c."""
    a, _, c = nodes
    echo = StreamEcho()
    await clients.connect(c, "echo-c", echo=echo)
    await _listed(a, [("echo-c", "c")])
    answer = await a.do("stream", to="echo-c", repeat=1000, delay_ms=20, cancel_after=3)
    assert (answer["error"], answer["replies"]) == ("CANCELLED", ["x", "x", "x"])
    async with asyncio.timeout(2.0):
        await echo.cancelled.wait()
    assert echo.yielded < 100


async def test_deadline_of_a_routed_stream_travels(nodes: list[NodeProc], clients: Clients) -> None:
    """Check that a routed stream's deadline ends it DEADLINE_EXCEEDED on node a and the
    client's handler on node c sees the deadline and is cancelled."""
    a, _, c = nodes
    echo = StreamEcho()
    await clients.connect(c, "echo-c", echo=echo)
    await _listed(a, [("echo-c", "c")])
    answer = await a.do("stream", to="echo-c", repeat=1000, delay_ms=50, timeout=0.5)
    assert answer["error"] == "DEADLINE_EXCEEDED" and 0 < len(answer["replies"]) < 20
    assert echo.time_remaining is not None and 0 < echo.time_remaining <= 0.5
    async with asyncio.timeout(2.0):
        await echo.cancelled.wait()


@pytest.mark.serial  # measures a real-time bound
async def test_owning_node_killed_mid_stream_is_unavailable_within_the_ttl(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that SIGKILLing node c while a routed stream from a to c's client runs ends the
    stream UNAVAILABLE on a within the node TTL (plus refresh slack), long before its
    deadline, with the replies that arrived before."""
    a, _, c = nodes
    echo = StreamEcho()
    await clients.connect(c, "echo-c", echo=echo, reconnect=False)
    await _listed(a, [("echo-c", "c")])
    stream = asyncio.ensure_future(
        a.do("stream", 30.0, to="echo-c", repeat=100_000, delay_ms=10, timeout=20.0)
    )
    await until(lambda: echo.yielded >= 5)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    c.kill()
    answer = await stream
    assert answer["error"] == "UNAVAILABLE", answer
    assert "died mid-stream" in answer["message"]
    assert loop.time() - killed < NODE_TTL + 1.0
    assert len(answer["replies"]) >= 5


@pytest.mark.serial  # measures a real-time bound
async def test_calling_node_killed_mid_stream_cancels_the_clients_handler(
    nodes: list[NodeProc], clients: Clients
) -> None:
    """Check that SIGKILLing node a while its routed stream to c's client runs makes node c
    cancel the stream within the node TTL (plus refresh slack), long before the stream's
    deadline: the client's handler is cancelled and stops yielding."""
    a, _, c = nodes
    echo = StreamEcho()
    await clients.connect(c, "echo-c", echo=echo)
    await _listed(a, [("echo-c", "c")])
    asyncio.ensure_future(
        a.do("stream", 30.0, to="echo-c", repeat=100_000, delay_ms=10, timeout=20.0)
    ).add_done_callback(lambda f: f.exception())  # a dies: its answer never comes
    await until(lambda: echo.yielded >= 5)
    loop = asyncio.get_running_loop()
    killed = loop.time()
    a.kill()
    async with asyncio.timeout(NODE_TTL + 2.0):
        await echo.cancelled.wait()
    assert loop.time() - killed < NODE_TTL + 1.0
    stopped = echo.yielded
    await asyncio.sleep(0.2)
    assert echo.yielded == stopped
