"""Cluster mode with in-process nodes on one real nats-server: the API works cluster-wide."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyStub

from quicflow import ClientNotConnected, RpcError, Server, StatusCode
from quicflow.admin import ADMIN_TOKEN_KEY, AdminStub, ListClientsRequest
from quicflow.cluster.natsserver import NatsServer
from quicflow.cluster.node import ClusterBroadcastResult
from quicflow.push import ClientChannel, DeliveryStatus

from .nodes import connect, node_pair, registered, start_node, until


async def test_push_to_a_client_on_another_node_gets_its_ack(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that node A's typed call reaches a client on node B and returns its reply."""
    a, b = two_nodes
    client, inbox = await connect(b.port, "c-1")
    try:
        await until(lambda: registered(a, "c-1", "b"))
        ack = await NotifyStub(a.client("c-1")).deliver(Event(seq=7, text="hi"))
        assert (ack.client_id, ack.seq) == ("c-1", 7)
        assert [e.text for e in inbox.events] == ["hi"]
        assert a.cluster is not None and a.cluster.stats.routed_out == 1
        assert b.cluster is not None and b.cluster.stats.routed_in == 1
        # On its own node the client takes the local path: no NATS hop either way.
        assert (await NotifyStub(b.client("c-1")).deliver(Event(seq=8))).seq == 8
        assert b.cluster.stats.routed_out == 0 and b.cluster.stats.routed_in == 1
        with pytest.raises(RpcError) as failed:
            await NotifyStub(a.client("c-1")).deliver(Event(topic="fail"))
        assert failed.value.code is StatusCode.FAILED_PRECONDITION
        assert "c-1 refuses" in failed.value.message
    finally:
        await client.close()


async def test_client_ids_with_subject_characters_are_routed(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that an id with '.', '*', '>' and spaces routes to that client and no other."""
    a, b = two_nodes
    odd = "x.y *> z"
    client, inbox = await connect(b.port, odd)
    other, other_inbox = await connect(b.port, "x")
    try:
        await until(lambda: registered(a, odd, "b") and registered(a, "x", "b"))
        ack = await NotifyStub(a.client(odd)).deliver(Event(seq=1))
        assert ack.client_id == odd
        assert len(inbox.events) == 1 and other_inbox.events == []
    finally:
        await client.close()
        await other.close()


async def test_unknown_client_fails_at_once(two_nodes: tuple[Server, Server]) -> None:
    """Check that a push to an id connected nowhere fails UNAVAILABLE without waiting."""
    a, _ = two_nodes
    loop = asyncio.get_running_loop()
    start = loop.time()
    with pytest.raises(ClientNotConnected):
        await NotifyStub(a.client("nobody")).deliver(Event(seq=1))
    assert loop.time() - start < 1.0
    with pytest.raises(ClientNotConnected):
        a.async_send("nobody", lambda ch: NotifyStub(ch).deliver(Event()))


async def test_list_and_info_are_cluster_wide(two_nodes: tuple[Server, Server]) -> None:
    """Check that list_clients on either node is the union, each client with its node."""
    a, b = two_nodes
    c1, _ = await connect(a.port, "c-1", labels={"zone": "x"})
    c2, _ = await connect(b.port, "c-2")
    try:
        await until(lambda: len(a.list_clients()) == 2 and len(b.list_clients()) == 2)
        assert [(i.client_id, i.node) for i in a.list_clients()] == [("c-1", "a"), ("c-2", "b")]
        assert [(i.client_id, i.node) for i in b.list_clients()] == [("c-1", "a"), ("c-2", "b")]
        info = b.get_client_info("c-1")
        assert info.node == "a" and dict(info.labels) == {"zone": "x"}
        await c1.close()
        await until(lambda: [i.client_id for i in b.list_clients()] == ["c-2"])
        with pytest.raises(ClientNotConnected):
            b.get_client_info("c-1")
    finally:
        await c1.close()
        await c2.close()


TOKEN = "admin-token-for-tests"


async def test_live_info_for_a_client_on_another_node(nats_server: NatsServer) -> None:
    """Check that fetch_client_info on node a asks node b for its client's live figures
    (calls, bytes, RTT, heartbeat: the registry has none of them), that fetch_clients and
    the admin service's rows carry them, and that a client connected nowhere is
    ClientNotConnected."""
    urls = (nats_server.url,)
    a = await start_node(urls, "a", admin_token=TOKEN)
    b = await start_node(urls, "b")
    remote, _ = await connect(b.port, "far", heartbeat_interval=0.2)
    admin, _ = await connect(a.port, "ops")
    try:
        await until(lambda: registered(a, "far", "b"))
        for seq in (1, 2, 3):
            await NotifyStub(a.client("far")).deliver(Event(seq=seq))
        await until(lambda: b.get_client_info("far").last_heartbeat is not None)
        assert a.get_client_info("far").calls_out == 0  # the registry's row
        info = await a.fetch_client_info("far")
        assert (info.client_id, info.node, info.calls_out) == ("far", "b", 3)
        assert info.rtt is not None and info.last_heartbeat is not None
        there = b.get_client_info("far")
        assert (info.connected_since, info.bytes_in, info.bytes_out) == (
            there.connected_since,
            there.bytes_in,
            there.bytes_out,
        )
        rows = {i.client_id: i for i in await a.fetch_clients()}
        assert rows.keys() == {"far", "ops"} and rows["far"].calls_out == 3
        assert rows["ops"].node == "a"
        reply = await AdminStub(admin).list_clients(
            ListClientsRequest(), metadata=[(ADMIN_TOKEN_KEY, TOKEN)]
        )
        listed = {e.client_id: e for e in reply.clients}
        assert (listed["far"].node, listed["far"].calls_out) == ("b", 3)
        assert listed["far"].rtt > 0
        with pytest.raises(ClientNotConnected):
            await a.fetch_client_info("nowhere")
    finally:
        await remote.close()
        await admin.close()
        await a.stop()
        await b.stop()


async def test_async_send_to_a_remote_client_resolves_with_its_ack(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that an acked send from A to a client on B resolves with the reply and its id."""
    a, b = two_nodes
    client, inbox = await connect(b.port, "c-1")
    try:
        await until(lambda: registered(a, "c-1", "b"))
        promise = a.async_send("c-1", lambda ch: NotifyStub(ch).deliver(Event(seq=3)))
        ack = await promise
        assert ack.seq == 3
        assert inbox.message_ids == [promise.message_id]
    finally:
        await client.close()


async def test_broadcast_reaches_every_node_with_labels(two_nodes: tuple[Server, Server]) -> None:
    """Check that a broadcast from A reports per client on both nodes, labels filtering."""
    a, b = two_nodes
    clients = [
        await connect(a.port, "a-1", labels={"k": "v"}),
        await connect(a.port, "a-2"),
        await connect(b.port, "b-1", labels={"k": "v"}),
        await connect(b.port, "b-2", labels={"k": "v"}),
    ]
    try:
        await until(lambda: len(a.list_clients()) == 4)
        result = await a.broadcast(lambda ch: NotifyStub(ch).deliver(Event(seq=5)))
        assert isinstance(result, ClusterBroadcastResult)
        assert sorted(result.deliveries) == ["a-1", "a-2", "b-1", "b-2"]
        assert result.delivered == 4
        assert result.deliveries["b-2"].reply is not None
        assert result.deliveries["b-2"].reply.client_id == "b-2"
        assert {n: o.clients for n, o in result.nodes.items()} == {"a": 2, "b": 2}
        filtered = await a.broadcast(
            lambda ch: NotifyStub(ch).deliver(Event(seq=6)), labels={"k": "v"}
        )
        assert sorted(filtered.deliveries) == ["a-1", "b-1", "b-2"]
        assert all(d.status is DeliveryStatus.DELIVERED for d in filtered.deliveries.values())
    finally:
        for client, _ in clients:
            await client.close()


async def test_same_id_on_another_node_replaces_the_old_session(
    two_nodes: tuple[Server, Server],
) -> None:
    """Check that a client id connecting to B closes its session on A; routes go to B."""
    a, b = two_nodes
    old, old_inbox = await connect(a.port, "dup", reconnect=False)
    try:
        await until(lambda: registered(b, "dup", "a"))
        new, new_inbox = await connect(b.port, "dup")
        try:
            await until(lambda: "dup" not in a.sessions)
            await until(lambda: registered(a, "dup", "b"))
            ack = await NotifyStub(a.client("dup")).deliver(Event(seq=1))
            assert ack.seq == 1 and len(new_inbox.events) == 1 and old_inbox.events == []
            await asyncio.sleep(0.3)  # the old node's late unregister must not remove it
            assert registered(a, "dup", "b") and registered(b, "dup", "b")
        finally:
            await new.close()
    finally:
        await old.close()


async def test_held_send_is_delivered_where_the_client_comes_back(nats_server: NatsServer) -> None:
    """Check that an acked send to an absent client waits in JetStream and is delivered once,
    by the node the client connects to, resolving the sender's promise."""
    urls = (nats_server.url,)
    async with node_pair(urls, hold_max_count=10) as (a, b):
        promise = a.async_send("late", lambda ch: NotifyStub(ch).deliver(Event(seq=9)), timeout=5.0)
        await asyncio.sleep(0.2)
        assert not promise.done()
        assert a.cluster is not None
        await until(lambda: a.cluster is not None and a.cluster.stats.held == 1)
        client, inbox = await connect(b.port, "late")
        try:
            ack = await promise
            assert ack.seq == 9
            await asyncio.sleep(0.2)
            assert [e.seq for e in inbox.events] == [9]
            assert b.cluster is not None and b.cluster.stats.held_delivered == 1
        finally:
            await client.close()


async def test_hold_max_count_is_per_client_cluster_wide(nats_server: NatsServer) -> None:
    """Check that with hold_max_count=2, two sends to an absent client (from node a) are
    held, a third (from node b) fails ClientNotConnected at once, not at its deadline, and
    the two held ones are delivered when the client comes back."""
    urls = (nats_server.url,)
    async with node_pair(urls, hold_max_count=2) as (a, b):

        def deliver(seq: int) -> Callable[[ClientChannel], Awaitable[Ack]]:
            return lambda ch: NotifyStub(ch).deliver(Event(seq=seq))

        held = [a.async_send("away", deliver(n), timeout=5.0) for n in (1, 2)]
        await until(lambda: a.cluster is not None and a.cluster.stats.held == 2)
        loop = asyncio.get_running_loop()
        start = loop.time()
        third = b.async_send("away", lambda ch: NotifyStub(ch).deliver(Event(seq=3)), timeout=5.0)
        with pytest.raises(ClientNotConnected, match="hold slots are full"):
            await third
        assert loop.time() - start < 1.0
        client, inbox = await connect(b.port, "away")
        try:
            assert sorted([(await p).seq for p in held]) == [1, 2]
            assert sorted(e.seq for e in inbox.events) == [1, 2]
        finally:
            await client.close()


async def test_hold_max_age_bounds_a_cluster_held_send(nats_server: NatsServer) -> None:
    """Check that a held send whose client stays away fails ClientNotConnected after
    hold_max_age (0.5 s), well before its 5 s deadline, and is not delivered when the
    client comes back afterwards."""
    urls = (nats_server.url,)
    async with node_pair(urls, hold_max_count=10, hold_max_age=0.5) as (a, b):
        loop = asyncio.get_running_loop()
        start = loop.time()
        promise = a.async_send("gone", lambda ch: NotifyStub(ch).deliver(Event(seq=4)), timeout=5.0)
        with pytest.raises(ClientNotConnected, match=r"did not come back within 0\.5 s"):
            await promise
        assert 0.5 <= loop.time() - start < 2.0
        assert a.cluster is not None and a.cluster.stats.held_expired == 1
        client, inbox = await connect(b.port, "gone")
        try:
            await asyncio.sleep(0.3)
            assert inbox.events == []
            assert b.cluster is not None and b.cluster.stats.held_delivered == 0
        finally:
            await client.close()


async def test_nats_outage_fails_cluster_work_fast_and_recovers(nats_server: NatsServer) -> None:
    """Check that without NATS local pushes work and remote ones fail UNAVAILABLE at once,
    and that once NATS is back both nodes re-register their clients."""
    urls = (nats_server.url,)
    async with node_pair(urls) as (a, b):
        ca, _ = await connect(a.port, "ca")
        cb, _ = await connect(b.port, "cb")
        try:
            await until(lambda: len(a.list_clients()) == 2)
            nats_server.kill()
            await until(lambda: a.cluster is not None and not a.cluster.backend.connected)
            assert (await NotifyStub(a.client("ca")).deliver(Event(seq=1))).seq == 1
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(RpcError) as failed:
                await NotifyStub(a.client("cb")).deliver(Event(seq=2))
            assert failed.value.code is StatusCode.UNAVAILABLE
            assert loop.time() - start < 0.5
            assert [i.client_id for i in a.list_clients()] == ["ca"]
            nats_server.start()
            await until(lambda: len(a.list_clients()) == 2 and len(b.list_clients()) == 2, 10.0)
            assert (await NotifyStub(a.client("cb")).deliver(Event(seq=3))).seq == 3
        finally:
            await ca.close()
            await cb.close()


async def test_clients_move_to_the_next_node_when_theirs_stops(nats_server: NatsServer) -> None:
    """Check that a client given both nodes reconnects to the other when its node stops,
    and is then listed and reachable there."""
    urls = (nats_server.url,)
    async with node_pair(urls) as (a, b):
        client, inbox = await connect(a.port, "mover", servers=[f"127.0.0.1:{b.port}"])
        try:
            await until(lambda: registered(b, "mover", "a"))
            await a.stop(grace=0.1)
            await until(lambda: registered(b, "mover", "b"))
            assert client.server_address == ("127.0.0.1", b.port)
            assert [i.client_id for i in b.list_clients()] == ["mover"]
            ack = await NotifyStub(b.client("mover")).deliver(Event(seq=4))
            assert ack.seq == 4 and len(inbox.events) == 1
        finally:
            await client.close()


async def test_status_and_prometheus_show_the_cluster(two_nodes: tuple[Server, Server]) -> None:
    """Check that /api/status lists the nodes, each client's node and the cross-node
    traffic, and that Prometheus exposes the cluster counters."""
    from quicflow.http import status_document
    from quicflow.prometheus import exposition, registry_for

    a, b = two_nodes
    client, _ = await connect(b.port, "c-1")
    try:
        await until(lambda: registered(a, "c-1", "b"))
        await NotifyStub(a.client("c-1")).deliver(Event(seq=1))
        doc = status_document(a)
        cluster = doc["cluster"]
        assert cluster["node"] == "a" and cluster["connected"] is True
        assert [(n["node"], n["clients"], n["self"]) for n in cluster["nodes"]] == [
            ("a", 0, True),
            ("b", 1, False),
        ]
        assert cluster["traffic"]["routed_out"] == 1
        assert [(c["client_id"], c["node"]) for c in doc["clients"]] == [("c-1", "b")]
        text = exposition(registry_for(a)).decode()
        assert 'quicflow_cluster_traffic_total{event="routed_out"} 1.0' in text
        assert "quicflow_cluster_nodes 2.0" in text
        exported = set(re.findall(r"^(quicflow_cluster_[a-z_]+?)(?:\{| )", text, re.MULTILINE))
        page = (Path(__file__).parents[2] / "docs" / "observability.md").read_text()
        documented = set(re.findall(r"^\| `(quicflow_cluster_[a-z_]+)` \|", page, re.MULTILINE))
        assert exported == documented
    finally:
        await client.close()


async def test_streaming_calls_reach_other_nodes(two_nodes: tuple[Server, Server]) -> None:
    """Check that a client-streaming call to a client on another node is routed (once
    UNIMPLEMENTED), and a broadcast of one reaches the clients of both nodes."""
    a, b = two_nodes
    here, _ = await connect(a.port, "here")
    there, _ = await connect(b.port, "there")
    try:
        await until(lambda: len(a.list_clients()) == 2)
        ack = await NotifyStub(a.client("there")).feed(iter([Event(seq=1), Event(seq=4)]))
        assert (ack.client_id, ack.seq) == ("there", 5)
        result = await a.broadcast(lambda ch: NotifyStub(ch).feed(iter([Event(seq=2)])))
        assert result.deliveries["here"].status is DeliveryStatus.DELIVERED
        assert result.deliveries["there"].status is DeliveryStatus.DELIVERED
        reply = result.deliveries["there"].reply
        assert reply is not None and (reply.client_id, reply.seq) == ("there", 2)
    finally:
        await here.close()
        await there.close()
