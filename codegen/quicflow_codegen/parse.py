"""From protoc's ``CodeGeneratorRequest`` to the model.

Only the files protoc asks for (``file_to_generate``) that declare services
produce a `File`; every other file in the request is read only to find where
a request or response type is defined.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest
from google.protobuf.descriptor_pb2 import DescriptorProto, FileDescriptorProto

from . import naming
from .model import Cardinality, File, Import, Method, Service, TypeRef
from .options import Options

__all__ = ["ParseError", "parse_request"]

# Field numbers used in SourceCodeInfo paths (descriptor.proto).
_FILE_SERVICE = 6
_SERVICE_METHOD = 2


class ParseError(ValueError):
    """The request cannot be turned into a model; the message says why."""


@dataclass(frozen=True, slots=True)
class _TypeInfo:
    proto: str
    package: str
    path: tuple[str, ...]


def _index_messages(files: list[FileDescriptorProto]) -> dict[str, _TypeInfo]:
    """Map each message's full name (``.pkg.Outer.Inner``) to where it is defined."""
    index: dict[str, _TypeInfo] = {}

    def walk(
        fd: FileDescriptorProto, prefix: str, path: tuple[str, ...], msg: DescriptorProto
    ) -> None:
        full = f"{prefix}.{msg.name}"
        index[full] = _TypeInfo(fd.name, fd.package, (*path, msg.name))
        for nested in msg.nested_type:
            walk(fd, full, (*path, msg.name), nested)

    for fd in files:
        prefix = f".{fd.package}" if fd.package else ""
        for msg in fd.message_type:
            walk(fd, prefix, (), msg)
    return index


def _comments(fd: FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments by SourceCodeInfo path, dedented and stripped."""
    out: dict[tuple[int, ...], str] = {}
    for loc in fd.source_code_info.location:
        if loc.leading_comments:
            lines = [line.rstrip() for line in loc.leading_comments.expandtabs().splitlines()]
            out[tuple(loc.path)] = textwrap.dedent("\n".join(lines)).strip("\n")
    return out


class _Imports:
    """The message imports of one module, each claimed once in its namespace."""

    def __init__(self, scope: naming.Namespace, options: Options, source: str) -> None:
        self._scope = scope
        self._options = options
        self._source = source
        self._aliases: dict[tuple[str, str], str] = {}

    def ref(self, proto_name: str, info: _TypeInfo) -> TypeRef:
        module, name, rest, qualifier = naming.message_import(
            self._options.flavour,
            from_proto=self._source,
            type_proto=info.proto,
            type_package=info.package,
            type_path=info.path,
        )
        key = (module, name)
        if key not in self._aliases:
            self._aliases[key] = self._scope.claim(name, f"{qualifier}_{name}")
        expr = self._aliases[key] + rest
        serialize, deserialize = naming.serializers(self._options.flavour, expr)
        return TypeRef(proto_name, expr, serialize, deserialize)

    @property
    def imports(self) -> tuple[Import, ...]:
        """The imports in the order their names were claimed."""
        return tuple(Import(module, name, alias) for (module, name), alias in self._aliases.items())

    @property
    def aliases(self) -> frozenset[str]:
        return frozenset(self._aliases.values())


def _parse_file(fd: FileDescriptorProto, index: dict[str, _TypeInfo], options: Options) -> File:
    module_scope = naming.Namespace(naming.MODULE_RESERVED)
    for service in fd.service:
        module_scope.claim_exact(naming.stub_name(service.name), "class")
        module_scope.claim_exact(naming.base_name(service.name), "class")

    imports = _Imports(module_scope, options, fd.name)
    refs: dict[str, TypeRef] = {}
    for service in fd.service:
        for rpc in service.method:
            for type_name in (rpc.input_type, rpc.output_type):
                if type_name not in refs:
                    if type_name not in index:
                        raise ParseError(f"{fd.name}: type {type_name} is not in the request")
                    refs[type_name] = imports.ref(type_name, index[type_name])

    comments = _comments(fd)
    services = []
    for s_index, service in enumerate(fd.service):
        full_name = f"{fd.package}.{service.name}" if fd.package else service.name
        class_scope = naming.Namespace(naming.CLASS_RESERVED | imports.aliases)
        methods = []
        for m_index, rpc in enumerate(service.method):
            py_name = naming.python_method_name(rpc.name, class_scope)
            methods.append(
                Method(
                    proto_name=rpc.name,
                    py_name=py_name,
                    const_name=naming.const_name(service.name, py_name, module_scope),
                    route=f"/{full_name}/{rpc.name}",
                    cardinality=Cardinality.of(rpc.client_streaming, rpc.server_streaming),
                    input=refs[rpc.input_type],
                    output=refs[rpc.output_type],
                    doc=comments.get((_FILE_SERVICE, s_index, _SERVICE_METHOD, m_index), ""),
                )
            )
        services.append(
            Service(
                proto_name=service.name,
                full_name=full_name,
                stub_name=naming.stub_name(service.name),
                base_name=naming.base_name(service.name),
                methods=tuple(methods),
                doc=comments.get((_FILE_SERVICE, s_index), ""),
            )
        )
    return File(
        source=fd.name,
        output=naming.output_path(fd.name),
        package=fd.package,
        services=tuple(services),
        imports=imports.imports,
    )


def parse_request(request: CodeGeneratorRequest, options: Options) -> tuple[File, ...]:
    """Build one `File` per requested ``.proto`` that declares at least one service.

    Raises `ParseError` (or `naming.NamingError`) when a type is missing from
    the request or two outputs would collide.
    """
    files = list(request.proto_file)
    by_name = {fd.name: fd for fd in files}
    index = _index_messages(files)
    out: list[File] = []
    outputs: dict[str, str] = {}
    for name in request.file_to_generate:
        fd = by_name.get(name)
        if fd is None:
            raise ParseError(f"{name} is to be generated but is not in the request")
        if not fd.service:
            continue
        parsed = _parse_file(fd, index, options)
        if parsed.output in outputs:
            raise ParseError(
                f"{name} and {outputs[parsed.output]} would both be written to {parsed.output}"
            )
        outputs[parsed.output] = name
        out.append(parsed)
    return tuple(out)
