"""Every ``quicflow`` command through its real entry point, against a real `quicflow serve`.

One server process (``quicflow serve tests.e2e.service:TestEcho``) serves the
whole module; each test runs the CLI as a subprocess (``python -m quicflow``,
and once the installed ``quicflow`` script) and checks its output and exit
status, including one bad input per command.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from quicflow import Client, ClientConfig
from quicflow.certs import DevCerts, write_dev_certs

ROOT = Path(__file__).resolve().parent.parent.parent
ECHO_PROTO = str(ROOT / "proto" / "echo" / "echo.proto")
ADMIN_PROTO = str(ROOT / "proto" / "quicflow" / "admin" / "v1" / "admin.proto")
ADMIN_TOKEN = "cli-test-admin-token-0123"


@dataclass
class Served:
    """The module's server process and how to reach it."""

    proc: subprocess.Popen[str]
    port: int
    certs: DevCerts
    banner: str
    """The first line `quicflow serve` printed."""

    def connection(self) -> list[str]:
        """The connection flags every client command needs."""
        return [
            "--address",
            f"127.0.0.1:{self.port}",
            "--ca",
            str(self.certs.ca_file),
            "--server-name",
            "localhost",
        ]


def quicflow(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m quicflow ARGS`` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "quicflow", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        input=stdin,
        env={**os.environ, **(env or {})},
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a failed command (asserting there is exactly one)."""
    assert result.returncode != 0, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """``quicflow serve`` with the test Echo servicer on a free port, admin token set."""
    certs = write_dev_certs(tmp_path_factory.mktemp("certs"))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "quicflow",
            "serve",
            "tests.e2e.service:TestEcho",
            "-p",
            "generated",
            "--port",
            "0",
            "--cert",
            str(certs.cert_file),
            "--key",
            str(certs.key_file),
            "--grace",
            "1",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "QUICFLOW_SERVER_ADMIN_TOKEN": ADMIN_TOKEN},
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    match = re.search(r"serving echo\.Echo on 127\.0\.0\.1:(\d+)", line)
    if match is None:
        proc.kill()
        pytest.fail(f"quicflow serve did not start: {line!r} {proc.communicate()[1]!r}")
    yield Served(proc, int(match.group(1)), certs, line)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopped" in out


def test_serve_runs_on_uvloop_when_installed(served: Served) -> None:
    """Check that `quicflow serve` (event_loop "auto") started its server on uvloop, which
    the dev extra installs, and says so."""
    pytest.importorskip("uvloop")
    assert served.banner.rstrip().endswith("(event loop: uvloop)"), served.banner


# -- call ----------------------------------------------------------------------


def test_call_unary_from_a_proto_prints_json(served: Served) -> None:
    """Check that `call` compiles the .proto, sends the JSON request and prints the reply."""
    result = quicflow(
        "call", "echo.Echo/Say", '{"text": "hello"}', "--proto", ECHO_PROTO, *served.connection()
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"text": "hello"}


def echo_descriptor_set(tmp_path: Path) -> Path:
    """echo/echo.proto and its imports compiled by protoc into a descriptor set file."""
    descriptor_set = tmp_path / "echo.pb"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{ROOT / 'proto'}",
            "--include_imports",
            f"--descriptor_set_out={descriptor_set}",
            "echo/echo.proto",
        ],
        check=True,
    )
    return descriptor_set


def test_call_server_stream_from_a_descriptor_set(served: Served, tmp_path: Path) -> None:
    """Check that `call --descriptor-set` streams one JSON line per reply (input from stdin)."""
    descriptor_set = echo_descriptor_set(tmp_path)
    result = quicflow(
        "call",
        "/echo.Echo/Stream",
        "-",
        "--descriptor-set",
        str(descriptor_set),
        *served.connection(),
        stdin='{"text": "s", "repeat": 3}',
    )
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines == [{"text": "s"}, {"text": "s", "index": 1}, {"text": "s", "index": 2}]


def without_grpc_tools(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``quicflow ARGS`` in a Python where ``import grpc_tools`` fails."""
    code = (
        "import sys; sys.modules['grpc_tools'] = None; from quicflow.cli import main; "
        f"sys.exit(main({list(args)!r}))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT
    )


def test_call_needs_grpcio_tools_only_for_a_proto(served: Served, tmp_path: Path) -> None:
    """Check that without grpcio-tools `call --descriptor-set` still works and `--proto` says
    what to install or use instead."""
    descriptor_set = echo_descriptor_set(tmp_path)
    args = ["call", "echo.Echo/Say", '{"text": "no protoc"}', *served.connection()]
    done = without_grpc_tools(*args, "--descriptor-set", str(descriptor_set))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"text": "no protoc"}
    refused = without_grpc_tools(*args, "--proto", ECHO_PROTO)
    assert one_error_line(refused) == (
        "quicflow call: compiling a .proto needs grpcio-tools (the gen extra): "
        "pip install 'quicflow[gen]', or pass --descriptor-set"
    )


def test_call_sends_metadata(served: Served) -> None:
    """Check that `-m key=value` reaches the server: the admin service needs its token there."""
    base = ["call", "quicflow.admin.v1.Admin/ListClients", "--proto", ADMIN_PROTO]
    denied = quicflow(*base, *served.connection())
    assert one_error_line(denied).startswith("ERROR UNAUTHENTICATED: ")
    allowed = quicflow(*base, "-m", f"admin-token={ADMIN_TOKEN}", *served.connection())
    assert allowed.returncode == 0, allowed.stderr
    assert "clients" in json.loads(allowed.stdout)


def test_call_prints_the_json_mapping_or_with_proto_names_the_proto_spelling(
    served: Served,
) -> None:
    """Check that `call` prints protobuf's JSON mapping (lowerCamelCase names, 64-bit
    integers as strings) and, with --proto-names, the .proto's own field names."""
    base = ["call", "quicflow.admin.v1.Admin/ListClients", "--proto", ADMIN_PROTO]
    base += ["-m", f"admin-token={ADMIN_TOKEN}", *served.connection()]
    mapped = quicflow(*base)
    assert mapped.returncode == 0, mapped.stderr
    entry = json.loads(mapped.stdout)["clients"][0]  # the command's own connection, at least
    assert {"clientId", "connectedSince", "bytesIn"} <= entry.keys()
    assert isinstance(entry["bytesIn"], str) and int(entry["bytesIn"]) > 0
    named = quicflow(*base, "--proto-names")
    assert named.returncode == 0, named.stderr
    entry = json.loads(named.stdout)["clients"][0]
    assert {"client_id", "connected_since", "bytes_in"} <= entry.keys()
    assert not any(any(c.isupper() for c in key) for key in entry)


def test_call_non_ok_status_and_deadline_print_one_error_line(served: Served) -> None:
    """Check that a non-OK status prints `ERROR <CODE>: <details>` and the deadline applies."""
    aborted = quicflow(
        "call",
        "echo.Echo/Say",
        '{"text": "abort:NOT_FOUND"}',
        "--proto",
        ECHO_PROTO,
        *served.connection(),
    )
    assert one_error_line(aborted) == "ERROR NOT_FOUND: aborted on request"
    late = quicflow(
        "call",
        "echo.Echo/Say",
        '{"delayMs": 3000}',
        "--deadline",
        "0.2",
        "--proto",
        ECHO_PROTO,
        *served.connection(),
    )
    assert one_error_line(late).startswith("ERROR DEADLINE_EXCEEDED: ")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["echo.Echo/Say", "{bad", "--proto", ECHO_PROTO], "bad JSON input"),
        (["echo.Echo/Say", '{"txt": 1}', "--proto", ECHO_PROTO], 'no field named "txt"'),
        (["echo.Echo/Shout", "{}", "--proto", ECHO_PROTO], "has no method 'Shout'"),
        (["nope.Svc/M", "{}", "--proto", ECHO_PROTO], "unknown service 'nope.Svc'"),
        (["echo.Echo/Say", "{}", "--descriptor-set", ECHO_PROTO], "not a protobuf descriptor set"),
        (
            ["echo.Echo/Say", "{}", "--proto", ECHO_PROTO, "--descriptor-set", ECHO_PROTO],
            "--proto FILE or --descriptor-set FILE, not both",
        ),
    ],
    ids=["json", "field", "method", "service", "descriptor-set", "both-schemas"],
)
def test_call_bad_input_fails_with_one_line(served: Served, args: list[str], expected: str) -> None:
    """Check that each kind of bad `call` input gives one clear line and a non-zero exit."""
    line = one_error_line(quicflow("call", *args, *served.connection()))
    assert line.startswith("quicflow call: ")
    assert expected in line


def test_call_bad_proto_and_unreachable_server(served: Served, tmp_path: Path) -> None:
    """Check that a broken .proto reports protoc's complaint and a dead address fails with
    one line."""
    broken = tmp_path / "broken.proto"
    broken.write_text('syntax = "proto3";\nmessage {\n')
    line = one_error_line(quicflow("call", "x.Y/Z", "{}", "--proto", str(broken)))
    assert line.startswith("quicflow call: protoc failed: ")
    assert "broken.proto" in line
    dead = quicflow(
        "call", "echo.Echo/Say", "{}", "--proto", ECHO_PROTO,
        "--address", "127.0.0.1:9", "--ca", str(served.certs.ca_file), "--connect-timeout", "0.3",
    )  # fmt: skip
    assert one_error_line(dead).startswith("quicflow call: nothing answers at 127.0.0.1:9 ")
    bad_address = quicflow("call", "echo.Echo/Say", "--proto", ECHO_PROTO, "--address", "nope")
    assert "--address must be HOST:PORT" in one_error_line(bad_address)


# -- health --------------------------------------------------------------------


def test_health_check_through_the_installed_script(served: Served) -> None:
    """Check that the `quicflow` console script's `health` says SERVING (exit 0) for the server
    and for the served service, NOT_FOUND (exit 1) for an unknown one, and lists both."""
    script = Path(sys.executable).parent / "quicflow"
    assert script.exists(), "the venv has no quicflow console script"
    run = [str(script), "health", *served.connection()]
    overall = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert (overall.returncode, overall.stdout) == (0, "SERVING\n"), overall.stderr
    echo = subprocess.run([*run, "--service", "echo.Echo"], capture_output=True, text=True)
    assert (echo.returncode, echo.stdout) == (0, "SERVING\n"), echo.stderr
    unknown = subprocess.run([*run, "--service", "no.Such"], capture_output=True, text=True)
    assert one_error_line(unknown) == "ERROR NOT_FOUND: unknown service 'no.Such'"
    listed = subprocess.run([*run, "--list"], capture_output=True, text=True)
    assert listed.stdout == "(server) SERVING\necho.Echo SERVING\n", listed.stderr


def test_health_watch_prints_statuses_until_its_deadline(served: Served) -> None:
    """Check that `health --watch` prints the current status and exits 0 at its deadline."""
    result = quicflow("health", "--watch", "--deadline", "1.5", *served.connection())
    assert (result.returncode, result.stdout) == (0, "SERVING\n"), result.stderr


def test_health_of_a_server_with_a_certificate_we_do_not_trust(served: Served) -> None:
    """Check that a TLS failure (no --ca: the system store does not know the dev CA) is one
    line naming the cause."""
    result = quicflow("health", "--address", f"127.0.0.1:{served.port}", "--connect-timeout", "2")
    line = one_error_line(result)
    assert line.startswith(f"quicflow health: could not connect to 127.0.0.1:{served.port}: ")
    assert "unable to get local issuer certificate" in line
    assert "ca_file (--ca FILE)" in line  # what to do about it


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A UDP port with a socket on it that never answers (a server that hangs)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield int(s.getsockname()[1])


def test_health_wait_bounds_the_whole_command(silent_port: int) -> None:
    """Check that `health --wait 1` against a server that never answers gives up after
    --wait (its last attempt gets what is left of it, not another 5 s connect_timeout) and
    says so."""
    address = f"127.0.0.1:{silent_port}"
    line = one_error_line(quicflow("health", "--address", address, "--wait", "1"))
    assert line == (
        f"quicflow health: could not connect to {address}: no answer within 1 s "
        "(kept trying for --wait 1 s)"
    )


def test_health_wait_retries_a_closed_port_quietly() -> None:
    """Check that `health --wait` on asyncio's loop retries a port nobody listens on with no
    traceback from a failed attempt, prints the insecure warning once, and ends with the
    reason."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    result = quicflow(
        "health", "--address", address, "--insecure", "--wait", "0.8",
        env={"QUICFLOW_CLIENT_EVENT_LOOP": "asyncio"},
    )  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1
    assert len(lines) == 2, result.stderr
    assert "TLS verification is OFF" in lines[0]
    assert lines[1] == (
        f"quicflow health: nothing answers at {address} (no server listens on that UDP port) "
        "(kept trying for --wait 0.8 s)"
    )


def test_call_deadline_bounds_connecting(silent_port: int) -> None:
    """Check that a call's --deadline shorter than connect_timeout also bounds connecting."""
    address = f"127.0.0.1:{silent_port}"
    result = quicflow(
        "call", "echo.Echo/Say", "{}", "--proto", ECHO_PROTO, "--address", address,
        "--deadline", "0.4",
    )  # fmt: skip
    assert one_error_line(result) == (
        f"quicflow call: could not connect to {address}: no answer within 0.4 s"
    )


# -- clients -------------------------------------------------------------------


async def test_clients_lists_a_connected_client(served: Served, tmp_path: Path) -> None:
    """Check that `clients` (admin token from a file) lists a client that is connected, as a
    table and as JSON, and leaves itself out."""
    token_file = tmp_path / "token"
    token_file.write_text(ADMIN_TOKEN + "\n")
    config = ClientConfig(
        port=served.port,
        ca_file=str(served.certs.ca_file),
        server_name="localhost",
        client_id="sensor-7",
        labels={"zone": "eu"},
    )
    async with Client(config):
        args = ["clients", "--admin-token-file", str(token_file), *served.connection()]
        # One after the other: each run leaves only its own connection out of the list.
        table = await asyncio.to_thread(quicflow, *args)
        as_json = await asyncio.to_thread(quicflow, *args, "--json")
    assert table.returncode == 0, table.stderr
    header, *rows, total = table.stdout.splitlines()
    assert header.split()[:3] == ["CLIENT", "ADDRESS", "CONNECTED"]
    assert total == "1 client(s)"
    assert rows[0].startswith("sensor-7 ")
    assert "zone=eu" in rows[0]
    assert as_json.returncode == 0, as_json.stderr
    entries = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(e["client_id"], e["labels"]) for e in entries] == [("sensor-7", {"zone": "eu"})]
    assert entries[0]["address"].startswith("127.0.0.1:")


def test_clients_needs_the_admin_token(served: Served) -> None:
    """Check that `clients` without a token, or with a wrong one, fails with one line."""
    missing = quicflow("clients", *served.connection(), env={"QUICFLOW_ADMIN_TOKEN": ""})
    assert "needs a token" in one_error_line(missing)
    wrong = quicflow(
        "clients", *served.connection(), env={"QUICFLOW_ADMIN_TOKEN": "wrong-token-0123456789"}
    )
    assert one_error_line(wrong) == "ERROR PERMISSION_DENIED: wrong admin token"


# -- serve and gen -------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["no_such_module:Svc"], "cannot import 'no_such_module'"),
        (["examples.echo.service:Nope", "-p", "generated"], "has no attribute 'Nope'"),
        (["quicflow.cli:CliError"], "is not a service"),
        (["examples.echo.service:Echo", "-p", "generated"], "cert_file"),
        (["examples.echo.service:Echo", "-p", "generated", "--port", "70000"], "port"),
    ],
    ids=["module", "attribute", "not-a-service", "no-cert", "bad-port"],
)
def test_serve_bad_input_fails_with_one_line(args: list[str], expected: str) -> None:
    """Check that a bad service spec or config gives one clear line and a non-zero exit."""
    line = one_error_line(quicflow("serve", *args))
    assert line.startswith("quicflow serve: ")
    assert expected in line


def test_gen_writes_importable_modules(tmp_path: Path) -> None:
    """Check that `gen` on a proto tree writes _pb2 and _quicflow modules that import and
    describe the service."""
    out = tmp_path / "out"
    result = quicflow("gen", str(ROOT / "proto" / "echo"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "echo_pb2.py",
        "echo_pb2.pyi",
        "echo_quicflow.py",
    ]
    probe = subprocess.run(
        [sys.executable, "-c", "import echo_quicflow; print(echo_quicflow.EchoBase.SERVICE_NAME)"],
        cwd=out,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(out)},
    )
    assert probe.stdout == "echo.Echo\n", probe.stderr


def test_gen_betterproto_flavour(tmp_path: Path) -> None:
    """Check that `gen --flavour betterproto` writes betterproto's dataclasses and QuicFlow
    stubs that import them."""
    result = quicflow(
        "gen", str(ROOT / "proto" / "echo"), "--out", str(tmp_path), "--flavour", "betterproto"
    )
    assert result.returncode == 0, result.stderr
    assert (
        "class EchoRequest(betterproto.Message)" in (tmp_path / "echo" / "__init__.py").read_text()
    )
    assert "from .echo import EchoReply, EchoRequest" in (tmp_path / "echo_quicflow.py").read_text()


def test_gen_bad_input_fails_with_one_line(tmp_path: Path) -> None:
    """Check that a missing path and a syntax error in a .proto each give one line."""
    missing = one_error_line(quicflow("gen", str(tmp_path / "nope"), "--out", str(tmp_path)))
    assert missing.startswith("quicflow gen: ") and "no such file or directory" in missing
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nservice {\n')
    broken = one_error_line(quicflow("gen", str(tmp_path / "bad.proto"), "--out", str(tmp_path)))
    assert broken.startswith("quicflow gen: protoc failed: ") and "bad.proto" in broken


def test_gen_that_fails_leaves_no_empty_output_folder(tmp_path: Path) -> None:
    """Check that a failed `gen` removes the (empty) output folders it created, and keeps one
    that was there before."""
    (tmp_path / "bad.proto").write_text('syntax = "proto3";\nservice {\n')
    out = tmp_path / "new" / "gen"
    one_error_line(quicflow("gen", str(tmp_path / "bad.proto"), "--out", str(out)))
    assert not (tmp_path / "new").exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    one_error_line(quicflow("gen", str(tmp_path / "bad.proto"), "--out", str(existing)))
    assert existing.is_dir()


def test_gen_without_grpcio_tools_says_which_extra_to_install(tmp_path: Path) -> None:
    """Check that `gen` names the missing `gen` extra when grpcio-tools cannot be imported."""
    result = without_grpc_tools("gen", str(ROOT / "proto" / "echo"), "--out", str(tmp_path))
    line = one_error_line(result)
    assert line == (
        "quicflow gen: generating code needs grpcio-tools (the gen extra): "
        "pip install 'quicflow[gen]'"
    )


def test_serve_bad_config_file_names_the_field(tmp_path: Path) -> None:
    """Check that `serve --config` with an unknown or out-of-range field names it in one line."""
    config = tmp_path / "server.toml"
    config.write_text('[server]\ncert_file = "x.pem"\nheartbeat_intervall = 5\n')
    line = one_error_line(
        quicflow("serve", "examples.echo.service:Echo", "-p", "generated", "--config", str(config))
    )
    assert line == (
        f"quicflow serve: bad configuration: {config}: heartbeat_intervall: "
        "is not a ServerConfig field"
    )
    config.write_text('[server]\ncert_file = "x.pem"\nmax_missed_heartbeats = 0\n')
    line = one_error_line(
        quicflow("serve", "examples.echo.service:Echo", "-p", "generated", "--config", str(config))
    )
    assert "max_missed_heartbeats: must be between 1 and 100, got 0" in line


# -- reflection (tests/e2e/test_reflection.py has the rest) ---------------------


def test_serve_answers_reflection_so_call_needs_no_proto(served: Served) -> None:
    """Check that `quicflow serve` turns reflection on: `list` names the served service and
    `call` works without --proto or --descriptor-set."""
    listed = quicflow("list", *served.connection())
    assert listed.returncode == 0, listed.stderr
    assert "echo.Echo" in listed.stdout.splitlines()
    called = quicflow("call", "echo.Echo/Say", '{"text": "no proto"}', *served.connection())
    assert called.returncode == 0, called.stderr
    assert json.loads(called.stdout) == {"text": "no proto"}
