"""The server's HTTP endpoint for operators: Prometheus, the status page, its JSON.

A deliberately small HTTP/1.1 server on the server's own event loop
(``asyncio.start_server``), so every scrape and every status snapshot is
taken on the loop that records the metrics, with no thread and no lock.

* ``GET /metrics``: Prometheus text format (`quicflow.prometheus`);
* ``GET /``: the status page (``quicflow/web/status.html``, plain HTML and
  a little JS that polls the JSON below);
* ``GET /api/status``: connected clients, totals, throughput and latency
  percentiles as JSON.

Only GET (and HEAD) are served; anything else is 405, an unknown path 404.
A request head larger than `MAX_REQUEST_HEAD` bytes is refused with 431,
one that does not arrive within `REQUEST_TIMEOUT` seconds is dropped; every
response closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import asdict
from importlib import resources
from typing import Any

from .prometheus import ObservedServer, exposition, registry_for

__all__ = ["MAX_REQUEST_HEAD", "REQUEST_TIMEOUT", "MetricsEndpoint", "status_document"]

MAX_REQUEST_HEAD = 8192
"""Bytes of request line plus headers accepted."""
REQUEST_TIMEOUT = 10.0
"""Seconds a client has to send its request head."""

_PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
}


def _status_page() -> bytes:
    return resources.files("quicflow").joinpath("web/status.html").read_bytes()


def status_document(server: ObservedServer) -> dict[str, Any]:
    """What ``/api/status`` returns: the server, its clients and its metrics (JSON-ready)."""
    clients = [
        {
            "client_id": info.client_id,
            "address": info.remote_address,
            "state": info.state.value,
            "rtt": info.rtt,
            "connected_since": info.connected_since,
            "last_heartbeat": info.last_heartbeat,
            "missed_heartbeats": info.missed_heartbeats,
            "calls_in": info.calls_in,
            "calls_out": info.calls_out,
            "bytes_in": info.bytes_in,
            "bytes_out": info.bytes_out,
            "labels": dict(info.labels),
            "node": info.node,
        }
        for info in server.list_clients()
    ]
    config = server.config
    cluster = server.cluster
    return {
        "now": time.time(),
        "server": {
            "host": config.host,
            "port": server.port,
            "routes": server.routes,
            "active_calls": server.active_calls,
        },
        "clients": clients,
        "metrics": asdict(server.get_metrics()),
        "cluster": None
        if cluster is None
        else {
            "name": config.cluster_name,
            "node": cluster.node_id,
            "connected": cluster.backend.connected,
            "nodes": cluster.nodes(),
            "traffic": cluster.stats.as_dict(),
        },
    }


class MetricsEndpoint:
    """The running HTTP endpoint of one server (see the module docstring)."""

    def __init__(self, server: ObservedServer, listener: asyncio.Server) -> None:
        self._server = server
        self._listener = listener
        self._registry = registry_for(server)
        self._tasks: set[asyncio.Task[Any]] = set()
        self.port: int = listener.sockets[0].getsockname()[1]
        """The bound TCP port."""

    @classmethod
    async def start(cls, server: ObservedServer, host: str, port: int) -> MetricsEndpoint:
        """Bind ``host:port`` (0: a free port) and serve.

        Raises:
            OSError: the address cannot be bound.
        """
        holder: list[MetricsEndpoint] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            endpoint = holder[0]
            if task is not None:
                endpoint._tasks.add(task)
            try:
                await endpoint._handle(reader, writer)
            finally:
                if task is not None:
                    endpoint._tasks.discard(task)

        try:
            listener = await asyncio.start_server(handle, host, port, limit=MAX_REQUEST_HEAD)
        except OSError as exc:  # "Address already in use" alone does not say which one
            raise OSError(
                exc.errno, f"cannot bind the metrics endpoint to TCP {host}:{port}: {exc.strerror}"
            ) from exc
        endpoint = cls(server, listener)
        holder.append(endpoint)
        return endpoint

    async def close(self) -> None:
        """Stop listening and drop requests in progress."""
        self._listener.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._listener.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT):
                    head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.LimitOverrunError:
                await self._respond(writer, 431, b"request head too large\n")
                return
            except TimeoutError:
                await self._respond(writer, 408, b"request timed out\n")
                return
            except asyncio.IncompleteReadError:
                return
            status, content_type, body, head_only = self._route(head)
            await self._respond(writer, status, body, content_type, head_only=head_only)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _route(self, head: bytes) -> tuple[int, str, bytes, bool]:
        line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return 400, "text/plain", b"bad request line\n", False
        method, target = parts[0], parts[1]
        path = target.split("?", 1)[0]
        if path not in ("/", "/metrics", "/api/status"):
            return 404, "text/plain", f"no such page: {path}\n".encode(), False
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", f"{method} not allowed; use GET\n".encode(), False
        head_only = method == "HEAD"
        if path == "/metrics":
            return 200, _PROMETHEUS_TYPE, exposition(self._registry), head_only
        if path == "/api/status":
            body = json.dumps(status_document(self._server)).encode()
            return 200, "application/json", body, head_only
        return 200, "text/html; charset=utf-8", _status_page(), head_only

    @staticmethod
    async def _respond(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain",
        *,
        head_only: bool = False,
    ) -> None:
        headers = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if status == 405:
            headers.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(headers) + "\r\n\r\n").encode("latin-1"))
        if not head_only:
            writer.write(body)
        await writer.drain()
