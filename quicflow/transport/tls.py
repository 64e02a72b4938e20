"""TLS 1.3 settings for QUIC connections (docs/wire-protocol.md §2).

QUIC always runs TLS 1.3. The client verifies the server's certificate chain
against ``ca_file`` and its name against ``server_name``; turning that off
takes an option whose name says what it does (``insecure_skip_verify``) and
logs a warning on every connect.
"""

from __future__ import annotations

import logging
import ssl

from aioquic.quic.configuration import QuicConfiguration

__all__ = ["client_configuration", "server_configuration"]

logger = logging.getLogger("quicflow.transport")


def client_configuration(
    *,
    server_name: str,
    ca_file: str | None,
    insecure_skip_verify: bool = False,
) -> QuicConfiguration:
    """Build an aioquic client configuration that verifies the server.

    With ``ca_file=None`` the system's default trust store is used.
    """
    config = QuicConfiguration(is_client=True, server_name=server_name)
    if insecure_skip_verify:
        logger.warning(
            "TLS verification is OFF (insecure_skip_verify=True): any server can "
            "impersonate %s. Never use this outside local development.",
            server_name,
        )
        config.verify_mode = ssl.CERT_NONE
    else:
        config.verify_mode = ssl.CERT_REQUIRED
        if ca_file is not None:
            config.load_verify_locations(cafile=ca_file)
    return config


def server_configuration(*, cert_file: str, key_file: str | None) -> QuicConfiguration:
    """Build an aioquic server configuration presenting ``cert_file``."""
    config = QuicConfiguration(is_client=False)
    config.load_cert_chain(cert_file, key_file)
    return config
