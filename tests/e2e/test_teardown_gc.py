"""A connection's teardown leaves nothing for the cyclic garbage collector.

A server that froze its heap (`quicflow.gcpause`) never walks the objects of its
connections again, so an ended connection must be freed by reference counting alone:
objects of it in a reference cycle would stay until a collection of the whole heap,
the multi-second pause the governor exists to avoid. ``python -m bench.teardown_gc``
ends three real connections (loopback, real TLS) per path with the collector off: each
has a session, serves a push service and made calls of every kind, messages both ways,
a push, a broadcast and an acknowledged send, with one call each way and a send still
in flight at the end. Then one collection runs, and what it finds is sorted by side
(docs/scale.md "Garbage collection").
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

PATHS = {
    "close": "the client closes",
    "evict": "the client goes silent (killed); the server evicts it by heartbeat",
    "handshake": "an Initial and then silence: QUIC's idle timeout in the handshake",
    "reset": "the server is killed and restarted; each client hears a stateless reset",
    "stop": "the server stops with its clients connected",
}

_LINE = re.compile(
    r"^(?P<path>\w+): (?P<ended>\d+) ended; objects found per ended connection: "
    r"server (?P<server>[\d.]+), client (?P<client>[\d.]+), other [\d.]+; "
    r"ended connections still held: server (?P<held_server>\d+), client (?P<held_client>\d+)",
    re.MULTILINE,
)


def test_an_ended_connection_leaves_no_reference_cycle() -> None:
    """Check that for each way a connection ends, one garbage collection afterwards finds
    none of the ended connections' objects, on the server's side or the client's, and
    that none of those connections is still alive after it (held by something live,
    which would hide its cycles from the count); on the engine QUICFLOW_QUIC_ENGINE
    names, as the rest of this directory."""
    env = dict(os.environ)
    path = [str(ROOT), str(ROOT / "generated"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    result = subprocess.run(
        [sys.executable, "-m", "bench.teardown_gc", "--clients", "3", "--paths", ",".join(PATHS)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    found = {m["path"]: m for m in _LINE.finditer(result.stdout)}
    assert sorted(found) == sorted(PATHS), result.stdout + result.stderr[-3000:]
    for name, m in found.items():
        assert int(m["ended"]) == 3, f"{name} ({PATHS[name]}): {m[0]}"
        assert (float(m["server"]), float(m["client"])) == (0.0, 0.0), (
            f"{name} ({PATHS[name]}) leaves reference cycles:\n{result.stdout}"
        )
        assert (m["held_server"], m["held_client"]) == ("0", "0"), (
            f"{name} ({PATHS[name]}) leaves connections held:\n{result.stdout}"
        )
