"""Event hooks: callbacks for what happens to connections (and, later, messages).

Register a plain or ``async`` function for an event; QuicFlow calls it when
the event happens. A hook can never break the connection or call it
observes:

* a hook that raises is logged (``quicflow.hooks``) and ignored;
* an ``async`` hook runs as its own task, so a slow one never stalls
  traffic; the event that fired it does not wait for it;
* at shutdown, ``stop()`` / ``close()`` wait at most `Hooks.drain_timeout`
  seconds (5) for async hooks still running, then cancel them.

Example::

    server.hooks.on_connect(lambda info: print("hello", info.client_id))

    @server.hooks.on_disconnect
    async def gone(info: ClientInfo, reason: str) -> None:
        await audit_log.write(f"{info.client_id} left: {reason}")

Server events: ``connect(info)``, ``disconnect(info, reason)``,
``heartbeat_timeout(info)``. Client events: ``connect(client_id)``,
``disconnect(reason)``, ``heartbeat_timeout()``, ``reconnect(attempt,
delay)``, ``state_change(old, new)``. Both: ``message_sent(MessageInfo)`` and
``message_received(MessageInfo)`` for each request message (typed or
untyped) this side sends or receives; they cost nothing when unregistered.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

__all__ = ["Hooks", "MessageInfo", "message_info"]

logger = logging.getLogger("quicflow.hooks")

F = TypeVar("F", bound=Callable[..., Any])

EVENTS = frozenset(
    {
        "connect",
        "disconnect",
        "heartbeat_timeout",
        "reconnect",
        "state_change",
        "message_sent",
        "message_received",
    }
)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """A request message (of a call, or an untyped message) going out or coming in."""

    peer: str
    """The other side: the client's id on the server, ``"server"`` on a client."""
    method: str
    """The route, ``/package.Service/Method``."""
    message_type: str | None
    """For untyped messages, their type; None for typed calls."""
    size: int
    """Serialized size in bytes."""


class Hooks:
    """A registry of callbacks per event name."""

    def __init__(self) -> None:
        self._callbacks: dict[str, list[Callable[..., Any]]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.drain_timeout = 5.0
        """Seconds `drain` (at ``Server.stop`` / ``Client.close``) waits for async hooks."""

    def add(self, event: str, callback: Callable[..., Any]) -> None:
        """Call ``callback`` on ``event``.

        Raises:
            ValueError: ``event`` is not a known event name.
        """
        if event not in EVENTS:
            raise ValueError(f"unknown hook event {event!r}; known: {', '.join(sorted(EVENTS))}")
        self._callbacks.setdefault(event, []).append(callback)

    def remove(self, event: str, callback: Callable[..., Any]) -> None:
        """Stop calling ``callback`` on ``event`` (no error if it was not registered)."""
        callbacks = self._callbacks.get(event, [])
        if callback in callbacks:
            callbacks.remove(callback)

    def _register(self, event: str) -> Callable[[F], F]:
        def register(callback: F) -> F:
            self.add(event, callback)
            return callback

        return register

    def on_connect(self, callback: F) -> F:
        """Register a ``connect`` hook (usable as a decorator)."""
        return self._register("connect")(callback)

    def on_disconnect(self, callback: F) -> F:
        """Register a ``disconnect`` hook (usable as a decorator)."""
        return self._register("disconnect")(callback)

    def on_heartbeat_timeout(self, callback: F) -> F:
        """Register a ``heartbeat_timeout`` hook (usable as a decorator)."""
        return self._register("heartbeat_timeout")(callback)

    def on_reconnect(self, callback: F) -> F:
        """Register a ``reconnect`` hook (usable as a decorator)."""
        return self._register("reconnect")(callback)

    def on_message_sent(self, callback: F) -> F:
        """Register a ``message_sent`` hook (usable as a decorator)."""
        return self._register("message_sent")(callback)

    def on_message_received(self, callback: F) -> F:
        """Register a ``message_received`` hook (usable as a decorator)."""
        return self._register("message_received")(callback)

    def wants(self, event: str) -> bool:
        """True if any hook is registered for ``event`` (check before building arguments)."""
        return bool(self._callbacks.get(event))

    def on_state_change(self, callback: F) -> F:
        """Register a ``state_change`` hook (usable as a decorator)."""
        return self._register("state_change")(callback)

    def fire(self, event: str, *args: Any) -> None:
        """Call every hook for ``event`` now; never raises."""
        callbacks = self._callbacks.get(event)
        if not callbacks:
            return
        for callback in list(callbacks):
            try:
                result = callback(*args)
                if result is not None and inspect.isawaitable(result):
                    task = asyncio.ensure_future(result)
                    self._tasks.add(task)
                    task.add_done_callback(self._task_done)
            except Exception:
                logger.exception("%s hook %r raised", event, callback)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("async hook raised", exc_info=task.exception())

    async def drain(self, timeout: float | None = None) -> None:
        """Wait for async hooks still running (used at shutdown and in tests), at most
        ``timeout`` seconds (default `drain_timeout`); hooks still running then are
        cancelled, with a warning, so a hung hook cannot stall ``stop()`` or ``close()``."""
        loop = asyncio.get_running_loop()
        limit = self.drain_timeout if timeout is None else timeout
        deadline = loop.time() + limit
        while self._tasks:
            left = deadline - loop.time()
            if left <= 0:
                late = list(self._tasks)
                logger.warning(
                    "%d async hook(s) still running after %.1f s: cancelled", len(late), limit
                )
                for task in late:
                    task.cancel()
                await asyncio.wait(late, timeout=1.0)
                self._tasks.difference_update(late)
                return
            await asyncio.wait(list(self._tasks), timeout=left)


_MESSAGING_ROUTE = "/quicflow.wire.v1.Messaging/Deliver"  # messaging.ROUTE (imports us)


def message_info(peer: str, route: str, message: object, size: int) -> MessageInfo:
    """Describe a request message for the message hooks."""
    message_type = getattr(message, "type", None) if route == _MESSAGING_ROUTE else None
    return MessageInfo(peer, route, message_type if isinstance(message_type, str) else None, size)
