"""Call semantics end to end: real QUIC, real TLS 1.3, on 127.0.0.1."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoStub

from quicflow import (
    ArgumentError,
    ClientCallInfo,
    ClientInterceptor,
    PayloadTooLarge,
    RpcError,
    ServerInterceptor,
    ServicerContext,
    StatusCode,
    UsageError,
)
from quicflow.calls import MAX_CALL_TIMEOUT
from quicflow.testing import ClientFor

from .service import PartialEcho, TestEcho


async def test_four_call_kinds() -> None:
    """Check that unary, server-streaming, client-streaming and bidi calls all work."""
    async with ClientFor([TestEcho()]) as client:
        stub = EchoStub(client)
        reply = await stub.say(EchoRequest(text="hi"))
        assert reply.text == "hi"
        replies = [r async for r in stub.stream(EchoRequest(text="s", repeat=3))]
        assert [(r.text, r.index) for r in replies] == [("s", 0), ("s", 1), ("s", 2)]
        collected = await stub.collect([EchoRequest(text="a"), EchoRequest(text="b")])
        assert collected.text == "a,b"

        async def gen() -> AsyncIterator[EchoRequest]:
            for t in ("x", "y", "z"):
                yield EchoRequest(text=t)

        chatted = [r.text async for r in stub.chat(gen())]
        assert chatted == ["X", "Y", "Z"]


async def test_empty_streams() -> None:
    """Check that zero-message streams end cleanly in both directions."""
    async with ClientFor([TestEcho()]) as client:
        stub = EchoStub(client)
        assert [r async for r in stub.stream(EchoRequest(text="s", repeat=0))] == []
        assert (await stub.collect([])).text == ""
        assert [r async for r in stub.chat([])] == []


async def test_call_object_exposes_status_and_metadata() -> None:
    """Check that a call object gives initial/trailing metadata, code and details."""
    async with ClientFor([TestEcho()]) as client:
        call = EchoStub(client).say(EchoRequest(text="meta"))
        assert await call.initial_metadata() == (("initial", "yes"),)
        reply = await call
        assert reply.text == "meta"
        assert await call.trailing_metadata() == (("trailing", "yes"), ("trail-bin", b"\xff"))
        assert await call.code() is StatusCode.OK
        assert await call.details() == ""
        assert call.done()
        assert await call == reply  # awaiting again returns the same reply


async def test_invocation_metadata_text_and_binary() -> None:
    """Check that text and -bin metadata reach the handler unchanged and in order."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        md: list[tuple[str, str | bytes]] = [
            ("user", "ana"),
            ("blob-bin", b"\x00\xff\x10"),
            ("user", "bo"),
        ]
        await EchoStub(client).say(EchoRequest(text="x"), metadata=md)
        assert service.probe.metadata == tuple(md)


async def test_bad_metadata_is_refused_before_sending() -> None:
    """Check that malformed metadata raises ArgumentError (a UsageError and a ValueError)
    naming the key, at the call, and nothing reaches the server."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        with pytest.raises(ArgumentError, match="Upper") as info:
            EchoStub(client).say(EchoRequest(), metadata=[("Upper", "x")])
        assert info.value.argument == "metadata"
        with pytest.raises(ValueError, match="-bin"):
            EchoStub(client).say(EchoRequest(), metadata=[("x-bin", "text")])
        with pytest.raises(UsageError, match="control characters"):
            await client.send_message("t", b"", metadata=[("k", "a\nb")])
        [info_] = harness.server.list_clients()
        assert info_.calls_in == 0


@pytest.mark.parametrize(
    ("timeout", "message"),
    [
        (math.nan, "timeout: must be a number of seconds, got nan"),
        (math.inf, "timeout: inf s is over the limit of 315360000 s (ten years); pass None"),
        (MAX_CALL_TIMEOUT * 2, "timeout: 630720000.0 s is over the limit of 315360000 s"),
        ("5", "timeout: must be a number of seconds or None, got '5'"),
    ],
    ids=["nan", "inf", "twenty-years", "str"],
)
async def test_bad_timeouts_are_argument_errors_at_the_call(timeout: Any, message: str) -> None:
    """Check that a NaN, infinite, over-long or non-numeric per-call timeout raises
    ArgumentError naming it where the call is made (it raised the core's unexported
    LocalProtocolError), for every call kind and for untyped messages, sending nothing."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        stub = EchoStub(client)
        for make in (
            lambda: stub.say(EchoRequest(), timeout=timeout),
            lambda: stub.stream(EchoRequest(), timeout=timeout),
            lambda: stub.collect([], timeout=timeout),
            lambda: stub.chat([], timeout=timeout),
        ):
            with pytest.raises(ArgumentError) as info:
                make()
            assert str(info.value).startswith(message)
            assert info.value.argument == "timeout"
        for wait_ack in (True, False):
            with pytest.raises(ArgumentError, match=r"^timeout: "):
                await client.send_message("t", b"", timeout=timeout, wait_ack=wait_ack)
        [info_] = harness.server.list_clients()
        assert info_.calls_in == 0


async def test_the_longest_timeout_and_minus_infinity_are_fine() -> None:
    """Check that a timeout of exactly MAX_CALL_TIMEOUT (ten years, like the config's
    durations) travels and the handler sees it, and that -inf fails DEADLINE_EXCEEDED
    locally like any timeout <= 0 (nothing sent)."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        assert (await stub.say(EchoRequest(text="far"), timeout=MAX_CALL_TIMEOUT)).text == "far"
        remaining = service.probe.time_remaining
        assert remaining is not None and MAX_CALL_TIMEOUT - 60 < remaining <= MAX_CALL_TIMEOUT
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(), timeout=-math.inf)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert info.value.may_have_run is False


async def test_abort_carries_code_message_and_trailers() -> None:
    """Check that context.abort reaches the client as RpcError with its trailing metadata."""
    async with ClientFor([TestEcho()]) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest(text="abort:NOT_FOUND"))
        assert info.value.code is StatusCode.NOT_FOUND
        assert info.value.message == "aborted on request"
        assert info.value.trailing_metadata == (("why-bin", b"\x00\x01"),)


async def test_handler_exception_is_unknown_without_details() -> None:
    """Check that an unexpected handler exception becomes UNKNOWN with no internals leaked."""
    async with ClientFor([TestEcho()]) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest(text="raise"))
        assert info.value.code is StatusCode.UNKNOWN
        assert "secret" not in info.value.message
        assert "ValueError" in info.value.message
        # the connection is fine afterwards
        assert (await EchoStub(client).say(EchoRequest(text="ok"))).text == "ok"


async def test_bidi_handler_error_ends_stream_with_status() -> None:
    """Check that an RpcError raised mid-stream reaches the client after earlier replies."""
    async with ClientFor([TestEcho()]) as client:
        got: list[str] = []
        with pytest.raises(RpcError) as info:
            async for r in EchoStub(client).chat(
                [EchoRequest(text="a"), EchoRequest(text="stop"), EchoRequest(text="c")]
            ):
                got.append(r.text)
        assert got == ["A"]
        assert info.value.code is StatusCode.FAILED_PRECONDITION


async def test_unknown_method_and_unimplemented_rpc() -> None:
    """Check that an unknown route and a rpc the service did not override give UNIMPLEMENTED."""
    async with ClientFor([PartialEcho()]) as client:
        stub = EchoStub(client)
        assert (await stub.say(EchoRequest(text="x"))).text == "x"
        with pytest.raises(RpcError) as info:
            await stub.collect([EchoRequest(text="a")])
        assert info.value.code is StatusCode.UNIMPLEMENTED
        with pytest.raises(RpcError) as info:
            [r async for r in stub.stream(EchoRequest(repeat=2))]
        assert info.value.code is StatusCode.UNIMPLEMENTED
        from quicflow import Cardinality, Method

        ghost: Method[EchoRequest, EchoReply] = Method(
            "/echo.Echo/Ghost",
            Cardinality.UNARY_UNARY,
            EchoRequest.SerializeToString,
            EchoRequest.FromString,
            EchoReply.SerializeToString,
            EchoReply.FromString,
        )
        with pytest.raises(RpcError) as info:
            await client.unary_unary(ghost, EchoRequest())
        assert info.value.code is StatusCode.UNIMPLEMENTED
        assert "/echo.Echo/Ghost" in info.value.message


async def test_deadline_travels_and_expires_on_both_sides() -> None:
    """Check that the handler sees the remaining time, is cancelled at the deadline, and the
    client gets DEADLINE_EXCEEDED."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        await stub.say(EchoRequest(text="quick"), timeout=5.0)
        remaining = service.probe.time_remaining
        assert remaining is not None and 4.0 < remaining <= 5.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="slow", delay_ms=5000), timeout=0.2)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert loop.time() - start < 2.0
        await asyncio.wait_for(service.probe.cancelled.wait(), 2.0)
        # a call without timeout has no deadline on the server
        await stub.say(EchoRequest(text="free"))
        assert service.probe.time_remaining is None


async def test_default_timeout_from_config() -> None:
    """Check that ClientConfig.default_timeout applies to calls that pass none."""
    service = TestEcho()
    async with ClientFor([service], client_options={"default_timeout": 0.2}) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest(text="slow", delay_ms=3000))
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED


async def test_cancelling_the_client_task_cancels_the_handler() -> None:
    """Check that cancelling the awaiting task resets the stream and cancels the handler,
    which can tell its client went away."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        task = asyncio.ensure_future(EchoStub(client).say(EchoRequest(text="s", delay_ms=5000)))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(service.probe.cancelled.wait(), 2.0)
        assert service.probe.context_cancelled_seen
        await asyncio.wait_for(service.probe.finished.wait(), 2.0)
        assert service.probe.done_callbacks == 1
        assert await EchoStub(client).say(EchoRequest(text="again")) == EchoReply(text="again")


async def test_call_cancel_method() -> None:
    """Check that call.cancel() ends the call with CANCELLED and cancels the handler."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        call = EchoStub(client).say(EchoRequest(text="s", delay_ms=5000))
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        assert call.cancel()
        assert not call.cancel()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code is StatusCode.CANCELLED
        assert await call.code() is StatusCode.CANCELLED
        await asyncio.wait_for(service.probe.cancelled.wait(), 2.0)


async def test_cancelled_upload_never_looks_complete() -> None:
    """Check that a client-streaming handler sees cancellation, not a normal end, when the
    client cancels mid-upload."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        gate = asyncio.Event()

        async def uploads() -> AsyncIterator[EchoRequest]:
            yield EchoRequest(text="part1")
            await gate.wait()  # never set: the upload is unfinished
            yield EchoRequest(text="part2")

        task = asyncio.ensure_future(EchoStub(client).collect(uploads()))
        await asyncio.wait_for(service.probe.got_request.wait(), 2.0)
        assert service.probe.received == ["part1"]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(service.probe.cancelled.wait(), 2.0)
        assert not service.probe.upload_ended_normally


async def test_request_over_server_limit_is_resource_exhausted() -> None:
    """Check that a request over the server's max_message_size fails RESOURCE_EXHAUSTED and
    the connection stays usable."""
    async with ClientFor([TestEcho()], server_options={"max_message_size": 1000}) as client:
        stub = EchoStub(client)
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(payload=b"x" * 5000))
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert "1000" in info.value.message
        # also mid-stream in a client-streaming call
        with pytest.raises(RpcError) as info:
            await stub.collect([EchoRequest(text="ok"), EchoRequest(payload=b"y" * 5000)])
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.say(EchoRequest(text="still here"))).text == "still here"


async def test_oversize_request_refused_locally() -> None:
    """Check that the client refuses to send a request over its own limit."""
    service = TestEcho()
    async with ClientFor([service], client_options={"max_message_size": 100}) as client:
        with pytest.raises(PayloadTooLarge) as info:
            await EchoStub(client).say(EchoRequest(payload=b"x" * 500))
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert not service.probe.started.is_set()


async def test_response_over_client_limit_is_resource_exhausted() -> None:
    """Check that a response over the client's limit fails RESOURCE_EXHAUSTED without
    breaking the connection."""
    async with ClientFor([TestEcho()], client_options={"max_message_size": 1000}) as client:
        stub = EchoStub(client)
        with pytest.raises(RpcError) as info:
            [r async for r in stub.stream(EchoRequest(repeat=3, payload=b"z" * 900 * 2))]
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert (await stub.say(EchoRequest(text="fine"))).text == "fine"


async def test_response_over_server_limit_is_resource_exhausted() -> None:
    """Check that a handler's response over the server's own limit becomes RESOURCE_EXHAUSTED."""

    class Big(TestEcho):
        async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
            return EchoReply(payload=b"b" * 4000)

    async with ClientFor([Big()], server_options={"max_message_size": 1000}) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest())
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED


async def test_many_concurrent_calls_wait_for_stream_credit() -> None:
    """Check that 300 concurrent calls all succeed although the server allows 128 streams."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        replies = await asyncio.gather(
            *(stub.say(EchoRequest(text=str(i), delay_ms=50)) for i in range(300))
        )
        assert [r.text for r in replies] == [str(i) for i in range(300)]
        assert service.probe.max_active <= 128


async def test_interceptors_see_all_call_kinds() -> None:
    """Check that client and server interceptors see start, messages and end for every kind,
    and that a server interceptor can refuse a call."""
    events: list[str] = []

    class ClientSpy(ClientInterceptor):
        async def on_start(self, call: ClientCallInfo) -> None:
            call.metadata.append(("token", "t0ken"))
            events.append(f"c-start {call.cardinality.value}")

        def on_message_sent(self, call: ClientCallInfo, message: object) -> None:
            events.append("c-sent")

        def on_message_received(self, call: ClientCallInfo, message: object) -> None:
            events.append("c-recv")

        def on_end(self, call: ClientCallInfo, code: StatusCode, message: str) -> None:
            events.append(f"c-end {code.name}")

    class ServerAuth(ServerInterceptor):
        async def on_start(self, context: ServicerContext) -> None:
            if ("token", "t0ken") not in context.invocation_metadata():
                raise RpcError(StatusCode.UNAUTHENTICATED, "no token")
            events.append(f"s-start {context.method}")

        def on_message_received(self, context: ServicerContext, message: object) -> None:
            events.append("s-recv")

        def on_message_sent(self, context: ServicerContext, message: object) -> None:
            events.append("s-sent")

        def on_end(self, context: ServicerContext, code: StatusCode, message: str) -> None:
            events.append(f"s-end {code.name}")

    async with ClientFor(
        [TestEcho()],
        server_options={"interceptors": [ServerAuth()]},
        client_options={"interceptors": [ClientSpy()]},
    ) as client:
        stub = EchoStub(client)
        await stub.say(EchoRequest(text="a"))
        await asyncio.sleep(0.05)  # the server's on_end runs after its reply is sent
        assert events == [
            "c-start unary_unary",
            "c-sent",
            "s-start /echo.Echo/Say",
            "s-recv",
            "s-sent",
            "s-end OK",
            "c-recv",
            "c-end OK",
        ] or events == [
            "c-start unary_unary",
            "c-sent",
            "s-start /echo.Echo/Say",
            "s-recv",
            "s-sent",
            "c-recv",
            "c-end OK",
            "s-end OK",
        ]
        events.clear()
        [r async for r in stub.stream(EchoRequest(repeat=2))]
        await stub.collect([EchoRequest(), EchoRequest()])
        [r async for r in stub.chat([EchoRequest()])]
        await asyncio.sleep(0.05)
        starts = [e for e in events if "start" in e]
        assert starts == [
            "c-start unary_stream",
            "s-start /echo.Echo/Stream",
            "c-start stream_unary",
            "s-start /echo.Echo/Collect",
            "c-start stream_stream",
            "s-start /echo.Echo/Chat",
        ]
        assert events.count("c-end OK") == 3 and events.count("s-end OK") == 3
        assert events.count("c-recv") == 2 + 1 + 1 and events.count("s-recv") == 1 + 2 + 1

    async with ClientFor([TestEcho()], server_options={"interceptors": [ServerAuth()]}) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest())
        assert info.value.code is StatusCode.UNAUTHENTICATED


async def test_sequential_calls_leave_no_stream_state() -> None:
    """Check that 1,000 sequential calls leave the stream maps empty on both sides."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        stub = EchoStub(client)
        for i in range(1000):
            await stub.say(EchoRequest(text=str(i)))
        conn = client.connection
        assert conn is not None
        [server_conn] = harness.server.connections
        # Only the control stream stays (wire-protocol.md §9).
        assert conn.stream_count == 1
        assert server_conn.stream_count == 1
        assert harness.server.active_calls == 0
        # aioquic frees a finished stream when it next builds a packet; one more
        # round trip flushes that.
        await stub.say(EchoRequest(text="flush"))
        await asyncio.sleep(0.05)
        assert conn.quic_stream_count <= 2
        assert server_conn.quic_stream_count <= 2


async def test_a_call_waiting_for_stream_credit_keeps_its_deadline() -> None:
    """Check that with every stream slot taken, a further call waits for a slot and fails
    DEADLINE_EXCEEDED if none frees in time, while the others complete."""
    service = TestEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        busy = [asyncio.ensure_future(_say(stub, 600)) for _ in range(128)]
        await asyncio.wait_for(service.probe.started.wait(), 2.0)
        conn = client.connection
        assert conn is not None and not conn.can_open_stream()
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="late"), timeout=0.1)
        assert info.value.code is StatusCode.DEADLINE_EXCEEDED
        assert "waiting for a stream" in info.value.message
        assert len(await asyncio.gather(*busy)) == 128
        assert (await stub.say(EchoRequest(text="after"), timeout=2)).text == "after"


async def _say(stub: EchoStub, delay_ms: int) -> str:
    return (await stub.say(EchoRequest(text="busy", delay_ms=delay_ms))).text
