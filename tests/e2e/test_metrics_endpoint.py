"""Metrics end to end: real calls, a real HTTP scrape of /metrics, prometheus-client's parser."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoStub
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub
from prometheus_client.parser import text_string_to_metric_families

from quicflow import Cardinality, Client, Method, RpcError, ServicerContext, StatusCode
from quicflow.metrics import LATENCY_BUCKETS
from quicflow.push import ClientChannel
from quicflow.testing import ClientFor

from .service import TestEcho

ROOT = Path(__file__).resolve().parents[2]
SAY = "/echo.Echo/Say"
NOPE = Method(
    "/echo.Echo/Nope",
    Cardinality.UNARY_UNARY,
    EchoRequest.SerializeToString,
    EchoRequest.FromString,
    EchoReply.SerializeToString,
    EchoReply.FromString,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Inbox(NotifyBase):
    """Acks pushed events; refuses topic ``fail``."""

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        if request.topic == "fail":
            raise RpcError(StatusCode.FAILED_PRECONDITION, "refused")
        return Ack(client_id="c", seq=request.seq)

    async def feed(self, requests: object, context: ServicerContext) -> Ack:
        raise RpcError(StatusCode.UNIMPLEMENTED, "no feed")


async def http_get(port: int, path: str, method: str = "GET", extra: str = "") -> tuple[int, bytes]:
    """One real HTTP/1.1 request over TCP; returns (status, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n{extra}\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def scrape(port: int) -> tuple[Samples, set[str], str]:
    """Scrape /metrics and parse it with prometheus-client's parser."""
    status, body = await http_get(port, "/metrics")
    assert status == 200
    text = body.decode()
    samples: Samples = {}
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name + ("_total" if family.type == "counter" else ""))
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples, names, text


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scrape_counts_known_calls_and_agrees_with_get_metrics() -> None:
    """Check that /metrics, scraped over HTTP during traffic, counts exactly the calls made
    (by method and code, unknown routes under one label), has non-zero latency buckets, and
    that server.get_metrics() and client.get_metrics() agree with it."""
    harness = ClientFor([TestEcho()], server_options={"metrics_port": 0})
    async with harness as client:
        server = harness.server
        port = server.metrics_port
        assert port is not None and port > 0
        stub = EchoStub(client)
        for i in range(5):
            assert (await stub.say(EchoRequest(text=f"hi{i}"))).text == f"hi{i}"
        for _ in range(2):
            with pytest.raises(RpcError):
                await stub.say(EchoRequest(text="abort:NOT_FOUND"))
        with pytest.raises(RpcError) as info:
            await client.unary_unary(NOPE, EchoRequest(text="x"))
        assert info.value.code is StatusCode.UNIMPLEMENTED
        replies = [r async for r in stub.stream(EchoRequest(text="s", repeat=3))]
        assert len(replies) == 3

        # Push: one client serving Notify; one acked, one refused; a broadcast; a promise.
        pushed = Client(harness.client_config(client_id="inbox"))
        pushed.add_service(Inbox())
        await pushed.connect()
        try:
            notify = NotifyStub(server.client("inbox"))
            await notify.deliver(Event(seq=1))
            with pytest.raises(RpcError):
                await notify.deliver(Event(topic="fail"))

            async def send(channel: ClientChannel) -> Ack:
                return await NotifyStub(channel).deliver(Event(seq=2))

            result = await server.broadcast(send, labels={})
            assert len(result) == 2 and result.delivered == 1 and result.failed == 1
            await server.async_send("inbox", send)

            samples, _, text = await scrape(port)
        finally:
            await pushed.close()

        assert value(samples, "quicflow_connected_clients") == 2
        assert value(samples, "quicflow_connects_total") == 2
        assert value(samples, "quicflow_server_started_total", method=SAY) == 7
        assert value(samples, "quicflow_server_handled_total", method=SAY, code="OK") == 5
        assert value(samples, "quicflow_server_handled_total", method=SAY, code="NOT_FOUND") == 2
        assert (
            value(samples, "quicflow_server_handled_total", method="unknown", code="UNIMPLEMENTED")
            == 1
        )
        assert "/echo.Echo/Nope" not in text  # no label for a route nobody serves
        assert (
            value(samples, "quicflow_server_handled_total", method="/echo.Echo/Stream", code="OK")
            == 1
        )
        assert (
            value(samples, "quicflow_server_messages_sent_total", method="/echo.Echo/Stream") == 3
        )
        assert value(samples, "quicflow_server_messages_received_total", method=SAY) == 7
        assert value(samples, "quicflow_server_received_bytes_total", method=SAY) > 0
        # The latency histogram: 7 Say calls, cumulative buckets, some finite bucket non-zero.
        assert value(samples, "quicflow_server_handling_seconds_count", method=SAY) == 7
        assert value(samples, "quicflow_server_handling_seconds_bucket", method=SAY, le="+Inf") == 7
        finite = [
            value(samples, "quicflow_server_handling_seconds_bucket", method=SAY, le=str(b))
            for b in LATENCY_BUCKETS
        ]
        assert finite == sorted(finite) and finite[-1] == 7 and any(n > 0 for n in finite)
        assert value(samples, "quicflow_server_handling_seconds_sum", method=SAY) > 0
        # Pushes: two direct, two broadcast sends (one to each client), one acked send.
        deliver, refused = "/notify.Notify/Deliver", "FAILED_PRECONDITION"
        assert value(samples, "quicflow_push_started_total", method=deliver) == 5
        assert value(samples, "quicflow_push_handled_total", method=deliver, code="OK") == 3
        assert value(samples, "quicflow_push_handled_total", method=deliver, code=refused) == 1
        assert (
            value(samples, "quicflow_push_handled_total", method=deliver, code="UNIMPLEMENTED") == 1
        )
        assert value(samples, "quicflow_broadcasts_total") == 1
        assert value(samples, "quicflow_broadcast_deliveries_total", outcome="delivered") == 1
        assert value(samples, "quicflow_broadcast_deliveries_total", outcome="failed") == 1
        assert value(samples, "quicflow_promises_settled_total", outcome="resolved") == 1
        assert value(samples, "quicflow_promises_pending") == 0
        assert value(samples, "quicflow_dispatcher_queue_depth") == 0
        assert not any("client_id" in dict(labels) for _, labels in samples)

        snap = server.get_metrics()
        say = snap.handled[SAY]
        assert say.started == 7 and dict(say.finished) == {"OK": 5, "NOT_FOUND": 2}
        assert say.latency.count == 7 and say.latency.p50 is not None and say.latency.p50 > 0
        assert snap.handled["unknown"].finished == {"UNIMPLEMENTED": 1}
        assert snap.handled_latency.p99 is not None
        assert snap.connected_clients == 1  # the inbox client has left since
        assert (snap.connects, snap.disconnects) == (2, 1)
        assert snap.made[deliver].started == 5
        assert snap.promises_resolved == 1 and snap.broadcasts == 1

        mine = client.get_metrics()
        made = mine.made[SAY]
        assert made.started == 7 and dict(made.finished) == {"OK": 5, "NOT_FOUND": 2}
        assert mine.made["/echo.Echo/Nope"].finished == {"UNIMPLEMENTED": 1}
        assert mine.made["/echo.Echo/Stream"].messages_received == 3
        assert made.messages_sent == say.messages_received
        assert made.bytes_sent == say.bytes_received
        assert mine.made_latency.count == 9 and mine.connects == 1 and mine.connected_clients == 1


async def test_http_endpoint_refuses_what_it_does_not_serve() -> None:
    """Check 404 for unknown paths, 405 for other methods, 431 for a huge head, and that two
    servers in one process keep separate registries."""
    first = ClientFor([TestEcho()], server_options={"metrics_port": 0})
    second = ClientFor([], server_options={"metrics_port": 0})
    async with first as client, second:
        await EchoStub(client).say(EchoRequest(text="only on the first"))
        port = first.server.metrics_port
        assert port is not None
        status, body = await http_get(port, "/nope")
        assert status == 404 and b"/nope" in body
        status, body = await http_get(port, "/metrics", method="POST")
        assert status == 405 and b"GET" in body
        status, _ = await http_get(port, "/metrics", extra="X-Big: " + "a" * 10_000 + "\r\n")
        assert status == 431
        status, body = await http_get(port, "/metrics", method="HEAD")
        assert status == 200 and body == b""
        samples, _, _ = await scrape(port)
        assert value(samples, "quicflow_server_started_total", method=SAY) == 1
        other_port = second.server.metrics_port
        assert other_port is not None and other_port != port
        other, _, _ = await scrape(other_port)
        assert value(other, "quicflow_server_started_total", method=SAY) == 0
        assert value(other, "quicflow_connected_clients") == 1
    assert first.server.metrics_port is None  # closed with the server


async def test_metrics_off_records_nothing() -> None:
    """Check that metrics=False leaves get_metrics with gauges only and enabled False."""
    harness = ClientFor(
        [TestEcho()], server_options={"metrics": False}, client_options={"metrics": False}
    )
    async with harness as client:
        await EchoStub(client).say(EchoRequest(text="x"))
        snap = harness.server.get_metrics()
        assert not snap.enabled and snap.handled == {} and snap.connected_clients == 1
        assert client.get_metrics().made == {} and client.metrics is None


async def test_observability_doc_lists_exactly_the_exported_metrics() -> None:
    """Check that the metric table in docs/observability.md names exactly what /metrics
    exports, so the doc cannot drift from the code."""
    harness = ClientFor([TestEcho()], server_options={"metrics_port": 0})
    async with harness:
        port = harness.server.metrics_port
        assert port is not None
        _, names, _ = await scrape(port)
    doc = (ROOT / "docs" / "observability.md").read_text()
    table = set(re.findall(r"^\| `(quicflow_[a-z_]+)` \|", doc, re.MULTILINE))
    # Cluster mode's metrics exist only on a node in a cluster (tests/cluster checks them).
    assert {n for n in table if not n.startswith("quicflow_cluster_")} == names


async def test_metrics_port_in_use_fails_start_and_releases_everything() -> None:
    """Check that a metrics_port already taken makes start() raise OSError and leaves the
    server unstarted (QUIC port released, no sampling timer)."""
    import socket

    from quicflow import UsageError

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        busy = taken.getsockname()[1]
        harness = ClientFor([TestEcho()], server_options={"metrics_port": busy})
        with pytest.raises(OSError):
            await harness.server.start()
        with pytest.raises(UsageError):
            _ = harness.server.port
        metrics = harness.server.metrics
        assert metrics is not None and metrics._timer is None
    finally:
        taken.close()
