"""Interceptors: one API that sees every call kind, on both sides.

An interceptor is an object with four hooks; override the ones you need.
They run for unary and streaming calls alike, so auth, metrics and tracing
are written once (PEERS.md ask 12):

* ``on_start`` runs before the call's first byte (client) or before the
  handler (server). It may add metadata (client) or raise `RpcError` to
  refuse the call with that status (e.g. UNAUTHENTICATED on the server).
* ``on_message_sent`` / ``on_message_received`` see each message object.
* ``on_end`` sees the final status exactly once.

Interceptors run in the order given, ``on_end`` in reverse. A hook that
raises anything but `RpcError` fails the call with UNKNOWN (client) or
INTERNAL (server) and is logged; it never breaks the connection.

Example::

    class Auth(ServerInterceptor):
        async def on_start(self, context: ServicerContext) -> None:
            if ("authorization", "Bearer s3cret") not in context.invocation_metadata():
                raise RpcError(StatusCode.UNAUTHENTICATED, "bad token")
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .metadata import MetadataValue
from .rpc import Cardinality
from .status import StatusCode

if TYPE_CHECKING:
    from .context import ServicerContext

__all__ = ["ClientCallInfo", "ClientInterceptor", "ServerInterceptor"]


@dataclass(slots=True)
class ClientCallInfo:
    """A client call as interceptors see it; ``metadata`` and ``timeout`` may be changed in
    ``on_start``."""

    route: str
    cardinality: Cardinality
    metadata: list[tuple[str, MetadataValue]] = field(default_factory=list)
    timeout: float | None = None


class ClientInterceptor:
    """Base class for client interceptors (every hook is a no-op)."""

    async def on_start(self, call: ClientCallInfo) -> None:
        """Before the call is sent. Raise `RpcError` to fail it without sending."""

    def on_message_sent(self, call: ClientCallInfo, message: object) -> None:
        """After a request message is handed to the transport."""

    def on_message_received(self, call: ClientCallInfo, message: object) -> None:
        """After a response message is decoded."""

    def on_retry(self, call: ClientCallInfo, attempt: int, code: StatusCode, message: str) -> None:
        """Attempt number ``attempt`` (from 1) failed with ``code`` and another attempt
        follows after its backoff (quicflow/retry.py); ``on_end`` still comes once, at
        the end of the last attempt."""

    def on_end(self, call: ClientCallInfo, code: StatusCode, message: str) -> None:
        """Once, when the call ends (``code`` is OK on success)."""


class ServerInterceptor:
    """Base class for server interceptors (every hook is a no-op)."""

    async def on_start(self, context: ServicerContext) -> None:
        """Before the handler runs. Raise `RpcError` to refuse the call with its status."""

    def on_message_received(self, context: ServicerContext, message: object) -> None:
        """After a request message is decoded."""

    def on_message_sent(self, context: ServicerContext, message: object) -> None:
        """After a response message is handed to the transport."""

    def on_end(self, context: ServicerContext, code: StatusCode, message: str) -> None:
        """Once, when the call ends, with the status sent to the client."""
