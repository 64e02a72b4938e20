"""Start an event loop the way QuicFlow's own entry points do: on uvloop when installed.

`run` is `asyncio.run` with a choice of loop, named like the ``event_loop`` config
field: "auto" (the default) runs on uvloop when it can be imported
(``pip install 'quicflow[fast]'``) and on asyncio's own loop otherwise; "uvloop"
insists on uvloop (`ConfigError` naming ``event_loop`` when it is missing);
"asyncio" never uses it. ``quicflow serve`` and the client commands (``call``,
``clients``, ``health``) start their loop through it with the config's
``event_loop``, and so do the examples::

    import quicflow

    async def main() -> None:
        async with quicflow.Client(config) as client:
            ...

    quicflow.run(main())

A program that starts its own loop is not affected: QuicFlow runs on whichever
loop it is given (docs/benchmarks.md "uvloop").
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["EVENT_LOOPS", "loop_factory", "resolve_event_loop", "run"]

T = TypeVar("T")

EVENT_LOOPS = ("auto", "asyncio", "uvloop")
"""Values the ``event_loop`` option takes."""


def _uvloop_installed() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_event_loop(name: str) -> str:
    """The loop ``name`` means here: "uvloop" or "asyncio" ("auto": uvloop if installed).

    Raises:
        ConfigError: naming ``event_loop`` for an unknown name, or "uvloop" not installed.
    """
    if name not in EVENT_LOOPS:
        choices = ", ".join(map(repr, EVENT_LOOPS))
        raise ConfigError("event_loop", f"must be one of {choices}, got {name!r}")
    if name == "asyncio":
        return "asyncio"
    if _uvloop_installed():
        return "uvloop"
    if name == "uvloop":
        raise ConfigError("event_loop", "uvloop is not installed (pip install 'quicflow[fast]')")
    return "asyncio"


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The ``loop_factory`` for `asyncio.Runner` that ``name`` means (None: asyncio's default).

    Raises:
        ConfigError: as `resolve_event_loop`.
    """
    if resolve_event_loop(name) == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None


def run(main: Coroutine[Any, Any, T], *, event_loop: str = "auto", debug: bool | None = None) -> T:
    """Run ``main`` to completion on a new event loop chosen by ``event_loop`` and close it.

    Like `asyncio.run` (which takes no loop factory before Python 3.12).

    Raises:
        ConfigError: naming ``event_loop`` (see `resolve_event_loop`); ``main`` is then
            closed without running.
    """
    try:
        factory = loop_factory(event_loop)
    except ConfigError:
        main.close()
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
