"""The examples run as a user runs them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_demo_runs_every_call_kind_and_stops_cleanly() -> None:
    """Check that the demo shows each call kind against a server process, a broadcast with
    per-client results and acked sends, and exits 0."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    result = subprocess.run(
        [sys.executable, "-m", "examples.demo"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "unary          say('hello') -> 'hello', status OK" in out
    assert "['tick#0', 'tick#1', 'tick#2']" in out
    assert "'one two three'" in out
    assert "['QUIC', 'FLOW']" in out
    assert "DEADLINE_EXCEEDED" in out
    assert "server exited with status 0" in out
    assert "delivered 3, failed 1, timed out 1" in out
    assert "FAILED INVALID_ARGUMENT: job 2 is malformed" in out
    assert "all settled; 0 acks pending" in out
    said = result.stdout + result.stderr
    assert said.count("no authenticator configured") == 1, said  # the echo server's, once


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}


def test_monitoring_example_shows_hooks_metrics_and_a_scrape() -> None:
    """Check that examples/monitoring runs three clients against the complete server, scrapes
    /metrics, prints matching get_metrics() figures and hook events, and exits 0."""
    result = subprocess.run(
        [sys.executable, "-m", "examples.monitoring.main"],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "status page: http://127.0.0.1:" in out
    assert "quicflow_connects_total{} 3" in out
    assert "quicflow_server_handled_total{code=OK,method=/echo.Echo/Say} 30" in out
    assert "quicflow_server_handled_total{code=INVALID_ARGUMENT,method=/echo.Echo/Say} 3" in out
    assert "quicflow_push_handled_total{code=OK,method=/notify.Notify/Deliver} 3" in out
    assert "Say: 33 started, finished {'INVALID_ARGUMENT': 3, 'OK': 30}" in out
    assert "connects 3, disconnects 3" in out
    assert "[kitchen] Say: 11 calls {'OK': 10, 'INVALID_ARGUMENT': 1}" in out
    assert "disconnect hall (client closed)" in out
    assert out.rstrip().endswith("server stopped")


def test_complete_server_and_client_programs(tmp_path: Path) -> None:
    """Check that the complete server program serves the complete client program (calls,
    push, untyped message, metrics) and stops cleanly on SIGTERM."""
    server = subprocess.Popen(
        [
            *(sys.executable, "-m", "examples.monitoring.server"),
            *("--port", "0", "--metrics-port", "0", "--certs", str(tmp_path)),
        ],
        cwd=ROOT,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert "listening on 127.0.0.1:" in line, line
        port = line.rsplit(":", 1)[1].split()[0]
        assert "status page: http://127.0.0.1:" in server.stdout.readline()
        client = subprocess.run(
            [
                *(sys.executable, "-m", "examples.monitoring.client", "--port", port),
                *("--certs", str(tmp_path), "--id", "porch", "--calls", "4"),
            ],
            cwd=ROOT,
            env=_env(),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert client.returncode == 0, client.stdout + client.stderr
        assert "[porch] pushed to me: ['welcome']" in client.stdout
        assert "[porch] chat ack: b'got hi'" in client.stdout
        assert "[porch] Say: 5 calls {'OK': 4, 'INVALID_ARGUMENT': 1}" in client.stdout
    finally:
        server.terminate()
        out, err = server.communicate(timeout=30)
    assert server.returncode == 0, out + err
    assert "[server] porch left: client closed" in out
    assert "[server] stopping: 1 connects, 7 calls handled, 1 pushes" in out


def test_echo_server_takes_quicflow_server_settings_from_the_environment(tmp_path: Path) -> None:
    """Check that the example server, like any QuicFlow server (ServerConfig.load), takes
    QUICFLOW_SERVER_* settings: the port from QUICFLOW_SERVER_PORT when --port is not
    given, and a bad variable fails naming it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    command = [sys.executable, "-m", "examples.echo.server", "--certs", str(tmp_path)]
    server = subprocess.Popen(
        command,
        cwd=ROOT,
        env={**_env(), "QUICFLOW_SERVER_PORT": str(port)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline() == f"echo server listening on 127.0.0.1:{port}\n"
    finally:
        server.terminate()
        server.communicate(timeout=30)
    bad = subprocess.run(
        command,
        cwd=ROOT,
        env={**_env(), "QUICFLOW_SERVER_MAX_MESSAGE_SIZE": "lots"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "QUICFLOW_SERVER_MAX_MESSAGE_SIZE: cannot parse 'lots'" in bad.stderr
