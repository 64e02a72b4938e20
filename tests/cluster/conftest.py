"""Fixtures for cluster mode: real ``nats-server`` processes (quicflow/cluster/natsserver.py).

``nats`` is one JetStream server on a free loopback port with a temporary
store; ``nats_cluster`` is three routed servers (JetStream replicated) that a
test may SIGKILL one of. Both are ended by their PIDs when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from quicflow import Server
from quicflow.cluster.natsserver import NatsCluster, NatsServer

from .nodes import node_pair


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    """One nats-server with JetStream (temporary store, free port), stopped after the test."""
    server = NatsServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def nats_cluster() -> Iterator[NatsCluster]:
    """Three routed nats-servers with JetStream (a NATS cluster), stopped after the test."""
    cluster = NatsCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
async def two_nodes(nats_server: NatsServer) -> AsyncIterator[tuple[Server, Server]]:
    """Nodes "a" and "b" of cluster "t" on one nats-server."""
    async with node_pair((nats_server.url,)) as nodes:
        yield nodes
