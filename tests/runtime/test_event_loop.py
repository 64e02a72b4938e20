"""The ``event_loop`` option and `quicflow.run`: names checked, uvloop missing is a clear error."""

from __future__ import annotations

import asyncio
import sys

import pytest

import quicflow
from quicflow import ClientConfig, ConfigError


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__.partition(".")[0]


def test_event_loop_names_are_checked() -> None:
    """Check that an unknown loop fails naming event_loop, in quicflow.run and in a config,
    and that "asyncio" runs on asyncio's loop."""
    with pytest.raises(ConfigError, match=r"^event_loop: must be one of 'auto', 'asyncio'"):
        quicflow.run(_loop_module(), event_loop="trio")
    with pytest.raises(ConfigError, match=r"^event_loop: must be one of"):
        ClientConfig(event_loop="trio")
    assert quicflow.run(_loop_module(), event_loop="asyncio") == "asyncio"


def test_uvloop_asked_for_but_missing_fails_naming_the_field(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Check that without uvloop "auto" falls back to asyncio, and "uvloop" fails with a
    ConfigError naming event_loop (and the extra to install) in quicflow.run and in a config."""
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    assert quicflow.run(_loop_module()) == "asyncio"
    with pytest.raises(ConfigError, match=r"^event_loop: uvloop is not installed .*\[fast\]"):
        quicflow.run(_loop_module(), event_loop="uvloop")
    with pytest.raises(ConfigError) as info:
        ClientConfig(event_loop="uvloop")
    assert info.value.field == "event_loop"
