"""Cluster nodes as child processes (tests/cluster/proc_node.py), driven over QUIC.

`NodeProc` starts one node, reads back its port, and keeps a control client
(id ``ctl-<node>``, label ``role=ctl``) that sends it ``ctl`` messages.
Processes end by their own PID (SIGKILL or SIGTERM), never by name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from quicflow import Client
from quicflow.testing import dev_certs

from .nodes import client_config

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "generated")])}


class NodeProc:
    """One cluster node in a child process."""

    def __init__(self, node_id: str, nats_urls: tuple[str, ...], **options: Any) -> None:
        self.node_id = node_id
        self.nats_urls = nats_urls
        self.options = options
        self.proc: asyncio.subprocess.Process | None = None
        self.port = 0
        self.ctl: Client | None = None

    async def start(self) -> NodeProc:
        args = [
            sys.executable, "-m", "tests.cluster.proc_node",
            "--nats", ",".join(self.nats_urls), "--node-id", self.node_id,
            "--certs", str(dev_certs().cert_file.parent),
            "--hold", str(self.options.get("hold", 0)),
            "--replicas", str(self.options.get("replicas", 1)),
            "--node-ttl", str(self.options.get("node_ttl", 1.0)),
        ]  # fmt: skip
        self.proc = await asyncio.create_subprocess_exec(
            *args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE
        )
        assert self.proc.stdout is not None
        async with asyncio.timeout(30):
            line = await self.proc.stdout.readline()
        assert line.startswith(b"listening"), line
        self.port = int(line.split()[1])
        self.ctl = Client(
            client_config(self.port, f"ctl-{self.node_id}", labels={"role": "ctl"}, reconnect=False)
        )
        await self.ctl.connect()
        return self

    async def do(self, op: str, wait: float = 10.0, **fields: Any) -> dict[str, Any]:
        """Send one control message to this node and return its JSON answer."""
        assert self.ctl is not None
        reply = await self.ctl.send_message(
            "ctl", json.dumps({"op": op, **fields}).encode(), timeout=wait
        )
        assert reply is not None
        answer: dict[str, Any] = json.loads(reply)
        return answer

    async def listing(self) -> list[tuple[str, str]]:
        """(client id, node) of every client but the control clients, as this node sees it."""
        answer = await self.do("list")
        return [(c, n) for c, n in answer["clients"] if not c.startswith("ctl-")]

    def kill(self) -> None:
        """SIGKILL the node: no GOAWAY, no unregister."""
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)

    async def close(self) -> None:
        if self.ctl is not None:
            await self.ctl.close()
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await self.proc.wait()
            except TimeoutError:
                self.kill()
                await self.proc.wait()
