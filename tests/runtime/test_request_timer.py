"""The header_timeout bound on a call's start, and frame_timeout on each unfinished frame,
on a virtual clock (no network).

A unary or server-streaming call starts its handler only once its request is
complete (HEADERS, the one message, FIN); until then header_timeout, counted
from the stream's first bytes, bounds it. The call object is driven directly
by a real `Endpoint` whose injected clock is a `FakeClock`, the way the
runtime arms every timer; no event loop runs, so a handler that started would
fail the test.
"""

from __future__ import annotations

from typing import Any

from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase

from quicflow import ServerConfig, ServicerContext, StatusCode
from quicflow.endpoint import Endpoint
from quicflow.incoming import IncomingCall
from quicflow.protocol.budget import ByteBudget
from quicflow.testing import FakeClock
from quicflow.transport.inflow import FrameWatch
from quicflow.wire import ErrorCode, FrameDecoder, FrameType, encode_frame
from quicflow.wire.v1 import frames_pb2 as pb


class _Echo(EchoBase):
    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        raise AssertionError("the handler must not run")


def _endpoint(header_timeout: float, clock: FakeClock) -> Endpoint:
    """A server's endpoint answering Echo, its timers on ``clock``."""
    config = ServerConfig(cert_file="unused.pem", header_timeout=header_timeout, metrics=False)
    endpoint = Endpoint(config, interceptors=(), replies=None, clock=clock)
    endpoint.add_handlers(_Echo().__quicflow_handlers__())
    return endpoint


class _Conn:
    """The transport side of one stream, recording what the call did to it."""

    def __init__(
        self, clock: FakeClock, frame_timeout: float = 30.0, budget: ByteBudget | None = None
    ) -> None:
        self.clock = clock
        self.frame_timeout = frame_timeout
        self.budget = budget or ByteBudget(16 << 20)
        self.withheld: list[int] = []
        self.watch: FrameWatch | None = None
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
        if self.watch is not None:
            self.watch.close()

    def watch_frames(self, stream_id: int, on_timeout: Any) -> FrameWatch:
        """Like `QuicFlowProtocol.watch_frames` (a 1 MiB stream window), recording what
        the transport is told to withhold from the stream's credit."""
        assert self.watch is None
        self.watch = FrameWatch(
            self.clock,
            self.budget,
            threshold=512 << 10,
            timeout=self.frame_timeout,
            on_timeout=on_timeout,
            withhold=self.withheld.append,
        )
        return self.watch

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
        self.peer_encodings: frozenset[str] = frozenset()


def _call(header_timeout: float = 10.0) -> tuple[IncomingCall, _Conn, FakeClock]:
    clock = FakeClock()
    conn = _Conn(clock)
    call = _endpoint(header_timeout, clock).answer(_Side(conn), 4)  # type: ignore[arg-type]
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


# -- frame_timeout: how long one frame may stay unfinished -------------------------------


def _data_prefix(length: int) -> bytes:
    """A DATA frame's 5-byte prefix announcing ``length`` payload bytes (no payload)."""
    return bytes([FrameType.DATA]) + length.to_bytes(4, "big")


FRAME_TIMEOUT_STATUS = (
    StatusCode.DEADLINE_EXCEEDED,
    "a frame stayed unfinished for 30 s (frame_timeout)",
)


def test_frame_left_unfinished_ends_the_call_at_frame_timeout() -> None:
    """Check that a DATA frame begun at 0 s and fed more bytes at 20 s (never finished)
    ends the call at exactly 30 s: DEADLINE_EXCEEDED naming frame_timeout,
    STOP_SENDING(DEADLINE_EXCEEDED), no timer left; its bytes were withheld from credit
    (it is small: no reservation) and are given back."""
    clock = FakeClock()
    conn = _Conn(clock, frame_timeout=30.0)
    call = _endpoint(1000.0, clock).answer(_Side(conn), 4)  # type: ignore[arg-type]
    call.data_received(_headers() + _data_prefix(100) + b"x" * 10, False)
    clock.advance(20.0)
    call.data_received(b"x" * 50, False)
    assert conn.withheld == [10, 60]
    clock.advance(9.75)
    assert not conn.fin
    clock.advance(0.25)
    trailers = conn.trailers()
    assert trailers is not None
    assert (trailers.status, trailers.message) == FRAME_TIMEOUT_STATUS
    assert conn.fin and conn.stopped == ErrorCode.DEADLINE_EXCEEDED and conn.released
    assert conn.withheld == [10, 60, 0] and clock.pending == 0


def test_each_frame_has_its_own_frame_timeout() -> None:
    """Check that the bound is per frame: HEADERS in pieces from 0 s, completed at 25 s
    together with the start of a DATA frame, which then has until exactly 55 s."""
    clock = FakeClock()
    conn = _Conn(clock, frame_timeout=30.0)
    call = _endpoint(1000.0, clock).answer(_Side(conn), 4)  # type: ignore[arg-type]
    headers = _headers()
    call.data_received(headers[:3], False)
    clock.advance(25.0)
    call.data_received(headers[3:] + _data_prefix(100), False)
    assert call.method == "/echo.Echo/Say"
    clock.advance(29.75)
    assert not conn.fin
    clock.advance(0.25)
    trailers = conn.trailers()
    assert trailers is not None and (trailers.status, trailers.message) == FRAME_TIMEOUT_STATUS
    assert clock.pending == 0


def test_a_large_frame_waits_for_its_reservation_and_its_time_starts_when_granted() -> None:
    """Check with two calls sharing a 1 MiB budget: an 800 KiB frame reserves at 0 s; a
    600 KiB frame begun at 5 s must wait (its bytes withheld from credit); when the first
    completes at 12 s the second is granted (nothing withheld any more) and has until
    exactly 42 s; the first call, its frame complete, is untouched."""
    clock = FakeClock()
    budget = ByteBudget(1 << 20)
    conn_a = _Conn(clock, frame_timeout=30.0, budget=budget)
    conn_b = _Conn(clock, frame_timeout=30.0, budget=budget)
    call_a = _endpoint(1000.0, clock).answer(_Side(conn_a), 4)  # type: ignore[arg-type]
    call_b = _endpoint(1000.0, clock).answer(_Side(conn_b), 8)  # type: ignore[arg-type]
    big = 800 << 10
    call_a.data_received(_headers() + _data_prefix(big) + b"a" * 1000, False)
    assert budget.used == big and conn_a.withheld == []  # reserved: nothing withheld
    clock.advance(5.0)
    call_b.data_received(_headers() + _data_prefix(600 << 10) + b"b" * 2000, False)
    assert conn_b.watch is not None and conn_b.watch.frame.waiting
    assert conn_b.withheld == [2000] and budget.waiting == 1
    clock.advance(7.0)
    call_a.data_received(b"a" * (big - 1000), False)  # the frame completes at 12 s
    assert conn_b.withheld == [2000, 0] and budget.used == 600 << 10
    clock.advance(29.75)
    assert not conn_b.fin
    clock.advance(0.25)  # 42 s
    trailers = conn_b.trailers()
    assert trailers is not None and (trailers.status, trailers.message) == FRAME_TIMEOUT_STATUS
    assert budget.used == 0 and not conn_a.fin
