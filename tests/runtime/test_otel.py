"""`quicflow.otel` over real QUIC, read back through the OpenTelemetry SDK's in-memory exporter
and metric reader: spans for the four call kinds on both sides, their parent/child links
across the call, statuses, gRFC A66 metrics, and push calls (the server calling a client)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from opentelemetry.trace import StatusCode as SpanStatus

from quicflow import Client, RpcError, ServicerContext, StatusCode
from quicflow.otel import OpenTelemetryClientInterceptor, OpenTelemetryServerInterceptor
from quicflow.testing import ClientFor

TARGET = "quicflow://127.0.0.1"


@dataclass
class Telemetry:
    """One tracer and meter provider, with what they collected."""

    tracer_provider: TracerProvider
    spans: InMemorySpanExporter
    meter_provider: MeterProvider
    reader: InMemoryMetricReader

    def client_half(self) -> OpenTelemetryClientInterceptor:
        return OpenTelemetryClientInterceptor(
            target=TARGET,
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
        )

    def server_half(self) -> OpenTelemetryServerInterceptor:
        return OpenTelemetryServerInterceptor(
            tracer_provider=self.tracer_provider, meter_provider=self.meter_provider
        )

    def finished(self, name: str | None = None) -> list[ReadableSpan]:
        return [s for s in self.spans.get_finished_spans() if name is None or s.name == name]

    def metrics(self) -> dict[str, list[Any]]:
        """Metric name -> its data points."""
        data = self.reader.get_metrics_data()
        out: dict[str, list[Any]] = {}
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    out[metric.name] = list(metric.data.data_points)
        return out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Telemetry(tracer_provider, spans, meter_provider, reader)
    meter_provider.shutdown()
    tracer_provider.shutdown()


class TracedEcho(EchoBase):
    """Echo whose handlers start a span of their own ("work"), and fail on request."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.tracer = telemetry.tracer_provider.get_tracer("test")

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        with self.tracer.start_as_current_span("work"):
            if request.text.startswith("abort:"):
                await context.abort(StatusCode[request.text[6:]], "told to")
            if request.text == "raise":
                raise ValueError("boom")
            return EchoReply(text=request.text)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        for i in range(request.repeat):
            yield EchoReply(text=request.text, index=i)

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        return EchoReply(text=",".join([r.text async for r in requests]))

    async def chat(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        async for request in requests:
            yield EchoReply(text=request.text.upper())


def harness(telemetry: Telemetry) -> ClientFor:
    return ClientFor(
        [TracedEcho(telemetry)],
        server_options={"interceptors": [telemetry.server_half()]},
        client_options={"interceptors": [telemetry.client_half()]},
    )


def assert_linked(parent: ReadableSpan, client: ReadableSpan, server: ReadableSpan) -> None:
    """``client`` is ``parent``'s child and ``server`` is ``client``'s, in one trace."""
    assert client.context is not None and server.context is not None
    assert parent.context is not None
    assert client.parent is not None and client.parent.span_id == parent.context.span_id
    assert server.parent is not None and server.parent.span_id == client.context.span_id
    assert server.parent.is_remote
    assert client.context.trace_id == server.context.trace_id == parent.context.trace_id


async def test_four_call_kinds_make_linked_client_and_server_spans(telemetry: Telemetry) -> None:
    """Check that each call kind makes a CLIENT span under the caller's span and a SERVER
    span under the client span (through traceparent metadata), named and attributed per the
    RPC conventions, and that a handler's own span is the server span's child."""
    tracer = telemetry.tracer_provider.get_tracer("test")
    async with harness(telemetry) as client:
        stub = EchoStub(client)
        with tracer.start_as_current_span("parent"):
            assert (await stub.say(EchoRequest(text="hi"))).text == "hi"
            replies = [r.index async for r in stub.stream(EchoRequest(text="s", repeat=3))]
            assert replies == [0, 1, 2]
            reply = await stub.collect([EchoRequest(text="a"), EchoRequest(text="b")])
            assert reply.text == "a,b"
            assert [r.text async for r in stub.chat([EchoRequest(text="x")])] == ["X"]
    (parent,) = telemetry.finished("parent")
    for method in ("Say", "Stream", "Collect", "Chat"):
        spans = telemetry.finished(f"echo.Echo/{method}")
        (client_span,) = [s for s in spans if s.kind is SpanKind.CLIENT]
        (server_span,) = [s for s in spans if s.kind is SpanKind.SERVER]
        assert_linked(parent, client_span, server_span)
        for span in (client_span, server_span):
            assert dict(span.attributes or {}) == {
                "rpc.system": "quicflow",
                "rpc.service": "echo.Echo",
                "rpc.method": method,
                "rpc.grpc.status_code": 0,
                "rpc.response.status_code": "OK",
            }
            assert span.status.status_code is SpanStatus.UNSET
    (work,) = telemetry.finished("work")
    (say_server,) = [s for s in telemetry.finished("echo.Echo/Say") if s.kind is SpanKind.SERVER]
    assert work.parent is not None and say_server.context is not None
    assert work.parent.span_id == say_server.context.span_id


async def test_error_statuses_mark_spans_as_the_conventions_say(telemetry: Telemetry) -> None:
    """Check that NOT_FOUND marks only the client span as an error and UNKNOWN (a handler
    that raised) both, each with its status code."""
    async with harness(telemetry) as client:
        stub = EchoStub(client)
        for text, code in (
            ("abort:NOT_FOUND", StatusCode.NOT_FOUND),
            ("raise", StatusCode.UNKNOWN),
        ):
            with pytest.raises(RpcError) as info:
                await stub.say(EchoRequest(text=text))
            assert info.value.code is code
    client_spans = [s for s in telemetry.finished() if s.kind is SpanKind.CLIENT]
    server_spans = [s for s in telemetry.finished() if s.kind is SpanKind.SERVER]
    assert [(s.status.status_code, s.status.description) for s in client_spans] == [
        (SpanStatus.ERROR, "NOT_FOUND: told to"),
        (SpanStatus.ERROR, "UNKNOWN: unexpected ValueError in the handler"),
    ]
    assert [s.status.status_code for s in server_spans] == [SpanStatus.UNSET, SpanStatus.ERROR]
    for spans in (client_spans, server_spans):
        assert [(s.attributes or {})["rpc.grpc.status_code"] for s in spans] == [5, 2]


async def test_a66_metrics_count_calls_time_them_and_add_message_sizes(
    telemetry: Telemetry,
) -> None:
    """Check every gRFC A66 instrument: started counts, durations and total message sizes
    per call, with grpc.method, grpc.target and grpc.status."""
    requests = [EchoRequest(text="abc"), EchoRequest(text="de")]
    async with harness(telemetry) as client:
        stub = EchoStub(client)
        await stub.collect(requests)
        with pytest.raises(RpcError):
            await stub.say(EchoRequest(text="abort:NOT_FOUND"))
    metrics = telemetry.metrics()
    assert set(metrics) == {
        "grpc.client.attempt.started",
        "grpc.client.attempt.duration",
        "grpc.client.attempt.sent_total_compressed_message_size",
        "grpc.client.attempt.rcvd_total_compressed_message_size",
        "grpc.client.call.duration",
        "grpc.server.call.started",
        "grpc.server.call.duration",
        "grpc.server.call.sent_total_compressed_message_size",
        "grpc.server.call.rcvd_total_compressed_message_size",
    }

    def by_method(name: str) -> dict[str, Any]:
        return {str(p.attributes["grpc.method"]): p for p in metrics[name]}

    started = by_method("grpc.client.attempt.started")
    assert {m: (p.value, dict(p.attributes)) for m, p in started.items()} == {
        "echo.Echo/Collect": (1, {"grpc.method": "echo.Echo/Collect", "grpc.target": TARGET}),
        "echo.Echo/Say": (1, {"grpc.method": "echo.Echo/Say", "grpc.target": TARGET}),
    }
    assert {m: p.value for m, p in by_method("grpc.server.call.started").items()} == {
        "echo.Echo/Collect": 1,
        "echo.Echo/Say": 1,
    }
    request_bytes = sum(r.ByteSize() for r in requests)
    reply_bytes = EchoReply(text="abc,de").ByteSize()
    sizes = {
        "grpc.client.attempt.sent_total_compressed_message_size": request_bytes,
        "grpc.client.attempt.rcvd_total_compressed_message_size": reply_bytes,
        "grpc.server.call.rcvd_total_compressed_message_size": request_bytes,
        "grpc.server.call.sent_total_compressed_message_size": reply_bytes,
    }
    for name, expected in sizes.items():
        point: HistogramDataPoint = by_method(name)["echo.Echo/Collect"]
        assert (point.count, point.sum) == (1, expected), name
        assert point.attributes is not None and point.attributes["grpc.status"] == "OK"
    for name in (
        "grpc.client.attempt.duration",
        "grpc.client.call.duration",
        "grpc.server.call.duration",
    ):
        points = by_method(name)
        assert points["echo.Echo/Collect"].count == 1
        assert points["echo.Echo/Say"].attributes["grpc.status"] == "NOT_FOUND"
        assert 0 < points["echo.Echo/Say"].sum < 60


async def test_push_calls_are_traced_from_the_server_to_the_client(telemetry: Telemetry) -> None:
    """Check that a call the server makes to a client (push) gets a CLIENT span on the server
    and a SERVER span on the client, linked, through both sides' push_interceptors."""
    harness = ClientFor(
        [TracedEcho(telemetry)],
        server_options={"push_interceptors": [telemetry.client_half()]},
    )
    async with harness:
        config = harness.client_config(
            client_id="pushed", push_interceptors=[telemetry.server_half()]
        )
        async with Client(config) as pushed:
            pushed.add_service(TracedEcho(telemetry))
            tracer = telemetry.tracer_provider.get_tracer("test")
            with tracer.start_as_current_span("parent"):
                stub = EchoStub(harness.server.client("pushed"))
                assert (await stub.say(EchoRequest(text="down"))).text == "down"
                assert [r.index async for r in stub.stream(EchoRequest(repeat=2))] == [0, 1]
    (parent,) = telemetry.finished("parent")
    for method in ("Say", "Stream"):
        spans = telemetry.finished(f"echo.Echo/{method}")
        (client_span,) = [s for s in spans if s.kind is SpanKind.CLIENT]
        (server_span,) = [s for s in spans if s.kind is SpanKind.SERVER]
        assert_linked(parent, client_span, server_span)
    started = telemetry.metrics()["grpc.client.attempt.started"]
    assert sorted(str(p.attributes["grpc.method"]) for p in started) == [
        "echo.Echo/Say",
        "echo.Echo/Stream",
    ]


async def test_a_malformed_traceparent_starts_a_new_trace(telemetry: Telemetry) -> None:
    """Check that a call whose traceparent metadata does not parse is served, and its server
    span starts a new trace (no parent) instead of failing the call."""
    harness = ClientFor(
        [TracedEcho(telemetry)], server_options={"interceptors": [telemetry.server_half()]}
    )
    async with harness as client:
        for value in ("garbage", "00-" + "0" * 32 + "-" + "0" * 16 + "-01"):
            reply = await EchoStub(client).say(
                EchoRequest(text="ok"), metadata=[("traceparent", value)]
            )
            assert reply.text == "ok"
    spans = telemetry.finished("echo.Echo/Say")
    assert [(s.kind, s.parent) for s in spans] == [(SpanKind.SERVER, None)] * 2


def test_message_size_is_the_serialized_size_for_each_flavour() -> None:
    """Check the sizes the metrics add up: protobuf's ByteSize, betterproto's bytes, raw
    bytes, and 0 for an object that cannot be serialized."""
    from betterproto_flavour.echo import EchoRequest as BetterEchoRequest

    from quicflow.otel import message_size

    request = EchoRequest(text="hello", repeat=3)
    assert message_size(request) == len(request.SerializeToString()) == 9
    assert message_size(BetterEchoRequest(text="hello", repeat=3)) == 9
    assert message_size(b"\x00" * 7) == 7
    assert message_size(object()) == 0


async def test_retried_calls_count_each_attempt_and_the_call_once(telemetry: Telemetry) -> None:
    """Check that a call retried twice (a retry policy) counts three attempts started,
    three attempt durations and sizes (two NOT_FOUND, one OK), one call duration and one
    span with two retry events."""
    from quicflow.retry import RetryPolicy

    class Twice(TracedEcho):
        failures = 2

        async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
            if self.failures:
                self.failures -= 1
                await context.abort(StatusCode.NOT_FOUND, "not yet")
            return EchoReply(text=request.text)

    policy = RetryPolicy(
        max_attempts=3,
        initial_backoff=0.001,
        max_backoff=0.001,
        backoff_multiplier=1.0,
        retryable_status_codes=["NOT_FOUND"],
    )
    options = {"interceptors": [telemetry.client_half()], "retry_policies": {"": policy}}
    async with ClientFor([Twice(telemetry)], client_options=options) as client:
        call = EchoStub(client).say(EchoRequest(text="x"))
        assert (await call).text == "x"
        assert call.attempts == 3
    metrics = telemetry.metrics()
    [started] = metrics["grpc.client.attempt.started"]
    assert started.value == 3
    attempts = {
        p.attributes["grpc.status"]: p.count for p in metrics["grpc.client.attempt.duration"]
    }
    assert attempts == {"NOT_FOUND": 2, "OK": 1}
    sent = {
        p.attributes["grpc.status"]: (p.count, p.sum)
        for p in metrics["grpc.client.attempt.sent_total_compressed_message_size"]
    }
    size = EchoRequest(text="x").ByteSize()
    assert sent == {"NOT_FOUND": (2, 2 * size), "OK": (1, size)}
    [call_duration] = metrics["grpc.client.call.duration"]
    assert call_duration.count == 1
    [span] = telemetry.finished("echo.Echo/Say")
    assert [e.name for e in span.events] == ["retry", "retry"]
