"""Retries end to end over real QUIC, the backoff on a `FakeClock` with exact times
(quicflow/retry.py, docs/connections.md "Retries")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import Client, ClientState, RpcError, ServicerContext, StatusCode
from quicflow.retry import RetryPolicy
from quicflow.testing import ClientFor, FakeClock

POLICY = RetryPolicy(
    max_attempts=4,
    initial_backoff=0.5,
    max_backoff=4.0,
    backoff_multiplier=2.0,
    retryable_status_codes=["UNAVAILABLE", "ABORTED"],
    jitter=0.0,  # exact waits: 0.5, 1, 2 s
)


class Flaky(EchoBase):
    """Fails with the next code of ``script`` (then answers OK); records each attempt's
    ``grpc-previous-rpc-attempts``."""

    def __init__(self, *script: StatusCode) -> None:
        self.script = list(script)
        self.seen: list[str | None] = []
        self.arrived = asyncio.Event()

    def _attempt(self, context: ServicerContext) -> StatusCode | None:
        previous = dict(context.invocation_metadata()).get("grpc-previous-rpc-attempts")
        self.seen.append(None if previous is None else str(previous))
        self.arrived.set()
        return self.script.pop(0) if self.script else None

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        code = self._attempt(context)
        if code is not None:
            raise RpcError(code, f"attempt {len(self.seen)} fails")
        return EchoReply(text=request.text)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        code = self._attempt(context)
        if request.text == "late" and code is not None:
            yield EchoReply(text="first")
        if code is not None:
            raise RpcError(code, "stream fails")
        yield EchoReply(text="ok")

    async def collect(
        self, requests: AsyncIterator[EchoRequest], context: ServicerContext
    ) -> EchoReply:
        code = self._attempt(context)
        async for _ in requests:
            pass
        if code is not None:
            raise RpcError(code, "upload fails")
        return EchoReply(text="ok")


async def _until(condition: Callable[[], bool]) -> None:
    """Wait (real time) for bytes in flight over loopback."""
    async with asyncio.timeout(5.0):
        while not condition():  # noqa: ASYNC110 - a poll: no event to await
            await asyncio.sleep(0.002)


async def _settle() -> None:
    """Give loopback a moment in which nothing should happen."""
    await asyncio.sleep(0.05)


def _harness(service: Flaky, clock: FakeClock, **policies: Any) -> ClientFor:
    return ClientFor(
        [service],
        clock=clock,
        client_options={"retry_policies": policies or {"echo.Echo": POLICY}},
    )


async def test_a_unary_call_is_retried_after_exact_backoffs_until_it_succeeds() -> None:
    """Check that UNAVAILABLE, ABORTED, then OK takes three attempts, the second exactly
    0.5 s and the third exactly 1 s (virtual) after the failures before them, each
    carrying grpc-previous-rpc-attempts, and that metrics count one call, two retries."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE, StatusCode.ABORTED)
    async with _harness(service, clock) as client:
        call = EchoStub(client).say(EchoRequest(text="hi"))
        await _until(lambda: len(service.seen) == 1)
        await _settle()
        clock.advance(0.499)
        await _settle()
        assert len(service.seen) == 1
        clock.advance(0.001)
        await _until(lambda: len(service.seen) == 2)
        await _settle()
        clock.advance(0.999)
        await _settle()
        assert len(service.seen) == 2
        clock.advance(0.001)
        assert (await call).text == "hi"
        assert service.seen == [None, "1", "2"]
        assert call.attempts == 3
        assert await call.code() is StatusCode.OK
        say = client.get_metrics().made["/echo.Echo/Say"]
        assert (say.started, say.retries, dict(say.finished)) == (1, 2, {"OK": 1})


async def test_the_last_failure_is_raised_once_attempts_run_out() -> None:
    """Check that with every attempt failing, max_attempts (4) attempts are made and the
    fourth failure is what the caller sees."""
    clock = FakeClock()
    service = Flaky(*[StatusCode.UNAVAILABLE] * 5)
    async with _harness(service, clock) as client:
        call = EchoStub(client).say(EchoRequest())
        for n, wait in ((1, 0.5), (2, 1.0), (3, 2.0)):
            await _until(lambda n=n: len(service.seen) == n)  # type: ignore[misc]
            await _settle()
            clock.advance(wait)
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code is StatusCode.UNAVAILABLE
        assert info.value.message == "attempt 4 fails"
        assert service.seen == [None, "1", "2", "3"]


async def test_codes_not_listed_are_not_retried() -> None:
    """Check that a status outside retryable_status_codes ends the call at once."""
    clock = FakeClock()
    service = Flaky(StatusCode.INTERNAL)
    async with _harness(service, clock) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest())
        assert info.value.code is StatusCode.INTERNAL
        assert service.seen == [None]


async def test_no_attempt_starts_past_the_deadline() -> None:
    """Check that a call with 1.2 s of deadline retries after 0.5 s but not after the next
    1 s wait (it would end past the deadline): it fails with the second attempt's
    status, not DEADLINE_EXCEEDED, and at once."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE, StatusCode.UNAVAILABLE)
    async with _harness(service, clock) as client:
        call = EchoStub(client).say(EchoRequest(), timeout=1.2)
        await _until(lambda: len(service.seen) == 1)
        await _settle()
        clock.advance(0.5)
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code is StatusCode.UNAVAILABLE
        assert service.seen == [None, "1"]


async def test_cancel_during_the_backoff_ends_the_call() -> None:
    """Check that cancel() while waiting to retry ends the call CANCELLED and no further
    attempt is made when the wait would have ended."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE)
    async with _harness(service, clock) as client:
        call = EchoStub(client).say(EchoRequest())
        await _until(lambda: len(service.seen) == 1)
        await _settle()
        assert call.cancel()
        clock.advance(5.0)
        await _settle()
        with pytest.raises(RpcError) as info:
            await call
        assert info.value.code is StatusCode.CANCELLED
        assert service.seen == [None]


async def test_server_streaming_is_retried_only_before_its_first_response() -> None:
    """Check that a server-streaming call failing before any response is retried, and one
    failing after a response was received is not (the call is committed)."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE)
    async with _harness(service, clock) as client:
        stub = EchoStub(client)
        call = stub.stream(EchoRequest(text="early"))
        await _until(lambda: len(service.seen) == 1)
        await _settle()
        clock.advance(0.5)
        assert [r.text async for r in call] == ["ok"]
        assert service.seen == [None, "1"]
        service.script = [StatusCode.UNAVAILABLE]
        late = stub.stream(EchoRequest(text="late"))
        with pytest.raises(RpcError) as info:
            _ = [r.text async for r in late]
        assert info.value.code is StatusCode.UNAVAILABLE
        assert service.seen == [None, "1", None]


async def test_client_streaming_calls_are_never_retried() -> None:
    """Check that a client-streaming call (its requests came from an iterator) fails with
    its first status even under a policy."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE)
    async with _harness(service, clock) as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).collect([EchoRequest()])
        assert info.value.code is StatusCode.UNAVAILABLE
        assert service.seen == [None]


async def test_only_if_not_run_retries_what_certainly_did_not_run() -> None:
    """Check that with only_if_not_run, a server's UNAVAILABLE (it ran) is not retried,
    while a call made before connect() (never sent: may_have_run False) is retried after
    its backoff and succeeds once connected."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE)
    careful = RetryPolicy(
        max_attempts=3,
        initial_backoff=1.0,
        max_backoff=1.0,
        backoff_multiplier=1.0,
        retryable_status_codes=["UNAVAILABLE"],
        jitter=0.0,
        only_if_not_run=True,
    )
    harness = _harness(service, clock, **{"echo.Echo": careful})
    async with harness as client:
        with pytest.raises(RpcError) as info:
            await EchoStub(client).say(EchoRequest())
        assert info.value.may_have_run and service.seen == [None]
        late: Client = harness.new_client()
        try:
            call = EchoStub(late).say(EchoRequest(text="later"))
            await _settle()
            assert not call.done() and call.attempts == 2  # the first failed locally
            await late.connect()
            clock.advance(1.0)
            assert (await call).text == "later"
            assert service.seen == [None, "1"]
        finally:
            await late.close()


class FlakyThenSlow(Flaky):
    """``busy`` requests sleep ``delay_ms`` (real time); others follow the script."""

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        if request.text == "busy":
            await asyncio.sleep(request.delay_ms / 1000)
            return EchoReply(text="busy")
        return await super().say(request, context)


async def test_a_retry_waits_for_stream_credit_within_the_deadline() -> None:
    """Check that a retry due while the connection's stream credit is used up waits for a
    stream (instead of failing or hanging) and then succeeds."""
    clock = FakeClock()
    service = FlakyThenSlow(StatusCode.UNAVAILABLE)
    async with _harness(service, clock) as client:
        stub = EchoStub(client)
        call = stub.say(EchoRequest(text="again"), timeout=60.0)
        await _until(lambda: len(service.seen) == 1)
        await asyncio.sleep(0.1)  # the failed attempt's stream credit comes back

        async def busy() -> str:
            return (await stub.say(EchoRequest(text="busy", delay_ms=300))).text

        # More than the 128 streams the server allows at once: some wait for credit too.
        calls = [asyncio.ensure_future(busy()) for _ in range(130)]
        conn = client.connection
        assert conn is not None
        await _until(lambda: not conn.can_open_stream())
        clock.advance(0.5)  # the retry falls due now, with no stream to open: it waits
        assert not call.done() and call.attempts == 2
        assert await asyncio.gather(*calls) == ["busy"] * 130
        assert (await call).text == "again"
        assert service.seen == [None, "1"]


def _reconnecting_harness(service: Flaky, clock: FakeClock) -> ClientFor:
    once_more = RetryPolicy(
        max_attempts=2,
        initial_backoff=0.5,
        max_backoff=0.5,
        backoff_multiplier=1.0,
        retryable_status_codes=["UNAVAILABLE"],
        jitter=0.0,
    )
    return ClientFor(
        [service],
        clock=clock,
        client_options={
            "retry_policies": {"echo.Echo": once_more},
            "backoff_initial": 1.0,
            "backoff_jitter": 0.0,
        },
    )


@pytest.mark.parametrize("wait_for_ready", [True, False])
async def test_a_retry_due_while_disconnected_honours_wait_for_ready(
    wait_for_ready: bool,
) -> None:
    """Check that a retry falling due while the client is reconnecting waits for the
    connection when the call is wait_for_ready (and then succeeds), and fails at once
    with UNAVAILABLE when it is not, as the call's first attempt would."""
    clock = FakeClock()
    service = Flaky(StatusCode.UNAVAILABLE)
    async with _reconnecting_harness(service, clock) as client:
        call = EchoStub(client).say(
            EchoRequest(text="again"), timeout=60.0, wait_for_ready=wait_for_ready
        )
        await _until(lambda: len(service.seen) == 1)
        await _settle()
        assert client.connection is not None
        client.connection.abort("forced")  # reconnects after 1 s (virtual)
        await _until(lambda: client.state is ClientState.RECONNECTING)
        clock.advance(0.5)  # the retry falls due while there is no connection
        await _settle()
        assert call.attempts == 2
        if not wait_for_ready:
            with pytest.raises(RpcError) as info:
                await call
            assert info.value.code is StatusCode.UNAVAILABLE
            assert service.seen == [None]
            return
        assert not call.done()
        clock.advance(1.0)  # the reconnect delay (1 s from when it noticed) is over
        assert (await asyncio.wait_for(call, 10)).text == "again"
        assert service.seen == [None, "1"]
