"""Untyped messages: a type string, payload bytes and metadata, in both directions.

Alongside generated services, clients and servers can exchange dynamic
messages. Both sides register handlers by message type::

    server.register_handler("alert", lambda message: b"seen " + message.payload)
    ack = await client.send_message("alert", b"disk full")            # b"seen disk full"
    await server.send_to("sensor-1", "reboot", b"", wait_ack=False)   # fire and forget
    result = await server.broadcast(lambda ch: ch.send_message("alert", b"storm"))

On the wire an acked message is one call to the built-in unary method
``/quicflow.wire.v1.Messaging/Deliver`` (docs/wire-protocol.md §11), so it has
the same deadlines, status codes and flow control as any call. A one-way
message (``wait_ack=False``) goes on the connection's message lane instead
when both sides support it (quicflow/lane.py, §11.1). The receiver
runs handlers through a `Dispatcher`: a bounded worker pool and queue (full:
RESOURCE_EXHAUSTED back to the sender at once) with a per-handler timeout.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Final

from .context import ServicerContext
from .dispatch import Dispatcher, Message
from .rpc import Cardinality, Handler, Method, Service, unary_unary_handler
from .wire.v1 import frames_pb2 as pb

__all__ = ["DELIVER", "ROUTE", "MessagingService"]

ROUTE: Final = "/quicflow.wire.v1.Messaging/Deliver"
"""The built-in route untyped messages travel on."""

DELIVER: Final[Method[pb.RawMessage, pb.RawAck]] = Method(
    ROUTE,
    Cardinality.UNARY_UNARY,
    pb.RawMessage.SerializeToString,
    pb.RawMessage.FromString,
    pb.RawAck.SerializeToString,
    pb.RawAck.FromString,
)


class MessagingService(Service):
    """The built-in receiver of untyped messages: hands each to a `Dispatcher`."""

    SERVICE_NAME = "quicflow.wire.v1.Messaging"

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def deliver(self, request: pb.RawMessage, context: ServicerContext) -> pb.RawAck:
        """Dispatch one message; the handler's reply bytes become the ack."""
        message = Message(
            type=request.type,
            payload=request.payload,
            metadata=context.invocation_metadata(),
            message_id=_message_id_bytes(context.message_id),
            sender=context.client_id,
        )
        return pb.RawAck(payload=await self.dispatcher.dispatch(message))

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        return {ROUTE: unary_unary_handler(DELIVER, self.deliver)}


def _message_id_bytes(message_id: str | None) -> bytes:
    """The 16 bytes of a call's message id (`ServicerContext.message_id`), or b"" without."""
    return uuid.UUID(message_id).bytes if message_id is not None else b""
