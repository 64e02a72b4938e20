"""The demo `make demo` runs: calls, a broadcast and acked sends, then a clean stop.

It writes development certificates to ./certs, starts examples.echo.server in
a separate process on a free port, runs examples.echo.client against it (the
four call kinds and a deadline), and stops the server with SIGTERM (graceful
stop). Then it runs examples.broadcast (a server pushing to five clients, with
per-client results) and examples.callback (acked sends with promises and a
callback, one failing). It exits non-zero if any step fails.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import quicflow
from quicflow.certs import write_dev_certs
from quicflow.logs import configure_logging

from .broadcast.main import main as broadcast_demo
from .callback.main import main as callback_demo
from .echo.client import run

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    """Run the demo; returns the exit status."""
    certs = ROOT / "certs"
    write_dev_certs(certs)
    print(f"wrote a development CA and server certificate to {certs}/")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "port"
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "examples.echo.server",
                "--port",
                "0",
                "--certs",
                str(certs),
                "--ready-file",
                str(ready),
            ],
            cwd=ROOT,
            env=env,
        )
        try:
            deadline = time.monotonic() + 20
            while not ready.exists() or not ready.read_text():
                if server.poll() is not None or time.monotonic() > deadline:
                    print("the server did not start", file=sys.stderr)
                    return 1
                time.sleep(0.05)
            port = int(ready.read_text())
            quicflow.run(run("127.0.0.1", port, certs))
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                code = server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                code = -9
    print(f"server exited with status {code}")
    if code != 0:
        return 1
    # The in-process demos below log errors only, as they do when run on their own: their
    # servers' warning about the default authenticator is the one the echo server printed.
    configure_logging("ERROR")
    print("\n-- server push: broadcast --")
    quicflow.run(broadcast_demo())
    print("\n-- server push: acked sends with promises --")
    quicflow.run(callback_demo())
    return 0


if __name__ == "__main__":
    sys.exit(main())
