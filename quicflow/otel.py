"""OpenTelemetry tracing and metrics for every call, as a pair of interceptors.

Needs ``opentelemetry-api`` (``pip install 'quicflow[otel]'``); an SDK (or
any other implementation) configured by the application decides where spans
and metrics go. Without one, the API's no-op providers make this nearly free.

* **Spans** follow OpenTelemetry's RPC semantic conventions: one CLIENT span
  per call made and one SERVER span per call answered, named
  ``pkg.Service/Method``, with ``rpc.system`` = ``quicflow``, ``rpc.service``,
  ``rpc.method``, ``rpc.grpc.status_code`` (QuicFlow's status codes are
  gRPC's) and ``rpc.response.status_code`` (the code's name). A client span
  is an error for any non-OK status; a server span only for the codes that
  mean a server fault (UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL,
  UNAVAILABLE, DATA_LOSS), as the conventions say for gRPC.
* **Trace context** travels in the call's metadata (``traceparent`` and
  ``tracestate``, W3C Trace Context by default) through the *global*
  propagator, so the server span is the child of the client span, and spans
  a handler starts are children of its server span.
* **Metrics** are gRPC's own names (gRFC A66), recorded through the
  OpenTelemetry metrics API: ``grpc.client.attempt.started``,
  ``grpc.client.attempt.duration``,
  ``grpc.client.attempt.sent_total_compressed_message_size``,
  ``grpc.client.attempt.rcvd_total_compressed_message_size``,
  ``grpc.client.call.duration``, ``grpc.server.call.started``,
  ``grpc.server.call.duration``,
  ``grpc.server.call.sent_total_compressed_message_size`` and
  ``grpc.server.call.rcvd_total_compressed_message_size``, with the
  attributes ``grpc.method``, ``grpc.target`` (client) and ``grpc.status``.
  A call retried under a retry policy (quicflow/retry.py) counts one
  ``attempt.started`` and one attempt duration and size per attempt, one
  ``call.duration`` from the first attempt to the end of the last, and one
  span with a ``retry`` event per failed attempt; without retries attempt
  and call durations are the same call measured twice. Message sizes are the
  serialized sizes (``ByteSize()`` for protobuf messages, ``len(bytes(m))``
  otherwise): the interceptor sees messages, not frames, so with compression
  (wire-protocol.md §4.4) they are the sizes before it.

Both sides answer calls (server push), so each side takes both halves:
``ClientConfig(interceptors=[client_half], push_interceptors=[server_half])``
and ``ServerConfig(interceptors=[server_half], push_interceptors=[client_half])``.

Example::

    from quicflow.otel import OpenTelemetryClientInterceptor, OpenTelemetryServerInterceptor

    server = Server(ServerConfig(..., interceptors=[OpenTelemetryServerInterceptor()]))
    client = Client(ClientConfig(..., interceptors=[
        OpenTelemetryClientInterceptor(target="quicflow://127.0.0.1:4433")]))
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

try:
    from opentelemetry import context as otel_context
    from opentelemetry import metrics, propagate, trace
    from opentelemetry.propagators.textmap import Getter
    from opentelemetry.trace import SpanKind, Status
    from opentelemetry.trace import StatusCode as SpanStatusCode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "quicflow.otel needs opentelemetry-api: pip install 'quicflow[otel]'"
    ) from exc

from .interceptors import ClientCallInfo, ClientInterceptor, ServerInterceptor
from .status import StatusCode

if TYPE_CHECKING:
    from .context import ServicerContext

__all__ = ["OpenTelemetryClientInterceptor", "OpenTelemetryServerInterceptor", "message_size"]

_SCOPE = "quicflow"
_RPC_SYSTEM = "quicflow"

_SERVER_ERRORS = frozenset(
    {
        StatusCode.UNKNOWN,
        StatusCode.DEADLINE_EXCEEDED,
        StatusCode.UNIMPLEMENTED,
        StatusCode.INTERNAL,
        StatusCode.UNAVAILABLE,
        StatusCode.DATA_LOSS,
    }
)
"""The codes that make a SERVER span an error (the RPC conventions' gRPC rule)."""

# gRFC A66's recommended bucket boundaries.
_LATENCY_BUCKETS = (
    0, 0.00001, 0.00005, 0.0001, 0.0003, 0.0006, 0.0008, 0.001, 0.002, 0.003, 0.004, 0.005,
    0.006, 0.008, 0.01, 0.013, 0.016, 0.02, 0.025, 0.03, 0.04, 0.05, 0.065, 0.08, 0.1, 0.13,
    0.16, 0.2, 0.25, 0.3, 0.4, 0.5, 0.65, 0.8, 1, 2, 5, 10, 20, 50, 100,
)  # fmt: skip
_SIZE_BUCKETS = tuple([0] + [1024 * 4**i for i in range(16)])
"""0, 1 KiB, 4 KiB, 16 KiB ... 1 GiB, 4 GiB (A66's size buckets)."""


def message_size(message: object) -> int:
    """The serialized size of ``message`` in bytes."""
    byte_size = getattr(message, "ByteSize", None)
    if byte_size is not None:
        return int(byte_size())
    if isinstance(message, bytes | bytearray | memoryview):
        return len(message)
    try:
        return len(bytes(message))  # type: ignore[call-overload]
    except TypeError:
        return 0


class _MetadataGetter(Getter[Iterable[tuple[str, Any]]]):
    """Reads propagation headers from call metadata (a sequence of key/value pairs)."""

    def get(self, carrier: Iterable[tuple[str, Any]], key: str) -> list[str] | None:
        values = [v for k, v in carrier if k == key and isinstance(v, str)]
        return values or None

    def keys(self, carrier: Iterable[tuple[str, Any]]) -> list[str]:
        return [k for k, _ in carrier]


_GETTER = _MetadataGetter()


def _split(route: str) -> tuple[str, str, str]:
    """``/pkg.Service/Method`` -> (``pkg.Service/Method``, ``pkg.Service``, ``Method``)."""
    name = route.lstrip("/")
    service, _, method = name.partition("/")
    return name, service, method


@dataclass(slots=True)
class _CallState:
    """One call's span and counters, between on_start and on_end."""

    span: trace.Span
    started: float
    method: str
    attempt_started: float = 0.0
    sent: int = 0
    received: int = 0
    keep: object = field(default=None)
    """The call object itself, so its id() is not reused while this entry lives."""


def _tracer_and_meter(
    tracer_provider: trace.TracerProvider | None, meter_provider: metrics.MeterProvider | None
) -> tuple[trace.Tracer, metrics.Meter]:
    """The tracer and meter of this library's scope (None: the global providers)."""
    from . import __version__

    return (
        trace.get_tracer(_SCOPE, __version__, tracer_provider),
        metrics.get_meter(_SCOPE, __version__, meter_provider),
    )


def _duration_histogram(meter: metrics.Meter, name: str, description: str) -> metrics.Histogram:
    """A histogram of seconds with gRFC A66's latency buckets."""
    return meter.create_histogram(
        name,
        unit="s",
        description=description,
        explicit_bucket_boundaries_advisory=_LATENCY_BUCKETS,
    )


def _size_histogram(meter: metrics.Meter, name: str, description: str) -> metrics.Histogram:
    """A histogram of bytes with gRFC A66's size buckets."""
    return meter.create_histogram(
        name,
        unit="By",
        description=description,
        explicit_bucket_boundaries_advisory=_SIZE_BUCKETS,
    )


def _end_span(span: trace.Span, code: StatusCode, message: str, is_error: bool) -> None:
    span.set_attribute("rpc.grpc.status_code", int(code))
    span.set_attribute("rpc.response.status_code", code.name)
    if is_error:
        span.set_status(Status(SpanStatusCode.ERROR, f"{code.name}: {message}"))
    span.end()


class OpenTelemetryClientInterceptor(ClientInterceptor):
    """Spans, trace-context propagation and gRFC A66 metrics for the calls one side makes.

    Args:
        target: the ``grpc.target`` attribute of the client metrics, e.g.
            ``"quicflow://host:port"`` (the interceptor cannot see where the
            channel connects).
        tracer_provider / meter_provider: None uses the global providers.
    """

    def __init__(
        self,
        *,
        target: str = "unknown",
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._target = target
        self._tracer, meter = _tracer_and_meter(tracer_provider, meter_provider)
        self._started = meter.create_counter(
            "grpc.client.attempt.started",
            unit="{attempt}",
            description="Call attempts started, including those that have not completed.",
        )
        self._attempt_duration = _duration_histogram(
            meter,
            "grpc.client.attempt.duration",
            "End-to-end time taken to complete a call attempt.",
        )
        self._sent = _size_histogram(
            meter,
            "grpc.client.attempt.sent_total_compressed_message_size",
            "Compressed message bytes sent per call attempt.",
        )
        self._received = _size_histogram(
            meter,
            "grpc.client.attempt.rcvd_total_compressed_message_size",
            "Compressed message bytes received per call attempt.",
        )
        self._call_duration = _duration_histogram(
            meter,
            "grpc.client.call.duration",
            "Time taken by the library to complete a call, from the application's view.",
        )
        self._calls: dict[int, _CallState] = {}

    async def on_start(self, call: ClientCallInfo) -> None:
        """Start the CLIENT span (a child of the caller's current span) and inject its
        context into the call's metadata."""
        name, service, method = _split(call.route)
        span = self._tracer.start_span(
            name,
            kind=SpanKind.CLIENT,
            attributes={"rpc.system": _RPC_SYSTEM, "rpc.service": service, "rpc.method": method},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        call.metadata.extend((key.lower(), value) for key, value in carrier.items())
        self._started.add(1, {"grpc.method": name, "grpc.target": self._target})
        now = time.perf_counter()
        self._calls[id(call)] = _CallState(span, now, name, now, keep=call)

    def on_retry(self, call: ClientCallInfo, attempt: int, code: StatusCode, message: str) -> None:
        """Record the failed attempt's duration and sizes, count the next attempt as
        started, and note the retry on the call's span."""
        state = self._calls.get(id(call))
        if state is None:
            return
        now = time.perf_counter()
        self._record_attempt(state, code, now)
        state.span.add_event(
            "retry", {"rpc.grpc.status_code": int(code), "quicflow.attempt": attempt}
        )
        self._started.add(1, {"grpc.method": state.method, "grpc.target": self._target})
        state.attempt_started = now
        state.sent = state.received = 0

    def _record_attempt(self, state: _CallState, code: StatusCode, now: float) -> dict[str, str]:
        """Record the attempt that ended with ``code`` (its duration and sizes); return the
        attributes it was recorded with."""
        attributes = {
            "grpc.method": state.method,
            "grpc.target": self._target,
            "grpc.status": code.name,
        }
        self._attempt_duration.record(now - state.attempt_started, attributes)
        self._sent.record(state.sent, attributes)
        self._received.record(state.received, attributes)
        return attributes

    def on_message_sent(self, call: ClientCallInfo, message: object) -> None:
        """Add the request's serialized size to the call's total."""
        state = self._calls.get(id(call))
        if state is not None:
            state.sent += message_size(message)

    def on_message_received(self, call: ClientCallInfo, message: object) -> None:
        """Add the response's serialized size to the call's total."""
        state = self._calls.get(id(call))
        if state is not None:
            state.received += message_size(message)

    def on_end(self, call: ClientCallInfo, code: StatusCode, message: str) -> None:
        """End the span with the status and record the call's metrics."""
        state = self._calls.pop(id(call), None)
        if state is None:
            return
        now = time.perf_counter()
        attributes = self._record_attempt(state, code, now)
        self._call_duration.record(now - state.started, attributes)
        _end_span(state.span, code, message, code is not StatusCode.OK)


class OpenTelemetryServerInterceptor(ServerInterceptor):
    """Spans, trace-context extraction and gRFC A66 metrics for the calls one side answers.

    The SERVER span's parent comes from the call's metadata through the
    global propagator; the span is made current for the handler, so spans it
    starts (and calls it makes through an `OpenTelemetryClientInterceptor`)
    are its children.

    Args:
        tracer_provider / meter_provider: None uses the global providers.
    """

    def __init__(
        self,
        *,
        tracer_provider: trace.TracerProvider | None = None,
        meter_provider: metrics.MeterProvider | None = None,
    ) -> None:
        self._tracer, meter = _tracer_and_meter(tracer_provider, meter_provider)
        self._started = meter.create_counter(
            "grpc.server.call.started",
            unit="{call}",
            description="Calls started, including those that have not completed.",
        )
        self._duration = _duration_histogram(
            meter,
            "grpc.server.call.duration",
            "End-to-end time taken to complete a call, from the server's view.",
        )
        self._sent = _size_histogram(
            meter,
            "grpc.server.call.sent_total_compressed_message_size",
            "Compressed message bytes sent per call.",
        )
        self._received = _size_histogram(
            meter,
            "grpc.server.call.rcvd_total_compressed_message_size",
            "Compressed message bytes received per call.",
        )
        self._calls: dict[int, _CallState] = {}

    async def on_start(self, context: ServicerContext) -> None:
        """Start the SERVER span under the caller's trace context and make it current for the
        handler (which runs in this task, with its own copy of the context)."""
        name, service, method = _split(context.method)
        parent = propagate.extract(context.invocation_metadata(), getter=_GETTER)
        span = self._tracer.start_span(
            name,
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": _RPC_SYSTEM, "rpc.service": service, "rpc.method": method},
        )
        # Never detached: the context belongs to the handler's own task and ends with it.
        otel_context.attach(trace.set_span_in_context(span, parent))
        self._started.add(1, {"grpc.method": name})
        self._calls[id(context)] = _CallState(span, time.perf_counter(), name, keep=context)

    def on_message_received(self, context: ServicerContext, message: object) -> None:
        """Add the request's serialized size to the call's total."""
        state = self._calls.get(id(context))
        if state is not None:
            state.received += message_size(message)

    def on_message_sent(self, context: ServicerContext, message: object) -> None:
        """Add the response's serialized size to the call's total."""
        state = self._calls.get(id(context))
        if state is not None:
            state.sent += message_size(message)

    def on_end(self, context: ServicerContext, code: StatusCode, message: str) -> None:
        """End the span with the status sent and record the call's metrics."""
        state = self._calls.pop(id(context), None)
        if state is None:
            return
        attributes: Mapping[str, str] = {"grpc.method": state.method, "grpc.status": code.name}
        self._duration.record(time.perf_counter() - state.started, attributes)
        self._sent.record(state.sent, attributes)
        self._received.record(state.received, attributes)
        _end_span(state.span, code, message, code in _SERVER_ERRORS)
