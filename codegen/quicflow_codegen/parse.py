"""From protoc's ``CodeGeneratorRequest`` to the model.

Only the files protoc asks for (``file_to_generate``) that declare services
produce a `File`; every other file in the request is read only to find where
a request or response type is defined.
"""

from __future__ import annotations

import re
import textwrap
from dataclasses import dataclass

from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest
from google.protobuf.descriptor_pb2 import DescriptorProto, Edition, FileDescriptorProto

from . import naming
from .model import Cardinality, DynamicImport, File, Import, Method, Service, TypeRef
from .options import Flavour, Options

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


def _clean_comment(text: str) -> str:
    """A leading comment as docstring text: dedented, without a block comment's ``*`` gutter.

    protoc strips the ``*`` gutter of a block comment's lines but keeps the
    second star of ``/**``: a javadoc-style comment arrives as ``*`` then its
    text. That star is dropped (and a gutter protoc left, if every line has one).
    """
    lines = [line.rstrip() for line in text.expandtabs().splitlines()]
    if lines and lines[0].startswith("*"):
        lines[0] = lines[0].lstrip("*")
    body = [line for line in lines if line.strip()]
    if body and all(line.lstrip().startswith("*") for line in body):
        lines = [line.lstrip()[1:] for line in lines]
    return textwrap.dedent("\n".join(lines)).strip("\n")


def _comments(fd: FileDescriptorProto) -> dict[tuple[int, ...], str]:
    """Leading comments by SourceCodeInfo path, dedented and stripped."""
    out: dict[tuple[int, ...], str] = {}
    for loc in fd.source_code_info.location:
        if loc.leading_comments:
            out[tuple(loc.path)] = _clean_comment(loc.leading_comments)
    return out


class _Imports:
    """The message imports of one module, each claimed once in its namespace."""

    def __init__(self, scope: naming.Namespace, options: Options, source: str) -> None:
        self._scope = scope
        self._options = options
        self._source = source
        self._aliases: dict[tuple[str, str], str] = {}
        self._module_vars: dict[str, str] = {}
        self._dynamic: dict[tuple[str, tuple[str, ...]], DynamicImport] = {}

    def ref(self, proto_name: str, info: _TypeInfo) -> TypeRef:
        module, path, qualifier = naming.message_import(
            self._options.flavour,
            from_proto=self._source,
            type_proto=info.proto,
            type_package=info.package,
            type_path=info.path,
        )
        if naming.is_plain_module(module) and all(naming.is_plain_name(p) for p in path):
            key = (module, path[0])
            if key not in self._aliases:
                self._aliases[key] = self._scope.claim(path[0], f"{qualifier}_{path[0]}")
            expr = naming.attribute_chain(self._aliases[key], path[1:])
            return TypeRef(proto_name, expr, *naming.serializers(self._options.flavour, expr))
        dynamic = self._dynamic.get((module, path))
        if dynamic is None:
            if module not in self._module_vars:
                var = re.sub(r"\W", "_", module.lstrip(".")).upper() or "PACKAGE"
                self._module_vars[module] = self._scope.claim(f"_{var}")
            joined = "_".join(path)
            candidates = [joined] if naming.is_plain_name(joined) else []
            alias = self._scope.claim(*candidates, f"{qualifier}_{joined}")
            dynamic = DynamicImport(module, self._module_vars[module], path, alias)
            self._dynamic[(module, path)] = dynamic
        serialize, deserialize = naming.serializers(self._options.flavour, dynamic.alias)
        return TypeRef(proto_name, "Any", serialize, deserialize)

    @property
    def imports(self) -> tuple[Import, ...]:
        """The imports in the order their names were claimed."""
        return tuple(Import(module, name, alias) for (module, name), alias in self._aliases.items())

    @property
    def dynamic(self) -> tuple[DynamicImport, ...]:
        """The classes reached through importlib, in the order they were claimed."""
        return tuple(self._dynamic.values())

    @property
    def aliases(self) -> frozenset[str]:
        return frozenset(self._aliases.values()) | {d.alias for d in self._dynamic.values()}


def _parse_file(fd: FileDescriptorProto, index: dict[str, _TypeInfo], options: Options) -> File:
    module_scope = naming.Namespace(naming.MODULE_RESERVED | naming.MODULE_ONLY_RESERVED)
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
                    deprecated=rpc.options.deprecated,
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
                deprecated=service.options.deprecated,
            )
        )
    return File(
        source=fd.name,
        output=naming.output_path(fd.name),
        package=fd.package,
        services=tuple(services),
        imports=imports.imports,
        dynamic=imports.dynamic,
    )


def _edition_name(fd: FileDescriptorProto) -> str:
    """``"2023"`` for ``EDITION_2023``: the spelling of the file's ``edition =`` line."""
    return '"' + Edition.Name(fd.edition).removeprefix("EDITION_") + '"'


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
        if options.flavour is Flavour.BETTERPROTO and fd.syntax == "editions":
            raise ParseError(
                f"{name}: editions files (edition = {_edition_name(fd)}) cannot use "
                "flavour=betterproto: betterproto 2.0.0b7 supports proto2 and proto3 only; "
                "use the protobuf flavour"
            )
        parsed = _parse_file(fd, index, options)
        if parsed.output in outputs:
            raise ParseError(
                f"{name} and {outputs[parsed.output]} would both be written to {parsed.output}"
            )
        outputs[parsed.output] = name
        out.append(parsed)
    return tuple(out)
