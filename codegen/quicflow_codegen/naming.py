"""Every naming decision the plugin makes, in one place.

* Module paths: ``foo/bar-baz.proto`` gives ``foo/bar_baz_quicflow.py`` next
  to protoc's ``foo/bar_baz_pb2.py`` (protoc turns ``-`` into ``_`` too).
* Message imports: protobuf classes come from the ``_pb2`` module by absolute
  import, as protoc's own output imports its dependencies; betterproto
  classes come from the module betterproto writes for their proto *package*,
  by relative import (betterproto's output is a package tree that uses
  relative imports itself). A class is imported under its own name unless
  that name is already taken in the module, then under a qualified alias.
* Method names are snake_case. A name that is a keyword, a builtin or a name
  the generated module uses gets a trailing ``_`` (PEP 8: ``class_``); a
  name another rpc of the same service already has gets ``_2``, ``_3`` …
  in declaration order.
* Constants are ``_<SERVICE>_<METHOD>``; classes are ``<Service>Stub`` and
  ``<Service>Base``.
"""

from __future__ import annotations

import builtins
import keyword
import re
from collections.abc import Iterable

from .options import Flavour

__all__ = [
    "CLASS_RESERVED",
    "MODULE_ONLY_RESERVED",
    "MODULE_RESERVED",
    "NamingError",
    "Namespace",
    "attribute_chain",
    "base_name",
    "const_name",
    "is_plain_module",
    "is_plain_name",
    "message_import",
    "module_parts",
    "output_path",
    "pb2_module",
    "python_method_name",
    "serializers",
    "snake_case",
    "stub_name",
]

BETTERPROTO_WKT_MODULE = "betterproto.lib.google.protobuf"
"""Where betterproto 2.0.0b7 keeps google.protobuf's types (unless INCLUDE_GOOGLE)."""

MODULE_RESERVED: frozenset[str] = frozenset(
    {
        # What the header imports.
        "quicflow",
        "AsyncIterable",
        "AsyncIterator",
        "Iterable",
        "Mapping",
        "ClassVar",
        "annotations",
        # Module dunders and every builtin: a message imported as ``str`` or
        # ``float`` would break the annotations that use them.
        "__all__",
        "__name__",
        "__doc__",
        "__file__",
        *dir(builtins),
        *keyword.kwlist,
        *keyword.softkwlist,
    }
)
"""Names no method, import alias, constant or class of a generated module may take."""

MODULE_ONLY_RESERVED: frozenset[str] = frozenset({"Any", "importlib", "warnings"})
"""Module names the generated code may use outside class bodies (a method may take them)."""

CLASS_RESERVED: frozenset[str] = MODULE_RESERVED | {
    # quicflow.Service and the generated classes define these.
    "SERVICE_NAME",
    "_channel",
    "__init__",
    "__quicflow_handlers__",
}
"""Names a generated method may not take.

A method named ``float`` would shadow the builtin inside the class body,
where the annotations of the methods after it are evaluated; mypy resolves
annotations in class scope the same way.
"""


class NamingError(ValueError):
    """Two things would get the same name and no rule tells them apart."""


class Namespace:
    """The names taken in one scope (a module or a class), handed out in order.

    `claim` gives the first free candidate, so whoever asks first keeps the
    plain name; ask in a fixed order and the result is deterministic.
    """

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self._reserved: frozenset[str] = frozenset(reserved)
        self._taken: set[str] = set(self._reserved)

    def is_reserved(self, name: str) -> bool:
        """True if ``name`` was taken from the start, not claimed."""
        return name in self._reserved

    def __contains__(self, name: object) -> bool:
        return name in self._taken

    def claim(self, *candidates: str) -> str:
        """Take the first free candidate; past the last one, number it: ``x_2``, ``x_3`` …"""
        for name in candidates:
            if name not in self._taken:
                self._taken.add(name)
                return name
        last = candidates[-1]
        n = 2
        while f"{last}_{n}" in self._taken:
            n += 1
        self._taken.add(f"{last}_{n}")
        return f"{last}_{n}"

    def claim_exact(self, name: str, what: str) -> str:
        """Take ``name`` or fail: used for public names that may not change."""
        if name in self._taken:
            raise NamingError(f"{what} {name!r} clashes with a name the generated module uses")
        self._taken.add(name)
        return name


_WORD_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NON_WORD = re.compile(r"[^0-9a-zA-Z]+")


def snake_case(name: str) -> str:
    """``SayHello`` → ``say_hello``, ``GetHTTPStatus`` → ``get_http_status``.

    Runs of other characters (``_`` included) become one ``_``; leading and
    trailing ones are dropped, so no generated method is private or dunder.
    """
    words = _NON_WORD.sub("_", _WORD_BOUNDARY.sub("_", name)).strip("_")
    return words.lower()


def python_method_name(rpc_name: str, scope: Namespace) -> str:
    """The method name for an rpc, claimed in its service's class scope.

    A reserved name (keyword, builtin, a name the module uses) gets a
    trailing ``_``; a name an earlier rpc took gets ``_2``, ``_3`` ….
    """
    base = snake_case(rpc_name) or "rpc"
    if base[0].isdigit():
        base = f"rpc_{base}"
    if scope.is_reserved(base):
        return scope.claim(f"{base}_")
    return scope.claim(base)


def const_name(service: str, method_py_name: str, scope: Namespace) -> str:
    """``_ECHO_SAY``: the module constant holding one rpc's ``quicflow.Method``."""
    return scope.claim(f"_{snake_case(service).upper()}_{method_py_name.rstrip('_').upper()}")


def stub_name(service: str) -> str:
    """``EchoStub``: the client class (the proto spelling plus ``Stub``)."""
    return f"{service}Stub"


def base_name(service: str) -> str:
    """``EchoBase``: the class servers subclass (the proto spelling plus ``Base``)."""
    return f"{service}Base"


def serializers(flavour: Flavour, expr: str) -> tuple[str, str]:
    """The (serialize, deserialize) functions of message class ``expr``.

    protobuf: ``X.SerializeToString`` / ``X.FromString``; betterproto:
    ``X.__bytes__`` / ``X.FromString``. Unbound methods, so mypy sees
    ``Callable[[X], bytes]`` and ``Callable[[bytes], X]``.
    """
    if flavour is Flavour.PROTOBUF:
        return f"{expr}.SerializeToString", f"{expr}.FromString"
    return f"{expr}.__bytes__", f"{expr}.FromString"


def module_parts(proto_path: str) -> list[str]:
    """The dotted module path protoc's python generator derives from a ``.proto`` path.

    protoc strips ``.proto``, turns ``-`` into ``_`` and ``/`` into ``.``, so a
    dot in a file name is a package boundary too: ``users/user.service.proto``
    is module ``users.user.service_pb2``, written to ``users/user/service_pb2.py``.
    """
    return proto_path.removesuffix(".proto").replace("-", "_").replace("/", ".").split(".")


def pb2_module(proto_path: str) -> str:
    """The module protoc's python generator writes: ``foo/bar-baz.proto`` → ``foo.bar_baz_pb2``."""
    return ".".join(module_parts(proto_path)) + "_pb2"


def output_path(proto_path: str) -> str:
    """Where the plugin writes: ``foo/bar-baz.proto`` → ``foo/bar_baz_quicflow.py``.

    The same rule as protoc's ``_pb2`` module (`module_parts`), so the two are
    always side by side: ``a/b.c.proto`` → ``a/b/c_quicflow.py``.
    """
    return "/".join(module_parts(proto_path)) + "_quicflow.py"


def is_plain_name(name: str) -> bool:
    """True if ``name`` can be written as it is in an import or attribute access."""
    return name.isidentifier() and not keyword.iskeyword(name)


def is_plain_module(module: str) -> bool:
    """True if ``from <module> import x`` is valid Python (relative dots allowed)."""
    parts = module.lstrip(".")
    return not parts or all(is_plain_name(part) for part in parts.split("."))


def attribute_chain(base: str, parts: Iterable[str]) -> str:
    """``base.a.b``, with ``getattr(x, "kw")`` for a part that is a keyword (``None``, ``from``)."""
    expr = base
    for part in parts:
        expr = f"{expr}.{part}" if is_plain_name(part) else f'getattr({expr}, "{part}")'
    return expr


def _relative_module(from_dir: list[str], to_package: list[str]) -> str:
    """The relative module path from a module in ``from_dir`` to ``to_package``."""
    common = 0
    while common < min(len(from_dir), len(to_package)) and from_dir[common] == to_package[common]:
        common += 1
    dots = "." * (len(from_dir) - common + 1)
    return dots + ".".join(to_package[common:])


def message_import(
    flavour: Flavour,
    *,
    from_proto: str,
    type_proto: str,
    type_package: str,
    type_path: tuple[str, ...],
) -> tuple[str, tuple[str, ...], str]:
    """How the module for ``from_proto`` reaches a message.

    ``type_proto`` is the ``.proto`` that defines the message, ``type_package``
    its proto package and ``type_path`` its name within the package, outer
    messages first (``("Outer", "Inner")``).

    Returns ``(module, path, qualifier)``: the class is ``path`` within
    ``module`` (import ``path[0]``, then ``.Inner`` for the rest);
    ``qualifier`` prefixes the alias if the plain name is taken.
    """
    if flavour is Flavour.PROTOBUF:
        module = pb2_module(type_proto)
        return module, type_path, module.rpartition(".")[2]
    # betterproto flattens nested messages into one class per message, named
    # by its own casing rules (``Outer.Inner`` → ``OuterInner``,
    # ``HTTPRequest`` → ``HttpRequest``), so ask betterproto itself.
    from betterproto.casing import pascal_case

    name = pascal_case("_" + "_".join(type_path))
    package = type_package.split(".") if type_package else []
    if package == ["google", "protobuf"]:
        return BETTERPROTO_WKT_MODULE, (name,), "google_protobuf"
    # Relative to the package the generated module is in (`output_path`), which
    # is the proto's directory unless the file name has dots.
    module = _relative_module(module_parts(from_proto)[:-1], package)
    return module, (name,), "_".join(package) or "root"
