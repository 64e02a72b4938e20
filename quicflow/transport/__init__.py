"""Layer 3, transport: the only package that imports aioquic (or qh3).

Theory of operation. `QuicFlowProtocol` is our own asyncio datagram protocol.
It runs aioquic's loop (feed datagrams, drain events, transmit, re-arm one
timer) and routes each stream's events to a `StreamHandler` the
runtime registered, held in one dict entry that is dropped when the call
ends. It does *not* use aioquic's StreamReader/StreamWriter helpers, which
keep a reader per stream forever and report a dead connection as EOF.

Flow control both ways, because aioquic has neither:

* receive: `AioquicFlowConnection` grants a stream more credit only as the runtime
  consumes what it has (``StreamHandler.unread_bytes``), instead of aioquic's
  "double the window when half is used";
* send: `QuicFlowProtocol.drain` waits until a stream's unacknowledged bytes
  fall under ``send_buffer_limit``.

Engines: the QUIC state machine is aioquic's `QuicConnection` (our
`AioquicFlowConnection`) or, with ``quic_engine="qh3"``, qh3's (`engine_qh3`); the
protocol knows it only through the `engine.EngineConnection` seam (aioquic's
sans-IO API plus the few questions the protocol asks: stream credit, bytes
queued, the active path, ...), so everything above is engine-blind. aioquic's
private internals are used in `engine_aioquic` only, each one listed there and
checked against the installed aioquic by tests/transport/test_aioquic_internals.py. On a uvloop loop
aioquic connections get a pacer that respects its 1 ms clock.

`QuicFlowServer` is the UDP endpoint for many connections; it keeps each
connection's connection ids in its own set, so closing one is O(its ids),
not a scan of every connection (aioquic's QuicServer is O(N) per close).

Modules, one concern each:

- `settings`: ALPN, datagram sizes, `TransportSettings`, socket buffers;
- `streams`: `StreamHandler`, what the runtime registers per stream, and
  `StreamRegistry`, a connection's live streams with their four kinds of waiters
  (drain, connection send budget, idle, stream credit);
- `nudge`: `Nudge`, the client's timer that pings a silent server while an answer
  is awaited (its policy is `quicflow.protocol.heartbeat.QuietWatch`);
- `listener`: `ConnectionListener`, what the runtime attaches to a connection to
  hear of the peer's new streams, premature resets, nudges and the end;
- `quic`: `QuicFlowProtocol`, the protocol adapter (one connection);
- `client_connect`: `connect`, the client side;
- `server_endpoint`: `QuicFlowServer` and `serve`, the server side (Retry,
  connection-id routing);
- `engine`: the engine seam (`EngineConnection`) and which engine a connection
  runs (`resolve_engine`, `make_connection`);
- `engine_aioquic`, `engine_qh3`: the two engines (the only modules that touch an
  engine's private state);
- `pacer`: `BytePacer`, aioquic's pacer charging packets by size;
- `tls`, `crl`: configurations and client-certificate verification.
"""

from .client_connect import connect
from .listener import ConnectionListener
from .quic import QuicFlowProtocol
from .server_endpoint import QuicFlowServer, serve
from .settings import TransportSettings
from .streams import StreamHandler

__all__ = [
    "ConnectionListener",
    "QuicFlowProtocol",
    "QuicFlowServer",
    "StreamHandler",
    "TransportSettings",
    "connect",
    "serve",
]
