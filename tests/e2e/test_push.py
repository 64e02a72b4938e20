"""Server push end to end: typed calls to clients, unicast, broadcast, acked sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub

from quicflow import (
    Client,
    ClientNotConnected,
    ClientState,
    PromiseCapacityFull,
    RpcError,
    ServicerContext,
    StatusCode,
    Timeout,
)
from quicflow.push import ClientChannel, DeliveryStatus, Promise
from quicflow.testing import ClientFor, FakeClock

from .service import TestEcho


class Inbox(NotifyBase):
    """What a client does with pushed events; ``topic`` chooses odd behaviour."""

    def __init__(self, client_id: str) -> None:
        self.client_id = client_id
        self.events: list[Event] = []
        self.metadata: tuple[tuple[str, str | bytes], ...] = ()
        self.time_remaining: float | None = None
        self.message_ids: list[str | None] = []

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        self.metadata = context.invocation_metadata()
        self.time_remaining = context.time_remaining()
        self.message_ids.append(context.message_id)
        self.events.append(request)
        if request.topic == "fail":
            await context.abort(StatusCode.FAILED_PRECONDITION, f"{self.client_id} refuses")
        if request.delay_ms:
            await asyncio.sleep(request.delay_ms / 1000)
        return Ack(client_id=self.client_id, seq=request.seq)

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        seqs = [event.seq async for event in requests]
        return Ack(client_id=self.client_id, seq=sum(seqs))


async def _client(harness: ClientFor, client_id: str, inbox: Inbox | None = None) -> Client:
    client = Client(harness.client_config(client_id=client_id))
    client.add_service(inbox or Inbox(client_id))
    await client.connect()
    return client


async def test_typed_call_to_one_client_with_deadline_metadata_and_status() -> None:
    """Check that the server calls a client-implemented service with deadline, metadata and
    error status, exactly like a client-to-server call."""
    harness = ClientFor([TestEcho()])
    async with harness:
        inbox = Inbox("c1")
        client = await _client(harness, "c1", inbox)
        try:
            stub = NotifyStub(harness.server.client("c1"))
            ack = await stub.deliver(Event(seq=7, text="hi"), timeout=2.0, metadata=[("k", "v")])
            assert (ack.client_id, ack.seq) == ("c1", 7)
            assert inbox.metadata == (("k", "v"),)
            assert inbox.time_remaining is not None and 1.0 < inbox.time_remaining <= 2.0
            with pytest.raises(RpcError) as info:
                await stub.deliver(Event(topic="fail"))
            assert info.value.code is StatusCode.FAILED_PRECONDITION
            assert info.value.message == "c1 refuses"
            with pytest.raises(RpcError) as info:
                await stub.deliver(Event(delay_ms=2000), timeout=0.1)
            assert info.value.code is StatusCode.DEADLINE_EXCEEDED
            total = await stub.feed([Event(seq=1), Event(seq=2), Event(seq=3)])
            assert total.seq == 6
            assert harness.server.get_client_info("c1").calls_out == 4
        finally:
            await client.close()


async def test_push_to_a_missing_client_fails_at_once() -> None:
    """Check that calling an unknown client id raises ClientNotConnected without waiting."""
    harness = ClientFor([TestEcho()])
    async with harness:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(ClientNotConnected) as info:
            await NotifyStub(harness.server.client("ghost")).deliver(Event(), timeout=5)
        assert info.value.code is StatusCode.UNAVAILABLE
        assert loop.time() - start < 0.1


async def test_a_client_without_the_service_answers_unimplemented() -> None:
    """Check that pushing a service the client did not register gives UNIMPLEMENTED."""
    harness = ClientFor([TestEcho()], client_options={"client_id": "bare"})
    async with harness:
        with pytest.raises(RpcError) as info:
            await NotifyStub(harness.server.client("bare")).deliver(Event())
        assert info.value.code is StatusCode.UNIMPLEMENTED


@pytest.mark.serial  # many clients / a real restart against real-time bounds
async def test_broadcast_reports_each_client_exactly() -> None:
    """Check that a broadcast to 50 clients with 2 failing and 1 too slow reports exact
    per-client outcomes and counts, and honours label filters."""
    harness = ClientFor([TestEcho()])
    async with harness:
        clients: list[Client] = []
        for i in range(50):
            client = Client(
                harness.client_config(
                    client_id=f"c{i:02d}", labels={"group": "b", "even": str(i % 2 == 0)}
                )
            )
            client.add_service(Inbox(f"c{i:02d}"))
            await client.connect()
            clients.append(client)
        try:

            async def send(channel: ClientChannel) -> Ack:
                cid = channel.client_id
                topic = "fail" if cid in ("c03", "c07") else ""
                delay = 2000 if cid == "c11" else 0
                return await NotifyStub(channel).deliver(Event(topic=topic, delay_ms=delay))

            result = await harness.server.broadcast(
                send, labels={"group": "b"}, client_timeout=0.5, max_in_flight=10
            )
            assert len(result) == 50
            assert (result.delivered, result.failed, result.timed_out) == (47, 2, 1)
            assert result.deliveries["c03"].status is DeliveryStatus.FAILED
            assert result.deliveries["c03"].code is StatusCode.FAILED_PRECONDITION
            assert result.deliveries["c11"].status is DeliveryStatus.TIMED_OUT
            ok = result.deliveries["c20"]
            assert ok.status is DeliveryStatus.DELIVERED
            assert ok.reply is not None and ok.reply.client_id == "c20"
            evens = await harness.server.broadcast(
                lambda ch: _deliver(NotifyStub(ch), Event(seq=2)), labels={"even": "True"}
            )
            assert len(evens) == 25 and evens.delivered == 25
        finally:
            # Together: each close waits out QUIC's closing period (3 PTO, ~0.1 s).
            await asyncio.gather(*(client.close() for client in clients))


async def _deliver(stub: NotifyStub, event: Event) -> Ack:
    return await stub.deliver(event)


async def test_async_send_resolves_fails_times_out_and_fails_on_disconnect() -> None:
    """Check that an acked send's promise resolves with the reply, fails with the client's
    status, fails with Timeout, and fails at once when the client disconnects."""
    harness = ClientFor([TestEcho()], server_options={"promise_timeout": 0.3})
    async with harness:
        inbox = Inbox("p1")
        client = await _client(harness, "p1", inbox)
        server = harness.server
        try:
            seen: list[str] = []
            ok: Promise[Ack] = server.async_send(
                "p1",
                lambda ch: _deliver(NotifyStub(ch), Event(seq=5)),
                callback=lambda p: seen.append(f"{p.message_id}:{p.exception() or p.result().seq}"),
            )
            assert len(ok.message_id) == 36
            assert (await ok).seq == 5
            assert inbox.message_ids[-1] == ok.message_id  # the id travels in HEADERS
            await asyncio.sleep(0)
            assert seen == [f"{ok.message_id}:5"]

            failed = server.async_send(
                "p1", lambda ch: _deliver(NotifyStub(ch), Event(topic="fail"))
            )
            with pytest.raises(RpcError) as info:
                await failed
            assert info.value.code is StatusCode.FAILED_PRECONDITION

            slow = server.async_send(
                "p1", lambda ch: _deliver(NotifyStub(ch), Event(delay_ms=5000)), timeout=0.2
            )
            with pytest.raises(Timeout) as timed:
                await slow
            assert timed.value.code is StatusCode.DEADLINE_EXCEEDED

            hanging = server.async_send(
                "p1", lambda ch: _deliver(NotifyStub(ch), Event(delay_ms=5000)), timeout=10
            )
            await asyncio.sleep(0.1)
            loop = asyncio.get_running_loop()
            start = loop.time()
            await client.close()
            with pytest.raises(RpcError) as gone:
                await hanging
            assert gone.value.code is StatusCode.UNAVAILABLE
            assert loop.time() - start < 1.5
            with pytest.raises(ClientNotConnected):
                server.async_send("p1", lambda ch: _deliver(NotifyStub(ch), Event()))
            assert server.pending_promises == 0
        finally:
            await client.close()


async def test_promise_capacity_refuses_without_sending() -> None:
    """Check that one acked send over max_pending_promises raises PromiseCapacityFull and
    sends nothing."""
    harness = ClientFor([TestEcho()], server_options={"max_pending_promises": 3})
    async with harness:
        inbox = Inbox("cap")
        client = await _client(harness, "cap", inbox)
        try:
            server = harness.server
            held = [
                server.async_send("cap", lambda ch: _deliver(NotifyStub(ch), Event(delay_ms=300)))
                for _ in range(3)
            ]
            with pytest.raises(PromiseCapacityFull) as info:
                server.async_send("cap", lambda ch: _deliver(NotifyStub(ch), Event(seq=99)))
            assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
            await asyncio.gather(*(_result(p) for p in held))
            assert all(e.seq != 99 for e in inbox.events)
            assert len(inbox.events) == 3
            assert server.pending_promises == 0
        finally:
            await client.close()


async def _result(promise: Promise[Ack]) -> Ack:
    return await promise


def _sender(seq: int) -> Callable[[ClientChannel], Awaitable[Ack]]:
    return lambda channel: _deliver(NotifyStub(channel), Event(seq=seq))


async def test_ten_thousand_acked_sends_leave_no_state() -> None:
    """Check that after 10,000 async_sends the promise table and stream maps are empty."""
    harness = ClientFor([TestEcho()])
    async with harness:
        client = await _client(harness, "bulk")
        try:
            server = harness.server
            for batch in range(20):
                promises = [server.async_send("bulk", _sender(i)) for i in range(500)]
                acks = await asyncio.gather(*(_result(p) for p in promises))
                assert [a.seq for a in acks] == list(range(500)), batch
            assert server.pending_promises == 0
            assert len(server._promises._tasks) == 0
            [conn] = [s.conn for s in server.sessions if s.client_id == "bulk"]
            assert conn.stream_count == 1  # the control stream only
            assert client.connection is not None and client.connection.stream_count == 1
            assert len(client._endpoint.calls) == 0
        finally:
            await client.close()


FAST_SERVER = {
    "heartbeat_interval": 0.2,
    "heartbeat_check_interval": 0.05,
    "min_heartbeat_interval": 0.05,
    "hold_max_count": 100,
    "hold_max_age": 10.0,
}
FAST_CLIENT = {
    "heartbeat_interval": 0.2,
    "heartbeat_timeout": 0.3,
    "backoff_initial": 0.1,
    "backoff_max": 0.2,
    "connect_timeout": 0.5,
}


class CountingInbox(Inbox):
    """Counts handlers that ran to completion, per sequence number."""

    def __init__(self, client_id: str) -> None:
        super().__init__(client_id)
        self.completed: list[int] = []

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        ack = await super().deliver(request, context)
        self.completed.append(request.seq)
        return ack


async def test_a_repeated_message_id_is_answered_from_the_reply_cache() -> None:
    """Check that a message sent twice under one id runs its handler once and gets the
    same reply twice (what a retry after a lost ack sees)."""
    harness = ClientFor([TestEcho()])
    async with harness:
        inbox = CountingInbox("d1")
        client = await _client(harness, "d1", inbox)
        try:
            channel = ClientChannel(harness.server, "d1", message_id=b"\x01" * 16)
            first = await NotifyStub(channel).deliver(Event(seq=41))
            again = await NotifyStub(channel).deliver(Event(seq=41))
            assert first == again
            assert inbox.completed == [41]
        finally:
            await client.close()


async def test_held_sends_are_delivered_once_after_a_forced_reconnect() -> None:
    """Check that with holding on, acked sends to a client that drops are held while it
    waits out its reconnect backoff (on a virtual clock: it cannot come back before the
    test says so), delivered when it reconnects, and each handler completes exactly once."""
    harness = ClientFor([TestEcho()], server_options=FAST_SERVER)
    async with harness:
        inbox = CountingInbox("r1")
        clock = FakeClock()
        client = Client(harness.client_config(client_id="r1", **FAST_CLIENT), clock=clock)
        client.add_service(inbox)
        await client.connect()
        try:
            server = harness.server
            assert client.connection is not None
            client.connection.abort("forced")  # the client drops; it reconnects by itself
            promises = [server.async_send("r1", _sender(i)) for i in range(20)]
            async with asyncio.timeout(5):  # the server learns the connection is gone
                while server._promises.held < 20:  # noqa: ASYNC110 (no event to await)
                    await asyncio.sleep(0.01)
            assert client.state is ClientState.RECONNECTING  # its clock has not moved
            clock.advance(FAST_CLIENT["backoff_max"])  # past the first reconnect delay
            acks = await asyncio.wait_for(asyncio.gather(*(_result(p) for p in promises)), 10)
            assert sorted(a.seq for a in acks) == list(range(20))
            assert sorted(inbox.completed) == list(range(20))  # each ran once
            assert server._promises.held == 0 and server.pending_promises == 0
        finally:
            await client.close()


async def test_without_holding_an_absent_client_fails_at_once() -> None:
    """Check that holding is off by default: a send to an absent client fails at once."""
    harness = ClientFor([TestEcho()])
    async with harness:
        with pytest.raises(ClientNotConnected):
            harness.server.async_send("away", _sender(1))
