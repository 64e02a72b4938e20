"""The built-in admin service: an operator's view inside a running server.

Served by every `Server` at ``/quicflow.admin.v1.Admin/ListClients``
(``proto/quicflow/admin/v1/admin.proto``); ``quicflow clients`` calls it.

Who may call it: listing clients shows every client's id, address and labels,
so it is closed by default. It answers only when ``ServerConfig.admin_token``
is set, and only to calls whose ``admin-token`` metadata equals that
token (compared in constant time). Without a configured token every call
fails PERMISSION_DENIED; a missing token fails UNAUTHENTICATED, a wrong one
PERMISSION_DENIED. The connection itself must still pass the server's
authenticator, like any call.
"""

from __future__ import annotations

import hmac
import inspect
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, ClassVar

from ..calls import Channel
from ..errors import RpcError
from ..rpc import Cardinality, Handler, Method, Service, unary_unary_handler
from ..sessions import ClientInfo
from ..status import StatusCode
from .admin_pb2 import ClientEntry, ListClientsRequest, ListClientsResponse

if TYPE_CHECKING:
    from ..calls import UnaryUnaryCall
    from ..context import ServicerContext
    from ..metadata import MetadataLike

__all__ = [
    "ADMIN_TOKEN_KEY",
    "LIST_CLIENTS",
    "AdminService",
    "AdminStub",
    "ClientEntry",
    "ListClientsRequest",
    "ListClientsResponse",
]

SERVICE_NAME = "quicflow.admin.v1.Admin"
ADMIN_TOKEN_KEY = "admin-token"
"""The call metadata key that carries the admin token."""

LIST_CLIENTS: Method[ListClientsRequest, ListClientsResponse] = Method(
    f"/{SERVICE_NAME}/ListClients",
    Cardinality.UNARY_UNARY,
    ListClientsRequest.SerializeToString,
    ListClientsRequest.FromString,
    ListClientsResponse.SerializeToString,
    ListClientsResponse.FromString,
)
"""``/quicflow.admin.v1.Admin/ListClients``."""


def _entry(info: ClientInfo) -> ClientEntry:
    return ClientEntry(
        client_id=info.client_id,
        address=info.remote_address,
        labels=dict(info.labels),
        connected_since=info.connected_since,
        last_heartbeat=info.last_heartbeat or 0.0,
        rtt=info.rtt or 0.0,
        state=info.state.value,
        calls_in=info.calls_in,
        calls_out=info.calls_out,
        bytes_in=info.bytes_in,
        bytes_out=info.bytes_out,
        node=info.node,
    )


class AdminService(Service):
    """Serves the admin rpcs for one server.

    ``list_clients`` returns (or, as a coroutine function, resolves to) the
    server's client snapshots; ``admin_token`` is the token callers must
    present (None: the service refuses everyone).
    """

    SERVICE_NAME: ClassVar[str] = SERVICE_NAME

    def __init__(
        self,
        list_clients: Callable[[], list[ClientInfo] | Awaitable[list[ClientInfo]]],
        admin_token: str | None,
    ) -> None:
        self._list_clients = list_clients
        self._token = admin_token.encode() if admin_token else None

    def _authorize(self, context: ServicerContext) -> None:
        if self._token is None:
            raise RpcError(
                StatusCode.PERMISSION_DENIED,
                "the admin service is disabled on this server (set admin_token in its config)",
            )
        given = [v for k, v in context.invocation_metadata() if k == ADMIN_TOKEN_KEY]
        if not given:
            raise RpcError(StatusCode.UNAUTHENTICATED, f"missing {ADMIN_TOKEN_KEY} metadata")
        value = given[0]
        raw = value.encode() if isinstance(value, str) else value
        if not hmac.compare_digest(raw, self._token):
            raise RpcError(StatusCode.PERMISSION_DENIED, "wrong admin token")

    async def list_clients(
        self, request: ListClientsRequest, context: ServicerContext
    ) -> ListClientsResponse:
        """Every connected client, sorted by id (admin token required)."""
        self._authorize(context)
        infos = self._list_clients()
        if inspect.isawaitable(infos):
            infos = await infos
        return ListClientsResponse(clients=[_entry(info) for info in infos])

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        """Map ListClients to its handler."""
        return {LIST_CLIENTS.route: unary_unary_handler(LIST_CLIENTS, self.list_clients)}


class AdminStub:
    """Calls a server's admin service through a `Channel`.

    Example::

        reply = await AdminStub(client).list_clients(
            ListClientsRequest(), metadata=[("admin-token", token)])
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def list_clients(
        self,
        request: ListClientsRequest,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> UnaryUnaryCall[ListClientsResponse]:
        """``/quicflow.admin.v1.Admin/ListClients``: await for the client list."""
        return self._channel.unary_unary(LIST_CLIENTS, request, timeout=timeout, metadata=metadata)
