"""Unit tests of the plugin's sans-IO parts: options, naming, rendering helpers, generate()."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest, CodeGeneratorResponse
from google.protobuf.descriptor_pb2 import Edition, FileDescriptorProto
from quicflow_codegen import __version__, naming
from quicflow_codegen.__main__ import generate
from quicflow_codegen.options import Flavour, Options, OptionsError, parse_options
from quicflow_codegen.render import LINE_LENGTH, constant, docstring, requests_param, wrap

from .helpers import BIN, CASES


def _request(parameter: str = "", *, with_service: bool = True) -> CodeGeneratorRequest:
    fd = FileDescriptorProto(name="pkg/svc.proto", package="pkg", syntax="proto3")
    fd.message_type.add(name="Req")
    fd.message_type.add(name="Resp")
    if with_service:
        service = fd.service.add(name="Svc")
        service.method.add(name="Call", input_type=".pkg.Req", output_type=".pkg.Resp")
        service.method.add(
            name="Watch", input_type=".pkg.Req", output_type=".pkg.Resp", server_streaming=True
        )
    return CodeGeneratorRequest(
        file_to_generate=["pkg/svc.proto"], parameter=parameter, proto_file=[fd]
    )


def test_empty_parameter_gives_defaults() -> None:
    """Check that no plugin parameter means the protobuf flavour."""
    assert parse_options("") == Options(flavour=Flavour.PROTOBUF)


def test_flavour_option_is_parsed() -> None:
    """Check that flavour=betterproto selects the betterproto flavour, spaces allowed."""
    assert parse_options(" flavour = betterproto ").flavour is Flavour.BETTERPROTO


@pytest.mark.parametrize(
    ("parameter", "message"),
    [
        ("colour=red", "unknown option 'colour'; known options: flavour"),
        ("flavour=pydantic", "option flavour='pydantic' is not one of protobuf|betterproto"),
        ("flavour", "option 'flavour' is not of the form key=value"),
        ("flavour=protobuf,flavour=betterproto", "option 'flavour' is given more than once"),
    ],
)
def test_bad_option_is_a_clear_error(parameter: str, message: str) -> None:
    """Check that each kind of bad parameter raises OptionsError naming the problem."""
    with pytest.raises(OptionsError) as info:
        parse_options(parameter)
    assert str(info.value) == message


def test_unknown_option_is_reported_in_response_error() -> None:
    """Check that generate() reports a bad option in response.error and writes no file."""
    response = generate(_request("nope=1"))
    assert response.error == "protoc-gen-quicflow: unknown option 'nope'; known options: flavour"
    assert not response.file


def test_response_declares_proto3_optional_and_editions() -> None:
    """Check that every response declares proto3 optional and editions up to 2024, errors too."""
    for request in (_request(), _request("bad=1")):
        response = generate(request)
        assert response.supported_features & CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
        assert response.supported_features & CodeGeneratorResponse.FEATURE_SUPPORTS_EDITIONS
        assert response.minimum_edition == Edition.EDITION_PROTO2
        assert response.maximum_edition == Edition.EDITION_2024


def test_betterproto_flavour_refuses_editions_in_one_line() -> None:
    """Check that an editions file in the betterproto flavour is a short error naming the file."""
    request = _request("flavour=betterproto")
    request.proto_file[0].syntax = "editions"
    request.proto_file[0].edition = Edition.EDITION_2023
    response = generate(request)
    assert response.error == (
        'protoc-gen-quicflow: pkg/svc.proto: editions files (edition = "2023") cannot use '
        "flavour=betterproto: betterproto 2.0.0b7 supports proto2 and proto3 only; "
        "use the protobuf flavour"
    )
    assert not response.file


def test_internal_error_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Check that a bug in the plugin reaches protoc as one error line, not a traceback."""

    def broken(file: object) -> str:
        raise RuntimeError("boom")

    monkeypatch.setattr("quicflow_codegen.__main__.render_file", broken)
    response = generate(_request())
    assert response.error.startswith("protoc-gen-quicflow: internal error RuntimeError: boom (")
    assert "\n" not in response.error
    assert not response.file


def test_betterproto_flavour_without_betterproto_is_an_error_line() -> None:
    """Check that flavour=betterproto without betterproto answers an error line, no traceback."""
    code = (
        "import sys; sys.modules['betterproto'] = None\n"
        "from quicflow_codegen.__main__ import main\n"
        "sys.exit(main())\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=_request("flavour=betterproto").SerializeToString(),
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == b""
    response = CodeGeneratorResponse.FromString(done.stdout)
    assert response.error == (
        "protoc-gen-quicflow: flavour=betterproto needs betterproto installed next to the "
        "plugin: pip install 'betterproto[compiler]==2.0.0b7'"
    )


def test_generate_is_deterministic() -> None:
    """Check that the same request gives byte-identical responses."""
    first = generate(_request()).SerializeToString(deterministic=True)
    assert generate(_request()).SerializeToString(deterministic=True) == first


def test_output_name_and_header() -> None:
    """Check that the module is written next to the _pb2 module and starts with the header."""
    (file,) = generate(_request()).file
    assert file.name == "pkg/svc_quicflow.py"
    assert file.content.startswith(
        f"# Generated by protoc-gen-quicflow {__version__}. DO NOT EDIT.\n# source: pkg/svc.proto\n"
    )


def test_file_without_service_writes_nothing() -> None:
    """Check that a requested file with no service produces no output and no error."""
    response = generate(_request(with_service=False))
    assert not response.error
    assert not response.file


def test_missing_type_is_an_error() -> None:
    """Check that an rpc whose type is not in the request is reported, not crashed on."""
    request = _request()
    request.proto_file[0].service[0].method[0].input_type = ".other.Missing"
    assert "type .other.Missing is not in the request" in generate(request).error


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Say", "say"),
        ("SayHello", "say_hello"),
        ("GetHTTPStatus", "get_http_status"),
        ("HTTP2Ping", "http2_ping"),
        ("get_foo", "get_foo"),
        ("Get__Foo_", "get_foo"),
        ("already_snake", "already_snake"),
    ],
)
def test_snake_case(name: str, expected: str) -> None:
    """Check that rpc names become the snake_case a Python user expects."""
    assert naming.snake_case(name) == expected


def test_method_names_avoid_keywords_builtins_and_each_other() -> None:
    """Check that reserved names get a trailing underscore and duplicates get a number."""
    scope = naming.Namespace(naming.CLASS_RESERVED | {"say"})
    names = [
        naming.python_method_name(rpc, scope)
        for rpc in ("Import", "class", "Float", "GetFoo", "get_foo", "Say", "Close")
    ]
    assert names == ["import_", "class_", "float_", "get_foo", "get_foo_2", "say_", "close"]


def test_module_paths_follow_protoc() -> None:
    """Check that module paths follow protoc's python rule: '-' is '_', '.' is a package."""
    assert naming.pb2_module("a/b-c.proto") == "a.b_c_pb2"
    assert naming.output_path("a/b-c.proto") == "a/b_c_quicflow.py"
    assert naming.output_path("top.proto") == "top_quicflow.py"
    assert naming.pb2_module("users/user.service.proto") == "users.user.service_pb2"
    assert naming.output_path("users/user.service.proto") == "users/user/service_quicflow.py"


@pytest.mark.parametrize(
    ("from_proto", "package", "module"),
    [
        ("echo/echo.proto", "echo", "."),
        ("bp/v1/api.proto", "common", "...common"),
        ("bp/v1/api.proto", "bp.v1.sub", ".sub"),
        ("top.proto", "echo", ".echo"),
        ("top.proto", "", "."),
        # The generated module is in bp/v1/api/ (protoc's rule for dots in names).
        ("bp/v1/api.svc.proto", "bp.v1", ".."),
    ],
)
def test_betterproto_imports_are_relative(from_proto: str, package: str, module: str) -> None:
    """Check that betterproto classes are imported relative to the generated module."""
    got = naming.message_import(
        Flavour.BETTERPROTO,
        from_proto=from_proto,
        type_proto="x.proto",
        type_package=package,
        type_path=("Outer", "HTTPInner"),
    )
    assert got[:2] == (module, ("OuterHttpInner",))


def test_wrap_follows_ruff_layout() -> None:
    """Check that wrap() gives one line within 88 columns, else one item per line with a comma."""
    assert LINE_LENGTH == 88
    assert wrap(0, "f(", ["a", "b"], ")") == "f(a, b)"
    fits = ["x" * 38, "y" * 38]
    assert len(wrap(4, "call(", fits, ")")) == 88 - 4
    long = ["x" * 45, "y" * 45]
    assert wrap(4, "call(", long, ")") == f"call(\n        {long[0]},\n        {long[1]},\n    )"


def test_constant_explodes_a_long_annotation() -> None:
    """Check that a Method constant with a too long first line gets its type arguments exploded."""
    short = constant("_A", "quicflow.Method", ["Req", "Resp"], "quicflow.Method", ["1", "2"])
    assert short == "_A: quicflow.Method[Req, Resp] = quicflow.Method(1, 2)"
    long = constant("_A", "quicflow.Method", ["R" * 40, "S" * 40], "quicflow.Method", ["1"])
    assert long == f"_A: quicflow.Method[\n    {'R' * 40},\n    {'S' * 40},\n] = quicflow.Method(1)"


def test_docstring_escapes_and_wraps() -> None:
    """Check that docstrings escape quotes and backslashes and stay within the line length."""
    assert docstring('say "hi" \\n', 4) == '"""say "hi" \\\\n"""'
    assert docstring('ends in """', 4) == '"""ends in \\"\\"\\""""'
    assert docstring('ends in "quote"', 4) == '"""ends in "quote\\""""'
    assert docstring('backslash \\"', 4) == '"""backslash \\\\\\""""'
    assert docstring('two\nlines "end"', 4) == '"""two\n    lines "end"\n    """'
    for text in ('a """', 'b "', 'c \\"', 'd \\\\"', '"""', '"'):
        assert eval(docstring(text, 0)) == text
    first, *rest = docstring("word " * 40, 8).splitlines()
    assert rest
    assert 8 + len(first) <= LINE_LENGTH
    assert all(len(line) <= LINE_LENGTH for line in rest)


def test_dump_request_env_saves_a_replayable_request(tmp_path: Path) -> None:
    """Check that QUICFLOW_DUMP_REQUEST saves protoc's request and replaying it gives the output."""
    dump = tmp_path / "request.bin"
    out = tmp_path / "out"
    out.mkdir()
    proto = CASES / "all_kinds" / "proto"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto}",
            f"--plugin=protoc-gen-quicflow={BIN / 'protoc-gen-quicflow'}",
            f"--quicflow_out={out}",
            "demo/demo.proto",
        ],
        cwd=proto,
        env=dict(os.environ, QUICFLOW_DUMP_REQUEST=str(dump)),
        check=True,
        capture_output=True,
    )
    replay = subprocess.run(
        [sys.executable, "-m", "quicflow_codegen"],
        input=dump.read_bytes(),
        capture_output=True,
        check=True,
    )
    response = CodeGeneratorResponse.FromString(replay.stdout)
    assert response.file[0].content == (out / "demo" / "demo_quicflow.py").read_text()


def test_requests_param_uses_the_alias_only_when_the_union_does_not_fit() -> None:
    """Check that a client-streaming parameter spells out the union if it fits in 88 columns,
    else uses quicflow.RequestIterable (ruff would split the union at 88, join it at 100)."""
    used: list[str] = []

    def use(name: str) -> str:
        used.append(name)
        return name

    assert requests_param("Req", use) == "requests: AsyncIterable[Req] | Iterable[Req]"
    assert used == ["AsyncIterable", "Iterable"]
    used.clear()
    long = "R" * 33
    assert requests_param(long, use) == f"requests: quicflow.RequestIterable[{long}]"
    assert used == []


def test_docstring_that_fits_only_without_its_quotes_becomes_two_lines() -> None:
    """Check that a one-line docstring too long for its closing quotes is split in two, so
    ruff keeps the closing quotes on their own line at 88 and at 100 columns alike."""
    text = "word " * 15 + "end."
    assert len(text) + 4 + 3 <= 88 < len(text) + 4 + 6
    first, second, closing = docstring(text, 4).splitlines()
    assert (first, second, closing) == ('"""' + "word " * 14 + "word", "    end.", '    """')


def test_long_service_name_drops_the_classvar_annotation() -> None:
    """Check that SERVICE_NAME loses its redundant ClassVar annotation when it would not fit."""
    request = _request()
    package = "a" * 30 + "." + "b" * 25
    request.proto_file[0].package = package
    for message in request.proto_file[0].service[0].method:
        message.input_type = f".{package}.Req"
        message.output_type = f".{package}.Resp"
    (file,) = generate(request).file
    assert f'    SERVICE_NAME = "{package}.Svc"\n' in file.content
    assert "ClassVar" not in file.content
