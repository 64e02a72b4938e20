"""`ServerConfig` and `ClientConfig`: frozen, validated when built.

Every bad value raises `ConfigError` naming the field and the allowed range,
so a typo fails at start-up, not at the first call.
"""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Self

from .errors import ConfigError
from .protocol.numbers import MAX_DURATION

if TYPE_CHECKING:
    from .auth import Authenticator
    from .interceptors import ClientInterceptor, ServerInterceptor
    from .retry import RetryPolicy

__all__ = ["ClientConfig", "ServerConfig"]

_MIB = 1 << 20
_MAX_FRAME = 0xFFFF_FFFF
_MAX_HEARTBEAT = 3600.0
_MAX_DURATION = MAX_DURATION  # ten years (quicflow/protocol/numbers.py)


_CODE_ONLY = frozenset({"interceptors", "push_interceptors", "authenticator", "retry_policies"})


def _parse_env(name: str, raw: str, annotation: object) -> Any:
    """Turn an environment variable's text into the field's type (from its annotation)."""
    kind = str(annotation)
    text = raw.strip()
    if "None" in kind and text.lower() in ("none", "null", ""):
        return None
    try:
        if kind.startswith("bool"):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if kind.startswith("int"):
            return int(text)
        if kind.startswith("float"):
            return float(text)
        if kind.startswith("Mapping"):
            pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
            return {k.strip(): v.strip() for k, v in pairs}
    except ValueError:
        raise ConfigError(name, f"cannot parse {raw!r} as {kind}") from None
    return text


def _positive(name: str, value: object, *, maximum: float = math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(name, f"must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if not 0 < value <= maximum:
        bound = "" if maximum == math.inf else f" and at most {maximum}"
        raise ConfigError(name, f"must be greater than 0{bound}, got {value!r}")


def _int_range(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(name, f"must be between {low} and {high}, got {value}")


def _port(name: str, value: object) -> None:
    _int_range(name, value, 0, 65535)


def _text(name: str, value: object, *, empty_ok: bool = False) -> None:
    if not isinstance(value, str) or (not value and not empty_ok):
        raise ConfigError(name, f"must be a non-empty string, got {value!r}")


def _optional_path(name: str, value: object) -> None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(name, f"must be a file path or None, got {value!r}")


def _choice(name: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(name, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")


@dataclass(frozen=True, slots=True)
class _Common:
    max_message_size: int = 4 * _MIB
    """Largest message (bytes) we accept or send; larger ones fail RESOURCE_EXHAUSTED."""
    max_metadata_size: int = 64 << 10
    """Largest HEADERS/TRAILERS payload (bytes), i.e. all metadata of one frame."""
    idle_timeout: float = 60.0
    """QUIC idle timeout in seconds: silence this long drops the connection."""
    max_datagram_size: int = 0
    """Largest UDP payload sent (bytes), 1200..16384; 0 (default): auto, 16384 to a
    loopback peer and 1200 (safe on any path) to every other."""
    congestion_control: str = "cubic"
    """QUIC congestion control: "cubic" (default) or "reno"."""
    stream_receive_window: int = _MIB
    """Bytes a peer may send on one stream ahead of what the application has read."""
    send_buffer_limit: int = _MIB
    """Unacknowledged bytes per stream before a streaming sender waits (backpressure)."""
    connection_send_limit: int = 32 * _MIB
    """Unacknowledged bytes over all streams of one connection before a handler's reply
    waits (backpressure against a peer that never reads; docs/limits.md)."""
    quic_engine: str = "auto"
    """QUIC implementation: "aioquic", "qh3" (pip install 'quicflow[qh3]'; Rust core,
    faster; a qh3 server cannot ask for client certificates) or "auto": the one named
    by $QUICFLOW_QUIC_ENGINE, else aioquic (docs/benchmarks.md "QUIC engines")."""
    event_loop: str = "auto"
    """The event loop QuicFlow starts when it starts one itself (``quicflow serve``, the
    client commands, `quicflow.run`): "auto" (uvloop when installed, else asyncio's),
    "uvloop" (pip install 'quicflow[fast]') or "asyncio". A loop you start yourself is
    used as it is."""
    dispatcher_workers: int = 16
    """Workers running untyped-message handlers at once."""
    dispatcher_queue_size: int = 1000
    """Untyped messages that may wait for a worker; more get RESOURCE_EXHAUSTED."""
    handler_timeout: float = 30.0
    """Seconds an untyped-message handler may run before it fails DEADLINE_EXCEEDED."""
    metrics: bool = True
    """Record metrics (`get_metrics`, the Prometheus endpoint); False saves their small
    per-call cost (docs/observability.md)."""
    header_timeout: float = 10.0
    """Seconds a call stream the peer opened may go without complete HEADERS, and a unary or
    server-streaming call without its complete request (message and FIN), counted from its
    first bytes; then the call ends DEADLINE_EXCEEDED, the stream is stopped and no handler
    runs. Bounds how long a peer that opens streams and sends nothing (slowloris) holds them.
    Client-streaming and bidi calls may idle after their HEADERS (their deadline bounds them)."""
    compression: str | None = None
    """The message encoding (``"gzip"``, ``"zstd"``) of the messages this side sends:
    a client's calls, a server's responses and pushes. None or ``"identity"``: none. Used
    only where the peer accepts it (it lists what it accepts in HELLO/WELCOME), else the
    messages go uncompressed; per call ``compression=`` and ``context.set_compression``
    override it (wire-protocol.md §4.4, docs/overview.md "Compression")."""
    compression_threshold: int = 1024
    """Messages shorter than this many bytes are sent uncompressed even with an encoding
    (compressing them costs more than it saves)."""

    def _validate_common(self) -> None:
        _int_range("max_message_size", self.max_message_size, 1, _MAX_FRAME)
        _int_range("max_metadata_size", self.max_metadata_size, 256, _MAX_FRAME)
        _positive("idle_timeout", self.idle_timeout, maximum=3600.0)
        # The largest UDP payload loopback carries (64 KiB MTU) with room for headers.
        size = self.max_datagram_size
        if not (type(size) is int and (size == 0 or 1200 <= size <= 65000)):
            raise ConfigError(
                "max_datagram_size", f"must be 0 (auto) or an integer in 1200..65000, got {size!r}"
            )
        _choice("congestion_control", self.congestion_control, ("cubic", "reno"))
        _choice("quic_engine", self.quic_engine, ("auto", "aioquic", "qh3"))
        _choice("event_loop", self.event_loop, ("auto", "asyncio", "uvloop"))
        if self.event_loop == "uvloop":
            from .loop import resolve_event_loop

            resolve_event_loop(self.event_loop)  # ConfigError if uvloop is not installed
        _int_range("stream_receive_window", self.stream_receive_window, 16 << 10, 1 << 30)
        _int_range("send_buffer_limit", self.send_buffer_limit, 16 << 10, 1 << 30)
        _int_range("connection_send_limit", self.connection_send_limit, 64 << 10, 1 << 34)
        _int_range("dispatcher_workers", self.dispatcher_workers, 1, 10_000)
        _int_range("dispatcher_queue_size", self.dispatcher_queue_size, 0, 10_000_000)
        _positive("handler_timeout", self.handler_timeout, maximum=_MAX_DURATION)
        if not isinstance(self.metrics, bool):
            raise ConfigError("metrics", f"must be True or False, got {self.metrics!r}")
        _positive("header_timeout", self.header_timeout, maximum=3600.0)
        if self.compression is not None:
            from .wire.compression import check_compression

            check_compression("compression", self.compression, ConfigError)
        _int_range("compression_threshold", self.compression_threshold, 0, _MAX_FRAME)

    def transport_settings(self) -> Any:
        """The QUIC settings these fields describe (a `TransportSettings`)."""
        from .transport import TransportSettings

        return TransportSettings(
            idle_timeout=self.idle_timeout,
            max_datagram_size=self.max_datagram_size,
            congestion_control=self.congestion_control,
            stream_receive_window=self.stream_receive_window,
            send_buffer_limit=self.send_buffer_limit,
            connection_send_limit=self.connection_send_limit,
            quic_engine=self.quic_engine,
        )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        env_prefix: str | None = None,
        **overrides: Any,
    ) -> Self:
        """Build a config from a TOML file, then environment variables, then ``overrides``
        (each later source wins), validated as usual.

        The TOML file may hold the fields at its top level or under a table
        named ``[server]`` / ``[client]``. Environment variables are
        ``QUICFLOW_SERVER_<FIELD>`` / ``QUICFLOW_CLIENT_<FIELD>`` (upper case;
        ``env_prefix`` replaces the prefix): numbers, ``true``/``false``, and
        ``none`` for optional fields; ``labels`` as ``k=v,k2=v2``. Code-only
        fields (interceptors, authenticator) can come only from ``overrides``.

        Raises:
            ConfigError: an unknown field, a value that does not parse, or one out of
                range; the message names the field (and the file or variable).
        """
        values: dict[str, Any] = {}
        section = cls._section()
        known = {f.name: f for f in fields(cls)}
        if path is not None:
            with open(path, "rb") as fh:
                try:
                    data = tomllib.load(fh)
                except tomllib.TOMLDecodeError as exc:
                    raise ConfigError(str(path), f"not valid TOML: {exc}") from None
            table = data.get(section, data)
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{section}]", "must be a table")
            for key, value in table.items():
                if key == section or (key in ("server", "client") and isinstance(value, dict)):
                    continue
                if key not in known or key in _CODE_ONLY:
                    raise ConfigError(f"{path}: {key}", f"is not a {cls.__name__} field")
                values[key] = value
        prefix = env_prefix if env_prefix is not None else f"QUICFLOW_{section.upper()}_"
        for name, raw in (os.environ if env is None else env).items():
            if not name.startswith(prefix):
                continue
            key = name[len(prefix) :].lower()
            if key not in known or key in _CODE_ONLY:
                raise ConfigError(name, f"is not a {cls.__name__} field")
            values[key] = _parse_env(name, raw, known[key].type)
        values.update(overrides)
        return cls(**values)

    @classmethod
    def _section(cls) -> str:
        return "server" if cls.__name__.startswith("Server") else "client"

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name
            not in (
                "interceptors",
                "push_interceptors",
                "authenticator",
                "labels",
                "token",
                "admin_token",
                "retry_policies",
            )
            and getattr(self, f.name) != f.default
        )
        return f"{type(self).__name__}({shown})"


@dataclass(frozen=True, slots=True, repr=False)
class ServerConfig(_Common):
    """How a `Server` listens.

    Example::

        ServerConfig(host="127.0.0.1", port=0, cert_file="certs/server.pem",
                     key_file="certs/server.key")
    """

    host: str = "127.0.0.1"
    """Address to bind; "0.0.0.0" or "::" for every interface."""
    port: int = 4433
    """UDP port; 0 picks a free one (read it back from `Server.port`)."""
    cert_file: str | None = None
    """PEM certificate chain the server presents (required)."""
    key_file: str | None = None
    """PEM private key for ``cert_file`` (None: the key is inside ``cert_file``)."""
    client_ca_file: str | None = None
    """PEM CA bundle client certificates must chain to (mutual TLS; docs/security.md)."""
    client_cert_mode: str = "none"
    """Mutual TLS: "none" (never ask for a client certificate), "optional" (ask; a
    certificate sent must verify against ``client_ca_file``) or "required" (a client
    without a valid one fails the handshake). Needs ``client_ca_file`` unless "none"."""
    client_crl_file: str | None = None
    """PEM (one or more CRLs) or DER (one CRL) revocation lists for client certificates; one
    whose issuer is a CA in ``client_ca_file`` must be signed by it (an intermediate's CRL is
    checked against the intermediate at the handshake). Re-read when the file changes; a client
    whose issuer has no current CRL in it is refused (fail closed; docs/security.md
    "Revocation")."""
    client_crl_check: str = "leaf"
    """Which client certificates ``client_crl_file`` is checked for: "leaf" (the client's
    own certificate, against its issuer's CRL) or "chain" (every certificate of the verified
    chain except the trust anchor, i.e. also each intermediate CA, each against a CRL from its
    own issuer, fail closed like the leaf; OpenSSL's CRL_CHECK_ALL). A CRL of an intermediate
    that is not in ``client_ca_file`` has its signature checked at the handshake against the
    intermediate the client sends. "chain" needs ``client_crl_file``."""
    interceptors: Sequence[ServerInterceptor] = field(default_factory=tuple)
    """Server interceptors, outermost first."""
    push_interceptors: Sequence[ClientInterceptor] = field(default_factory=tuple)
    """Client interceptors for the calls this server makes to clients (push), outermost
    first."""
    heartbeat_interval: float = 15.0
    """Seconds between a client's pings, announced to clients in WELCOME."""
    heartbeat_check_interval: float = 5.0
    """Seconds between the server's checks of each session's heartbeat: a miss is noted at
    the first check at or after it (the server wakes only for a check that can note one:
    once per interval for a client that pings on time)."""
    max_missed_heartbeats: int = 3
    """Whole heartbeat intervals without a ping after which a session is evicted
    (exactly ``max_missed_heartbeats * heartbeat_interval`` after the last ping: 45 s)."""
    heartbeat_timeout: float = 5.0
    """Seconds a client should wait for a pong, announced in WELCOME."""
    min_heartbeat_interval: float = 1.0
    """The shortest heartbeat interval a client may ask for."""
    hello_timeout: float = 10.0
    """Seconds a new connection has to send HELLO before it is closed."""
    authenticator: Authenticator | None = None
    """Decides who may connect as which client id (None: `allow_all`, with a warning)."""
    push_timeout: float | None = 30.0
    """Default deadline (seconds) of calls the server makes to clients; None: none."""
    promise_timeout: float = 30.0
    """Default time an `async_send` waits for its ack before failing with Timeout."""
    max_pending_promises: int = 50_000
    """Acked sends that may be outstanding at once; one more raises PromiseCapacityFull."""
    broadcast_max_in_flight: int = 100
    """Default bound on concurrent sends of one broadcast."""
    hold_max_count: int = 0
    """Acked sends held per client while it is away, delivered when it is back (0: off,
    sends to an absent client fail at once). See docs/push.md "Delivery guarantees"."""
    hold_max_age: float = 30.0
    """Seconds a held send waits for its client before failing ClientNotConnected."""
    metrics_port: int | None = None
    """TCP port of the HTTP endpoint with Prometheus' ``/metrics``, the status page ``/`` and
    ``/api/status`` (None: no endpoint; 0: a free port, read back from
    `Server.metrics_port`). Needs ``metrics=True``."""
    metrics_host: str = "127.0.0.1"
    """Address the metrics endpoint binds ("0.0.0.0" to let a remote Prometheus scrape)."""
    admin_token: str | None = None
    """Token a caller must send (``admin-token`` metadata) to use the built-in admin service
    (``quicflow clients``); at least 16 characters. None: the admin service refuses everyone."""
    reflection: bool = False
    """Serve gRPC server reflection (``grpc.reflection.v1`` and ``v1alpha``): tools such as
    ``quicflow list``, ``describe`` and ``call`` without a ``.proto`` learn the served
    services' schemas from it (docs/reflection.md). Off unless the server opts in, as in
    gRPC: it tells any client that may connect every served message type. ``quicflow serve``
    turns it on (``--no-reflection`` keeps it off)."""
    health: bool = True
    """Serve the built-in ``grpc.health.v1`` health service (``server.health``). False leaves
    its routes free for an application's own Health service (``add_service``); ``server.health``
    then still exists but is not served."""
    max_ping_rate: int = 100
    """PINGs a connection may send within one second; one more closes it with
    EXCESSIVE_LOAD ("ping flood"). A well-behaved client sends one per heartbeat interval."""
    max_reset_rate: int = 2_000
    """Calls per second a connection may reset (or cancel) before the server finished them,
    on average: a leaky bucket holding one second's worth. Beyond it (rapid reset, CVE-2023-
    44487's pattern) the connection is closed with EXCESSIVE_LOAD ("rapid reset"). 0: no
    budget. A client cancelling 1,000 calls a second stays well within it (docs/limits.md)."""
    max_connections: int = 20_000
    """QUIC connections the server holds at once (handshaking, serving or closing); one more
    is closed at once with REFUSED ("too many connections"), which clients report as
    UNAVAILABLE and retry with backoff. Twice the 10,000 clients a server is sized for, so
    reconnect storms fit (docs/limits.md)."""
    tls_session_tickets: int = 10_000
    """TLS session tickets the server keeps so clients can resume (a resumed handshake skips
    the certificate and its signature); each is used once, the oldest dropped first, about
    1 KiB each. 0: no resumption. Ignored (no resumption) when ``client_cert_mode`` asks for
    client certificates, which a resumed handshake does not carry. No 0-RTT either way
    (docs/security.md). With ``tls_ticket_key_file`` nothing is kept (any count but 0 is
    the same)."""
    tls_ticket_key_file: str | None = None
    """File holding the secrets (32 bytes each, one or more: the first seals new tickets,
    every one opens them) the server seals its TLS session tickets with; created with one
    random secret (mode 0600) if missing. With it a ticket is the session state itself,
    encrypted, so the server keeps none in memory and a restarted server (or another one
    holding the file) resumes its previous run's clients' sessions: a reconnect storm after
    a restart is of resumed handshakes (docs/connections.md). Rotate by putting a new
    secret first and dropping the old one a day later (tickets live 24 hours). Keep it
    private: whoever holds it can resume any client's session as the server. None: tickets
    in memory, lost on a restart."""
    stateless_reset_key_file: str | None = None
    """File holding the secret (32 bytes or more) the server derives QUIC stateless reset
    tokens from; created with 32 random bytes (mode 0600) if missing. With it, a restarted
    server answers the first packet of each client of its previous run with a stateless
    reset, so they reconnect at once instead of at their heartbeat timeout (docs/
    connections.md). Keep it private and per deployment: whoever holds it can reset the
    server's connections. None: a random key per process (resets only for connections this
    process forgot)."""
    retry: bool = False
    """Validate each new client's address with a QUIC Retry before keeping any state for it
    (costs one round trip per connect). Turn on against handshake floods from spoofed
    addresses; see docs/wire-protocol.md §2."""
    retry_threshold: int = 200
    """With ``retry`` off: handshakes in progress from which new connections must pass a QUIC
    Retry first anyway (until the count falls below it again), so a flood of Initials from
    spoofed addresses holds at most this many half-open connections. 0: never
    (docs/limits.md)."""
    gc_walk_limit: int = 100_000
    """Objects a full garbage collection may walk: past it, the server freezes the heap
    (``gc.freeze()``: its connections' long-lived objects leave the walk; an ended
    connection's are still freed by reference counting, its teardown leaves no reference
    cycles), so a collection never stops the loop for long. The heap is given back (one
    collection of all of it) only when the frozen objects pass what the live connections
    explain by this many too, outside handshake storms, at most every 10 minutes
    (docs/scale.md "Garbage collection"). Process-wide, while the server runs. 0: leave
    the collector alone."""
    frame_timeout: float = 30.0
    """Seconds a frame (a request message, HEADERS) may stay unfinished, counted from its first
    byte (or from when it got its reservation, below); then the call ends DEADLINE_EXCEEDED and
    the stream is stopped. Bounds how long a peer can pin buffers with frames it never finishes
    (docs/limits.md). Raise it if clients send large messages over slow links."""
    connection_receive_limit: int = 16 * _MIB
    """Bytes of unfinished frames larger than half ``stream_receive_window`` one connection may
    hold at once: each such frame reserves its whole size (all of this, alone, if it is larger)
    before it gets receive credit past that; the others wait their turn (their bytes so far
    stay within the stream window; docs/limits.md)."""
    receive_limit: int = 256 * _MIB
    """The same reservations over all connections together; at least
    ``connection_receive_limit``."""

    cluster_nats_urls: Sequence[str] = ()
    """NATS servers of the cluster this node joins (``nats://host:port``; any members of
    one NATS cluster). Empty: no cluster, one node, no NATS (docs/cluster.md). Needs
    ``pip install 'quicflow[cluster]'``. In the environment: comma-separated."""
    cluster_name: str = "quicflow"
    """Names the cluster's NATS subjects and buckets: nodes with the same name act as one
    (1-32 of ``A-Z a-z 0-9 - _``)."""
    cluster_node_id: str | None = None
    """This node's id, unique in the cluster (None: ``<hostname>-<port>-<random>``)."""
    cluster_node_refresh: float = 1.0
    """Seconds between rewrites of this node's liveness record."""
    cluster_node_ttl: float = 3.0
    """A node not heard from for this long is dead: its clients leave every listing and route,
    and broadcasts stop waiting for it. Must exceed ``cluster_node_refresh``."""
    cluster_call_timeout: float = 30.0
    """Deadline of a call routed to another node when neither the call nor ``push_timeout``
    sets one."""
    cluster_broadcast_grace: float = 1.0
    """Seconds a broadcast waits for other nodes' answers beyond its per-client timeout;
    a node silent by then is reported as not answering."""
    cluster_max_in_flight: int = 1_000
    """Routed calls in flight per target node (more wait within their deadline), and routed
    calls this node serves at once (more are refused RESOURCE_EXHAUSTED)."""
    cluster_replicas: int = 1
    """JetStream replicas of the cluster's buckets and stream (3 on a three-server NATS cluster
    so that losing one server loses nothing)."""
    cluster_advertise: str | None = None
    """``host:port`` clients use to reach this node, shown in the node list (None: host:port)."""

    def transport_settings(self) -> Any:
        """The QUIC settings these fields describe (a `TransportSettings`)."""
        import dataclasses

        return dataclasses.replace(
            _Common.transport_settings(self),
            frame_timeout=self.frame_timeout,
            connection_receive_limit=self.connection_receive_limit,
            receive_limit=self.receive_limit,
        )

    def __post_init__(self) -> None:
        self._validate_common()
        self._validate_cluster()
        _text("host", self.host)
        _port("port", self.port)
        _positive("heartbeat_interval", self.heartbeat_interval, maximum=_MAX_HEARTBEAT)
        _positive(
            "heartbeat_check_interval",
            self.heartbeat_check_interval,
            maximum=self.heartbeat_interval,
        )
        _int_range("max_missed_heartbeats", self.max_missed_heartbeats, 1, 100)
        _positive("heartbeat_timeout", self.heartbeat_timeout, maximum=_MAX_HEARTBEAT)
        _positive(
            "min_heartbeat_interval",
            self.min_heartbeat_interval,
            maximum=self.heartbeat_interval,
        )
        _positive("hello_timeout", self.hello_timeout, maximum=600.0)
        if self.push_timeout is not None:
            _positive("push_timeout", self.push_timeout, maximum=_MAX_DURATION)
        _positive("promise_timeout", self.promise_timeout, maximum=_MAX_DURATION)
        _int_range("max_pending_promises", self.max_pending_promises, 1, 10_000_000)
        _int_range("broadcast_max_in_flight", self.broadcast_max_in_flight, 1, 100_000)
        _int_range("hold_max_count", self.hold_max_count, 0, 1_000_000)
        _positive("hold_max_age", self.hold_max_age, maximum=_MAX_DURATION)
        if self.metrics_port is not None:
            _port("metrics_port", self.metrics_port)
            if not self.metrics:
                raise ConfigError("metrics_port", "needs metrics=True (the endpoint serves them)")
        _text("metrics_host", self.metrics_host)
        if self.admin_token is not None and (
            not isinstance(self.admin_token, str) or len(self.admin_token) < 16
        ):
            raise ConfigError("admin_token", "must be a string of at least 16 characters, or None")
        _int_range("max_ping_rate", self.max_ping_rate, 1, 1_000_000)
        _int_range("max_reset_rate", self.max_reset_rate, 0, 10_000_000)
        _int_range("max_connections", self.max_connections, 1, 10_000_000)
        _int_range("tls_session_tickets", self.tls_session_tickets, 0, 10_000_000)
        _optional_path("stateless_reset_key_file", self.stateless_reset_key_file)
        _optional_path("tls_ticket_key_file", self.tls_ticket_key_file)
        if not isinstance(self.retry, bool):
            raise ConfigError("retry", "must be True or False")
        _int_range("retry_threshold", self.retry_threshold, 0, 10_000_000)
        _int_range("gc_walk_limit", self.gc_walk_limit, 0, 1_000_000_000)
        _positive("frame_timeout", self.frame_timeout, maximum=3600.0)
        _int_range("connection_receive_limit", self.connection_receive_limit, 64 << 10, 1 << 40)
        limit = self.receive_limit
        if type(limit) is int and limit < self.connection_receive_limit:
            raise ConfigError(
                "receive_limit",
                f"must be at least connection_receive_limit ({self.connection_receive_limit}),"
                f" got {limit}",
            )
        _int_range("receive_limit", self.receive_limit, 64 << 10, 1 << 44)
        if not isinstance(self.reflection, bool):
            raise ConfigError("reflection", "must be True or False")
        if not isinstance(self.health, bool):
            raise ConfigError("health", "must be True or False")
        if self.authenticator is not None and not callable(self.authenticator):
            raise ConfigError("authenticator", "must be callable (hello, peer) -> client id")
        if not isinstance(self.cert_file, str) or not self.cert_file:
            raise ConfigError("cert_file", "a server needs a certificate file (PEM)")
        _optional_path("key_file", self.key_file)
        _optional_path("client_ca_file", self.client_ca_file)
        _choice("client_cert_mode", self.client_cert_mode, ("none", "optional", "required"))
        if self.client_cert_mode != "none" and self.client_ca_file is None:
            raise ConfigError(
                "client_ca_file", f"needed when client_cert_mode is {self.client_cert_mode!r}"
            )
        if self.client_cert_mode == "none" and self.client_ca_file is not None:
            raise ConfigError(
                "client_cert_mode",
                "must be 'optional' or 'required' when client_ca_file is set "
                "(otherwise client certificates would silently not be checked)",
            )
        _optional_path("client_crl_file", self.client_crl_file)
        _choice("client_crl_check", self.client_crl_check, ("leaf", "chain"))
        if self.client_crl_check == "chain" and self.client_crl_file is None:
            raise ConfigError(
                "client_crl_check", "'chain' needs client_crl_file (the CRLs to check against)"
            )
        if self.client_crl_file is not None:
            if self.client_ca_file is None:
                raise ConfigError(
                    "client_crl_file", "needs client_ca_file (CRLs apply to client certificates)"
                )
            # Fail at configuration time, naming the field, rather than at the first handshake.
            from .transport.crl import load_crls
            from .transport.tls import load_ca_file

            load_crls(self.client_crl_file, load_ca_file(self.client_ca_file))
        object.__setattr__(self, "interceptors", tuple(self.interceptors))
        object.__setattr__(self, "push_interceptors", tuple(self.push_interceptors))

    def _validate_cluster(self) -> None:
        urls = self.cluster_nats_urls
        if isinstance(urls, str):
            urls = tuple(u.strip() for u in urls.split(",") if u.strip())
        if not all(isinstance(u, str) and u for u in urls):
            raise ConfigError("cluster_nats_urls", f"must be a list of NATS URLs, got {urls!r}")
        object.__setattr__(self, "cluster_nats_urls", tuple(urls))
        from .cluster.subjects import valid_cluster_name

        if not isinstance(self.cluster_name, str) or not valid_cluster_name(self.cluster_name):
            raise ConfigError(
                "cluster_name", f"must be 1-32 of A-Z a-z 0-9 - _, got {self.cluster_name!r}"
            )
        if self.cluster_node_id is not None:
            _text("cluster_node_id", self.cluster_node_id)
        _positive("cluster_node_refresh", self.cluster_node_refresh, maximum=3600.0)
        _positive("cluster_node_ttl", self.cluster_node_ttl, maximum=3600.0)
        if self.cluster_node_ttl <= self.cluster_node_refresh:
            raise ConfigError(
                "cluster_node_ttl",
                f"must exceed cluster_node_refresh ({self.cluster_node_refresh}), "
                f"got {self.cluster_node_ttl}",
            )
        _positive("cluster_call_timeout", self.cluster_call_timeout, maximum=_MAX_DURATION)
        _positive("cluster_broadcast_grace", self.cluster_broadcast_grace, maximum=3600.0)
        _int_range("cluster_max_in_flight", self.cluster_max_in_flight, 1, 1_000_000)
        _int_range("cluster_replicas", self.cluster_replicas, 1, 5)
        if self.cluster_advertise is not None:
            _text("cluster_advertise", self.cluster_advertise)


@dataclass(frozen=True, slots=True, repr=False)
class ClientConfig(_Common):
    """Where and how a `Client` connects.

    Example::

        ClientConfig(host="127.0.0.1", port=4433, ca_file="certs/ca.pem",
                     server_name="localhost")
    """

    host: str = "127.0.0.1"
    """Server address or name."""
    port: int = 4433
    """Server UDP port."""
    server_name: str | None = None
    """Name the server certificate must carry (default: ``host``)."""
    ca_file: str | None = None
    """PEM CA bundle to verify the server against (None: the system's trust store)."""
    insecure_skip_verify: bool = False
    """Accept any server certificate. Development only: it logs a warning each connect."""
    cert_file: str | None = None
    """PEM client certificate (chain) presented when the server asks (mutual TLS)."""
    key_file: str | None = None
    """PEM private key for ``cert_file`` (None: the key is inside ``cert_file``)."""
    tls_resumption: bool = True
    """Resume the TLS session of an earlier connection to the same server (same address,
    server name, CA and client certificate; tickets are kept per process): a reconnect
    skips the server's certificate and its verification. Never 0-RTT (docs/security.md)."""
    connect_timeout: float = 5.0
    """Seconds one connection attempt's TLS handshake may take (aioquic alone would wait its
    idle timeout); once it completed, WELCOME is awaited as long again (docs/connections.md)."""
    default_timeout: float | None = None
    """Deadline (seconds) for calls that pass no ``timeout=``; None: no deadline."""
    interceptors: Sequence[ClientInterceptor] = field(default_factory=tuple)
    """Client interceptors, outermost first."""
    push_interceptors: Sequence[ServerInterceptor] = field(default_factory=tuple)
    """Server interceptors for the calls the server makes to this client (push), outermost
    first. With any, the client declines the server's message lane (docs/push.md), so they
    see every call."""
    client_id: str | None = None
    """The id to claim in HELLO (None: the server assigns one at the first connect; it is
    kept across reconnects)."""
    token: str | None = None
    """Bearer token sent in HELLO as ``authorization`` metadata."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Labels sent in HELLO (the server can filter broadcasts by them)."""
    heartbeat_interval: float = 15.0
    """The ping interval to ask for in HELLO; the client pings at the interval the server
    announces in WELCOME (the request clamped to the server's range)."""
    heartbeat_timeout: float = 5.0
    """Seconds to wait for a pong before the connection is declared dead; a shorter
    ``heartbeat_timeout`` announced in WELCOME wins (wire-protocol.md §9.2). A fifth of it
    is also the nudge: a client awaiting a reply or pong that hears nothing that long
    sends a QUIC PING (then at doubling gaps while no data comes), so the server learns
    a new address after a NAT rebinding."""
    backoff_initial: float = 1.0
    """First reconnect delay in seconds."""
    backoff_multiplier: float = 2.0
    """Factor between successive reconnect delays."""
    backoff_max: float = 60.0
    """Largest reconnect delay in seconds."""
    backoff_jitter: float = 0.2
    """Each delay is drawn from [delay * (1 - jitter), delay], so clients spread out."""
    reconnect: bool = True
    """Reconnect by itself after losing an established connection."""
    wait_for_ready: bool = False
    """Default for calls made while not connected: wait (True) or fail UNAVAILABLE (False)."""
    servers: Sequence[str] = ()
    """More servers (``host:port``) of the same cluster: each reconnect attempt moves to the
    next address of ``host:port`` followed by these, round robin, with the usual backoff, so
    a node's death moves its clients to the others (docs/cluster.md). In the environment:
    comma-separated."""
    retry_policies: Mapping[str, RetryPolicy] = field(default_factory=dict)
    """Retry policies by route (``"/pkg.Service/Method"``), service (``"pkg.Service"``) or
    ``""`` for every method; the most specific wins, and wins over ``service_config``
    (quicflow/retry.py, docs/connections.md "Retries")."""
    service_config: str | Mapping[str, Any] | None = None
    """A gRPC service config (JSON text or its parsed object) whose ``methodConfig``
    ``retryPolicy`` entries set retry policies as in grpc; other keys are ignored."""

    def __post_init__(self) -> None:
        self._validate_common()
        _text("host", self.host)
        _int_range("port", self.port, 1, 65535)
        servers = self.servers
        if isinstance(servers, str):
            servers = tuple(s.strip() for s in servers.split(",") if s.strip())
        parsed = []
        for entry in servers:
            host, sep, port = entry.rpartition(":") if isinstance(entry, str) else ("", "", "")
            if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ConfigError("servers", f"each entry must be 'host:port', got {entry!r}")
            parsed.append(entry)
        object.__setattr__(self, "servers", tuple(parsed))
        if self.server_name is not None:
            _text("server_name", self.server_name)
        _optional_path("ca_file", self.ca_file)
        if not isinstance(self.insecure_skip_verify, bool):
            raise ConfigError("insecure_skip_verify", "must be True or False")
        _optional_path("cert_file", self.cert_file)
        _optional_path("key_file", self.key_file)
        if self.key_file is not None and self.cert_file is None:
            raise ConfigError("key_file", "needs cert_file (the certificate it belongs to)")
        if not isinstance(self.tls_resumption, bool):
            raise ConfigError("tls_resumption", "must be True or False")
        _positive("connect_timeout", self.connect_timeout, maximum=600.0)
        if self.default_timeout is not None:
            _positive("default_timeout", self.default_timeout, maximum=_MAX_DURATION)
        object.__setattr__(self, "interceptors", tuple(self.interceptors))
        object.__setattr__(self, "push_interceptors", tuple(self.push_interceptors))
        if self.client_id is not None:
            _text("client_id", self.client_id)
            if len(self.client_id) > 256:
                raise ConfigError("client_id", "must be at most 256 characters")
        if self.token is not None:
            _text("token", self.token)
        if not isinstance(self.labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.labels.items()
        ):
            raise ConfigError("labels", "must map str to str")
        object.__setattr__(self, "labels", dict(self.labels))
        _positive("heartbeat_interval", self.heartbeat_interval, maximum=_MAX_HEARTBEAT)
        _positive("heartbeat_timeout", self.heartbeat_timeout, maximum=_MAX_HEARTBEAT)
        _positive("backoff_initial", self.backoff_initial, maximum=_MAX_HEARTBEAT)
        _positive("backoff_max", self.backoff_max, maximum=_MAX_DURATION)
        if self.backoff_max < self.backoff_initial:
            raise ConfigError(
                "backoff_max", f"must be at least backoff_initial ({self.backoff_initial})"
            )
        _positive("backoff_multiplier", self.backoff_multiplier, maximum=100.0)
        if self.backoff_multiplier < 1:
            raise ConfigError("backoff_multiplier", "must be at least 1")
        if not isinstance(self.backoff_jitter, (int, float)) or not 0 <= self.backoff_jitter < 1:
            raise ConfigError("backoff_jitter", f"must be in [0, 1), got {self.backoff_jitter!r}")
        for name in ("reconnect", "wait_for_ready"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(name, "must be True or False")
        from .retry import RetryPolicy, parse_service_config

        policies = self.retry_policies
        if not isinstance(policies, Mapping):
            raise ConfigError("retry_policies", f"must map routes to RetryPolicy, got {policies!r}")
        for key, policy in policies.items():
            if not isinstance(key, str) or (key.startswith("/") and key.count("/") != 2):
                raise ConfigError(
                    "retry_policies",
                    f"keys are '/pkg.Service/Method', 'pkg.Service' or '', got {key!r}",
                )
            if not isinstance(policy, RetryPolicy):
                raise ConfigError(
                    f"retry_policies[{key!r}]", f"must be a RetryPolicy, got {policy!r}"
                )
        object.__setattr__(self, "retry_policies", dict(policies))
        if self.service_config is not None:
            if not isinstance(self.service_config, (str, Mapping)):
                raise ConfigError("service_config", "must be JSON text or a mapping")
            parse_service_config(self.service_config)  # ConfigError naming the path

    def retry_table(self) -> dict[str, RetryPolicy]:
        """Every retry policy: ``service_config``'s, then ``retry_policies`` over them."""
        from .retry import parse_service_config

        table = parse_service_config(self.service_config) if self.service_config else {}
        table.update(self.retry_policies)
        return table

    def addresses(self) -> tuple[tuple[str, int], ...]:
        """Every server to try, in rotation order: ``(host, port)`` first, then ``servers``
        (an IPv6 literal may be written in brackets, ``[::1]:4433``)."""
        more = []
        for entry in self.servers:
            host, _, port = entry.rpartition(":")
            more.append((host.strip("[]"), int(port)))
        return ((self.host, self.port), *more)
