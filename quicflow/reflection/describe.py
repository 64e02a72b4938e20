"""Descriptors as ``.proto``-like text: what ``quicflow describe`` prints.

The text is for people, not for protoc: comments are not available
(reflection sends descriptors without source info), options are left out,
and type names are written in full (``echo.EchoRequest``).
"""

from __future__ import annotations

from google.protobuf import descriptor_pool
from google.protobuf.descriptor import (
    Descriptor,
    EnumDescriptor,
    FieldDescriptor,
    MethodDescriptor,
    ServiceDescriptor,
)

__all__ = ["describe", "find_symbol"]

Symbol = ServiceDescriptor | MethodDescriptor | Descriptor | EnumDescriptor | FieldDescriptor

_SCALARS = {
    FieldDescriptor.TYPE_DOUBLE: "double",
    FieldDescriptor.TYPE_FLOAT: "float",
    FieldDescriptor.TYPE_INT64: "int64",
    FieldDescriptor.TYPE_UINT64: "uint64",
    FieldDescriptor.TYPE_INT32: "int32",
    FieldDescriptor.TYPE_FIXED64: "fixed64",
    FieldDescriptor.TYPE_FIXED32: "fixed32",
    FieldDescriptor.TYPE_BOOL: "bool",
    FieldDescriptor.TYPE_STRING: "string",
    FieldDescriptor.TYPE_BYTES: "bytes",
    FieldDescriptor.TYPE_UINT32: "uint32",
    FieldDescriptor.TYPE_SFIXED32: "sfixed32",
    FieldDescriptor.TYPE_SFIXED64: "sfixed64",
    FieldDescriptor.TYPE_SINT32: "sint32",
    FieldDescriptor.TYPE_SINT64: "sint64",
}


def find_symbol(pool: descriptor_pool.DescriptorPool, name: str) -> Symbol | None:
    """The service, method, message, enum, field or extension named ``name`` (leading dot
    allowed), or None."""
    name = name.lstrip(".")
    finders = (
        pool.FindServiceByName,
        pool.FindMessageTypeByName,
        pool.FindEnumTypeByName,
        pool.FindExtensionByName,
        pool.FindFieldByName,
    )
    for find in finders:
        try:
            found: Symbol = find(name)
            return found
        except KeyError:
            continue
    parent, _, child = name.rpartition(".")
    try:
        service = pool.FindServiceByName(parent)
    except KeyError:
        return None
    method: MethodDescriptor | None = service.methods_by_name.get(child)
    return method


def _type(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        entry = field.message_type
        if entry.GetOptions().map_entry:
            key, value = entry.fields_by_name["key"], entry.fields_by_name["value"]
            return f"map<{_type(key)}, {_type(value)}>"
        return str(entry.full_name)
    if field.enum_type is not None:
        return str(field.enum_type.full_name)
    return _SCALARS.get(field.type, "?")


def _field(field: FieldDescriptor) -> str:
    is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
    label = ""
    if field.is_repeated and not is_map:
        label = "repeated "
    elif field.has_presence and field.containing_oneof is None and field.message_type is None:
        label = "optional "  # proto2's optional scalars
    return f"{label}{_type(field)} {field.name} = {field.number};"


def _method(method: MethodDescriptor) -> str:
    request = ("stream " if method.client_streaming else "") + method.input_type.full_name
    response = ("stream " if method.server_streaming else "") + method.output_type.full_name
    return f"rpc {method.name}({request}) returns ({response});"


def _enum(enum: EnumDescriptor, indent: str) -> list[str]:
    lines = [f"{indent}enum {enum.name} {{"]
    lines += [f"{indent}  {value.name} = {value.number};" for value in enum.values]
    return [*lines, f"{indent}}}"]


def _message(message: Descriptor, indent: str) -> list[str]:
    lines = [f"{indent}message {message.name} {{"]
    inner = indent + "  "
    for nested in message.nested_types:
        if not nested.GetOptions().map_entry:
            lines += _message(nested, inner)
    for enum in message.enum_types:
        lines += _enum(enum, inner)
    oneofs_done: set[str] = set()
    for field in message.fields:
        oneof = field.containing_oneof
        if oneof is not None and not (len(oneof.fields) == 1 and field.has_presence):
            if oneof.name in oneofs_done:
                continue
            oneofs_done.add(oneof.name)
            lines.append(f"{inner}oneof {oneof.name} {{")
            lines += [f"{inner}  {_field(f)}" for f in oneof.fields]
            lines.append(f"{inner}}}")
        elif oneof is not None:  # proto3 optional: a synthetic oneof of one field
            lines.append(f"{inner}optional {_type(field)} {field.name} = {field.number};")
        else:
            lines.append(f"{inner}{_field(field)}")
    return [*lines, f"{indent}}}"]


def describe(symbol: Symbol) -> str:
    """``symbol`` as a heading line (its full name, kind and file) and its definition."""
    if isinstance(symbol, ServiceDescriptor):
        body = [f"service {symbol.name} {{", *(f"  {_method(m)}" for m in symbol.methods), "}"]
        kind, file = "a service", symbol.file
    elif isinstance(symbol, MethodDescriptor):
        body = [_method(symbol)]
        kind, file = "a method", symbol.containing_service.file
    elif isinstance(symbol, Descriptor):
        body = _message(symbol, "")
        kind, file = "a message", symbol.file
    elif isinstance(symbol, EnumDescriptor):
        body = _enum(symbol, "")
        kind, file = "an enum", symbol.file
    else:
        extendee = symbol.containing_type
        if symbol.is_extension and extendee is not None:
            body = [f"extend {extendee.full_name} {{", f"  {_field(symbol)}", "}"]
        else:
            body = [_field(symbol)]
        kind = "an extension" if symbol.is_extension else "a field"
        file = symbol.file  # type: ignore[attr-defined]  # missing from protobuf's stubs
    return "\n".join([f"{symbol.full_name} is {kind} ({file.name}):", *body])
