"""The ``quicflow`` command (also ``python -m quicflow``).

::

    quicflow certs DIR                          development CA, server and client certificates
    quicflow certs DIR --add-client ID          one more client certificate from that CA
    quicflow certs DIR --revoke ID              list that client in DIR/crl.pem (a CRL)
    quicflow gen PROTO... --out DIR             protoc with the QuicFlow plugin (needs [gen])
    quicflow serve module:Service... [--config server.toml]
    quicflow call pkg.Service/Method '{"json": 1}' [--proto x.proto | --descriptor-set x.pb]
    quicflow list [pkg.Service]                 services (or methods), by server reflection
    quicflow describe [SYMBOL...]               .proto-like text of services, messages, ...
    quicflow clients [--json]                   connected clients (admin token required)
    quicflow health [--service NAME] [--watch]  grpc.health.v1 Check / Watch (--list: List)

Exit status: 0 success, 1 failure (one line on stderr, never a traceback),
2 bad usage. A call that ends with a non-OK status prints
``ERROR <CODE>: <details>``. ``health`` exits 0 only for SERVING.
See docs/quickstart.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from .certs import issue_client_certificate, revoke_client_certificates, write_dev_certs
from .errors import ConfigError, RpcError
from .loop import run as run_loop

__all__ = ["CliError", "build_parser", "main"]

ADMIN_TOKEN_ENV = "QUICFLOW_ADMIN_TOKEN"
"""Environment variable ``quicflow clients`` reads the admin token from."""


class CliError(Exception):
    """A failure the CLI reports as one line (``quicflow <command>: <message>``)."""


# -- shared helpers ------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise CliError(message)


def _have_grpc_tools() -> bool:
    return importlib.util.find_spec("grpc_tools") is not None


def _protoc(args: list[str], what: str, hint: str = "") -> None:
    """Run grpcio-tools' protoc; its complaint becomes one line."""
    lines = _try_protoc(args, what, hint)
    if lines is not None:
        _fail("protoc failed: " + "; ".join(lines))


def _try_protoc(args: list[str], what: str, hint: str = "") -> list[str] | None:
    """Run grpcio-tools' protoc: None if it succeeded, else its complaint's lines."""
    if not _have_grpc_tools():
        _fail(f"{what} needs grpcio-tools (the gen extra): pip install 'quicflow[gen]'{hint}")
    cmd = [sys.executable, "-m", "grpc_tools.protoc", *args]
    env = dict(os.environ)
    # The plugin wrapper may run `-m quicflow_codegen`; make sure it is importable.
    codegen = Path(__file__).resolve().parent.parent / "codegen"
    if codegen.is_dir():
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(codegen), env.get("PYTHONPATH")) if p)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if done.returncode == 0:
        return None
    return _complaint(done.stderr + done.stdout) or [f"exit status {done.returncode}"]


_TRACEBACK_GLUE = (
    "Traceback (most recent call last):",
    "The above exception was the direct cause of the following exception:",
    "During handling of the above exception, another exception occurred:",
)


def _complaint(output: str) -> list[str]:
    """protoc's error lines, stripped; a crashed plugin's traceback keeps only its last line."""
    lines: list[str] = []
    for raw in output.splitlines():
        if raw.startswith(" ") or raw.strip() in _TRACEBACK_GLUE or not raw.strip():
            continue  # a traceback's frames and glue (protoc's own lines are not indented)
        lines.append(raw.strip())
    return lines


def _tool(name: str, module: str, scratch: Path) -> Path:
    """The console script ``name`` next to this Python, else a wrapper running ``-m module``."""
    script = Path(sys.executable).parent / name
    if script.exists():
        return script
    wrapper = scratch / name
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
    wrapper.chmod(0o755)
    return wrapper


def _proto_files(paths: Sequence[str], includes: Sequence[str]) -> tuple[list[str], list[str]]:
    """(include dirs, .proto names relative to one of them) for files or directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(path.rglob("*.proto")))
        elif path.is_file():
            if path.suffix != ".proto":
                _fail(f"{raw} is not a .proto file")
            found.append(path)
        else:
            _fail(f"{raw}: no such file or directory")
    if not found:
        _fail(f"no .proto files in {', '.join(paths)}")
    if not includes:
        includes = [raw for raw in paths if Path(raw).is_dir()] or [
            str(Path(paths[0]).parent) or "."
        ]
    roots = [Path(i).resolve() for i in includes]
    names: list[str] = []
    for file in found:
        resolved = file.resolve()
        for root in roots:
            if resolved.is_relative_to(root):
                names.append(resolved.relative_to(root).as_posix())
                break
        else:
            _fail(f"{file} is not under any include directory ({', '.join(includes)}); use -I")
    return [str(r) for r in roots], names


# -- certs ---------------------------------------------------------------------


def _certs(args: argparse.Namespace) -> int:
    if args.revoke is not None:
        # Revoke with the CA already in DIR; an empty --revoke '' list only refreshes the CRL.
        ids = tuple(i for i in args.revoke if i)
        try:
            crl, serials = revoke_client_certificates(Path(args.directory), ids, days=args.days)
        except (OSError, ValueError) as exc:
            _fail(f"cannot revoke: {exc}")
        for serial in serials:
            print(f"revoked: serial {serial:x}")
        print(f"CRL:    {crl} (server: client_crl_file), next update in {args.days} days")
        return 0
    if args.add_client:
        # Sign more client certificates with the CA already in DIR (no new CA).
        for client_id in args.add_client:
            cert, key = issue_client_certificate(Path(args.directory), client_id, days=args.days)
            print(f"client: {cert} (key {key}) for client id {client_id}")
        return 0
    names = tuple(args.name) if args.name else ("localhost", "127.0.0.1", "::1")
    certs = write_dev_certs(
        Path(args.directory), names=names, client_id=args.client_id, days=args.days
    )
    print(f"CA:     {certs.ca_file}")
    print(f"server: {certs.cert_file} (key {certs.key_file}) for {', '.join(names)}")
    print(
        f"client: {certs.client_cert_file} (key {certs.client_key_file}) "
        f"for client id {args.client_id}"
    )
    print("These are for development only.")
    return 0


# -- gen -----------------------------------------------------------------------


_EDITION = re.compile(r'^\s*edition\s*=\s*"', re.MULTILINE)
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.DOTALL)


def _editions_file(includes: Sequence[str], name: str) -> bool:
    """True if the .proto ``name`` (under one of ``includes``) starts with ``edition = "..."``."""
    for root in includes:
        path = Path(root) / name
        if path.is_file():
            return bool(_EDITION.search(_COMMENT.sub("", path.read_text(errors="replace"))))
    return False


def _betterproto_refusals(
    includes: Sequence[str], plugin: Path, names: Sequence[str], scratch: Path
) -> dict[str, str]:
    """The files among ``names`` that betterproto's plugin fails on by itself, each with
    the first line of its complaint, found by halving (a group it generates holds none:
    a few runs of a fraction of a second find one file among hundreds). Empty if no
    single file fails (the failure is then not one file's)."""
    runs = [0]

    def refused(group: Sequence[str]) -> list[str] | None:
        runs[0] += 1
        out = scratch / f"betterproto-{runs[0]}"
        out.mkdir()
        opts = [
            f"--plugin=protoc-gen-python_betterproto={plugin}",
            f"--python_betterproto_out={out}",
        ]
        return _try_protoc([*(f"-I{i}" for i in includes), *opts, *group], "generating code")

    found: dict[str, str] = {}

    def search(group: Sequence[str]) -> None:
        complaint = refused(group)
        if complaint is None:
            return
        if len(group) == 1:
            found[group[0]] = complaint[0]
            return
        search(group[: len(group) // 2])
        search(group[len(group) // 2 :])

    search(names)
    return found


def _invalid_python(out: Path, since: float) -> list[str]:
    """One line for each ``.py`` file under ``out`` written at or after ``since`` that is
    not valid Python (betterproto 2.0.0b7 writes ``class None`` for ``message None`` and
    does not fail: black parses it). Empty if all compile."""
    found = []
    for path in sorted(out.rglob("*.py")):
        if path.stat().st_mtime < since:
            continue
        try:
            compile(path.read_bytes(), str(path), "exec", dont_inherit=True)
        except SyntaxError as exc:
            text = (exc.text or "").strip()
            where = f"{path.relative_to(out).as_posix()}:{exc.lineno}"
            found.append(f"{where}: {text!r}: {exc.msg}")
    return found


def _gen(args: argparse.Namespace) -> int:
    """`_generate`, except that a failed run leaves no output directory it created."""
    out = Path(args.out)
    created = [d for d in (out, *out.parents) if not d.exists()]  # deepest first
    try:
        return _generate(args)
    except BaseException:
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only while empty: never what protoc did write
        raise


def _generate(args: argparse.Namespace) -> int:
    started = time.time()
    includes, names = _proto_files(args.protos, args.include)
    skipped: list[str] = []
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quicflow-gen-") as tmp:
        scratch = Path(tmp)
        plugin = _tool("protoc-gen-quicflow", "quicflow_codegen", scratch)
        cmd = [f"-I{i}" for i in includes] + [f"--plugin=protoc-gen-quicflow={plugin}"]
        if args.flavour == "betterproto":
            if not all(importlib.util.find_spec(m) for m in ("betterproto", "black", "isort")):
                _fail(
                    "the betterproto flavour needs betterproto's compiler: "
                    "pip install 'betterproto[compiler]==2.0.0b7'"
                )
            # betterproto 2.0.0b7 refuses editions files, and protoc would then fail the
            # whole run: skip them, one line each, and generate the rest.
            skipped = [n for n in names if _editions_file(includes, n)]
            for name in skipped:
                print(
                    f"quicflow gen: skipped {name}: an editions file, which betterproto "
                    "2.0.0b7 cannot generate (use --flavour protobuf)",
                    file=sys.stderr,
                )
            names = [n for n in names if n not in skipped]
            if not names:
                _fail("nothing left to generate in the betterproto flavour")
            betterproto = _tool("protoc-gen-python_betterproto", "betterproto.plugin", scratch)
            cmd += [
                f"--plugin=protoc-gen-python_betterproto={betterproto}",
                f"--python_betterproto_out={out}",
                "--quicflow_opt=flavour=betterproto",
            ]
        else:
            cmd += [f"--python_out={out}", f"--pyi_out={out}"]
        cmd += [f"--quicflow_out={out}"]
        failed = _try_protoc([*cmd, *names], "generating code")
        if failed is not None and args.flavour == "betterproto":
            # betterproto's plugin fails the whole run for one file it cannot write (a
            # Python keyword where it writes a name as is, and black cannot parse the
            # result), without naming it: find the files it fails on alone, skip them,
            # one line each, and generate the rest.
            refused = _betterproto_refusals(includes, betterproto, names, scratch)
            for name, why in refused.items():
                print(
                    f"quicflow gen: skipped {name}: betterproto 2.0.0b7 cannot generate it "
                    f"({why}) (use --flavour protobuf)",
                    file=sys.stderr,
                )
            if refused:
                skipped += refused
                names = [n for n in names if n not in refused]
                if not names:
                    _fail("nothing left to generate in the betterproto flavour")
                failed = _try_protoc([*cmd, *names], "generating code")
        if failed is not None:
            _fail("protoc failed: " + "; ".join(failed))
    print(f"generated {len(names)} .proto file(s) into {out} ({args.flavour} flavour)")
    if args.flavour == "betterproto":
        for line in _invalid_python(out, started - 1.0):  # filesystem times are coarse
            print(
                f"quicflow gen: betterproto 2.0.0b7 wrote invalid Python: {line} (a name "
                "betterproto writes as is, such as `message None`? rename it or use "
                "--flavour protobuf)",
                file=sys.stderr,
            )
            skipped.append(line)
    return 1 if skipped else 0


# -- serve ---------------------------------------------------------------------


def _load_service(spec: str) -> Any:
    """Import ``module:Name`` and return a service instance (classes are instantiated)."""
    from .rpc import Service

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        _fail(f"service spec {spec!r} must look like module:ClassName")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # an import error in user code: report it, don't crash
        _fail(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}")
    try:
        obj = getattr(module, attr)
    except AttributeError:
        _fail(f"module {module_name!r} has no attribute {attr!r}")
    if isinstance(obj, type):
        if not issubclass(obj, Service):
            _fail(f"{spec} is not a service (a subclass of a generated FooBase)")
        try:
            obj = obj()
        except Exception as exc:
            _fail(f"cannot instantiate {spec}: {type(exc).__name__}: {exc}")
    if not isinstance(obj, Service):
        _fail(f"{spec} is not a service (a subclass of a generated FooBase)")
    return obj


def _serve(args: argparse.Namespace) -> int:
    from .config import ServerConfig
    from .health import ServingStatus
    from .logs import configure_logging
    from .server import Server

    for entry in [*reversed(args.path), "."]:
        resolved = str(Path(entry).resolve())
        if resolved not in sys.path:
            sys.path.insert(0, resolved)
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "cert_file", "key_file"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    # The development runner serves reflection, so `quicflow list/describe/call` need no .proto.
    overrides["reflection"] = not args.no_reflection
    services = [_load_service(spec) for spec in args.services]
    config = ServerConfig.load(args.config, **overrides)
    configure_logging()
    server = Server(config)
    for service in services:
        server.add_service(service)

    async def run() -> None:
        await server.start()
        for service in services:
            if service.SERVICE_NAME:
                server.health.set(service.SERVICE_NAME, ServingStatus.SERVING)
        names = ", ".join(s.SERVICE_NAME or type(s).__name__ for s in services)
        loop = asyncio.get_running_loop()
        loop_name = type(loop).__module__.partition(".")[0]  # "uvloop" or "asyncio"
        print(
            f"serving {names} on {config.host}:{server.port} (event loop: {loop_name})",
            flush=True,
        )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        try:
            await stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        print(f"stopping (grace {args.grace:g} s)", flush=True)
        await server.stop(grace=args.grace)
        print("stopped", flush=True)

    run_loop(run(), event_loop=config.event_loop)
    return 0


# -- client commands -------------------------------------------------------------


def _parse_address(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        _fail(f"--address must be HOST:PORT, got {text!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not 0 < int(port) < 65536:
        _fail(f"--address port must be 1-65535, got {port}")
    return host, int(port)


def _client_config(args: argparse.Namespace) -> Any:
    from .config import ClientConfig

    overrides: dict[str, Any] = {"reconnect": False}
    if args.address is not None:
        overrides["host"], overrides["port"] = _parse_address(args.address)
    for name, value in (
        ("ca_file", args.ca),
        ("cert_file", args.cert),
        ("key_file", args.key),
        ("server_name", args.server_name),
        ("token", args.token),
        ("client_id", args.client_id),
        ("connect_timeout", args.connect_timeout),
    ):
        if value is not None:
            overrides[name] = value
    if args.insecure:
        overrides["insecure_skip_verify"] = True
    return ClientConfig.load(args.config, **overrides)


def _quiet_logging() -> None:
    """Client commands log warnings only (LOG_LEVEL overrides); their errors are our one line."""
    import logging

    from .logs import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL") or "WARNING")
    if logging.getLogger("quicflow").level > logging.DEBUG:
        logging.getLogger("quic").setLevel(logging.CRITICAL)  # aioquic repeats our error


_WAIT_RETRY = 0.2
"""Seconds between connect attempts under ``--wait``."""
_SHORTEST_ATTEMPT = 0.05
"""``--wait`` makes no attempt with less time left than this."""


class _Once:
    """A logging filter that lets each distinct message through once (a warning that every
    connect attempt logs, such as insecure_skip_verify's, is said once per command)."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def filter(self, record: Any) -> bool:
        text = record.getMessage()
        if text in self.seen:
            return False
        self.seen.add(text)
        return True


@contextlib.asynccontextmanager
async def _connected(args: argparse.Namespace, config: Any) -> AsyncIterator[Any]:
    """A client connected with ``config``: one attempt, bounded by ``connect_timeout`` and
    by ``--deadline``; with ``--wait``, attempts until that many seconds have passed (and
    never longer: the last attempt gets only the time left)."""
    import dataclasses
    import logging

    from .client import Client
    from .errors import ConnectionClosed

    _quiet_logging()
    once = _Once()
    logging.getLogger("quicflow.transport").addFilter(once)
    loop = asyncio.get_running_loop()
    wait = getattr(args, "wait", None) or 0.0
    deadline = getattr(args, "deadline", None)
    if deadline is not None and 0 < deadline < config.connect_timeout:
        config = dataclasses.replace(config, connect_timeout=deadline)
    wait_until = loop.time() + wait
    where = f"{config.host}:{config.port}"
    reason = ""
    try:
        while True:
            attempt = config
            left = wait_until - loop.time()
            if wait and left < config.connect_timeout:  # --wait is the bound, not 5 s more
                attempt = dataclasses.replace(config, connect_timeout=max(left, _SHORTEST_ATTEMPT))
            client = Client(attempt)
            began = loop.time()
            try:
                await client.connect()
                break
            except (ConnectionClosed, OSError) as exc:
                await client.close()
                cut_short = attempt is not config and loop.time() - began >= attempt.connect_timeout
                if not cut_short or not reason:  # an attempt --wait cut short says little
                    if isinstance(exc, ConnectionClosed):
                        reason = exc.message
                    else:
                        reason = f"cannot connect to {where}: {exc.strerror or exc}"
                left = wait_until - loop.time()
                if left >= _SHORTEST_ATTEMPT:  # --wait: the server may still be starting
                    await asyncio.sleep(min(_WAIT_RETRY, left - _SHORTEST_ATTEMPT))
                    continue
                _fail(reason + (f" (kept trying for --wait {wait:g} s)" if wait else ""))
    finally:
        logging.getLogger("quicflow.transport").removeFilter(once)
    try:
        yield client
    finally:
        await client.close()


def _parse_metadata(items: Sequence[str]) -> list[tuple[str, str | bytes]]:
    pairs: list[tuple[str, str | bytes]] = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            _fail(f"--metadata must be KEY=VALUE, got {item!r}")
        key = key.strip().lower()
        pairs.append((key, value.encode() if key.endswith("-bin") else value))
    return pairs


def _descriptor_pool(args: argparse.Namespace) -> Any:
    from google.protobuf import descriptor_pb2, descriptor_pool
    from google.protobuf.message import DecodeError

    if args.descriptor_set:
        try:
            data = Path(args.descriptor_set).read_bytes()
        except OSError as exc:
            _fail(f"cannot read {args.descriptor_set}: {exc.strerror}")
        source = args.descriptor_set
    else:
        includes, names = _proto_files(args.proto, args.include)
        with tempfile.TemporaryDirectory(prefix="quicflow-call-") as tmp:
            out = Path(tmp) / "set.pb"
            _protoc(
                [
                    *(f"-I{i}" for i in includes),
                    "--include_imports",
                    f"--descriptor_set_out={out}",
                    *names,
                ],
                "compiling a .proto",
                ", or pass --descriptor-set",
            )
            data = out.read_bytes()
        source = ", ".join(args.proto)
    try:
        file_set = descriptor_pb2.FileDescriptorSet.FromString(data)
    except DecodeError:
        _fail(f"{source} is not a protobuf descriptor set")
    if not file_set.file:
        _fail(f"{source} is not a protobuf descriptor set (no files in it)")
    pool = descriptor_pool.DescriptorPool()
    for file in file_set.file:
        try:
            pool.Add(file)
        except Exception as exc:
            _fail(f"bad descriptor set {source}: {exc} (build it with --include_imports)")
    return pool, file_set


def _find_method(pool: Any, file_set: Any, name: str) -> Any:
    text = name.lstrip("/")
    service_name, sep, method_name = text.partition("/")
    if not sep:
        service_name, _, method_name = text.rpartition(".")
    services = sorted(
        f"{f.package + '.' if f.package else ''}{s.name}" for f in file_set.file for s in f.service
    )
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        known = ", ".join(services) or "none"
        _fail(f"unknown service {service_name!r} (services: {known})")
    method = service.methods_by_name.get(method_name)
    if method is None:
        known = ", ".join(sorted(service.methods_by_name)) or "none"
        _fail(f"service {service_name} has no method {method_name!r} (methods: {known})")
    return method


def _parse_requests(method: Any, text: str, cls: Any) -> list[Any]:
    from google.protobuf import json_format

    if text == "-":
        text = sys.stdin.read()
    try:
        value = json.loads(text) if text.strip() else {}
    except json.JSONDecodeError as exc:
        _fail(f"bad JSON input: {exc}")
    items = value if method.client_streaming and isinstance(value, list) else [value]
    if not method.client_streaming and isinstance(value, list):
        _fail(f"{method.full_name} takes one request: give a JSON object, not an array")
    requests = []
    for item in items:
        try:
            requests.append(json_format.ParseDict(item, cls()))
        except json_format.ParseError as exc:
            _fail(f"bad request for {method.input_type.full_name}: {exc}")
    return requests


def _to_json(message: Any, *, proto_names: bool = False) -> str:
    """``message`` in protobuf's canonical JSON mapping (lowerCamelCase names, 64-bit
    integers as strings, enums by name, bytes as base64, fields at their default value
    left out); ``proto_names``: the field names as the .proto spells them."""
    from google.protobuf import json_format

    as_dict = json_format.MessageToDict(message, preserving_proto_field_name=proto_names)
    return json.dumps(as_dict, ensure_ascii=False)


def _call_spec(args: argparse.Namespace, pool: Any, file_set: Any) -> tuple[Any, list[Any]]:
    """The method ``args.method`` names in ``pool`` as a `Method`, and its parsed requests."""
    from google.protobuf import message_factory

    from .rpc import Cardinality, Method

    method = _find_method(pool, file_set, args.method)
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    requests = _parse_requests(method, args.data, request_cls)
    kind = {
        (False, False): Cardinality.UNARY_UNARY,
        (False, True): Cardinality.UNARY_STREAM,
        (True, False): Cardinality.STREAM_UNARY,
        (True, True): Cardinality.STREAM_STREAM,
    }[(bool(method.client_streaming), bool(method.server_streaming))]
    route = f"/{method.containing_service.full_name}/{method.name}"
    spec: Method[Any, Any] = Method(
        route,
        kind,
        lambda m: m.SerializeToString(),
        request_cls.FromString,
        lambda m: m.SerializeToString(),
        response_cls.FromString,
    )
    return spec, requests


def _call(args: argparse.Namespace) -> int:
    from .rpc import Cardinality

    if args.proto and args.descriptor_set:
        _fail("give the method's schema with --proto FILE or --descriptor-set FILE, not both")
    # Without a schema, the server's reflection service gives it (after connecting).
    prepared = (
        _call_spec(args, *_descriptor_pool(args)) if args.proto or args.descriptor_set else None
    )
    metadata = _parse_metadata(args.metadata)
    config = _client_config(args)

    async def run() -> None:
        async with _connected(args, config) as client:
            spec, requests = prepared or _call_spec(
                args, *await _reflected_schema(client, args, _service_name(args.method))
            )
            kind = spec.cardinality
            options: dict[str, Any] = {"timeout": args.deadline, "metadata": metadata}

            def to_json(message: Any) -> str:
                return _to_json(message, proto_names=args.proto_names)

            if kind is Cardinality.UNARY_UNARY:
                print(to_json(await client.unary_unary(spec, requests[0], **options)))
            elif kind is Cardinality.STREAM_UNARY:
                print(to_json(await client.stream_unary(spec, requests, **options)))
            else:
                call = (
                    client.unary_stream(spec, requests[0], **options)
                    if kind is Cardinality.UNARY_STREAM
                    else client.stream_stream(spec, requests, **options)
                )
                async for response in call:
                    print(to_json(response), flush=True)

    run_loop(run(), event_loop=config.event_loop)
    return 0


# -- reflection: call without a schema, list, describe -------------------------------


def _service_name(method: str) -> str:
    """``pkg.Service`` from ``pkg.Service/Method`` or ``pkg.Service.Method``."""
    text = method.lstrip("/")
    service, sep, _ = text.partition("/")
    return service if sep else text.rpartition(".")[0]


async def _reflection_pool(reflection: Any, symbol: str, what: str, hint: str = "") -> Any:
    """The pool holding ``symbol``'s file and its imports; clear lines for a server without
    reflection (UNIMPLEMENTED) and for an unknown symbol (NOT_FOUND, with the services)."""
    from .status import StatusCode

    try:
        return await reflection.pool_for_symbol(symbol)
    except RpcError as exc:
        if exc.code is StatusCode.UNIMPLEMENTED:
            _fail(
                "the server does not serve reflection (it needs ServerConfig.reflection = true)"
                + hint
            )
        if exc.code is not StatusCode.NOT_FOUND:
            raise
        known = ", ".join(await reflection.list_services()) or "none"
        _fail(f"unknown {what} {symbol!r} (services: {known}; the server says: {exc.message})")


async def _reflected_schema(client: Any, args: argparse.Namespace, service: str) -> tuple[Any, Any]:
    """(pool, file set) holding ``service``'s file and its imports, from reflection."""
    from .reflection import ReflectionClient

    hint = "; or give the schema with --proto FILE or --descriptor-set FILE"
    async with ReflectionClient(client, timeout=args.deadline) as reflection:
        pool = await _reflection_pool(reflection, service, "service", hint)
        return pool, reflection.files


async def _reflected_services(reflection: Any) -> list[str]:
    from .status import StatusCode

    try:
        services: list[str] = await reflection.list_services()
    except RpcError as exc:
        if exc.code is StatusCode.UNIMPLEMENTED:
            _fail("the server does not serve reflection (it needs ServerConfig.reflection = true)")
        raise
    return services


def _list(args: argparse.Namespace) -> int:
    from google.protobuf.descriptor import ServiceDescriptor

    from .reflection import ReflectionClient
    from .reflection.describe import find_symbol

    config = _client_config(args)

    async def run() -> int:
        async with (
            _connected(args, config) as client,
            ReflectionClient(client, timeout=args.deadline) as reflection,
        ):
            if not args.service:
                for name in await _reflected_services(reflection):
                    print(name)
                return 0
            pool = await _reflection_pool(reflection, args.service, "service")
            service = find_symbol(pool, args.service)
            if not isinstance(service, ServiceDescriptor):
                _fail(f"{args.service} is not a service")
            for method in service.methods:
                print(method.full_name)
            return 0

    return run_loop(run(), event_loop=config.event_loop)


def _describe(args: argparse.Namespace) -> int:
    from .reflection import ReflectionClient
    from .reflection.describe import describe, find_symbol

    config = _client_config(args)

    async def run() -> int:
        async with (
            _connected(args, config) as client,
            ReflectionClient(client, timeout=args.deadline) as reflection,
        ):
            names = args.symbols or await _reflected_services(reflection)
            texts = []
            for name in names:
                pool = await _reflection_pool(reflection, name, "symbol")
                symbol = find_symbol(pool, name)
                if symbol is None:  # its file came, but it is e.g. an enum value
                    _fail(f"{name!r} is not a service, method, message, enum or field")
                texts.append(describe(symbol))
            print("\n\n".join(texts))
            return 0

    return run_loop(run(), event_loop=config.event_loop)


def _admin_token(args: argparse.Namespace) -> str:
    if args.admin_token_file:
        try:
            token = Path(args.admin_token_file).read_text().strip()
        except OSError as exc:
            _fail(f"cannot read {args.admin_token_file}: {exc.strerror}")
    else:
        token = os.environ.get(ADMIN_TOKEN_ENV, "").strip()
    if not token:
        _fail(f"the admin service needs a token: set {ADMIN_TOKEN_ENV} or --admin-token-file")
    return token


def _ago(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def _clients(args: argparse.Namespace) -> int:
    from .admin import ADMIN_TOKEN_KEY, AdminStub, ListClientsRequest

    token = _admin_token(args)

    config = _client_config(args)

    async def run() -> list[Any]:
        async with _connected(args, config) as client:
            reply = await AdminStub(client).list_clients(
                ListClientsRequest(), timeout=args.deadline, metadata=[(ADMIN_TOKEN_KEY, token)]
            )
            # This command is a client too: leave it out of the list.
            return [c for c in reply.clients if c.client_id != client.client_id]

    clients = run_loop(run(), event_loop=config.event_loop)
    if args.json:
        for entry in clients:
            print(
                json.dumps(
                    {
                        "client_id": entry.client_id,
                        "address": entry.address,
                        "labels": dict(entry.labels),
                        "connected_since": entry.connected_since,
                        "last_heartbeat": entry.last_heartbeat or None,
                        "rtt": entry.rtt or None,
                        "state": entry.state,
                        "calls_in": entry.calls_in,
                        "calls_out": entry.calls_out,
                        "bytes_in": entry.bytes_in,
                        "bytes_out": entry.bytes_out,
                        "node": entry.node or None,
                    }
                )
            )
        return 0
    now = time.time()
    # In a cluster, a NODE column (docs/cluster.md); a single server's table is unchanged.
    nodes = any(e.node for e in clients)
    head = ("CLIENT", "NODE") if nodes else ("CLIENT",)
    rows = [(*head, "ADDRESS", "CONNECTED", "HEARTBEAT", "RTT", "CALLS", "LABELS")]
    for e in clients:
        rows.append(
            (
                *((e.client_id, e.node or "-") if nodes else (e.client_id,)),
                e.address,
                _ago(now - e.connected_since),
                _ago(now - e.last_heartbeat) + " ago" if e.last_heartbeat else "-",
                f"{e.rtt * 1000:.1f}ms" if e.rtt else "-",
                str(e.calls_in),
                ",".join(f"{k}={v}" for k, v in sorted(e.labels.items())) or "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"{len(clients)} client(s)")
    return 0


def _health(args: argparse.Namespace) -> int:
    from .health import HealthCheckRequest, HealthListRequest, HealthStub, ServingStatus
    from .status import StatusCode

    request = HealthCheckRequest(service=args.service)

    def name(status: int) -> str:
        try:
            return ServingStatus(status).name
        except ValueError:
            return f"UNKNOWN_STATUS_{status}"

    config = _client_config(args)

    async def run() -> int:
        async with _connected(args, config) as client:
            stub = HealthStub(client)
            if args.list:
                listed = await stub.list(HealthListRequest(), timeout=args.deadline)
                for service in sorted(listed.statuses):
                    status = int(listed.statuses[service].status)
                    print(f"{service or '(server)'} {name(status)}")
                return 0
            if not args.watch:
                reply = await stub.check(request, timeout=args.deadline)
                status = int(reply.status)
                print(name(status))
                return 0 if status == ServingStatus.SERVING else 1
            last = int(ServingStatus.UNKNOWN)
            try:
                async for reply in stub.watch(request, timeout=args.deadline):
                    last = int(reply.status)
                    print(name(last), flush=True)
            except RpcError as exc:
                if exc.code is not StatusCode.DEADLINE_EXCEEDED:  # --deadline: a normal end
                    raise
            return 0 if last == ServingStatus.SERVING else 1

    return run_loop(run(), event_loop=config.event_loop)


# -- the parser ------------------------------------------------------------------


def _connection_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "-a",
        "--address",
        help="server HOST:PORT (default 127.0.0.1:4433, or QUICFLOW_CLIENT_HOST/_PORT)",
    )
    group.add_argument("--ca", metavar="FILE", help="PEM CA file to verify the server against")
    group.add_argument(
        "--insecure",
        action="store_true",
        help="accept any server certificate (development only)",
    )
    group.add_argument("--server-name", help="name the server certificate must carry")
    group.add_argument(
        "--cert", metavar="FILE", help="PEM client certificate, for servers that want mutual TLS"
    )
    group.add_argument("--key", metavar="FILE", help="PEM private key of --cert")
    group.add_argument(
        "--token",
        help="bearer token for the server's authenticator (QUICFLOW_CLIENT_TOKEN keeps it out "
        "of the process list)",
    )
    group.add_argument("--client-id", help="client id to claim (default: server-assigned)")
    group.add_argument(
        "--connect-timeout",
        type=float,
        metavar="SECONDS",
        help="give up connecting after this long (default 5)",
    )
    group.add_argument(
        "--config", metavar="FILE", help="client TOML config (ClientConfig; flags win)"
    )
    group.add_argument(
        "--deadline",
        type=float,
        metavar="SECONDS",
        help="deadline of the call (default none); connecting gives up after this long too",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="quicflow",
        description="QuicFlow tools: certificates, code generation, a server "
        "runner and a client for any service.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    certs = sub.add_parser("certs", help="write development certificates")
    certs.add_argument("directory", help="where to write ca.pem, server.pem, client.pem, ...")
    certs.add_argument(
        "--name",
        action="append",
        help="a DNS name or IP address for the server certificate (repeatable; "
        "default: localhost, 127.0.0.1, ::1)",
    )
    certs.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    certs.add_argument(
        "--client-id",
        default="dev-client",
        help="client id named by client.pem (SAN URI quicflow://client/<id>; default dev-client)",
    )
    certs.add_argument(
        "--add-client",
        action="append",
        metavar="ID",
        help="instead of a new set, sign client-ID.pem/.key with the CA already in DIR "
        "(repeatable)",
    )
    certs.add_argument(
        "--revoke",
        action="append",
        metavar="ID",
        help="instead of a new set, add the certificates of client ID in DIR to DIR/crl.pem, "
        "a CRL signed by DIR's CA, valid --days (repeatable; --revoke '' only refreshes it)",
    )
    certs.set_defaults(func=_certs)

    gen = sub.add_parser("gen", help="run protoc with the QuicFlow plugin (needs grpcio-tools)")
    gen.add_argument("protos", nargs="+", help=".proto files or directories holding them")
    gen.add_argument("-o", "--out", required=True, help="output directory")
    gen.add_argument(
        "-I",
        "--include",
        action="append",
        default=[],
        help="import root (repeatable; default: the given directory, or the file's directory)",
    )
    gen.add_argument(
        "--flavour",
        choices=("protobuf", "betterproto"),
        default="protobuf",
        help="message classes: protobuf's _pb2 (default) or betterproto's dataclasses",
    )
    gen.set_defaults(func=_gen)

    serve = sub.add_parser("serve", help="serve module:Service classes")
    serve.add_argument("services", nargs="+", metavar="module:Service", help="servicer classes")
    serve.add_argument("--config", metavar="FILE", help="server TOML config (ServerConfig)")
    serve.add_argument("--host", help="address to bind (overrides the config)")
    serve.add_argument("--port", type=int, help="UDP port; 0 picks a free one")
    serve.add_argument("--cert", dest="cert_file", metavar="FILE", help="PEM certificate")
    serve.add_argument("--key", dest="key_file", metavar="FILE", help="PEM private key")
    serve.add_argument(
        "-p",
        "--path",
        action="append",
        default=[],
        help="add a directory to the import path (repeatable; the current one always is)",
    )
    serve.add_argument(
        "--grace", type=float, default=5.0, help="seconds calls get to finish at stop (default 5)"
    )
    serve.add_argument(
        "--no-reflection",
        action="store_true",
        help="do not serve gRPC server reflection (on by default here; ServerConfig.reflection)",
    )
    serve.set_defaults(func=_serve)

    call = sub.add_parser(
        "call",
        help="call a method with JSON, print JSON",
        description="Call a method with JSON, print each reply as one line of JSON. Replies "
        "use protobuf's canonical JSON mapping, as grpcurl does: lowerCamelCase field names "
        '(user_id prints as "userId"), 64-bit integers as strings ("123"), enums by name, '
        'bytes as base64, and fields at their default value (0, "", false, empty) left '
        "out. --proto-names keeps the .proto's own field names. Requests may use either "
        "spelling.",
    )
    call.add_argument("method", help="pkg.Service/Method (or pkg.Service.Method)")
    call.add_argument(
        "data",
        nargs="?",
        default="{}",
        help="request as JSON (default {}; '-' reads stdin; a JSON array for client streaming)",
    )
    call.add_argument(
        "--proto",
        action="append",
        default=[],
        help=".proto file (repeatable; without it or --descriptor-set, the server's reflection "
        "service gives the schema)",
    )
    call.add_argument(
        "-I", "--include", action="append", default=[], help="import root for --proto"
    )
    call.add_argument("--descriptor-set", metavar="FILE", help="protoc --descriptor_set_out file")
    call.add_argument(
        "-m", "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    call.add_argument(
        "--proto-names",
        action="store_true",
        help="print the .proto's field names (user_id), not JSON's lowerCamelCase (userId)",
    )
    _connection_options(call)
    call.set_defaults(func=_call)

    listing = sub.add_parser(
        "list", help="the server's services, or a service's methods (server reflection)"
    )
    listing.add_argument("service", nargs="?", help="list this service's methods")
    _connection_options(listing)
    listing.set_defaults(func=_list)

    describe = sub.add_parser(
        "describe", help="print services, methods, messages as .proto text (server reflection)"
    )
    describe.add_argument(
        "symbols",
        nargs="*",
        metavar="SYMBOL",
        help="pkg.Service, pkg.Service.Method, pkg.Message, ... (default: every service)",
    )
    _connection_options(describe)
    describe.set_defaults(func=_describe)

    clients = sub.add_parser("clients", help="list a server's connected clients")
    clients.add_argument("--json", action="store_true", help="one JSON object per client")
    clients.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help=f"file holding the server's admin token (default: ${ADMIN_TOKEN_ENV})",
    )
    _connection_options(clients)
    clients.set_defaults(func=_clients)

    health = sub.add_parser("health", help="grpc.health.v1 Check (or --watch)")
    health.add_argument("--service", default="", help="service name (default: the server)")
    health.add_argument("--watch", action="store_true", help="print every status change")
    health.add_argument(
        "--list", action="store_true", help="print every service's status, one per line"
    )
    health.add_argument(
        "--wait",
        type=float,
        metavar="SECONDS",
        help="retry connecting for up to this long (a server that is still starting)",
    )
    _connection_options(health)
    health.set_defaults(func=_health)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    prefix = f"quicflow {args.command}"
    try:
        return int(func(args))
    except RpcError as exc:
        _say(f"ERROR {exc.code.name}: {exc.message}")
        return 1
    except ConfigError as exc:
        _say(f"{prefix}: bad configuration: {exc}")
        return 1
    except (CliError, ValueError) as exc:
        _say(f"{prefix}: {exc}")
        return 1
    except OSError as exc:
        _say(f"{prefix}: {exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""))
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # the promise: one line, never a traceback
        _say(f"{prefix}: {type(exc).__name__}: {exc}")
        return 1


def _say(message: str) -> None:
    """Print ``message`` to stderr as exactly one line."""
    print(" ".join(message.split()), file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
