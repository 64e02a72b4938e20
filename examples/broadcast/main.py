"""A server broadcasting an event to several clients and printing what each did.

Runs a server and five clients in one process (over real QUIC on loopback):
three acknowledge, one refuses, one is too slow; the broadcast reports each.

    PYTHONPATH=generated python -m examples.broadcast.main
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

from notify.notify_pb2 import Ack, Event
from notify.notify_quicflow import NotifyBase, NotifyStub

import quicflow
from quicflow import Client, RpcError, ServicerContext, StatusCode
from quicflow.push import ClientChannel
from quicflow.testing import ClientFor


class Display(NotifyBase):
    """A client's screen: shows events; one refuses them, one is slow."""

    def __init__(self, name: str, mood: str = "ok") -> None:
        self.name = name
        self.mood = mood

    async def deliver(self, request: Event, context: ServicerContext) -> Ack:
        if self.mood == "grumpy":
            raise RpcError(StatusCode.FAILED_PRECONDITION, f"{self.name} is not listening")
        if self.mood == "slow":
            await asyncio.sleep(2)
        return Ack(client_id=self.name, seq=request.seq, note=f"showed {request.text!r}")

    async def feed(self, requests: AsyncIterator[Event], context: ServicerContext) -> Ack:
        return Ack(client_id=self.name, seq=sum([e.seq async for e in requests]))


async def main() -> None:
    """Connect five clients, broadcast once, print per-client results."""
    moods = {"kitchen": "ok", "hall": "ok", "garage": "ok", "attic": "grumpy", "cellar": "slow"}
    harness = ClientFor([], client_options={"client_id": "observer"})
    async with harness:
        clients: list[Client] = []
        for name, mood in moods.items():
            client = Client(harness.client_config(client_id=name, labels={"room": "yes"}))
            client.add_service(Display(name, mood))
            await client.connect()
            clients.append(client)
        try:

            async def show(channel: ClientChannel) -> Ack:
                return await NotifyStub(channel).deliver(Event(text="dinner is ready", seq=1))

            result = await harness.server.broadcast(
                show, labels={"room": "yes"}, client_timeout=0.5
            )
            print(f"broadcast to {len(result)} clients:")
            for client_id, delivery in sorted(result.deliveries.items()):
                if delivery.reply is not None:
                    detail = delivery.reply.note
                else:
                    detail = f"{delivery.code.name}: {delivery.message}"
                print(f"  {client_id:8} {delivery.status.value:9} {detail}")
            print(
                f"delivered {result.delivered}, failed {result.failed}, "
                f"timed out {result.timed_out}"
            )
        finally:
            for client in clients:
                await client.close()


if __name__ == "__main__":
    logging.basicConfig(level=logging.ERROR)
    quicflow.run(main())
