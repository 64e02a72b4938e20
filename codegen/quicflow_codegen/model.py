"""The model the templates render: what one generated module contains.

``parse`` builds it from protoc's descriptors and ``naming`` decides every
Python spelling in it, so rendering is a plain walk over these values.
Everything is a frozen, slotted dataclass and every collection a tuple, so
a model compares by value and cannot change once built.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Cardinality", "DynamicImport", "File", "Import", "Method", "Service", "TypeRef"]


class Cardinality(enum.Enum):
    """The four call kinds, named as ``quicflow.Cardinality`` names them."""

    UNARY_UNARY = "unary_unary"
    UNARY_STREAM = "unary_stream"
    STREAM_UNARY = "stream_unary"
    STREAM_STREAM = "stream_stream"

    @classmethod
    def of(cls, client_streaming: bool, server_streaming: bool) -> Cardinality:
        """The kind of an rpc with the given ``stream`` markers."""
        if client_streaming:
            return cls.STREAM_STREAM if server_streaming else cls.STREAM_UNARY
        return cls.UNARY_STREAM if server_streaming else cls.UNARY_UNARY

    @property
    def call_class(self) -> str:
        """The ``quicflow`` call object a stub method returns (``UnaryUnaryCall``)."""
        return "".join(part.capitalize() for part in self.value.split("_")) + "Call"

    @property
    def client_streams(self) -> bool:
        """True when the caller sends a stream of requests."""
        return self in (Cardinality.STREAM_UNARY, Cardinality.STREAM_STREAM)

    @property
    def server_streams(self) -> bool:
        """True when the callee answers with a stream of responses."""
        return self in (Cardinality.UNARY_STREAM, Cardinality.STREAM_STREAM)


@dataclass(frozen=True, slots=True)
class Import:
    """One ``from <module> import <name> [as <alias>]`` line of the header."""

    module: str
    """Absolute (``echo.echo_pb2``) or relative (``.``, ``..other``) module."""
    name: str
    alias: str
    """The local name; equal to ``name`` when no alias is needed."""


@dataclass(frozen=True, slots=True)
class DynamicImport:
    """A message class that no ``import`` statement can name.

    Its module path or its own name holds a Python keyword (``from/v1/s.proto``,
    ``message None``), so, as protoc's own output does, the module is loaded
    with ``importlib.import_module`` and the class reached by attribute access
    (``getattr`` for a keyword): ``alias: Any = getattr(_FROM_V1_S_PB2, "None")``.
    mypy cannot name such a class either, so it is ``Any`` in annotations.
    """

    module: str
    """Absolute (``from.v1.s_pb2``) or relative (``..p.import``, to ``__package__``)."""
    module_var: str
    """The module-level name holding the imported module (``_FROM_V1_S_PB2``)."""
    path: tuple[str, ...]
    """The class's name in the module, outer classes first (``("None", "from")``)."""
    alias: str
    """The module-level name holding the class."""


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A message type as the generated module spells it."""

    proto_name: str
    """Fully qualified, with the leading dot: ``.echo.EchoRequest``."""
    expr: str
    """The class in annotations, e.g. ``EchoRequest``, ``Outer.Inner`` (``Any`` if dynamic)."""
    serialize: str
    """The function from a message to bytes (``EchoRequest.SerializeToString``)."""
    deserialize: str
    """The function from bytes to a message (``EchoRequest.FromString``)."""


@dataclass(frozen=True, slots=True)
class Method:
    """One rpc."""

    proto_name: str
    """The rpc's name in the proto (``Say``)."""
    py_name: str
    """The snake_case method name on the stub and the base (``say``)."""
    const_name: str
    """The module-level ``quicflow.Method`` constant (``_ECHO_SAY``)."""
    route: str
    """``/package.Service/Method``, in the proto's spelling."""
    cardinality: Cardinality
    input: TypeRef
    output: TypeRef
    doc: str
    """The rpc's leading proto comment, dedented; empty if none."""
    deprecated: bool = False
    """``option deprecated = true`` on the rpc: its stub method warns."""


@dataclass(frozen=True, slots=True)
class Service:
    """One service and its rpcs, in declaration order."""

    proto_name: str
    """The service's name in the proto (``Echo``)."""
    full_name: str
    """``package.Service`` (``echo.Echo``): the service part of every route."""
    stub_name: str
    base_name: str
    methods: tuple[Method, ...]
    doc: str
    """The service's leading proto comment, dedented; empty if none."""
    deprecated: bool = False
    """``option deprecated = true`` on the service: its stub warns when made."""


@dataclass(frozen=True, slots=True)
class File:
    """One generated module, written for one ``.proto`` file with services."""

    source: str
    """The ``.proto`` path as protoc names it (``echo/echo.proto``)."""
    output: str
    """The path protoc writes the module to (``echo/echo_quicflow.py``)."""
    package: str
    services: tuple[Service, ...]
    imports: tuple[Import, ...]
    """Message imports, in the order parse met them (render sorts them)."""
    dynamic: tuple[DynamicImport, ...] = ()
    """Message classes reached through ``importlib`` (keywords in their names)."""
