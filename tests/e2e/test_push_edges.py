"""Edge cases of push, promises and stream credit found in review (races and leaks)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub

from quicflow import Client, ClientNotConnected, RpcError, ServicerContext, StatusCode
from quicflow.push import ClientChannel, Promise
from quicflow.testing import ClientFor


class SlowEcho(EchoBase):
    """Echo that records every request text it ran and sleeps ``delay_ms`` first."""

    def __init__(self) -> None:
        self.ran: list[str] = []
        self.started = asyncio.Event()

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        self.ran.append(request.text)
        self.started.set()
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return EchoReply(text=request.text)


class BlockingInbox(NotifyBase):
    """Never answers: its handler waits until cancelled."""

    def __init__(self) -> None:
        self.started = asyncio.Event()

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        self.started.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


class EchoInbox(NotifyBase):
    """Answers at once with the event's seq; counts runs."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.seqs: list[int] = []

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        self.seqs.append(request.seq)
        return Ack(client_id=self.client_id, seq=request.seq)


def _sender(seq: int) -> Callable[[ClientChannel], Awaitable[Ack]]:
    async def send(channel: ClientChannel) -> Ack:
        return await NotifyStub(channel).deliver(Event(seq=seq))

    return send


async def _result(promise: Promise[Ack]) -> Ack:
    return await promise


async def _say(stub: EchoStub, text: str, delay_ms: int = 0) -> str:
    return (await stub.say(EchoRequest(text=text, delay_ms=delay_ms))).text


async def test_held_send_in_flight_survives_session_replacement() -> None:
    """Check that an acked send in flight when its client's session is replaced is re-sent
    on the new connection at once instead of waiting out hold_max_age."""
    harness = ClientFor([SlowEcho()], server_options={"hold_max_count": 10, "hold_max_age": 5.0})
    async with harness:
        server = harness.server
        blocking = BlockingInbox()
        old = Client(harness.client_config(client_id="dup", reconnect=False))
        old.add_service(blocking)
        await old.connect()
        new = Client(harness.client_config(client_id="dup", reconnect=False))
        new.add_service(EchoInbox("new"))
        promise = server.async_send("dup", _sender(7), timeout=10.0)
        try:
            await asyncio.wait_for(blocking.started.wait(), 2.0)
            await new.connect()  # same id: the old session is replaced, its call fails
            ack = await asyncio.wait_for(_result(promise), 2.0)
            assert (ack.client_id, ack.seq) == ("new", 7)
        finally:
            promise.cancel()
            await old.close()
            await new.close()


async def test_hold_max_count_refuses_the_next_send_at_once() -> None:
    """Check that with hold_max_count=1 a second async_send to an absent client raises
    ClientNotConnected at once, as docs/push.md promises."""
    harness = ClientFor([SlowEcho()], server_options={"hold_max_count": 1, "hold_max_age": 5.0})
    async with harness:
        server = harness.server
        promises: list[Promise[Ack]] = [server.async_send("away", _sender(1))]
        try:
            with pytest.raises(ClientNotConnected):
                promises.append(server.async_send("away", _sender(2)))
        finally:
            for p in promises:
                p.cancel()


async def test_a_call_cancelled_while_waiting_for_stream_credit_is_never_sent() -> None:
    """Check that a call cancelled while it waits for stream credit never reaches the
    server and leaves no stream handler behind."""
    service = SlowEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        busy = [asyncio.ensure_future(_say(stub, "busy", 400)) for _ in range(128)]
        await asyncio.wait_for(service.started.wait(), 2.0)
        conn = client.connection
        assert conn is not None and not conn.can_open_stream()
        late = stub.say(EchoRequest(text="late"))
        waiter = asyncio.ensure_future(_say_call(late))
        for _ in range(5):
            await asyncio.sleep(0)
        assert late.cancel()
        await asyncio.gather(*busy)
        with pytest.raises(RpcError) as info:
            await asyncio.wait_for(waiter, 2.0)
        assert info.value.code is StatusCode.CANCELLED
        await asyncio.sleep(0.1)
        assert "late" not in service.ran
        assert conn.stream_count == 1  # only the control stream


async def _say_call(call: Awaitable[EchoReply]) -> str:
    return (await call).text


async def test_calls_that_time_out_waiting_for_credit_leave_no_waiters() -> None:
    """Check that calls that hit their deadline while waiting for stream credit leave no
    waiter behind on the connection."""
    service = SlowEcho()
    async with ClientFor([service]) as client:
        stub = EchoStub(client)
        busy = [asyncio.ensure_future(_say(stub, "busy", 1500)) for _ in range(128)]
        await asyncio.wait_for(service.started.wait(), 2.0)
        conn = client.connection
        assert conn is not None and not conn.can_open_stream()
        # Busy calls beyond the server's stream limit (128 on aioquic, 100 on qh3) wait too.
        busy_waiting = conn.streams.credit_waiting
        for _ in range(50):
            with pytest.raises(RpcError):
                await stub.say(EchoRequest(text="late"), timeout=0.001)
        try:
            assert conn.streams.credit_waiting <= busy_waiting + 1
        finally:
            # Their 1.5 s only had to outlast the late calls: cancel rather than wait.
            for call in busy:
                call.cancel()
            await asyncio.gather(*busy, return_exceptions=True)


async def test_two_calls_under_one_message_id_get_their_own_replies() -> None:
    """Check that two different calls made by one acked send each run and get their own
    reply rather than the reply cached for the other."""
    harness = ClientFor([SlowEcho()])
    async with harness:
        inbox = EchoInbox("two")
        client = Client(harness.client_config(client_id="two"))
        client.add_service(inbox)
        await client.connect()
        try:

            async def send(channel: ClientChannel) -> tuple[int, int]:
                stub = NotifyStub(channel)
                first = await stub.deliver(Event(seq=1))
                second = await stub.deliver(Event(seq=2))
                return first.seq, second.seq

            promise = harness.server.async_send("two", send)
            assert await asyncio.wait_for(_pair(promise), 2.0) == (1, 2)
            assert inbox.seqs == [1, 2]
        finally:
            await client.close()


async def _pair(promise: Promise[tuple[int, int]]) -> tuple[int, int]:
    return await promise


async def test_promises_pending_at_server_stop_fail_unavailable() -> None:
    """Check that an acked send still pending when the server stops fails with
    UNAVAILABLE, not with a promise timeout that never elapsed."""
    harness = ClientFor([SlowEcho()])
    async with harness:
        blocking = BlockingInbox()
        client = Client(harness.client_config(client_id="stop", reconnect=False))
        client.add_service(blocking)
        await client.connect()
        try:
            promise = harness.server.async_send("stop", _sender(1), timeout=30.0)
            await asyncio.wait_for(blocking.started.wait(), 2.0)
            await harness.server.stop()
            with pytest.raises(RpcError) as info:
                await asyncio.wait_for(_result(promise), 2.0)
            assert info.value.code is StatusCode.UNAVAILABLE
        finally:
            await client.close()
