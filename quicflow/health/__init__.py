"""The built-in health service, with grpc.health.v1 semantics.

Every `Server` serves it at ``/grpc.health.v1.Health/Check``, ``/List`` and
``/Watch`` (``ServerConfig(health=False)`` turns it off, to serve one's own).
The messages come from ``proto/grpc/health/v1/health.proto``: gRPC's file
under its canonical name, with the canonical descriptor. Its classes are
registered in a private descriptor pool, not the default one: gRPC's file is
also registered by grpcio-health-checking (as ``grpc_health/v1/health.proto``),
grpclib (``grpclib/health/v1/health.proto``) and a user's own protoc run
(``grpc/health/v1/health.proto``), and the default pool refuses one symbol
under two file names. So any of those imports beside QuicFlow, in any order;
their classes are not QuicFlow's, but the wire format is the same. The
application sets each service's status through ``server.health``::

    server.health.set("echo.Echo", ServingStatus.SERVING)
    server.health.set("echo.Echo", ServingStatus.NOT_SERVING)  # e.g. a dependency is down

The overall status (service ``""``) starts SERVING. ``Check`` of a service
never set fails NOT_FOUND, as in gRPC; ``Watch`` sends the current status at
once (SERVICE_UNKNOWN for an unknown service) and then every change. When the
server stops (before its GOAWAY), every status turns NOT_SERVING for good, so
watchers learn it first.

`HealthStub` calls the service from a `Client` with the typed messages
`HealthCheckRequest` / `HealthCheckResponse`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, ClassVar

from ..calls import Channel
from ..errors import RpcError
from ..rpc import (
    Cardinality,
    Handler,
    Method,
    Service,
    unary_stream_handler,
    unary_unary_handler,
)
from ..status import StatusCode
from .health_pb2 import (
    HealthCheckRequest,
    HealthCheckResponse,
    HealthListRequest,
    HealthListResponse,
)

if TYPE_CHECKING:
    from ..calls import UnaryStreamCall, UnaryUnaryCall
    from ..context import ServicerContext
    from ..metadata import MetadataLike

__all__ = [
    "CHECK",
    "LIST",
    "WATCH",
    "HealthCheckRequest",
    "HealthCheckResponse",
    "HealthListRequest",
    "HealthListResponse",
    "HealthService",
    "HealthStub",
    "ServingStatus",
]

SERVICE_NAME = "grpc.health.v1.Health"


class ServingStatus(enum.IntEnum):
    """``HealthCheckResponse.ServingStatus``: the same numbers as gRPC."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3
    """Only sent by Watch: the server knows no status for that service (yet)."""


CHECK: Method[HealthCheckRequest, HealthCheckResponse] = Method(
    f"/{SERVICE_NAME}/Check",
    Cardinality.UNARY_UNARY,
    HealthCheckRequest.SerializeToString,
    HealthCheckRequest.FromString,
    HealthCheckResponse.SerializeToString,
    HealthCheckResponse.FromString,
)
"""``/grpc.health.v1.Health/Check``."""

LIST: Method[HealthListRequest, HealthListResponse] = Method(
    f"/{SERVICE_NAME}/List",
    Cardinality.UNARY_UNARY,
    HealthListRequest.SerializeToString,
    HealthListRequest.FromString,
    HealthListResponse.SerializeToString,
    HealthListResponse.FromString,
)
"""``/grpc.health.v1.Health/List``."""

WATCH: Method[HealthCheckRequest, HealthCheckResponse] = Method(
    f"/{SERVICE_NAME}/Watch",
    Cardinality.UNARY_STREAM,
    HealthCheckRequest.SerializeToString,
    HealthCheckRequest.FromString,
    HealthCheckResponse.SerializeToString,
    HealthCheckResponse.FromString,
)
"""``/grpc.health.v1.Health/Watch``."""


class _Watcher:
    """One Watch call: the newest status not yet sent, and a wake-up."""

    __slots__ = ("event", "latest")

    def __init__(self, status: ServingStatus) -> None:
        self.latest = status
        self.event = asyncio.Event()
        self.event.set()


class HealthService(Service):
    """The statuses a server reports, and the service that reports them.

    A `Server` makes one (``server.health``) and serves it; use `set` and
    `clear` from the application. Statuses changes are kept per service; a
    slow watcher gets the newest status, not every intermediate one.
    """

    SERVICE_NAME: ClassVar[str] = SERVICE_NAME

    def __init__(self) -> None:
        self._statuses: dict[str, ServingStatus] = {"": ServingStatus.SERVING}
        self._watchers: dict[str, set[_Watcher]] = {}
        self._shut_down = False

    # -- application side --

    def set(self, service: str, status: ServingStatus) -> None:
        """Set ``service``'s status ("" is the server as a whole) and tell its watchers.

        After `shutdown` this does nothing: a stopping server stays NOT_SERVING.

        Raises:
            ValueError: ``status`` is SERVICE_UNKNOWN (only Watch reports that).
        """
        status = ServingStatus(status)
        if status is ServingStatus.SERVICE_UNKNOWN:
            raise ValueError("SERVICE_UNKNOWN is reported by Watch, it cannot be set")
        if self._shut_down:
            return
        self._statuses[service] = status
        self._notify(service, status)

    def clear(self, service: str) -> None:
        """Forget ``service``: Check answers NOT_FOUND, watchers get SERVICE_UNKNOWN."""
        if self._shut_down or self._statuses.pop(service, None) is None:
            return
        self._notify(service, ServingStatus.SERVICE_UNKNOWN)

    def get(self, service: str) -> ServingStatus | None:
        """``service``'s current status; None if it was never set (or cleared)."""
        return self._statuses.get(service)

    @property
    def statuses(self) -> Mapping[str, ServingStatus]:
        """A copy of every known status, by service name."""
        return dict(self._statuses)

    def shutdown(self) -> None:
        """Turn every status NOT_SERVING and ignore later `set` calls (the server stops)."""
        for service in self._statuses:
            self._statuses[service] = ServingStatus.NOT_SERVING
            self._notify(service, ServingStatus.NOT_SERVING)
        self._shut_down = True

    def _notify(self, service: str, status: ServingStatus) -> None:
        for watcher in self._watchers.get(service, ()):
            watcher.latest = status
            watcher.event.set()

    # -- the rpcs --

    async def check(
        self, request: HealthCheckRequest, context: ServicerContext
    ) -> HealthCheckResponse:
        """Answer the current status, or fail NOT_FOUND for an unknown service."""
        status = self._statuses.get(request.service)
        if status is None:
            raise RpcError(StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return HealthCheckResponse(status=int(status))  # type: ignore[arg-type]

    async def list(
        self, request: HealthListRequest, context: ServicerContext
    ) -> HealthListResponse:
        """Answer every known status, by service name."""
        return HealthListResponse(
            statuses={
                name: HealthCheckResponse(status=int(status))  # type: ignore[arg-type]
                for name, status in self._statuses.items()
            }
        )

    async def watch(
        self, request: HealthCheckRequest, context: ServicerContext
    ) -> AsyncIterator[HealthCheckResponse]:
        """Send the current status, then each change, until the caller cancels."""
        service = request.service
        watcher = _Watcher(self._statuses.get(service, ServingStatus.SERVICE_UNKNOWN))
        self._watchers.setdefault(service, set()).add(watcher)
        sent: ServingStatus | None = None
        try:
            while True:
                await watcher.event.wait()
                watcher.event.clear()
                status = watcher.latest
                if status is not sent:
                    sent = status
                    yield HealthCheckResponse(status=int(status))  # type: ignore[arg-type]
        finally:
            watchers = self._watchers.get(service)
            if watchers is not None:
                watchers.discard(watcher)
                if not watchers:
                    del self._watchers[service]

    def __quicflow_handlers__(self) -> Mapping[str, Handler]:
        """Map Check, List and Watch to their handlers."""
        return {
            CHECK.route: unary_unary_handler(CHECK, self.check),
            LIST.route: unary_unary_handler(LIST, self.list),
            WATCH.route: unary_stream_handler(WATCH, self.watch),
        }


class HealthStub:
    """Calls a server's health service through a `Channel` (usually a `Client`).

    Example::

        reply = await HealthStub(client).check(HealthCheckRequest(service=""), timeout=2)
        async for reply in HealthStub(client).watch(HealthCheckRequest(service="echo.Echo")):
            print(ServingStatus(reply.status).name)
    """

    def __init__(self, channel: Channel) -> None:
        self._channel = channel

    def check(
        self,
        request: HealthCheckRequest,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
    ) -> UnaryUnaryCall[HealthCheckResponse]:
        """``/grpc.health.v1.Health/Check``: await for the current status."""
        return self._channel.unary_unary(
            CHECK, request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready
        )

    def list(
        self,
        request: HealthListRequest,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
    ) -> UnaryUnaryCall[HealthListResponse]:
        """``/grpc.health.v1.Health/List``: await for every known status."""
        return self._channel.unary_unary(
            LIST, request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready
        )

    def watch(
        self,
        request: HealthCheckRequest,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
        wait_for_ready: bool | None = None,
    ) -> UnaryStreamCall[HealthCheckResponse]:
        """``/grpc.health.v1.Health/Watch``: iterate for the current status and each change."""
        return self._channel.unary_stream(
            WATCH, request, timeout=timeout, metadata=metadata, wait_for_ready=wait_for_ready
        )
