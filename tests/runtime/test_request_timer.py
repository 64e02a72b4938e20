"""The header_timeout bound on a call's start, on a virtual clock (no network).

A unary or server-streaming call starts its handler only once its request is
complete (HEADERS, the one message, FIN); until then header_timeout, counted
from the stream's first bytes, bounds it. The call object is driven directly
by a real `Endpoint` whose injected clock is a `FakeClock`, the way the
runtime arms every timer; no event loop runs, so a handler that started would
fail the test.
"""

from __future__ import annotations

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from quicflow import ServerConfig, ServicerContext, StatusCode
from quicflow.endpoint import Endpoint
from quicflow.incoming import IncomingCall
from quicflow.testing import FakeClock
from quicflow.wire import ErrorCode, FrameDecoder, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb


class _Echo(EchoBase):
    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        raise AssertionError("the handler must not run")


class _Conn:
    """The transport side of one stream, recording what the call did to it."""

    def __init__(self) -> None:
        self.sent = bytearray()
        self.fin = False
        self.stopped: int | None = None
        self.released = False
        self.peer_address = None

    def write(self, stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        self.sent += data
        self.fin = self.fin or end_stream
        return True

    def stop_reading(self, stream_id: int, error_code: int = 0) -> None:
        self.stopped = error_code

    def release(self, stream_id: int) -> None:
        self.released = True

    def reset(self, stream_id: int, error_code: int, *, stop: bool = True) -> None:
        self.release(stream_id)

    def credit_released(self, stream_id: int) -> None:
        pass

    def trailers(self) -> pb.CallTrailers | None:
        for frame in FrameDecoder(1 << 20, 1 << 20).feed(bytes(self.sent)):
            if frame.type is FrameType.TRAILERS:
                return pb.CallTrailers.FromString(frame.payload)
        return None


class _Side:
    def __init__(self, conn: _Conn) -> None:
        self.conn = conn
        self.session = None
        self.requires_session = False


def _call(header_timeout: float = 10.0) -> tuple[IncomingCall, _Conn, FakeClock]:
    clock = FakeClock()
    config = ServerConfig(cert_file="unused.pem", header_timeout=header_timeout, metrics=False)
    endpoint = Endpoint(config, interceptors=(), replies=None, clock=clock)
    endpoint.add_handlers(_Echo().__quicflow_handlers__())
    conn = _Conn()
    call = endpoint.answer(_Side(conn), 4)  # type: ignore[arg-type]
    return call, conn, clock


def _headers(timeout_us: int = 0) -> bytes:
    headers = pb.CallHeaders(method="/echo.Echo/Say", timeout_us=timeout_us)
    return encode_frame(FrameType.HEADERS, headers.SerializeToString())


REQUEST = encode_frame(FrameType.DATA, EchoRequest(text="r").SerializeToString())


def test_request_that_never_completes_ends_at_header_timeout() -> None:
    """Check that HEADERS at 0 s and the request (without FIN) at 6 s leave the call
    waiting, and that at exactly 10 s from the first bytes it ends DEADLINE_EXCEEDED with
    STOP_SENDING(DEADLINE_EXCEEDED), without a handler."""
    call, conn, clock = _call(header_timeout=10.0)
    call.data_received(_headers(), False)
    clock.advance(6.0)
    call.data_received(REQUEST, False)
    clock.advance(3.999)
    assert not conn.fin and clock.pending == 1
    clock.advance(0.001)
    trailers = conn.trailers()
    assert trailers is not None
    assert (trailers.status, trailers.message) == (
        StatusCode.DEADLINE_EXCEEDED,
        "no complete request within 10 s (header_timeout)",
    )
    assert conn.fin and conn.stopped == ErrorCode.DEADLINE_EXCEEDED and conn.released
    assert clock.pending == 0


def test_headers_split_then_no_request_is_one_bound_from_the_first_byte() -> None:
    """Check that the bound is counted from the stream's first bytes, not restarted when
    the HEADERS complete: half the HEADERS at 0 s, the rest at 9 s, nothing more: the call
    ends at 10 s."""
    call, conn, clock = _call(header_timeout=10.0)
    headers = _headers()
    call.data_received(headers[:3], False)
    clock.advance(9.0)
    call.data_received(headers[3:], False)
    assert call.method == "/echo.Echo/Say" and not conn.fin
    clock.advance(1.0)
    trailers = conn.trailers()
    assert trailers is not None and trailers.message.startswith("no complete request within")


def test_a_shorter_call_deadline_ends_it_first() -> None:
    """Check that a call deadline (2 s) shorter than header_timeout ends the waiting call
    at 2 s with the usual "deadline exceeded", and nothing fires afterwards."""
    call, conn, clock = _call(header_timeout=10.0)
    call.data_received(_headers(timeout_us=2_000_000), False)
    clock.advance(2.0)
    trailers = conn.trailers()
    assert trailers is not None
    assert (trailers.status, trailers.message) == (
        StatusCode.DEADLINE_EXCEEDED,
        "deadline exceeded",
    )
    assert conn.released and clock.pending == 0


def test_reset_before_the_request_completes_costs_no_handler_and_no_timer() -> None:
    """Check that a reset of a call still waiting for its request (rapid reset) ends it at
    once: no status is owed, no timer is left, the stream is released."""
    call, conn, clock = _call()
    call.data_received(_headers() + REQUEST, False)
    assert clock.pending == 1
    call.stream_reset(ErrorCode.CANCELLED)
    assert conn.released and clock.pending == 0
