"""Configs from TOML files and environment variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from quicflow import ClientConfig, ConfigError, ServerConfig


def test_server_config_from_toml_table_env_and_overrides(tmp_path: Path) -> None:
    """Check that a [server] table, then QUICFLOW_SERVER_* variables, then keyword overrides
    build a ServerConfig, each later source winning."""
    path = tmp_path / "quicflow.toml"
    path.write_text(
        '[server]\nport = 5000\ncert_file = "s.pem"\nheartbeat_interval = 10.0\n'
        "max_missed_heartbeats = 4\n\n[client]\nport = 1\n"
    )
    env = {"QUICFLOW_SERVER_PORT": "6000", "QUICFLOW_SERVER_PUSH_TIMEOUT": "none", "OTHER": "x"}
    config = ServerConfig.load(path, env=env, max_missed_heartbeats=5)
    assert (config.port, config.cert_file, config.heartbeat_interval) == (6000, "s.pem", 10.0)
    assert config.push_timeout is None
    assert config.max_missed_heartbeats == 5


def test_client_config_from_top_level_toml_and_env_types(tmp_path: Path) -> None:
    """Check that top-level TOML keys and typed environment values (bool, float, labels)
    build a ClientConfig."""
    path = tmp_path / "client.toml"
    path.write_text('host = "10.0.0.7"\nport = 4433\nlabels = { zone = "eu" }\n')
    env = {
        "QUICFLOW_CLIENT_RECONNECT": "false",
        "QUICFLOW_CLIENT_CONNECT_TIMEOUT": "2.5",
        "QUICFLOW_CLIENT_LABELS": "zone=us,rack=7",
    }
    config = ClientConfig.load(path, env=env)
    assert (config.host, config.port, config.reconnect) == ("10.0.0.7", 4433, False)
    assert config.connect_timeout == 2.5
    assert config.labels == {"zone": "us", "rack": "7"}


@pytest.mark.parametrize(
    ("toml", "env", "field"),
    [
        ("portt = 1\n", {}, "portt"),
        ("", {"QUICFLOW_CLIENT_PORTT": "1"}, "QUICFLOW_CLIENT_PORTT"),
        ("", {"QUICFLOW_CLIENT_PORT": "eighty"}, "QUICFLOW_CLIENT_PORT"),
        ("", {"QUICFLOW_CLIENT_RECONNECT": "maybe"}, "QUICFLOW_CLIENT_RECONNECT"),
        ("port = 70000\n", {}, "port"),
        ("interceptors = []\n", {}, "interceptors"),
    ],
)
def test_bad_sources_name_the_field(
    tmp_path: Path, toml: str, env: dict[str, str], field: str
) -> None:
    """Check that unknown, unparsable, out-of-range or code-only values raise ConfigError
    naming the field (and where it came from)."""
    path = tmp_path / "c.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as info:
        ClientConfig.load(path, env=env)
    assert field in str(info.value)


def test_invalid_toml_is_reported_with_its_path(tmp_path: Path) -> None:
    """Check that a file that is not TOML gives a ConfigError naming the file."""
    path = tmp_path / "broken.toml"
    path.write_text("port = = 1\n")
    with pytest.raises(ConfigError, match=r"broken\.toml"):
        ClientConfig.load(path, env={})
