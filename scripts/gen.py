"""Regenerate everything protoc writes (``make gen``).

1. The runtime's own message classes (`BUILTIN`): the wire protocol's
   (``quicflow/wire/v1/frames_pb2.py`` and ``.pyi`` from
   ``proto/quicflow/wire/v1/frames.proto``), the health service's
   (``proto/grpc/health/v1/health.proto``), the admin service's and the
   reflection service's (``proto/grpc/reflection/v1/reflection.proto``).
2. ``generated/``: every other ``.proto`` under ``proto/``, protobuf flavour:
   ``foo/bar_pb2.py``, ``foo/bar_pb2.pyi`` and ``foo/bar_quicflow.py``.
3. ``generated/betterproto_flavour/``: the same protos, betterproto flavour:
   betterproto's package modules (``echo/__init__.py``) next to
   ``foo/bar_quicflow.py`` modules written with ``flavour=betterproto``.

Everything is generated into a scratch directory first and then swapped in,
so a removed ``.proto`` leaves no stale output behind and a failed run
changes nothing. ``--out DIR`` writes the same tree under DIR instead of the
repository (the drift test compares the two).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
BUILTIN = {
    # proto under proto/ -> where its _pb2.py / _pb2.pyi go in the repository
    "quicflow/wire/v1/frames.proto": "quicflow/wire/v1/frames",
    "grpc/health/v1/health.proto": "quicflow/health/health",
    "quicflow/admin/v1/admin.proto": "quicflow/admin/admin",
    "grpc/reflection/v1/reflection.proto": "quicflow/reflection/reflection",
}
"""The runtime's own protos. Each lives in the package the runtime imports it from;
the health and reflection protos keep gRPC's file names so their descriptors are gRPC's."""
PRIVATE_POOL = frozenset({"grpc/health/v1/health.proto"})
"""Runtime protos whose classes go into a private descriptor pool, not the default one.

gRPC's health file is registered by others under three different file names
(grpcio-health-checking: ``grpc_health/v1/health.proto``, grpclib:
``grpclib/health/v1/health.proto``, a user's protoc run: ``grpc/health/v1/health.proto``),
and the default pool refuses the same symbols under a second name. In a pool of its own,
QuicFlow's copy clashes with none of them, in any import order."""
_DEFAULT_POOL_LINE = "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile("
_PRIVATE_POOL_LINES = (
    "# QuicFlow (scripts/gen.py PRIVATE_POOL): a private pool, not the default one, so that\n"
    "# other copies of this file registered under other file names can be imported too.\n"
    "DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile("
)
BUILTIN_OUTPUTS = tuple(f"{dest}_pb2{ext}" for dest in BUILTIN.values() for ext in (".py", ".pyi"))
GENERATED = "generated"
BETTERPROTO_DIR = "betterproto_flavour"
"""Where the betterproto flavour goes, inside ``generated/``.

Not ``betterproto``: ``generated/`` is a source root, so that name would
shadow the betterproto library itself, which its own output imports.
"""

# betterproto's output is its own (formatted by black, not ruff), and it
# includes grpclib stubs QuicFlow never uses; exempt it from the repo's lint
# and strict typing, but keep it checked as an import for the stubs.
BETTERPROTO_PRAGMA = (
    "# Written by betterproto's protoc plugin; QuicFlow does not lint or type-check it.\n"
    "# ruff: noqa\n"
    "# mypy: ignore-errors\n"
)


def _tool(name: str, module: str, scratch: Path) -> Path:
    """The console script ``name`` next to this Python, else a wrapper running ``-m module``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return script
    wrapper = scratch / name
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _protoc(args: list[str], cwd: Path) -> None:
    """Run grpcio-tools' protoc; on failure show its output and exit."""
    cmd = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO}", *args]
    env = dict(os.environ)
    # The fallback wrapper runs `-m quicflow_codegen`, which must be importable.
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "codegen"), env.get("PYTHONPATH", "")) if p
    )
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stdout + done.stderr)
        raise SystemExit(f"protoc failed: {' '.join(cmd)}")


def _service_protos() -> list[str]:
    """Every ``.proto`` under proto/ except the runtime's own (`BUILTIN`), sorted."""
    return sorted(
        p.relative_to(PROTO).as_posix()
        for p in PROTO.rglob("*.proto")
        if p.relative_to(PROTO).as_posix() not in BUILTIN
        and p.relative_to(PROTO).parts[0] != "quicflow"
    )


def _mark_betterproto_output(root: Path) -> None:
    """Prefix betterproto's own modules (not ours) with the lint/typing pragma."""
    for path in sorted(root.rglob("*.py")):
        if path.name.endswith("_quicflow.py"):
            continue
        text = path.read_text()
        if text:
            path.write_text(BETTERPROTO_PRAGMA + text)


def generate(out: Path) -> None:
    """Write the wire classes and generated/ under ``out``, replacing what was there."""
    with tempfile.TemporaryDirectory(prefix="quicflow-gen-") as tmp:
        scratch = Path(tmp)
        tools = scratch / "bin"
        tools.mkdir()
        quicflow_plugin = _tool("protoc-gen-quicflow", "quicflow_codegen", tools)
        betterproto_plugin = _tool("protoc-gen-python_betterproto", "betterproto.plugin", tools)
        # protoc runs in an empty directory: betterproto's plugin decides
        # which __init__.py files to write by probing the working directory.
        cwd = scratch / "cwd"
        cwd.mkdir()

        wire = scratch / "wire"
        wire.mkdir()
        _protoc([f"--python_out={wire}", f"--pyi_out={wire}", *BUILTIN], cwd)

        gen = scratch / GENERATED
        gen.mkdir()
        protos = _service_protos()
        if protos:
            _protoc(
                [
                    f"--plugin=protoc-gen-quicflow={quicflow_plugin}",
                    f"--python_out={gen}",
                    f"--pyi_out={gen}",
                    f"--quicflow_out={gen}",
                    *protos,
                ],
                cwd,
            )
            bp = gen / BETTERPROTO_DIR
            bp.mkdir()
            _protoc(
                [
                    f"--plugin=protoc-gen-python_betterproto={betterproto_plugin}",
                    f"--plugin=protoc-gen-quicflow={quicflow_plugin}",
                    f"--python_betterproto_out={bp}",
                    f"--quicflow_out={bp}",
                    "--quicflow_opt=flavour=betterproto",
                    *protos,
                ],
                cwd,
            )
            _mark_betterproto_output(bp)

        for proto, dest in BUILTIN.items():
            for ext in (".py", ".pyi"):
                target = out / f"{dest}_pb2{ext}"
                target.parent.mkdir(parents=True, exist_ok=True)
                text = (wire / f"{proto.removesuffix('.proto')}_pb2{ext}").read_text()
                if proto in PRIVATE_POOL and ext == ".py":
                    if text.count(_DEFAULT_POOL_LINE) != 1:
                        raise SystemExit(f"protoc output for {proto} lacks {_DEFAULT_POOL_LINE}")
                    text = text.replace(_DEFAULT_POOL_LINE, _PRIVATE_POOL_LINES)
                target.write_text(text)
        target_gen = out / GENERATED
        if target_gen.exists():
            shutil.rmtree(target_gen)
        shutil.copytree(gen, target_gen)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and regenerate; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--out",
        type=Path,
        default=ROOT,
        help="write everything under this directory instead of the repository",
    )
    args = parser.parse_args(argv)
    generate(args.out.resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
