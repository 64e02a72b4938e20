"""Runtime tests for the dispatcher on a real event loop, with tiny durations."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable

import pytest

from quicflow.dispatch import Dispatcher, Message
from quicflow.errors import RpcError, Timeout, UsageError
from quicflow.status import StatusCode
from quicflow.testing import FakeClock


def message(type_: str = "chat.post", payload: bytes = b"hi", n: int = 0) -> Message:
    """A message of ``type_`` from client ``c-1`` with a deterministic id."""
    return Message(type_, payload, (("k", "v"),), uuid.UUID(int=n).bytes, "c-1")


async def until(condition: Callable[[], bool], steps: int = 100) -> None:
    """Yield to the loop until ``condition()`` holds; fail after ``steps`` turns."""
    for _ in range(steps):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never held")


def other_tasks() -> set[asyncio.Task[object]]:
    """Tasks on the loop besides the test itself."""
    return asyncio.all_tasks() - {asyncio.current_task()}


async def test_handler_runs_and_returns_bytes() -> None:
    """Check that dispatch runs the registered handler and returns its reply bytes."""
    dispatcher = Dispatcher()
    received: list[Message] = []

    async def on_post(msg: Message) -> bytes:
        received.append(msg)
        return b"got " + msg.payload

    dispatcher.register_handler("chat.post", on_post)
    assert await dispatcher.dispatch(message()) == b"got hi"
    assert received == [message()]
    assert dispatcher.busy_workers == 0
    assert dispatcher.queue_depth == 0
    await dispatcher.close()


async def test_sync_handlers_and_none_replies() -> None:
    """Check that plain functions work as handlers and a None reply becomes b""."""
    dispatcher = Dispatcher(workers=2)
    dispatcher.register_handler("upper", lambda msg: msg.payload.upper())
    dispatcher.register_handler("quiet", lambda msg: None)

    async def nothing(msg: Message) -> None:
        return None

    dispatcher.register_handler("async-quiet", nothing)
    assert await dispatcher.dispatch(message("upper", b"abc")) == b"ABC"
    assert await dispatcher.dispatch(message("quiet")) == b""
    assert await dispatcher.dispatch(message("async-quiet")) == b""
    await dispatcher.close()


async def test_many_messages_run_concurrently_up_to_the_worker_count() -> None:
    """Check that a burst of workers + queue_size messages is accepted and each gets its reply."""
    dispatcher = Dispatcher(workers=4, queue_size=8)
    running = 0
    peak = 0

    async def echo(msg: Message) -> bytes:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0)
        running -= 1
        return msg.payload

    dispatcher.register_handler("echo", echo)
    replies = await asyncio.gather(
        *(dispatcher.dispatch(message("echo", bytes([n]), n)) for n in range(12))
    )
    assert replies == [bytes([n]) for n in range(12)]
    assert peak == 4
    await dispatcher.close()


async def test_unknown_type_is_unimplemented() -> None:
    """Check that a message type without a handler fails with UNIMPLEMENTED naming the type."""
    dispatcher = Dispatcher()
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("no.such.type"))
    assert info.value.code is StatusCode.UNIMPLEMENTED
    assert "no.such.type" in info.value.message
    assert other_tasks() == set()  # refused before any worker started
    await dispatcher.close()


async def test_queue_full_is_refused_at_once() -> None:
    """Check that with 1 worker busy and 2 queued, a 4th message gets RESOURCE_EXHAUSTED at once."""
    dispatcher = Dispatcher(workers=1, queue_size=2)
    release = asyncio.Event()
    started: list[bytes] = []

    async def blocked(msg: Message) -> bytes:
        started.append(msg.payload)
        await release.wait()
        return msg.payload

    dispatcher.register_handler("slow", blocked)
    first = asyncio.create_task(dispatcher.dispatch(message("slow", b"1")))
    await until(lambda: started == [b"1"])
    queued = [
        asyncio.create_task(dispatcher.dispatch(message("slow", payload)))
        for payload in (b"2", b"3")
    ]
    await until(lambda: dispatcher.queue_depth == 2)
    assert dispatcher.busy_workers == 1

    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("slow", b"4"))
    assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
    assert info.value.message == "dispatcher queue full (2)"
    assert dispatcher.queue_depth == 2  # the refused message was not queued

    release.set()
    assert await asyncio.gather(first, *queued) == [b"1", b"2", b"3"]
    assert started == [b"1", b"2", b"3"]  # first come, first served
    await dispatcher.close()


async def test_handler_timeout_is_deadline_exceeded() -> None:
    """Check that a handler still running at 0.049 s of virtual time is left alone and at
    exactly 0.05 s (handler_timeout) is cancelled, the send failing DEADLINE_EXCEEDED."""
    clock = FakeClock()
    dispatcher = Dispatcher(handler_timeout=0.05, clock=clock)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def forever(msg: Message) -> bytes:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only the timeout ends it
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b"never"

    dispatcher.register_handler("forever", forever)
    sent = asyncio.ensure_future(dispatcher.dispatch(message("forever")))
    await started.wait()
    clock.advance(0.049)
    await asyncio.sleep(0)
    assert not sent.done() and not cancelled.is_set()
    clock.advance(0.001)
    with pytest.raises(RpcError) as info:
        await sent
    assert info.value.code is StatusCode.DEADLINE_EXCEEDED
    assert info.value.message.startswith("handler for forever took longer than 0.05")
    assert cancelled.is_set()
    await dispatcher.close()


async def test_handler_rpc_error_passes_through() -> None:
    """Check that an RpcError raised by a handler reaches the caller with its own status."""
    dispatcher = Dispatcher()
    error = RpcError(StatusCode.PERMISSION_DENIED, "not yours", (("reason", "owner"),))

    async def deny(msg: Message) -> bytes:
        raise error

    def too_slow(msg: Message) -> bytes:
        raise Timeout(message="my own deadline")

    dispatcher.register_handler("deny", deny)
    dispatcher.register_handler("own-timeout", too_slow)
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("deny"))
    assert info.value is error
    assert info.value.code is StatusCode.PERMISSION_DENIED
    assert info.value.trailing_metadata == (("reason", "owner"),)
    with pytest.raises(Timeout):
        await dispatcher.dispatch(message("own-timeout"))
    await dispatcher.close()


async def test_other_exception_is_unknown_without_its_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Check that a non-RpcError exception becomes UNKNOWN naming only its class, and is logged."""
    dispatcher = Dispatcher()

    async def broken(msg: Message) -> bytes:
        raise ValueError("secret database password")

    def stray_timeout(msg: Message) -> bytes:
        raise TimeoutError("socket timed out")

    dispatcher.register_handler("broken", broken)
    dispatcher.register_handler("stray", stray_timeout)
    with (
        caplog.at_level(logging.ERROR, logger="quicflow.dispatch"),
        pytest.raises(RpcError) as info,
    ):
        await dispatcher.dispatch(message("broken"))
    assert info.value.code is StatusCode.UNKNOWN
    assert info.value.message == "handler for broken raised ValueError"
    assert "secret" not in str(info.value)
    assert [r.name for r in caplog.records] == ["quicflow.dispatch"]
    assert caplog.records[0].exc_info is not None
    # A TimeoutError of the handler's own is not our deadline.
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("stray"))
    assert info.value.code is StatusCode.UNKNOWN
    assert info.value.message == "handler for stray raised TimeoutError"
    await dispatcher.close()


async def test_non_bytes_reply_is_unknown() -> None:
    """Check that a handler returning something other than bytes or None fails UNKNOWN."""
    dispatcher = Dispatcher()
    dispatcher.register_handler("bad", lambda msg: "text")  # type: ignore[arg-type,return-value]
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("bad"))
    assert info.value.code is StatusCode.UNKNOWN
    assert info.value.message == "handler for bad returned str"
    await dispatcher.close()


async def test_caller_cancellation_cancels_the_running_handler() -> None:
    """Check that cancelling the caller of dispatch cancels its running handler."""
    dispatcher = Dispatcher(workers=1)
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def slow(msg: Message) -> bytes:
        started.set()
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return b"never"

    dispatcher.register_handler("slow", slow)
    dispatcher.register_handler("fast", lambda msg: b"ok")
    caller = asyncio.create_task(dispatcher.dispatch(message("slow")))
    await started.wait()
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    await asyncio.wait_for(cancelled.wait(), 1.0)
    await until(lambda: dispatcher.busy_workers == 0)
    # The worker survived its handler's cancellation.
    assert await dispatcher.dispatch(message("fast")) == b"ok"
    await dispatcher.close()


async def test_caller_cancellation_while_queued_never_starts_the_handler() -> None:
    """Check that cancelling a caller whose message waits in the queue frees its slot unrun."""
    dispatcher = Dispatcher(workers=1, queue_size=1)
    release = asyncio.Event()
    ran: list[bytes] = []

    async def blocked(msg: Message) -> bytes:
        ran.append(msg.payload)
        await release.wait()
        return msg.payload

    dispatcher.register_handler("slow", blocked)
    first = asyncio.create_task(dispatcher.dispatch(message("slow", b"1")))
    await until(lambda: ran == [b"1"])
    waiting = asyncio.create_task(dispatcher.dispatch(message("slow", b"2")))
    await until(lambda: dispatcher.queue_depth == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert dispatcher.queue_depth == 0  # the slot is free at once
    third = asyncio.create_task(dispatcher.dispatch(message("slow", b"3")))
    await until(lambda: dispatcher.queue_depth == 1)
    release.set()
    assert list(await asyncio.gather(first, third)) == [b"1", b"3"]
    assert ran == [b"1", b"3"]
    await dispatcher.close()


async def test_close_fails_queued_messages_and_leaves_no_tasks() -> None:
    """Check that close fails queued and running messages UNAVAILABLE and ends every task."""
    dispatcher = Dispatcher(workers=2, queue_size=5)
    release = asyncio.Event()

    async def blocked(msg: Message) -> bytes:
        await release.wait()
        return b"late"

    dispatcher.register_handler("slow", blocked)
    callers = [asyncio.create_task(dispatcher.dispatch(message("slow", n=n))) for n in range(5)]
    await until(lambda: dispatcher.busy_workers == 2 and dispatcher.queue_depth == 3)
    await dispatcher.close()
    results = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(r, RpcError) for r in results), results
    assert {r.code for r in results if isinstance(r, RpcError)} == {StatusCode.UNAVAILABLE}
    assert other_tasks() == set()
    assert dispatcher.busy_workers == 0
    assert dispatcher.queue_depth == 0
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("slow"))
    assert info.value.code is StatusCode.UNAVAILABLE
    await dispatcher.close()  # idempotent


async def test_close_before_any_dispatch_is_harmless() -> None:
    """Check that closing a dispatcher whose workers never started returns at once."""
    dispatcher = Dispatcher()
    await dispatcher.close()
    assert dispatcher.closed


async def test_workers_start_lazily_and_bind_the_loop() -> None:
    """Check that no worker task exists until the first dispatch, then exactly `workers` do."""
    dispatcher = Dispatcher(workers=3)
    dispatcher.register_handler("ping", lambda msg: b"pong")
    assert other_tasks() == set()
    assert await dispatcher.dispatch(message("ping")) == b"pong"
    assert len(other_tasks()) == 3
    await dispatcher.close()
    assert other_tasks() == set()


def test_constructed_outside_a_loop_and_used_in_two_loops_fails_clearly() -> None:
    """Check that a dispatcher built without a loop works in one and refuses a second loop."""
    dispatcher = Dispatcher(workers=1)
    dispatcher.register_handler("ping", lambda msg: b"pong")

    async def first() -> bytes:
        return await dispatcher.dispatch(message("ping"))

    async def second() -> None:
        with pytest.raises(UsageError, match="another event loop"):
            await dispatcher.dispatch(message("ping"))

    with asyncio.Runner() as runner:
        assert runner.run(first()) == b"pong"
        with asyncio.Runner() as other:
            other.run(second())
        runner.run(dispatcher.close())


def test_register_twice_is_a_usage_error() -> None:
    """Check that registering a type twice raises UsageError, and unregistering frees it."""
    dispatcher = Dispatcher()
    dispatcher.register_handler("ping", lambda msg: b"pong")
    with pytest.raises(UsageError, match="'ping' already has a handler"):
        dispatcher.register_handler("ping", lambda msg: b"other")
    dispatcher.unregister_handler("ping")
    with pytest.raises(UsageError, match="'ping' has no handler"):
        dispatcher.unregister_handler("ping")
    dispatcher.register_handler("ping", lambda msg: b"again")
    with pytest.raises(ValueError, match="message_type"):
        dispatcher.register_handler("", lambda msg: None)
    with pytest.raises(TypeError, match="callable"):
        dispatcher.register_handler("x", b"not callable")  # type: ignore[arg-type]


async def test_unregistered_type_is_unimplemented_again() -> None:
    """Check that after unregister_handler, messages of that type fail UNIMPLEMENTED."""
    dispatcher = Dispatcher()
    dispatcher.register_handler("ping", lambda msg: b"pong")
    assert await dispatcher.dispatch(message("ping")) == b"pong"
    dispatcher.unregister_handler("ping")
    with pytest.raises(RpcError) as info:
        await dispatcher.dispatch(message("ping"))
    assert info.value.code is StatusCode.UNIMPLEMENTED
    await dispatcher.close()


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"workers": 0}, "workers"),
        ({"workers": 1.5}, "workers"),
        ({"workers": True}, "workers"),
        ({"queue_size": 0}, "queue_size"),
        ({"queue_size": -3}, "queue_size"),
        ({"handler_timeout": 0.0}, "handler_timeout"),
        ({"handler_timeout": -1.0}, "handler_timeout"),
        ({"handler_timeout": float("inf")}, "handler_timeout"),
        ({"handler_timeout": float("nan")}, "handler_timeout"),
    ],
)
def test_constructor_validates_arguments(kwargs: dict[str, float], name: str) -> None:
    """Check that an out-of-range constructor argument raises ValueError naming it."""
    with pytest.raises(ValueError, match=name):
        Dispatcher(**kwargs)  # type: ignore[arg-type]


def test_message_is_frozen() -> None:
    """Check that Message is a frozen, slotted dataclass."""
    msg = message()
    with pytest.raises(AttributeError):
        msg.payload = b"changed"  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")


async def test_plain_function_runs_inline_only_when_a_worker_is_free_and_none_queued() -> None:
    """Check that a plain-function handler runs inside dispatch (no handler task) when a
    worker is idle and nothing waits, counting as busy while it runs; that when every
    worker is busy it queues behind earlier messages (FIFO kept); and that a plain
    function returning an awaitable still has it awaited."""
    dispatcher = Dispatcher(workers=1, queue_size=10)
    seen: list[tuple[str, int, int]] = []
    release = asyncio.Event()

    def plain(msg: Message) -> bytes:
        seen.append(("plain", dispatcher.busy_workers, len(other_tasks())))
        return msg.payload

    async def slow(msg: Message) -> bytes:
        await release.wait()
        seen.append(("slow", 0, 0))
        return b"slow"

    async def later(msg: Message) -> bytes:
        return b"awaited " + msg.payload

    dispatcher.register_handler("plain", plain)
    dispatcher.register_handler("slow", slow)
    dispatcher.register_handler("returns-awaitable", lambda msg: later(msg))
    assert await dispatcher.dispatch(message("plain", b"a")) == b"a"
    # Inline: counted busy, and the only other tasks are the idle worker.
    assert seen == [("plain", 1, 1)]
    assert dispatcher.busy_workers == 0
    assert await dispatcher.dispatch(message("returns-awaitable", b"x")) == b"awaited x"
    seen.clear()
    slow_call = asyncio.ensure_future(dispatcher.dispatch(message("slow")))
    await until(lambda: dispatcher.busy_workers == 1)
    plain_call = asyncio.ensure_future(dispatcher.dispatch(message("plain", b"b")))
    await until(lambda: dispatcher.queue_depth == 1)
    assert seen == []  # the plain one waits behind the busy worker
    release.set()
    assert await slow_call == b"slow" and await plain_call == b"b"
    assert [kind for kind, _, _ in seen] == ["slow", "plain"]
    await dispatcher.close()


async def test_plain_function_failures_map_like_async_ones() -> None:
    """Check that an inline plain function's RpcError passes through, any other exception
    is UNKNOWN, and a non-bytes reply is UNKNOWN."""
    dispatcher = Dispatcher()

    def denied(msg: Message) -> bytes:
        raise RpcError(StatusCode.PERMISSION_DENIED, "no")

    def broken(msg: Message) -> bytes:
        raise KeyError("secret")

    dispatcher.register_handler("denied", denied)
    dispatcher.register_handler("broken", broken)
    dispatcher.register_handler("weird", lambda msg: 42)  # type: ignore[arg-type,return-value]
    for type_, code in (
        ("denied", StatusCode.PERMISSION_DENIED),
        ("broken", StatusCode.UNKNOWN),
        ("weird", StatusCode.UNKNOWN),
    ):
        with pytest.raises(RpcError) as info:
            await dispatcher.dispatch(message(type_))
        assert info.value.code is code, type_
        assert "secret" not in info.value.message
    assert dispatcher.busy_workers == 0
    await dispatcher.close()


async def test_post_reports_outcomes_refuses_when_full_and_wakes_room_waiters() -> None:
    """Check that post() runs handlers without a waiting caller, reports each outcome once,
    refuses (accepting nothing) when full, and wait_room() returns once a slot frees."""
    dispatcher = Dispatcher(workers=1, queue_size=1)
    gate = asyncio.Event()

    async def slow(m: Message) -> bytes:
        await gate.wait()
        return m.payload

    dispatcher.register_handler("slow", slow)
    dispatcher.register_handler("bad", lambda m: 42)  # type: ignore[arg-type, return-value]
    outcomes: list[bytes | RpcError] = []
    assert dispatcher.post(message("nope"), outcomes.append)
    assert dispatcher.post(message("bad"), outcomes.append)  # plain function: runs inline
    codes = [o.code for o in outcomes if isinstance(o, RpcError)]
    assert codes == [StatusCode.UNIMPLEMENTED, StatusCode.UNKNOWN]
    outcomes.clear()
    assert dispatcher.post(message("slow", b"1"), outcomes.append)
    assert dispatcher.post(message("slow", b"2"), outcomes.append)
    assert not dispatcher.has_room
    assert not dispatcher.post(message("slow", b"3"), outcomes.append)
    room = asyncio.ensure_future(dispatcher.wait_room())
    await asyncio.sleep(0)
    assert not room.done() and outcomes == []
    gate.set()
    await asyncio.wait_for(room, 1.0)
    await until(lambda: len(outcomes) == 2)
    assert outcomes == [b"1", b"2"] and dispatcher.has_room
    await dispatcher.close()
    assert dispatcher.post(message("slow"), outcomes.append)
    assert isinstance(outcomes[-1], RpcError) and outcomes[-1].code is StatusCode.UNAVAILABLE
