"""`Client`: one long-lived QUIC connection that generated stubs call through."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterable, Iterable
from typing import TypeVar

from .calls import StreamStreamCall, StreamUnaryCall, UnaryStreamCall, UnaryUnaryCall
from .config import ClientConfig
from .errors import ConnectionClosed, UsageError
from .interceptors import ClientInterceptor
from .metadata import MetadataLike
from .rpc import Method
from .transport import QuicFlowProtocol, connect
from .transport.tls import client_configuration
from .wire.codec import ErrorCode

__all__ = ["Client"]

logger = logging.getLogger("quicflow.client")

Req = TypeVar("Req")
Resp = TypeVar("Resp")


class Client:
    """A connection to a QuicFlow server; pass it to any generated stub.

    Example::

        config = ClientConfig(host="127.0.0.1", port=port, ca_file="certs/ca.pem",
                              server_name="localhost")
        async with Client(config) as client:
            stub = EchoStub(client)
            reply = await stub.say(EchoRequest(text="hi"), timeout=2.0)

    The event loop is bound on `connect`, not in the constructor, so a Client
    may be built outside a running loop. If the connection is lost, calls in
    flight fail with UNAVAILABLE at once and new calls fail the same way.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._conn: QuicFlowProtocol | None = None
        self._closing = False
        self._interceptors: tuple[ClientInterceptor, ...] = tuple(config.interceptors)

    # -- CallTarget --

    @property
    def max_message_size(self) -> int:
        return self.config.max_message_size

    @property
    def max_metadata_size(self) -> int:
        return self.config.max_metadata_size

    @property
    def default_timeout(self) -> float | None:
        return self.config.default_timeout

    @property
    def interceptors(self) -> tuple[ClientInterceptor, ...]:
        return self._interceptors

    def connection_for_call(self) -> QuicFlowProtocol:
        conn = self._conn
        if conn is None:
            if self._closing:
                raise ConnectionClosed(message="the client is closed")
            raise ConnectionClosed(message="the client is not connected (call connect() first)")
        if conn.closed_error is not None:
            raise ConnectionClosed(message=conn.closed_error.message)
        return conn

    # -- lifecycle --

    @property
    def connected(self) -> bool:
        """True while the QUIC connection is up."""
        return self._conn is not None and self._conn.closed_error is None

    @property
    def connection(self) -> QuicFlowProtocol | None:
        """The current QUIC connection (for diagnostics)."""
        return self._conn

    async def connect(self) -> None:
        """Connect and finish the TLS 1.3 handshake.

        Raises:
            ConnectionClosed: the server is unreachable, refused the handshake
                (bad certificate, wrong ALPN), or did not answer within
                ``connect_timeout``.
            UsageError: already connected, or closed.
        """
        if self._closing:
            raise UsageError("client is closed")
        if self.connected:
            raise UsageError("client is already connected")
        c = self.config
        quic_config = client_configuration(
            server_name=c.server_name or c.host,
            ca_file=c.ca_file,
            insecure_skip_verify=c.insecure_skip_verify,
        )
        self._conn = await connect(
            c.host, c.port, quic_config, c.transport_settings(), connect_timeout=c.connect_timeout
        )
        logger.debug("connected to %s:%d", c.host, c.port)

    async def close(self, grace: float | None = None) -> None:
        """Close the connection. Calls still in flight fail with UNAVAILABLE.

        With ``grace``, waits up to that many seconds for calls in flight to
        finish first. Idempotent.
        """
        self._closing = True
        conn = self._conn
        if conn is None:
            return
        if grace and conn.stream_count:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(grace):
                    await conn.wait_idle()
        self._conn = None
        await conn.aclose(ErrorCode.NO_ERROR, "client closed")

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- Channel --

    def unary_unary(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> UnaryUnaryCall[Resp]:
        """Start a unary call; await the result for the response."""
        return UnaryUnaryCall(self, method, request, timeout, metadata)

    def unary_stream(
        self,
        method: Method[Req, Resp],
        request: Req,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> UnaryStreamCall[Resp]:
        """Start a server-streaming call; iterate the result for responses."""
        return UnaryStreamCall(self, method, request, timeout, metadata)

    def stream_unary(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> StreamUnaryCall[Resp]:
        """Start a client-streaming call; await the result for the response."""
        return StreamUnaryCall(self, method, requests, timeout, metadata)

    def stream_stream(
        self,
        method: Method[Req, Resp],
        requests: AsyncIterable[Req] | Iterable[Req],
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> StreamStreamCall[Resp]:
        """Start a bidirectional call; iterate the result for responses."""
        return StreamStreamCall(self, method, requests, timeout, metadata)

    def __repr__(self) -> str:
        state = "connected" if self.connected else ("closed" if self._closing else "idle")
        return f"<Client {self.config.host}:{self.config.port} {state}>"
