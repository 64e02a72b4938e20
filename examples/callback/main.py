"""Acked sends: the server sends, gets a promise at once, and a callback fires on the ack.

PYTHONPATH=generated python -m examples.callback.main
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub

import quicflow
from quicflow import Client, RpcError, ServicerContext, StatusCode
from quicflow.push import ClientChannel, Promise
from quicflow.testing import ClientFor


class Worker(NotifyBase):
    """Accepts jobs, except the ones marked "poison"."""

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        if request.topic == "poison":
            raise RpcError(StatusCode.INVALID_ARGUMENT, f"job {request.seq} is malformed")
        return Ack(client_id="worker-1", seq=request.seq, note=f"job {request.seq} done")

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        return Ack(seq=sum([e.seq async for e in requests]))


def job(seq: int, topic: str) -> Callable[[ClientChannel], Awaitable[Ack]]:
    """What to send: job ``seq`` through the worker's Notify service."""
    return lambda channel: NotifyStub(channel).deliver(Event(seq=seq, topic=topic))


def report(promise: Promise[Ack]) -> None:
    """The callback: called once the client acked (or refused)."""
    error = promise.exception()
    outcome = f"FAILED {error}" if error else promise.result().note
    print(f"  ack for {promise.message_id[:8]}: {outcome}")


async def main() -> None:
    """Send three jobs with callbacks, one of which fails, and wait for the acks."""
    harness = ClientFor([], client_options={"client_id": "observer"})
    async with harness:
        worker = Client(harness.client_config(client_id="worker-1"))
        worker.add_service(Worker())
        await worker.connect()
        try:
            server = harness.server
            promises = [
                server.async_send("worker-1", job(seq, topic), callback=report)
                for seq, topic in ((1, "job"), (2, "poison"), (3, "job"))
            ]
            print(f"sent {len(promises)} jobs; {server.pending_promises} acks pending")
            await asyncio.gather(*(_settled(p) for p in promises))
            print(f"all settled; {server.pending_promises} acks pending")
        finally:
            await worker.close()


async def _settled(promise: Promise[Ack]) -> None:
    with contextlib.suppress(RpcError):
        await promise


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    quicflow.run(main())
