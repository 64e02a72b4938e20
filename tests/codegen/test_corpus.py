"""A corpus of real third-party .proto files, generated in both flavours and used.

The files come from packages the dev extra installs, not from copies in this
repository: googleapis-common-protos (google/api, google/rpc, google/type,
google/longrunning, google/cloud/location, ...: 63 files, two with services),
grpcio-tools (google/protobuf's well-known types) and gRPC's own health and
reflection files (proto/grpc/, the canonical files QuicFlow serves). Each
flavour is generated with real protoc, then:

- every file with a service gets a module, every other file none;
- the modules pass ruff (the repo's settings and ruff's defaults);
- a user module (corpus_tool.py) that subclasses every base and calls every
  stub passes ``mypy --strict`` with them: one mypy run for both flavours;
- that user module serves every rpc over loopback and calls each once.

gRPC's files are generated as ``grpc/health/v1/health_pb2.py`` etc., so the
protobuf flavour's root gets a ``grpc/__init__.py``: without it, grpcio's
``grpc`` package (installed with grpcio-tools) would hide them, as it would
in a user's project. Importing them beside QuicFlow is the point: QuicFlow's
own health classes must not clash with the generated ones (issue 14).
"""

from __future__ import annotations

import importlib.metadata
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc_tools
import pytest

from .helpers import BIN, ROOT, mypy_strict, plugin, run

TOOL = Path(__file__).resolve().parent / "corpus_tool.py"
GRPC_PROTOS = ("grpc/health/v1/health.proto", "grpc/reflection/v1/reflection.proto")
_SERVICE = re.compile(r"^service\s", re.MULTILINE)


def _googleapis() -> tuple[Path, list[str]]:
    dist = importlib.metadata.distribution("googleapis-common-protos")
    protos = sorted(str(f) for f in dist.files or () if f.suffix == ".proto")
    return Path(str(dist.locate_file(""))), protos


@dataclass(frozen=True)
class Flavour:
    name: str
    root: Path
    """The source root on sys.path (and mypy_path)."""
    prefix: str
    """The package the modules are in, within the root."""
    user: str
    """The user module's name."""
    modules: tuple[str, ...]
    """Every generated _quicflow module."""
    expected: tuple[str, ...]
    """``route Response`` for every rpc, as the user module must see them."""


@dataclass(frozen=True)
class Corpus:
    services: frozenset[str]
    """The corpus files declaring a service (module paths, no flavour prefix)."""
    flavours: dict[str, Flavour]
    wkt_outputs: tuple[str, ...]


def _protoc(includes: list[Path], args: list[str], protos: list[str], cwd: Path) -> None:
    done = run(
        [sys.executable, "-m", "grpc_tools.protoc", *(f"-I{i}" for i in includes), *args, *protos],
        cwd=cwd,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """Generate the corpus in both flavours and write each flavour's user module."""
    tmp = tmp_path_factory.mktemp("corpus")
    googleapis, api_protos = _googleapis()
    wkt = Path(grpc_tools.__file__).parent / "_proto"
    includes = [googleapis, wkt, ROOT / "proto"]
    protos = [*api_protos, *GRPC_PROTOS]
    sources = {p: (googleapis / p if p in api_protos else ROOT / "proto" / p) for p in protos}
    services = frozenset(
        p.removesuffix(".proto").replace("/", ".") + "_quicflow"
        for p, path in sources.items()
        if _SERVICE.search(path.read_text())
    )
    cwd = tmp / "cwd"  # betterproto's plugin probes its working directory: keep it empty
    cwd.mkdir()

    pb = tmp / "pb"
    pb.mkdir()
    _protoc(
        includes,
        [
            plugin("protoc-gen-quicflow"),
            *(f"--{k}_out={pb}" for k in ("python", "pyi", "quicflow")),
        ],
        protos,
        cwd,
    )
    (pb / "grpc" / "__init__.py").write_text("")

    bp = tmp / "bp"
    (bp / "corpus_bp").mkdir(parents=True)
    (bp / "corpus_bp" / "__init__.py").write_text("")
    _protoc(
        includes,
        [
            plugin("protoc-gen-python_betterproto"),
            plugin("protoc-gen-quicflow"),
            f"--python_betterproto_out={bp / 'corpus_bp'}",
            f"--quicflow_out=flavour=betterproto:{bp / 'corpus_bp'}",
        ],
        protos,
        cwd,
    )

    # The well-known types have no services: the plugin alone writes nothing for them.
    wkt_out = tmp / "wkt"
    wkt_out.mkdir()
    wkt_protos = sorted(p.relative_to(wkt).as_posix() for p in wkt.rglob("*.proto"))
    assert len(wkt_protos) >= 10
    _protoc([wkt], [plugin("protoc-gen-quicflow"), f"--quicflow_out={wkt_out}"], wkt_protos, cwd)

    flavours: dict[str, Flavour] = {}
    for name, root, prefix in (("protobuf", pb, ""), ("betterproto", bp, "corpus_bp.")):
        modules = tuple(
            sorted(
                prefix
                + p.relative_to(root / prefix.rstrip("."))
                .with_suffix("")
                .as_posix()
                .replace("/", ".")
                for p in (root / prefix.rstrip(".")).rglob("*_quicflow.py")
            )
        )
        user = f"corpus_user_{name}"
        done = run(
            [sys.executable, str(TOOL), "write", str(root), str(root / f"{user}.py"), *modules]
        )
        assert done.returncode == 0, done.stdout + done.stderr
        expected = tuple(done.stdout.splitlines())
        flavours[name] = Flavour(name, root, prefix, user, modules, expected)
    return Corpus(services, flavours, tuple(p.name for p in wkt_out.rglob("*")))


def test_every_service_file_and_no_other_gets_a_module(corpus: Corpus) -> None:
    """Check that each flavour has a module for exactly the corpus files with services."""
    assert len(corpus.services) >= 4
    for flavour in corpus.flavours.values():
        assert {m.removeprefix(flavour.prefix) for m in flavour.modules} == corpus.services
    assert corpus.wkt_outputs == ()


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(["--config", str(ROOT / "pyproject.toml")], id="repo-settings"),
        pytest.param(["--isolated"], id="ruff-defaults"),
    ],
)
def test_corpus_modules_pass_ruff(corpus: Corpus, config: list[str]) -> None:
    """Check that every generated corpus module passes ruff check and ruff format --check."""
    files = [
        str(path)
        for flavour in corpus.flavours.values()
        for path in sorted(flavour.root.rglob("*_quicflow.py"))
    ]
    ruff = str(BIN / "ruff")
    for command in (["check"], ["format", "--check"]):
        done = run([ruff, *command, *config, "--no-cache", *files])
        assert done.returncode == 0, done.stdout + done.stderr


def test_corpus_and_user_code_pass_mypy_strict(corpus: Corpus) -> None:
    """Check that the generated modules and the user modules using them pass mypy --strict."""
    pb, bp = corpus.flavours["protobuf"], corpus.flavours["betterproto"]
    files = [
        path
        for flavour in (pb, bp)
        for path in [
            *sorted(flavour.root.rglob("*_quicflow.py")),
            flavour.root / f"{flavour.user}.py",
        ]
    ]
    done = mypy_strict(pb.root, files, extra_path=[bp.root])
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("name", ["protobuf", "betterproto"])
def test_corpus_serves_and_calls_every_rpc(corpus: Corpus, name: str) -> None:
    """Check that the user module's services answer every rpc over loopback, with the
    response type of each rpc."""
    flavour = corpus.flavours[name]
    done = run([sys.executable, "-W", "error", str(TOOL), "serve", str(flavour.root), flavour.user])
    assert done.returncode == 0, done.stdout + done.stderr
    assert tuple(done.stdout.splitlines()) == flavour.expected
    assert len(flavour.expected) >= 11
