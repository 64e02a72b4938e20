"""QuicFlow: gRPC-style RPC over QUIC (work in progress)."""

from .calls import StreamStreamCall, StreamUnaryCall, UnaryStreamCall, UnaryUnaryCall
from .context import ServicerContext
from .errors import RpcError, UsageError
from .metadata import Metadata, MetadataLike
from .rpc import (
    Cardinality,
    Channel,
    Handler,
    Method,
    Service,
    stream_stream_handler,
    stream_unary_handler,
    unary_stream_handler,
    unary_unary_handler,
    unimplemented,
    unimplemented_stream,
)
from .status import StatusCode

__all__ = [
    "Cardinality",
    "Channel",
    "Handler",
    "Metadata",
    "MetadataLike",
    "Method",
    "RpcError",
    "Service",
    "ServicerContext",
    "StatusCode",
    "StreamStreamCall",
    "StreamUnaryCall",
    "UnaryStreamCall",
    "UnaryUnaryCall",
    "UsageError",
    "stream_stream_handler",
    "stream_unary_handler",
    "unary_stream_handler",
    "unary_unary_handler",
    "unimplemented",
    "unimplemented_stream",
]
