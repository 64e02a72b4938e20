"""Engine choice: which QUIC state machine (aioquic's or qh3's) a connection runs."""

from __future__ import annotations

import asyncio
import os
from typing import Any, cast

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection

from ..errors import ConfigError
from .engine_aioquic import AioquicFlowConnection
from .pacer import BytePacer, clock_resolution
from .settings import TransportSettings

__all__ = ["ENGINES", "ENGINE_ENV", "make_connection", "resolve_engine"]


ENGINES = ("aioquic", "qh3")
"""QUIC engines `TransportSettings.quic_engine` may name (besides "auto")."""

ENGINE_ENV = "QUICFLOW_QUIC_ENGINE"
"""Environment variable "auto" follows (e.g. to run a test suite on qh3)."""


def resolve_engine(name: str) -> str:
    """The engine ``name`` means: "auto" is ``$QUICFLOW_QUIC_ENGINE`` if set, else aioquic.

    qh3 is never chosen just because it is installed: it has no hook for
    consumption-based receive credit and no client certificates on a server (see engine_qh3).

    Raises:
        ConfigError: naming ``quic_engine`` for an unknown engine or qh3 not installed.
    """
    if name == "auto":
        name = os.environ.get(ENGINE_ENV, "").strip().lower() or "aioquic"
    if name not in ENGINES:
        raise ConfigError("quic_engine", f"must be one of 'auto', 'aioquic', 'qh3', got {name!r}")
    if name == "qh3":
        try:
            import qh3  # type: ignore[import-untyped,unused-ignore]  # noqa: F401
        except ImportError:
            raise ConfigError(
                "quic_engine", "qh3 is not installed (pip install 'quicflow[qh3]')"
            ) from None
    return name


def make_connection(
    configuration: QuicConfiguration, settings: TransportSettings, **kwargs: Any
) -> QuicConnection:
    window = settings.stream_receive_window
    if resolve_engine(settings.quic_engine) == "qh3":
        from .engine_qh3 import Qh3FlowConnection, qh3_configuration

        # Converted once per aioquic configuration (a server shares one by all).
        converted = getattr(configuration, "_quicflow_qh3", None)
        if converted is None:
            converted = qh3_configuration(configuration)
            configuration._quicflow_qh3 = converted  # type: ignore[attr-defined]
        return cast(
            QuicConnection,
            Qh3FlowConnection(configuration=converted, window=window, **kwargs),
        )
    connection = AioquicFlowConnection(configuration=configuration, window=window, **kwargs)
    connection._loss._pacer = BytePacer(
        max_datagram_size=configuration.max_datagram_size,
        resolution=clock_resolution(asyncio.get_running_loop()),
    )
    return connection
