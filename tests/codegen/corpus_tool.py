"""What the corpus test (test_corpus.py) runs in a subprocess, one per message flavour.

``write ROOT OUT MODULE...`` imports each generated ``_quicflow`` module from
source root ROOT and writes OUT: a user module, as a user would write it, that
subclasses every generated ``FooBase`` (each rpc answers an empty response)
and calls every ``FooStub`` method once (``call_all``). It prints one line per
rpc, ``/pkg.Service/Method ResponseClass``: what ``call_all`` must return.

``serve ROOT MODULE`` imports that user module, serves its services on
loopback (``ClientFor``, the built-in health service off: gRPC's own Health is
in the corpus) and prints what ``call_all`` returned, in the same format.

The user module is also what mypy --strict checks, with the generated modules.
"""

from __future__ import annotations

import asyncio
import collections.abc
import functools
import importlib
import sys
import typing
from pathlib import Path
from typing import Any

from quicflow.testing import ClientFor

_HEADER = '''"""Written by tests/codegen/corpus_tool.py: every generated base and stub, used."""

from collections.abc import AsyncIterator

import quicflow
'''


class _Names:
    """Module aliases (``_m0``, ``_m1`` …) for the classes the user module names."""

    def __init__(self) -> None:
        self.modules: dict[str, str] = {}

    def ref(self, cls: type) -> str:
        module = cls.__module__
        if hasattr(cls, "DESCRIPTOR"):  # protobuf: Outer.Inner from the descriptor
            descriptor = cls.DESCRIPTOR
            package = descriptor.file.package
            path = (
                descriptor.full_name.removeprefix(f"{package}.")
                if package
                else descriptor.full_name
            )
        else:  # betterproto: one flat class per message
            path = cls.__qualname__
        found: object = functools.reduce(getattr, path.split("."), sys.modules[module])
        assert found is cls, f"{module}.{path} is not {cls!r}"
        alias = self.modules.setdefault(module, f"_m{len(self.modules)}")
        return f"{alias}.{path}"


def _kind(hints: dict[str, Any]) -> tuple[bool, bool, type, type]:
    """(client streams, server streams, request class, response class) of a base method."""
    client_streams = "requests" in hints
    request = hints["requests" if client_streams else "request"]
    if client_streams:
        (request,) = typing.get_args(request)
    response = hints["return"]
    server_streams = typing.get_origin(response) is collections.abc.AsyncIterator
    if server_streams:
        (response,) = typing.get_args(response)
    return client_streams, server_streams, request, response


def write(root: Path, out: Path, modules: list[str]) -> list[str]:
    """Write the user module to ``out``; return the ``route Response`` lines it must produce."""
    sys.path.insert(0, str(root))
    names = _Names()
    classes: list[str] = []
    calls: list[str] = []
    expected: list[str] = []
    services: list[str] = []
    for number, module_name in enumerate(modules):
        module = importlib.import_module(module_name)
        stubs = names.modules.setdefault(module_name, f"_m{len(names.modules)}")
        for base_name in (n for n in module.__all__ if n.endswith("Base")):
            base = getattr(module, base_name)
            stub_name = base_name.removesuffix("Base") + "Stub"
            cls_name = f"User{number}{base_name.removesuffix('Base')}"
            body: list[str] = []
            calls.append(f"    stub{len(services)} = {stubs}.{stub_name}(channel)")
            for route, handler in base().__quicflow_handlers__().items():
                name = handler.func.__name__
                hints = typing.get_type_hints(getattr(base, name))
                client_streams, server_streams, request, response = _kind(hints)
                req, resp = names.ref(request), names.ref(response)
                arg = f"requests: AsyncIterator[{req}]" if client_streams else f"request: {req}"
                ret = f"AsyncIterator[{resp}]" if server_streams else resp
                # Server-streaming overrides are async generators (the base's are plain defs).
                body.append(
                    f"    async def {name}(\n"
                    f"        self, {arg}, context: quicflow.ServicerContext\n"
                    f"    ) -> {ret}:\n"
                )
                if client_streams:
                    body.append("        async for _ in requests:\n            pass\n")
                body.append(f"        {'yield' if server_streams else 'return'} {resp}()\n\n")
                sent = f"[{req}()]" if client_streams else f"{req}()"
                call = f"stub{len(services)}.{name}({sent})"
                # Annotated: mypy checks that each stub method returns the rpc's response type.
                var = f"reply{len(expected)}"
                if server_streams:
                    calls.append(f"    async for {var} in {call}:")
                    calls.append(f"        typed{len(expected)}: {resp} = {var}")
                    calls.append(f"        seen.append(typed{len(expected)})")
                else:
                    calls.append(f"    {var}: {resp} = await {call}")
                    calls.append(f"    seen.append({var})")
                expected.append(f"{route} {response.__name__}")
                calls.append(f"    routes.append({route!r})")
            classes.append(f"\n\nclass {cls_name}({stubs}.{base_name}):\n" + "".join(body))
            services.append(f"{cls_name}()")
    imports = "".join(f"import {module} as {alias}\n" for module, alias in names.modules.items())
    text = (
        _HEADER
        + "\n"
        + imports
        + "".join(c.rstrip("\n") + "\n" for c in classes)
        + "\n\nSERVICES: list[quicflow.Service] = [\n"
        + "".join(f"    {s},\n" for s in services)
        + "]\n\n\n"
        + "async def call_all(channel: quicflow.Channel) -> list[str]:\n"
        + "    seen: list[object] = []\n"
        + "    routes: list[str] = []\n"
        + "\n".join(calls)
        + "\n    return [f'{r} {type(m).__name__}' for r, m in zip(routes, seen, strict=True)]\n"
    )
    out.write_text(text)
    return expected


async def serve(root: Path, module_name: str) -> list[str]:
    """Serve the user module's services on loopback and return what ``call_all`` saw."""
    sys.path.insert(0, str(root))
    module = importlib.import_module(module_name)
    async with ClientFor(module.SERVICES, server_options={"health": False}) as client:
        seen: list[str] = await module.call_all(client)
        return seen


def main(argv: list[str]) -> int:
    """``write ROOT OUT MODULE...`` or ``serve ROOT MODULE``; prints one line per rpc."""
    command, root = argv[0], Path(argv[1])
    if command == "write":
        lines = write(root, Path(argv[2]), argv[3:])
    else:
        lines = asyncio.run(serve(root, argv[2]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
