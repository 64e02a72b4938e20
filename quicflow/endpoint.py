"""`Endpoint`: what both faces of a QuicFlow peer have, composed by `Client` and `Server`.

With server push both ends answer calls, so the answering machinery is not
the server's: each `Client` and each `Server` owns one `Endpoint`, which
holds

* the routes it answers (generated services and the built-in messaging
  service) and the `Dispatcher` that runs untyped-message handlers;
* the answering side: the callee interceptors, the calls in flight
  (`quicflow.incoming.IncomingCall`) and the reply cache that answers a
  repeated message without running its handler twice;
* the peer's message lane on a connection (`ReceiveLane`);
* hooks and metrics;
* the `Clock` every runtime timer is armed on, and the one timer routine
  (`PolicyTimer`) that follows a sans-IO policy object's deadline.

What differs stays with each face: `Server` accepts connections, keeps
sessions and stops; `Client` connects, reconnects and keeps its heartbeat.
The endpoint satisfies the `Answerer` seam `IncomingCall` is typed against.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from .clock import Clock, LoopClock, PolicyTimer
from .config import ClientConfig, ServerConfig
from .dispatch import Dispatcher
from .errors import UsageError
from .hooks import Hooks
from .incoming import CallerLink, IncomingCall
from .interceptors import ServerInterceptor
from .lane import ReceiveLane
from .messaging import MessagingService
from .metrics import Metrics
from .protocol.dedup import RecentReplies
from .rpc import Handler
from .transport import QuicFlowProtocol

__all__ = ["Endpoint"]


class Endpoint:
    """The state and machinery a `Client` and a `Server` share (see the module docstring).

    Example::

        endpoint = Endpoint(config, interceptors=(), replies=RecentReplies())
        endpoint.add_handlers(MyEcho().__quicflow_handlers__())
        endpoint.bind_clock()                     # inside the running loop
        call = endpoint.answer(link, stream_id)   # a stream the peer opened on link
    """

    def __init__(
        self,
        config: ServerConfig | ClientConfig,
        *,
        interceptors: tuple[ServerInterceptor, ...],
        replies: RecentReplies | None,
        clock: Clock | None = None,
    ) -> None:
        self.config = config
        self.handlers: dict[str, Handler] = {}
        """Route -> handler for every route this endpoint answers."""
        self.interceptors = interceptors
        """Callee interceptors, in order."""
        self.calls: set[IncomingCall] = set()
        """Incoming calls whose handler runs."""
        self.hooks = Hooks()
        self.metrics: Metrics | None = Metrics() if config.metrics else None
        self.replies = replies
        """Replies by message id (None: repeated messages run again)."""
        self.dispatcher = Dispatcher(
            config.dispatcher_workers,
            config.dispatcher_queue_size,
            config.handler_timeout,
            clock=clock,
        )
        """Runs handlers for untyped messages."""
        self.add_handlers(MessagingService(self.dispatcher).__quicflow_handlers__())
        self._injected_clock = clock
        self._clock: Clock | None = clock
        self.background: set[asyncio.Task[Any]] = set()
        """Tasks the endpoint runs on its own (e.g. authenticating a HELLO)."""

    # -- routes --

    def add_handlers(self, handlers: Mapping[str, Handler]) -> None:
        """Answer every route of ``handlers``.

        Raises:
            UsageError: a route is already served; nothing was added.
        """
        for route in handlers:
            if route in self.handlers:
                raise UsageError(f"route {route} is already served")
        self.handlers.update(handlers)

    # -- time --

    @property
    def clock(self) -> Clock:
        """Where every runtime timer is read and armed (the running loop's unless injected)."""
        if self._clock is None:
            self._clock = LoopClock()
        return self._clock

    def bind_clock(self) -> None:
        """Take the running loop's clock, unless one was injected (call on start/connect)."""
        self._clock = self._injected_clock or LoopClock()
        self.dispatcher.clock = self._clock

    def timer(
        self, next_deadline: Callable[[], float | None], on_due: Callable[[float], object]
    ) -> PolicyTimer:
        """A `PolicyTimer` on this endpoint's clock."""
        return PolicyTimer(self.clock, next_deadline, on_due)

    def start_metrics(self) -> None:
        """Start the metrics' throughput window on the clock (no-op when metrics are off)."""
        if self.metrics is not None:
            self.metrics.start(self.clock)

    def stop_metrics(self) -> None:
        """Stop the metrics' throughput window."""
        if self.metrics is not None:
            self.metrics.stop()

    # -- tasks --

    def spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``coro`` as a background task the endpoint keeps until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self.background.add(task)
        task.add_done_callback(self.background.discard)
        return task

    # -- the answering side --

    def answer(self, link: CallerLink, stream_id: int) -> IncomingCall:
        """The handler of a stream the peer opened on ``link``: one incoming call."""
        return IncomingCall(self, link, stream_id)

    def receive_lane(
        self, conn: QuicFlowProtocol, stream_id: int, sender: Callable[[], str]
    ) -> ReceiveLane:
        """The peer's message lane on ``conn``, feeding this endpoint's dispatcher."""
        config = self.config
        return ReceiveLane(
            conn,
            stream_id,
            self.dispatcher,
            clock=self.clock,
            sender=sender,
            metrics=self.metrics,
            hooks=self.hooks,
            max_message_size=config.max_message_size,
            max_metadata_size=config.max_metadata_size,
        )

    async def close(self) -> None:
        """Stop the dispatcher and metrics and wait for the hooks in flight."""
        await self.dispatcher.close()
        self.stop_metrics()
        await self.hooks.drain()
