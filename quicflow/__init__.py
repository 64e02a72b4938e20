"""QuicFlow: gRPC-style RPC over QUIC for asyncio.

Write a ``.proto`` service, run ``make gen``, implement the generated
``FooBase`` on a `Server` and call it through ``FooStub(client)``. See
docs/overview.md. The lower layers stay importable for anyone writing a
compatible peer: `quicflow.wire` (bytes) and `quicflow.protocol` (call state).
"""

from .auth import (
    CertificateAuthenticator,
    HelloInfo,
    MethodAuthorizer,
    PeerInfo,
    TokenAuthenticator,
    allow_all,
)
from .calls import Channel, StreamStreamCall, StreamUnaryCall, UnaryStreamCall, UnaryUnaryCall
from .client import Client, ClientState
from .config import ClientConfig, ServerConfig
from .context import ServicerContext, current_call, detached
from .errors import (
    ArgumentError,
    ClientNotConnected,
    ConfigError,
    ConnectionClosed,
    PayloadTooLarge,
    PromiseCapacityFull,
    RpcError,
    Timeout,
    UsageError,
)
from .hooks import Hooks
from .interceptors import ClientCallInfo, ClientInterceptor, ServerInterceptor
from .loop import run
from .metadata import Metadata, MetadataLike, MetadataValue
from .metrics import LatencySummary, MethodMetrics, MetricsSnapshot, Throughput
from .retry import RetryPolicy
from .rpc import (
    Cardinality,
    Handler,
    Method,
    RequestIterable,
    Service,
    stream_stream_handler,
    stream_unary_handler,
    unary_stream_handler,
    unary_unary_handler,
    unimplemented,
    unimplemented_stream,
)
from .server import Server
from .sessions import ClientInfo
from .status import StatusCode

__version__ = "0.1.0"

__all__ = [
    # client
    "Client",
    "ClientState",
    "UnaryUnaryCall",
    "UnaryStreamCall",
    "StreamUnaryCall",
    "StreamStreamCall",
    "ClientInterceptor",
    "ClientCallInfo",
    # server
    "Server",
    "ClientInfo",
    "TokenAuthenticator",
    "CertificateAuthenticator",
    "MethodAuthorizer",
    "HelloInfo",
    "PeerInfo",
    "allow_all",
    "Hooks",
    "ServicerContext",
    "ServerInterceptor",
    "current_call",
    "detached",
    # config
    "ClientConfig",
    "ServerConfig",
    "RetryPolicy",
    # event loop
    "run",
    # status and errors
    "StatusCode",
    "RpcError",
    "ConnectionClosed",
    "ClientNotConnected",
    "PayloadTooLarge",
    "PromiseCapacityFull",
    "Timeout",
    "UsageError",
    "ArgumentError",
    "ConfigError",
    # metrics
    "MetricsSnapshot",
    "MethodMetrics",
    "LatencySummary",
    "Throughput",
    # metadata
    "Metadata",
    "MetadataLike",
    "MetadataValue",
    # generated-code surface
    "Cardinality",
    "Channel",
    "Handler",
    "Method",
    "RequestIterable",
    "Service",
    "unary_unary_handler",
    "unary_stream_handler",
    "stream_unary_handler",
    "stream_stream_handler",
    "unimplemented",
    "unimplemented_stream",
]
