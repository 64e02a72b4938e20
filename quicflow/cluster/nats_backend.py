"""`ClusterBackend` on NATS: core request/reply for routing, JetStream for the rest.

* Routed calls: the owning node subscribes ``qf.{cluster}.c.{client}`` in a
  queue group (so exactly one node answers even while a session moves) and
  the sender makes a NATS request there. "No responders" (status 503) means
  no node holds the client, at once, with no lookup.
* Replies come back on this backend's *own* inbox subscription
  (``_QF.{nuid}.*``), not nats-py's shared request inbox: that one has been
  reported to stall after a slow-consumer event, and its pending limits are
  not ours to choose. Ours has no message-count limit, which is safe because
  what can arrive on it is bounded by the node's in-flight caps; its callback
  only resolves a future, so it never falls behind.
* Registry: KV ``qf_{cluster}_clients`` (revision = epoch) and KV
  ``qf_{cluster}_nodes`` (a record per node, refreshed), both mirrored into
  a `ClusterView` by watches that are rebuilt after a reconnect.
* Held sends: stream ``qf_{cluster}_held`` with ``allow_msg_ttl`` (nats-server
  2.11+): each held send expires at its own deadline; ``Nats-Msg-Id`` is the
  send's message id, so a repeat within the duplicate window is not stored
  twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DiscardPolicy, KeyValueConfig, StorageType, StreamConfig
from nats.js.client import JetStreamContext
from nats.js.kv import KeyValue
from nats.nuid import NUID

from ..sessions import ClientInfo
from ..status import StatusCode
from .backend import BackendHandler, BackendUnavailable, HoldFull, NotReachable
from .codec import (
    BroadcastCall,
    CallOutcome,
    NodeAnswer,
    NodeRecord,
    Registration,
    RoutedCall,
    decode_client_infos,
    encode_client_infos,
)
from .subjects import Names, decode_token, encode_token
from .view import ClusterView, Entry

__all__ = ["NatsBackend"]

logger = logging.getLogger("quicflow.cluster")

_QUEUE = "qf"
_NO_RESPONDERS = "503"
_PER_SUBJECT_FULL = 10077
"""JetStream's error code: maximum messages per subject exceeded (discard new)."""
_INFO_HEADER = "Qf-Info"
"""Set on a live-info request (client subject: one client; ``all``: every node's, with
the asking node's id as its value). The answer carries ``Qf-Node``."""
_NODE_HEADER = "Qf-Node"
_STREAM_HEADER = "Qf-Stream"
"""Set on a routed stream's open (on the client's subject, beside unary calls)."""


class NatsBackend:
    """One node's connection to the cluster through NATS.

    Example::

        backend = NatsBackend(Names("prod"), "node-a", ["nats://127.0.0.1:4222"])
        await backend.start(handler)     # a BackendHandler (the ClusterNode)
    """

    def __init__(
        self,
        names: Names,
        node_id: str,
        urls: list[str],
        *,
        node_ttl: float = 3.0,
        replicas: int = 1,
        connect_timeout: float = 2.0,
        js_timeout: float = 2.0,
        reconnect_wait: float = 0.25,
        held_max_age: float = 3600.0,
        held_per_client: int = -1,
    ) -> None:
        self.names = names
        self.node_id = node_id
        self.urls = urls
        self.replicas = replicas
        self.connect_timeout = connect_timeout
        self.js_timeout = js_timeout
        self.reconnect_wait = reconnect_wait
        self.held_max_age = held_max_age
        self.held_per_client = held_per_client
        """Held sends kept per client (the stream refuses one more); -1: no limit."""
        self.view = ClusterView(node_ttl)
        self._nc: NatsClient | None = None
        self._js: JetStreamContext | None = None
        self._clients_kv: KeyValue | None = None
        self._nodes_kv: KeyValue | None = None
        self._handler: BackendHandler | None = None
        self._inbox = ""
        self._waiting: dict[str, Callable[[Msg], None]] = {}
        self._next_token = 0
        self._served: dict[str, Subscription] = {}
        self._watchers: list[asyncio.Task[None]] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ready = False
        self._closing = False
        self._resyncing = False
        self._seen: dict[str, int] = {}
        """Per bucket: the last stream sequence the current watch delivered."""
        self._last_seq: dict[str, int] = {}
        """Per bucket: the stream's last sequence at the previous check."""
        self._connector: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()
        """Set once both watches delivered their initial contents (cleared while NATS is away)."""

    # -- connection --

    @property
    def connected(self) -> bool:
        nc = self._nc
        return self._ready and nc is not None and nc.is_connected

    def now(self) -> float:
        return time.monotonic()

    async def start(self, handler: BackendHandler) -> None:
        """Connect and set up; if NATS is not reachable now, keep trying in the background."""
        self._handler = handler
        try:
            await self._connect()
        except Exception as exc:
            logger.warning("cluster: NATS not reachable at start (%s); retrying", exc)
            self._connector = asyncio.get_running_loop().create_task(self._keep_connecting())

    async def _keep_connecting(self) -> None:
        while not self._closing:
            await asyncio.sleep(self.reconnect_wait)
            try:
                await self._connect()
            except Exception as exc:
                logger.debug("cluster: NATS still not reachable: %s", exc)
                continue
            assert self._handler is not None
            self._handler.connection_changed(True)
            return

    async def _connect(self) -> None:
        nc = await nats.connect(
            servers=list(self.urls),
            name=f"quicflow-{self.node_id}",
            connect_timeout=max(1, int(self.connect_timeout)),
            reconnect_time_wait=self.reconnect_wait,
            max_reconnect_attempts=-1,
            allow_reconnect=True,
            ping_interval=2,
            max_outstanding_pings=2,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
        )
        try:
            self._nc = nc
            self._js = nc.jetstream(timeout=self.js_timeout)
            await self._setup_jetstream()
            self._inbox = f"_QF.{NUID().next().decode()}"
            await nc.subscribe(
                f"{self._inbox}.*", cb=self._on_reply, pending_msgs_limit=0, pending_bytes_limit=0
            )
            await nc.subscribe(
                self.names.node(self.node_id),
                cb=self._on_node_message,
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
            await nc.subscribe(
                self.names.all, cb=self._on_broadcast, pending_msgs_limit=0, pending_bytes_limit=0
            )
            await nc.flush()
            self._ready = True
            await self._start_watches()
        except BaseException:
            self._nc = None
            with contextlib.suppress(Exception):
                await nc.close()
            raise

    async def _setup_jetstream(self) -> None:
        js = self._js
        assert js is not None
        names = self.names
        deadline = time.monotonic() + 15.0
        while True:  # a fresh NATS cluster elects its JetStream leader first
            try:
                self._clients_kv = await js.create_key_value(
                    KeyValueConfig(bucket=names.clients_bucket, history=1, replicas=self.replicas)
                )
                self._nodes_kv = await js.create_key_value(
                    KeyValueConfig(
                        bucket=names.nodes_bucket,
                        history=1,
                        replicas=self.replicas,
                        ttl=max(self.view.node_ttl * 10, 30.0),
                    )
                )
                await js.add_stream(
                    StreamConfig(
                        name=names.held_stream,
                        subjects=[names.held_subjects],
                        allow_msg_ttl=True,
                        max_age=self.held_max_age,
                        num_replicas=self.replicas,
                        storage=StorageType.FILE,
                        duplicate_window=120.0,
                        # hold_max_count per client, cluster-wide: one more is refused.
                        max_msgs_per_subject=self.held_per_client,
                        discard=DiscardPolicy.NEW,
                        discard_new_per_subject=self.held_per_client > 0,
                    )
                )
                return
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError) as exc:
                if time.monotonic() > deadline:
                    raise
                logger.debug("cluster: JetStream not ready yet (%s)", exc)
                await asyncio.sleep(0.2)
            except nats.js.errors.BadRequestError as exc:
                # The bucket exists with other settings (another node made it): use it.
                if exc.err_code != 10058:  # stream name already in use
                    raise
                self._clients_kv = await js.key_value(names.clients_bucket)
                self._nodes_kv = await js.key_value(names.nodes_bucket)
                return

    async def _on_disconnected(self) -> None:
        if self._closing or not self._ready:
            return
        logger.warning("cluster: lost NATS; cluster operations fail fast until it is back")
        self.synced.clear()
        if self._handler is not None:
            self._handler.connection_changed(False)

    async def _on_reconnected(self) -> None:
        if self._closing:
            return
        logger.info("cluster: NATS is back; re-reading the registry, re-registering")
        self._spawn(self._back())

    async def _back(self) -> None:
        await self._start_watches()
        if self._handler is not None and not self._closing:
            self._handler.connection_changed(True)

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("cluster: NATS error: %s", exc)

    async def close(self) -> None:
        self._closing = True
        if self._connector is not None:
            self._connector.cancel()
        for task in self._watchers:
            task.cancel()
        for task in list(self._tasks):
            task.cancel()
        nc = self._nc
        if nc is not None and nc.is_connected and self._nodes_kv is not None:
            with contextlib.suppress(Exception):
                await self._nodes_kv.delete(encode_token(self.node_id))
        if nc is not None:
            with contextlib.suppress(Exception):
                await nc.close()
        self._ready = False

    def _require(self) -> NatsClient:
        nc = self._nc
        if nc is None or not self._ready or not nc.is_connected:
            raise BackendUnavailable()
        return nc

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- watches --

    @property
    def in_sync(self) -> bool:
        """True once the registry watches delivered their initial contents."""
        return self.synced.is_set() and self.connected

    async def resync(self) -> None:
        """Re-read the registry from scratch (a watch that stopped delivering)."""
        if not self._resyncing:
            self._resyncing = True
            try:
                await self._start_watches()
            finally:
                self._resyncing = False

    async def _start_watches(self) -> None:
        """Open both watches into a fresh view and swap it in once they are in sync;
        retried while JetStream is not answering (a NATS cluster electing a leader)."""
        while not self._closing:
            try:
                await self._open_watches()
                return
            except Exception as exc:
                logger.debug("cluster: registry watch not ready yet: %s", exc)
                await asyncio.sleep(0.25)

    async def _open_watches(self) -> None:
        assert self._clients_kv is not None and self._nodes_kv is not None
        view = ClusterView(self.view.node_ttl)
        clients = await self._clients_kv.watchall()
        nodes = await self._nodes_kv.watchall()
        both = [asyncio.Event(), asyncio.Event()]
        loop = asyncio.get_running_loop()
        seen: dict[str, int] = {}
        names = self.names
        tasks = [
            loop.create_task(
                self._watch(
                    clients, lambda e: _client_update(view, e), both[0], seen, names.clients_bucket
                )
            ),
            loop.create_task(
                self._watch(
                    nodes,
                    lambda e: _node_update(view, e, self.now()),
                    both[1],
                    seen,
                    names.nodes_bucket,
                )
            ),
        ]
        try:
            async with asyncio.timeout(self.js_timeout):
                await both[0].wait()
                await both[1].wait()
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        for task in self._watchers:
            task.cancel()
        self._watchers = tasks
        self.view = view
        self._seen = seen
        self._last_seq = {}
        self.synced.set()

    async def _watch(
        self,
        watcher: KeyValue.KeyWatcher,
        apply: Callable[[KeyValue.Entry], None],
        synced: asyncio.Event,
        seen: dict[str, int],
        bucket: str,
    ) -> None:
        try:
            async for entry in watcher:
                if entry is None:
                    synced.set()
                    continue
                seen[bucket] = max(seen.get(bucket, 0), entry.revision or 0)
                try:
                    apply(entry)
                except Exception:
                    logger.exception("cluster: bad registry entry %r", entry.key)
                if entry.delta == 0:
                    synced.set()
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()  # type: ignore[no-untyped-call]

    # -- registry --

    async def register(
        self, client_id: str, registration: Registration
    ) -> tuple[int, Entry | None]:
        self._require()
        kv = self._clients_kv
        assert kv is not None
        key = encode_token(client_id)
        value = registration.encode()
        hint: int | None = None
        for _ in range(16):
            previous: Entry | None = None
            last = 0
            try:
                current = await kv.get(key)
                last = current.revision or 0
                if current.value:
                    previous = Entry(client_id, last, Registration.decode(current.value))
            except nats.js.errors.KeyDeletedError as exc:
                last = exc.entry.revision or 0
            except nats.js.errors.KeyNotFoundError:
                last = 0
            if hint is not None and hint > last:
                # The read came from a replica that lags (a direct get after a NATS
                # failover); the server told us the real last revision: use it, and our
                # own view for who held the client.
                last = hint
                known = self.view.get(client_id)
                previous = known if known is not None and known.epoch <= last else None
            try:
                epoch = await kv.update(key, value, last=last)
            except nats.js.errors.KeyWrongLastSequenceError as exc:
                hint = _last_sequence(exc)
                continue  # another node registered meanwhile: read again; the newest wins
            self.view.client_put(client_id, epoch, registration)
            return epoch, previous
        raise BackendUnavailable(f"could not register {client_id!r}: the registry kept moving")

    async def unregister(self, client_id: str, epoch: int) -> bool:
        self._require()
        kv = self._clients_kv
        assert kv is not None
        try:
            await kv.delete(encode_token(client_id), last=epoch)
        except nats.js.errors.BadRequestError as exc:
            if exc.err_code in (10071, 10164):  # wrong last sequence: it moved on
                return False
            raise
        self.view.client_deleted(client_id, epoch + 1)
        return True

    async def refresh(self, record: NodeRecord) -> None:
        self._require()
        assert self._nodes_kv is not None
        await self._nodes_kv.put(encode_token(record.node_id), record.encode())
        try:
            await self._check_watches()
        except Exception as exc:
            logger.debug("cluster: could not check the registry watches: %s", exc)

    async def _check_watches(self) -> None:
        """Re-read the registry if a watch fell behind its stream for a whole refresh.

        nats-py's ordered consumer (under ``kv.watch``) recreates its consumer once after a
        NATS server dies; if JetStream is still electing a leader then, it gives up and the
        watch stays silent for good. So each refresh compares each bucket's last sequence
        with the last one its watch delivered: still short of the previous refresh's last
        sequence means stalled."""
        js = self._js
        if js is None or self._resyncing or not self.synced.is_set():
            return
        stalled = False
        for bucket in (self.names.clients_bucket, self.names.nodes_bucket):
            info = await js.stream_info(f"KV_{bucket}")
            last = int(info.state.last_seq)
            previous = self._last_seq.get(bucket)
            if previous is not None and self._seen.get(bucket, 0) < previous:
                stalled = True
            self._last_seq[bucket] = last
        if stalled:
            logger.info("cluster: a registry watch stalled; re-reading the registry")
            self._spawn(self.resync())

    # -- routing --

    async def serve(self, client_id: str) -> None:
        nc = self._require()
        if client_id in self._served:
            return

        async def on_call(msg: Msg) -> None:
            self._spawn(self._answer_call(client_id, msg))

        self._served[client_id] = await nc.subscribe(
            self.names.client(client_id),
            queue=_QUEUE,
            cb=on_call,
            pending_msgs_limit=0,
            pending_bytes_limit=0,
        )

    async def unserve(self, client_id: str) -> None:
        sub = self._served.pop(client_id, None)
        if sub is not None and self.connected:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def served(self) -> set[str]:
        """Client ids this node receives routed calls for."""
        return set(self._served)

    async def _answer_call(self, client_id: str, msg: Msg) -> None:
        assert self._handler is not None
        if msg.headers and msg.headers.get(_INFO_HEADER):
            await self._answer_info(msg, client_id)
            return
        if msg.headers and msg.headers.get(_STREAM_HEADER):
            if msg.reply:
                try:
                    await self._handler.stream_opened(client_id, msg.data, msg.reply)
                except Exception:
                    logger.exception("cluster: serving a routed stream to %r failed", client_id)
            return
        try:
            call = RoutedCall.decode(msg.data)
        except ValueError as exc:
            logger.warning("cluster: undecodable routed call: %s", exc)
            return
        try:
            outcome = await self._handler.routed_call(client_id, call)
        except Exception:
            logger.exception("cluster: serving a routed call to %r failed", client_id)
            outcome = CallOutcome(StatusCode.INTERNAL, "the client's node failed the call")
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(outcome.encode())

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rpartition(".")[2]
        waiter = self._waiting.get(token)
        if waiter is not None:
            waiter(msg)

    def _new_token(self) -> str:
        self._next_token += 1
        return str(self._next_token)

    async def _request(
        self, client_id: str, data: bytes, timeout: float, headers: dict[str, str] | None = None
    ) -> Msg:
        """Send ``data`` to the node holding ``client_id`` and wait for its one answer.

        Raises:
            NotReachable: no node serves the client's subject.
            TimeoutError: no answer within ``timeout``.
        """
        nc = self._require()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Msg] = loop.create_future()
        token = self._new_token()

        def got(msg: Msg) -> None:
            if not future.done():
                future.set_result(msg)

        self._waiting[token] = got
        try:
            await nc.publish(
                self.names.client(client_id),
                data,
                reply=f"{self._inbox}.{token}",
                headers=headers,
            )
            async with asyncio.timeout(timeout):
                msg = await future
        finally:
            self._waiting.pop(token, None)
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
            raise NotReachable(client_id)
        return msg

    async def call(self, client_id: str, call: RoutedCall, timeout: float) -> CallOutcome:
        msg = await self._request(client_id, call.encode(), timeout)
        return CallOutcome.decode(msg.data)

    def stream_inbox(self, on_data: Callable[[bytes | None], None]) -> tuple[str, str]:
        token = self._new_token()

        def got(msg: Msg) -> None:
            if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                on_data(None)
            else:
                on_data(msg.data)

        self._waiting[token] = got
        return token, f"{self._inbox}.{token}"

    def close_stream_inbox(self, token: str) -> None:
        self._waiting.pop(token, None)

    async def open_stream(self, client_id: str, data: bytes, reply: str) -> None:
        nc = self._require()
        await nc.publish(
            self.names.client(client_id), data, reply=reply, headers={_STREAM_HEADER: "1"}
        )

    async def send_frame(self, subject: str, data: bytes) -> None:
        nc = self._require()
        await nc.publish(subject, data)

    async def _gather(
        self,
        data: bytes,
        expected: set[str],
        timeout: float,
        answers: Mapping[str, object],
        collect: Callable[[Msg], None],
        headers: dict[str, str] | None = None,
    ) -> None:
        """Send ``data`` to every node and ``collect`` their answers (into ``answers``,
        keyed by node) until all ``expected`` nodes answered, none is subscribed at all,
        or ``timeout`` passes."""
        nc = self._require()
        complete = asyncio.Event()
        token = self._new_token()

        def got(msg: Msg) -> None:
            if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS:
                complete.set()  # no other node is subscribed at all
                return
            collect(msg)
            if expected <= answers.keys():
                complete.set()

        self._waiting[token] = got
        try:
            await nc.publish(self.names.all, data, reply=f"{self._inbox}.{token}", headers=headers)
            if expected:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await complete.wait()
        finally:
            self._waiting.pop(token, None)

    async def broadcast(
        self, call: BroadcastCall, expected: set[str], timeout: float
    ) -> list[NodeAnswer]:
        answers: dict[str, NodeAnswer] = {}

        def collect(msg: Msg) -> None:
            try:
                answer = NodeAnswer.decode(msg.data)
            except ValueError as exc:
                logger.warning("cluster: undecodable broadcast answer: %s", exc)
                return
            answers[answer.node_id] = answer

        await self._gather(call.encode(), expected, timeout, answers, collect)
        return list(answers.values())

    async def _on_broadcast(self, msg: Msg) -> None:
        if msg.headers and msg.headers.get(_INFO_HEADER):
            if msg.headers[_INFO_HEADER] != self.node_id:  # the asker lists its own
                self._spawn(self._answer_info(msg, None))
            return
        self._spawn(self._answer_broadcast(msg))

    async def _answer_info(self, msg: Msg, client_id: str | None) -> None:
        assert self._handler is not None
        nc = self._nc
        if not msg.reply or nc is None:
            return
        data = encode_client_infos(self._handler.local_infos(client_id))
        with contextlib.suppress(Exception):
            await nc.publish(msg.reply, data, headers={_NODE_HEADER: self.node_id})

    async def client_info(self, client_id: str, timeout: float) -> list[ClientInfo]:
        msg = await self._request(client_id, b"", timeout, {_INFO_HEADER: self.node_id})
        return decode_client_infos(msg.data)

    async def all_client_infos(
        self, expected: set[str], timeout: float
    ) -> dict[str, list[ClientInfo]]:
        answers: dict[str, list[ClientInfo]] = {}

        def collect(msg: Msg) -> None:
            node = (msg.headers or {}).get(_NODE_HEADER, "")
            try:
                answers[node] = decode_client_infos(msg.data)
            except ValueError as exc:
                logger.warning("cluster: undecodable client info from %r: %s", node, exc)

        await self._gather(
            b"", expected, timeout, answers, collect, headers={_INFO_HEADER: self.node_id}
        )
        return answers

    async def _answer_broadcast(self, msg: Msg) -> None:
        assert self._handler is not None
        try:
            call = BroadcastCall.decode(msg.data)
        except ValueError as exc:
            logger.warning("cluster: undecodable broadcast: %s", exc)
            return
        if call.call.origin == self.node_id:
            return  # the origin runs its own share locally
        answer = await self._handler.broadcast_call(call)
        if msg.reply:
            with contextlib.suppress(Exception):
                await msg.respond(answer.encode())

    async def send_to_node(self, node_id: str, data: bytes) -> None:
        nc = self._require()
        await nc.publish(self.names.node(node_id), data)

    async def _on_node_message(self, msg: Msg) -> None:
        if self._handler is not None:
            self._handler.node_message(msg.data)

    # -- held sends --

    async def hold(self, client_id: str, call: RoutedCall, ttl: float) -> int:
        self._require()
        js = self._js
        assert js is not None
        headers = {"Nats-Msg-Id": call.message_id.hex()} if call.message_id else None
        try:
            ack = await js.publish(
                self.names.held(client_id),
                call.encode(),
                stream=self.names.held_stream,
                headers=headers,
                msg_ttl=max(ttl, 1.0),
            )
        except nats.js.errors.APIError as exc:
            if exc.err_code == _PER_SUBJECT_FULL:
                raise HoldFull(client_id) from exc
            raise
        return int(ack.seq)

    async def take_back(self, seq: int) -> bool:
        self._require()
        js = self._js
        assert js is not None
        try:
            return bool(await js.delete_msg(self.names.held_stream, seq))
        except nats.js.errors.NotFoundError:
            return False

    async def held_for(self, client_id: str) -> list[tuple[int, RoutedCall]]:
        self._require()
        js = self._js
        assert js is not None
        subject = self.names.held(client_id)
        try:
            await js.get_last_msg(self.names.held_stream, subject)
        except nats.js.errors.NotFoundError:
            return []  # the common case: nothing held, one round trip
        sub = await js.pull_subscribe(subject, stream=self.names.held_stream)
        found: list[tuple[int, RoutedCall]] = []
        try:
            while True:
                try:
                    msgs = await sub.fetch(batch=256, timeout=0.2)
                except nats.errors.TimeoutError:
                    break
                for m in msgs:
                    with contextlib.suppress(Exception):
                        await m.ack()
                    try:
                        found.append((m.metadata.sequence.stream, RoutedCall.decode(m.data)))
                    except ValueError:
                        continue
                if len(msgs) < 256:
                    break
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        return found

    async def drop_held(self, seq: int) -> None:
        self._require()
        js = self._js
        assert js is not None
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_msg(self.names.held_stream, seq)


def _client_update(view: ClusterView, entry: KeyValue.Entry) -> None:
    client_id = decode_token(entry.key)
    revision = entry.revision or 0
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        view.client_deleted(client_id, revision)
    else:
        view.client_put(client_id, revision, Registration.decode(entry.value))


def _node_update(view: ClusterView, entry: KeyValue.Entry, now: float) -> None:
    node_id = decode_token(entry.key)
    if entry.operation in ("DEL", "PURGE") or not entry.value:
        view.node_gone(node_id)
    else:
        view.node_seen(NodeRecord.decode(entry.value), now)


_WRONG_LAST = re.compile(r"wrong last sequence: (\d+)")


def _last_sequence(exc: Exception) -> int | None:
    """The current last sequence a refused compare-and-set names, if it does."""
    match = _WRONG_LAST.search(str(getattr(exc, "description", "") or exc))
    return int(match.group(1)) if match else None
