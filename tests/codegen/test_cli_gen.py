"""``quicflow gen`` over a directory that mixes proto3 and editions files."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from quicflow.cli import CliError, _protoc

from .helpers import BIN, CASES, run


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    """A directory with the editions case (2023, 2024) and one proto3 file."""
    protos = tmp_path / "protos"
    shutil.copytree(CASES / "editions" / "proto", protos)
    shutil.copytree(CASES / "all_kinds" / "proto", protos, dirs_exist_ok=True)
    return protos


def test_gen_protobuf_flavour_generates_editions_files(mixed: Path, tmp_path: Path) -> None:
    """Check that the protobuf flavour generates editions 2023 and 2024 files with the rest."""
    out = tmp_path / "out"
    done = run([str(BIN / "quicflow"), "gen", str(mixed), "--out", str(out)])
    assert done.returncode == 0, done.stderr
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*_quicflow.py")) == [
        "demo/demo_quicflow.py",
        "ed/e2023_quicflow.py",
        "ed/e2024_quicflow.py",
    ]


def test_gen_betterproto_flavour_skips_editions_files_one_line_each(
    mixed: Path, tmp_path: Path
) -> None:
    """Check that the betterproto flavour names each editions file it skips in one short line,
    generates the others, and exits 1."""
    out = tmp_path / "out"
    done = run(
        [str(BIN / "quicflow"), "gen", str(mixed), "--out", str(out), "--flavour", "betterproto"]
    )
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"quicflow gen: skipped ed/{name}.proto: an editions file, which betterproto 2.0.0b7 "
        "cannot generate (use --flavour protobuf)"
        for name in ("e2023", "e2024")
    ]
    assert [p.relative_to(out).as_posix() for p in out.rglob("*_quicflow.py")] == [
        "demo/demo_quicflow.py"
    ]


def test_gen_betterproto_flavour_skips_a_file_betterproto_cannot_write(
    tmp_path: Path,
) -> None:
    """Check that a file on which betterproto's plugin fails (its code for a type from a
    package named with a Python keyword does not parse) is named in one line and skipped,
    that the rest of the directory is generated (the keyword package itself included:
    it has no service, so no QuicFlow module),
    and that the run exits 1."""
    protos = tmp_path / "protos"
    shutil.copytree(CASES / "all_kinds" / "proto", protos)
    (protos / "kw").mkdir()
    (protos / "kw" / "item.proto").write_text(
        'syntax = "proto3";\npackage class;\nmessage Item { string name = 1; }\n'
    )
    (protos / "uses").mkdir()
    (protos / "uses" / "uses.proto").write_text(
        'syntax = "proto3";\npackage uses;\nimport "kw/item.proto";\n'
        "message Box { class.Item item = 1; }\n"
        "service Boxes { rpc Get(Box) returns (Box); }\n"
    )
    out = tmp_path / "out"
    done = run(
        [str(BIN / "quicflow"), "gen", str(protos), "--out", str(out), "--flavour", "betterproto"]
    )
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert line.startswith(
        "quicflow gen: skipped uses/uses.proto: betterproto 2.0.0b7 cannot generate it "
        "(black.parsing.InvalidInput: cannot parse: "
    ), line
    assert line.endswith("(use --flavour protobuf)"), line
    assert "generated 2 .proto file(s)" in done.stdout
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.py")) == [
        "__init__.py",
        "class/__init__.py",
        "demo/__init__.py",
        "demo/demo_quicflow.py",
    ]


def test_gen_reports_a_crashed_plugin_in_one_short_line(tmp_path: Path) -> None:
    """Check that a plugin's traceback through protoc becomes its last line, not every frame."""
    proto = CASES / "all_kinds" / "proto"
    crash = tmp_path / "protoc-gen-crash"
    crash.write_text(
        f'#!{sys.executable}\ndef plugin():\n    raise ValueError("bad things")\nplugin()\n'
    )
    crash.chmod(0o755)
    with pytest.raises(CliError) as info:
        args = [f"-I{proto}", f"--plugin=protoc-gen-crash={crash}", f"--crash_out={tmp_path}"]
        _protoc([*args, "demo/demo.proto"], "generating code")
    assert str(info.value) == (
        "protoc failed: ValueError: bad things; "
        "--crash_out: protoc-gen-crash: Plugin failed with status code 1."
    )


def test_gen_betterproto_flavour_names_invalid_python_it_wrote(tmp_path: Path) -> None:
    """Check that a message named ``None`` (betterproto writes ``class None``, which does
    not make its plugin fail) is reported with the file, line and text of the invalid
    code, that the rest is still written, and that the run exits 1."""
    protos = tmp_path / "protos"
    shutil.copytree(CASES / "all_kinds" / "proto", protos)
    (protos / "nn").mkdir()
    (protos / "nn" / "nn.proto").write_text(
        'syntax = "proto3";\npackage nn;\nmessage None { string name = 1; }\n'
    )
    out = tmp_path / "out"
    done = run(
        [str(BIN / "quicflow"), "gen", str(protos), "--out", str(out), "--flavour", "betterproto"]
    )
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    prefix = "quicflow gen: betterproto 2.0.0b7 wrote invalid Python: nn/__init__.py:"
    assert line.startswith(prefix), line
    assert "'class None(betterproto.Message):'" in line, line
    assert line.endswith("rename it or use --flavour protobuf)"), line
    assert (out / "demo" / "demo_quicflow.py").is_file()
