"""Tests for `ServerConfig` and `ClientConfig`: every field's validator, defaults and reprs."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from quicflow.config import ClientConfig, ServerConfig
from quicflow.errors import ConfigError

CERT = "certs/server.pem"


def build_server(**overrides: Any) -> ServerConfig:
    """A ServerConfig with a certificate, plus ``overrides``."""
    return ServerConfig(**{"cert_file": CERT, **overrides})


def build_client(**overrides: Any) -> ClientConfig:
    """A ClientConfig with ``overrides``."""
    return ClientConfig(**overrides)


BUILDERS = {"server": build_server, "client": build_client}

# Bad values for the fields both configs share: (field, value).
COMMON_BAD: list[tuple[str, object]] = [
    ("compression", "brotli"),
    ("compression", "GZIP"),
    ("compression", 1),
    ("compression_threshold", -1),
    ("compression_threshold", 2**32),
    ("compression_threshold", 1.5),
    ("metrics", 1),
    ("metrics", "yes"),
    ("dispatcher_workers", 0),
    ("dispatcher_workers", 1.5),
    ("dispatcher_queue_size", -1),
    ("handler_timeout", 0),
    ("handler_timeout", math.nan),
    # max_message_size: an int in [1, 2**32 - 1]
    ("max_message_size", 0),
    ("max_message_size", -1),
    ("max_message_size", 2**32),
    ("max_message_size", 4.0),
    ("max_message_size", "4MiB"),
    ("max_message_size", None),
    ("max_message_size", True),
    # max_metadata_size: an int in [256, 2**32 - 1]
    ("max_metadata_size", 255),
    ("max_metadata_size", 0),
    ("max_metadata_size", 2**32),
    ("max_metadata_size", 1024.0),
    ("max_metadata_size", False),
    # idle_timeout: a number in (0, 3600]
    ("idle_timeout", 0),
    ("idle_timeout", 0.0),
    ("idle_timeout", -1.0),
    ("idle_timeout", 3600.5),
    ("idle_timeout", math.inf),
    ("idle_timeout", math.nan),
    ("idle_timeout", "60"),
    ("idle_timeout", None),
    ("idle_timeout", True),
    # max_datagram_size: 0 (auto) or an int in [1200, 65000]
    ("max_datagram_size", 1199),
    ("max_datagram_size", 1),
    ("max_datagram_size", 0.0),
    ("max_datagram_size", 65001),
    ("max_datagram_size", 1500.0),
    ("max_datagram_size", True),
    # congestion_control: "reno" or "cubic"
    ("congestion_control", "bbr"),
    ("congestion_control", "RENO"),
    ("congestion_control", ""),
    ("congestion_control", None),
    ("congestion_control", 1),
    # quic_engine: "auto", "aioquic" or "qh3"; event_loop: "auto", "asyncio" or "uvloop"
    ("quic_engine", "quiche"),
    ("quic_engine", "QH3"),
    ("quic_engine", ""),
    ("quic_engine", None),
    ("event_loop", "trio"),
    ("event_loop", "UVLOOP"),
    ("event_loop", None),
    # stream_receive_window and send_buffer_limit: ints in [16 KiB, 1 GiB]
    ("stream_receive_window", (16 << 10) - 1),
    ("stream_receive_window", (1 << 30) + 1),
    ("stream_receive_window", 65536.0),
    ("stream_receive_window", True),
    ("send_buffer_limit", (16 << 10) - 1),
    ("send_buffer_limit", (1 << 30) + 1),
    ("send_buffer_limit", "1MiB"),
    ("send_buffer_limit", False),
    # connection_send_limit: ints in [64 KiB, 16 GiB]
    ("connection_send_limit", (64 << 10) - 1),
    ("connection_send_limit", (1 << 34) + 1),
    ("connection_send_limit", 1.5),
    # host: a non-empty string
    ("host", ""),
    ("host", None),
    ("host", b"127.0.0.1"),
    ("host", 127),
]

SERVER_BAD: list[tuple[str, object]] = [
    ("port", -1),
    ("port", 65536),
    ("port", 443.0),
    ("port", "443"),
    ("port", True),
    ("cert_file", None),
    ("cert_file", ""),
    ("cert_file", 1),
    # key_file: None or a non-empty path
    ("key_file", ""),
    ("key_file", 0),
    # mutual TLS: client_ca_file a non-empty path; client_cert_mode none|optional|required
    ("client_ca_file", ""),
    ("client_ca_file", 3),
    ("client_cert_mode", "always"),
    ("client_cert_mode", "REQUIRED"),
    ("client_cert_mode", None),
    # client_crl_file: a non-empty path, only with client_ca_file (loading: test_crl.py)
    ("client_crl_file", ""),
    ("client_crl_file", 3),
    ("client_crl_file", "crl.pem"),
    # client_crl_check: leaf|chain, "chain" only with client_crl_file (more: test_crl.py)
    ("client_crl_check", "all"),
    ("client_crl_check", None),
    ("client_crl_check", "chain"),
    ("heartbeat_interval", 0),
    ("heartbeat_interval", math.inf),
    ("heartbeat_check_interval", 0),
    ("heartbeat_check_interval", 20.0),  # above heartbeat_interval
    ("max_missed_heartbeats", 0),
    ("max_missed_heartbeats", 2.5),
    ("heartbeat_timeout", -1.0),
    ("min_heartbeat_interval", 0),
    ("min_heartbeat_interval", 16.0),  # above heartbeat_interval
    ("hello_timeout", 0),
    ("hello_timeout", 601.0),
    ("authenticator", "not callable"),
    ("push_timeout", 0),
    ("push_timeout", math.inf),
    ("promise_timeout", -1.0),
    ("promise_timeout", None),
    ("max_pending_promises", 0),
    ("max_pending_promises", 10.5),
    ("hold_max_count", -1),
    ("hold_max_count", 1.5),
    ("hold_max_age", 0),
    ("admin_token", "short"),
    ("admin_token", 12345678901234567),
    ("broadcast_max_in_flight", 0),
    ("broadcast_max_in_flight", "10"),
    ("metrics_port", -1),
    ("metrics_port", 65536),
    ("metrics_port", "9464"),
    ("metrics_port", True),
    ("metrics_host", ""),
    ("metrics_host", None),
    ("header_timeout", 0),
    ("header_timeout", math.nan),
    ("header_timeout", 3601.0),
    ("max_ping_rate", 0),
    ("max_ping_rate", 1.5),
    ("max_reset_rate", -1),
    ("max_reset_rate", 2.5),
    ("max_connections", 0),
    ("max_connections", "many"),
    ("stateless_reset_key_file", ""),
    ("stateless_reset_key_file", 5),
    ("tls_ticket_key_file", ""),
    ("tls_ticket_key_file", 5),
    ("tls_session_tickets", -1),
    ("tls_session_tickets", 2.5),
    ("retry", 1),
    ("retry", "yes"),
    ("retry_threshold", -1),
    ("retry_threshold", 2.5),
    ("gc_walk_limit", -1),
    ("gc_walk_limit", 2.5),
    ("frame_timeout", 0),
    ("frame_timeout", math.inf),
    ("frame_timeout", 3601.0),
    ("connection_receive_limit", (64 << 10) - 1),
    ("connection_receive_limit", 1.5),
    ("connection_receive_limit", True),
    ("receive_limit", (16 << 20) - 1),  # below the default connection_receive_limit
    ("receive_limit", "lots"),
    ("cluster_nats_urls", [""]),
    ("cluster_nats_urls", [4222]),
    ("cluster_name", "a.b"),
    ("cluster_name", ""),
    ("cluster_name", "x" * 33),
    ("cluster_node_id", ""),
    ("cluster_node_refresh", 0),
    ("cluster_node_ttl", 0.5),  # not above cluster_node_refresh (1.0)
    ("cluster_node_ttl", math.nan),
    ("cluster_call_timeout", 0),
    ("cluster_broadcast_grace", -1.0),
    ("cluster_max_in_flight", 0),
    ("cluster_replicas", 6),
    ("cluster_advertise", ""),
    ("reflection", "yes"),
    ("health", "yes"),
]

CLIENT_BAD: list[tuple[str, object]] = [
    ("retry_policies", "not a mapping"),
    ("retry_policies", {"/too/many/slashes": None}),
    ("service_config", "{not json"),
    ("service_config", 5),
    ("port", 0),  # a client must name the server's port
    ("port", 65536),
    ("port", "4433"),
    ("port", True),
    ("server_name", ""),
    ("server_name", 5),
    ("ca_file", ""),
    ("ca_file", 1),
    ("insecure_skip_verify", 1),
    ("insecure_skip_verify", "yes"),
    ("insecure_skip_verify", None),
    ("tls_resumption", 1),
    ("tls_resumption", "yes"),
    ("cert_file", ""),
    ("cert_file", 2),
    ("key_file", ""),
    ("key_file", "client.key"),  # without cert_file
    ("header_timeout", -1.0),
    ("connect_timeout", 0),
    ("connect_timeout", -5.0),
    ("connect_timeout", 600.5),
    ("connect_timeout", math.nan),
    ("connect_timeout", "5"),
    ("connect_timeout", True),
    ("default_timeout", 0),
    ("default_timeout", -1.0),
    ("default_timeout", math.nan),
    ("default_timeout", "1s"),
    ("default_timeout", True),
    ("client_id", ""),
    ("client_id", "x" * 257),
    ("client_id", 7),
    ("token", ""),
    ("token", b"t"),
    ("labels", {"a": 1}),
    ("labels", ["a"]),
    ("heartbeat_interval", 0),
    ("heartbeat_interval", 3601.0),
    ("heartbeat_timeout", -1.0),
    ("heartbeat_timeout", math.inf),
    ("backoff_initial", 0),
    ("backoff_initial", math.nan),
    ("backoff_max", 0.5),  # below backoff_initial
    ("backoff_multiplier", 0.5),
    ("backoff_multiplier", 1000.0),
    ("backoff_jitter", 1.0),
    ("backoff_jitter", -0.1),
    ("reconnect", 1),
    ("wait_for_ready", "no"),
    ("servers", ["nohost"]),
    ("servers", ["h:0"]),
    ("servers", ["h:65536"]),
    ("servers", [":4433"]),
    ("servers", [5]),
]


def _cases() -> list[object]:
    cases: list[object] = []
    for kind in BUILDERS:
        specific = SERVER_BAD if kind == "server" else CLIENT_BAD
        for name, value in COMMON_BAD + specific:
            cases.append(pytest.param(kind, name, value, id=f"{kind}-{name}={value!r}"))
    return cases


@pytest.mark.parametrize(("kind", "name", "value"), _cases())
def test_bad_value_raises_config_error_naming_the_field(
    kind: str, name: str, value: object
) -> None:
    """Check that each invalid field value raises ConfigError whose field and message name it."""
    with pytest.raises(ConfigError) as info:
        BUILDERS[kind](**{name: value})
    assert info.value.field == name
    assert str(info.value).startswith(f"{name}: ")
    assert isinstance(info.value, ValueError)


def test_mutual_tls_fields_must_agree() -> None:
    """Check that a client CA without a client_cert_mode, or a mode without a CA, is refused
    naming the field to fix, and that consistent settings pass."""
    with pytest.raises(ConfigError) as info:
        build_server(client_ca_file="ca.pem")
    assert info.value.field == "client_cert_mode"
    for mode in ("optional", "required"):
        with pytest.raises(ConfigError) as info:
            build_server(client_cert_mode=mode)
        assert info.value.field == "client_ca_file"
        assert build_server(client_ca_file="ca.pem", client_cert_mode=mode).client_cert_mode == mode
    assert ClientConfig(cert_file="c.pem", key_file="c.key").cert_file == "c.pem"


def test_every_validated_field_has_a_bad_value_case() -> None:
    """Check that the tables above cover every field except interceptors, so none goes untested."""
    common = {name for name, _ in COMMON_BAD}
    for cls, specific in ((ServerConfig, SERVER_BAD), (ClientConfig, CLIENT_BAD)):
        covered = common | {name for name, _ in specific}
        fields = {f.name for f in dataclasses.fields(cls)} - {"interceptors", "push_interceptors"}
        assert fields == covered, cls.__name__


@pytest.mark.parametrize(
    ("kind", "overrides"),
    [
        ("server", {}),
        ("server", {"port": 0, "host": "::", "key_file": "k.pem"}),
        ("server", {"port": 65535, "congestion_control": "cubic", "idle_timeout": 3600}),
        (
            "server",
            {
                "max_message_size": 1,
                "max_metadata_size": 256,
                "max_datagram_size": 1200,
                "stream_receive_window": 16 << 10,
                "send_buffer_limit": 16 << 10,
            },
        ),
        (
            "server",
            {
                "max_message_size": 2**32 - 1,
                "max_metadata_size": 2**32 - 1,
                "max_datagram_size": 16384,
                "stream_receive_window": 1 << 30,
                "send_buffer_limit": 1 << 30,
                "idle_timeout": 0.001,
            },
        ),
        ("client", {}),
        ("client", {"port": 1, "server_name": "localhost", "ca_file": "ca.pem"}),
        ("client", {"insecure_skip_verify": True}),
        ("client", {"connect_timeout": 600, "default_timeout": 0.5}),
        ("client", {"connect_timeout": 0.01, "default_timeout": 10**6}),
    ],
)
def test_valid_configs_build(kind: str, overrides: dict[str, object]) -> None:
    """Check that in-range values, including the bounds, build and are kept as given."""
    config = BUILDERS[kind](**overrides)
    for name, value in overrides.items():
        assert getattr(config, name) == value


def test_server_config_requires_cert_file() -> None:
    """Check that a ServerConfig without cert_file fails naming cert_file."""
    with pytest.raises(ConfigError, match=r"^cert_file: .*certificate") as info:
        ServerConfig()
    assert info.value.field == "cert_file"


def test_defaults() -> None:
    """Check that the documented defaults hold."""
    server = build_server()
    client = ClientConfig()
    for config in (server, client):
        assert config.max_message_size == 4 << 20
        assert config.max_metadata_size == 64 << 10
        assert config.idle_timeout == 60.0
        assert config.max_datagram_size == 0
        assert config.congestion_control == "cubic"
        assert config.host == "127.0.0.1"
        assert config.port == 4433
        assert config.interceptors == ()
    assert server.key_file is None
    assert client.server_name is None
    assert client.ca_file is None
    assert client.default_timeout is None
    assert client.insecure_skip_verify is False
    assert client.connect_timeout == 5.0


def test_configs_are_frozen() -> None:
    """Check that a built config cannot be changed, so validation cannot be bypassed."""
    config = ClientConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.port = 0  # type: ignore[misc]
    replaced = dataclasses.replace(config, port=9)
    assert replaced.port == 9
    with pytest.raises(ConfigError, match=r"^port: "):
        dataclasses.replace(config, port=0)


def test_interceptors_become_a_tuple() -> None:
    """Check that interceptors given as a list are stored as a tuple."""
    config = ClientConfig(interceptors=[])
    assert config.interceptors == ()
    assert isinstance(config.interceptors, tuple)
    assert isinstance(build_server(interceptors=[]).interceptors, tuple)


def test_repr_shows_only_non_default_fields() -> None:
    """Check that reprs are short and readable: the class name and what differs from the default."""
    assert repr(ClientConfig()) == "ClientConfig()"
    assert repr(ClientConfig(host="example.com", port=443, default_timeout=2.5)) == (
        "ClientConfig(host='example.com', port=443, default_timeout=2.5)"
    )
    assert repr(build_server(port=0)) == f"ServerConfig(port=0, cert_file={CERT!r})"


def test_repr_hides_interceptors() -> None:
    """Check that interceptors never appear in the repr."""
    assert "interceptors" not in repr(ClientConfig(interceptors=[]))


def test_repr_hides_secrets() -> None:
    """Check that the client token and the server's admin token never appear in a repr (logs)."""
    secret = "s3cret-admin-token-0123456789"
    assert secret not in repr(build_server(admin_token=secret))
    assert secret not in repr(ClientConfig(token=secret))


def test_error_message_names_the_allowed_range() -> None:
    """Check that messages say what is allowed and what was given."""
    with pytest.raises(ConfigError, match=r"^port: must be between 1 and 65535, got 0$"):
        ClientConfig(port=0)
    with pytest.raises(ConfigError, match=r"^idle_timeout: must be greater than 0 and at most"):
        ClientConfig(idle_timeout=0)
    with pytest.raises(ConfigError, match=r"^congestion_control: must be one of 'cubic', 'reno'"):
        ClientConfig(congestion_control="bbr")
    with pytest.raises(ConfigError, match=r"^max_message_size: must be an integer, got True$"):
        ClientConfig(max_message_size=True)


@pytest.mark.parametrize("name", ["idle_timeout", "connect_timeout", "default_timeout"])
def test_huge_int_duration_raises_config_error(name: str) -> None:
    """Check that an int duration too large for a float is a ConfigError naming the field."""
    with pytest.raises(ConfigError, match=rf"^{name}: "):
        build_client(**{name: 10**400})


def test_infinite_default_timeout_raises_config_error() -> None:
    """Check that default_timeout=inf is refused at start-up, naming the field."""
    with pytest.raises(ConfigError, match=r"^default_timeout: "):
        ClientConfig(default_timeout=math.inf)


def test_cluster_urls_come_as_a_list_or_comma_separated() -> None:
    """Check that NATS URLs given as one comma-separated string (env, CLI) become a tuple."""
    config = build_server(cluster_nats_urls="nats://a:1, nats://b:2")
    assert config.cluster_nats_urls == ("nats://a:1", "nats://b:2")
    assert build_server(cluster_nats_urls=["nats://a:1"]).cluster_nats_urls == ("nats://a:1",)
    assert build_server().cluster_nats_urls == ()


def test_client_servers_rotate_after_host_and_port() -> None:
    """Check that a client's addresses are host:port first, then `servers` in order, and
    that a comma-separated string (env) and an IPv6 literal in brackets parse."""
    config = build_client(host="a", port=1, servers="b:2, [::1]:3")
    assert config.servers == ("b:2", "[::1]:3")
    assert config.addresses() == (("a", 1), ("b", 2), ("::1", 3))
    assert build_client().addresses() == (("127.0.0.1", 4433),)
