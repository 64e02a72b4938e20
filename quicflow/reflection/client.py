"""The asking side of server reflection: one ``ServerReflectionInfo`` stream, one question at a
time, and a descriptor pool built from the answers (what ``quicflow call``, ``list`` and
``describe`` use when no ``.proto`` is given)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import TYPE_CHECKING

from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.message import DecodeError

from ..errors import RpcError, UsageError
from ..status import StatusCode
from .reflection_pb2 import ExtensionRequest, ServerReflectionRequest, ServerReflectionResponse
from .service import INFO

if TYPE_CHECKING:
    from ..calls import Channel, StreamStreamCall
    from ..metadata import MetadataLike

__all__ = ["ReflectionClient"]


class ReflectionClient:
    """Asks a server's reflection service questions over one stream.

    Each question waits for its answer; an answer with an ``error_response``
    (e.g. an unknown symbol) raises `RpcError` with its code and leaves the
    stream open for the next question. Files received are kept for the life
    of the stream (the server may leave out files it sent before), and
    `pool` holds every one of them.

    Example::

        async with ReflectionClient(client) as reflection:
            print(await reflection.list_services())
            pool = await reflection.pool_for_symbol("echo.Echo")
            print(pool.FindServiceByName("echo.Echo").methods_by_name.keys())
    """

    def __init__(
        self,
        channel: Channel,
        *,
        timeout: float | None = None,
        metadata: MetadataLike | None = None,
    ) -> None:
        self._channel = channel
        self._timeout = timeout
        self._metadata = metadata
        self._queue: asyncio.Queue[ServerReflectionRequest | None] | None = None
        self._call: StreamStreamCall[ServerReflectionResponse] | None = None
        self._lock = asyncio.Lock()
        self._files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
        self.pool = descriptor_pool.DescriptorPool()
        """Every file received so far whose imports were received too."""

    async def __aenter__(self) -> ReflectionClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Half-close the stream and wait for the server to end it (idempotent)."""
        if self._call is None or self._queue is None:
            return
        self._queue.put_nowait(None)
        call, self._call = self._call, None
        try:
            while await call.read() is not None:
                pass
        except RpcError:
            pass

    async def _requests(self) -> AsyncIterator[ServerReflectionRequest]:
        assert self._queue is not None
        while (request := await self._queue.get()) is not None:
            yield request

    async def ask(self, request: ServerReflectionRequest) -> ServerReflectionResponse:
        """Send one request and return its response (``error_response`` included).

        Raises:
            RpcError: the call itself failed (UNIMPLEMENTED: the server serves no
                reflection), or the server ended the stream without answering.
            UsageError: the client was closed.
        """
        async with self._lock:
            if self._call is None:
                if self._queue is not None:
                    raise UsageError("this ReflectionClient is closed")
                self._queue = asyncio.Queue()
                self._call = self._channel.stream_stream(
                    INFO, self._requests(), timeout=self._timeout, metadata=self._metadata
                )
            queue, call = self._queue, self._call
            assert queue is not None
            queue.put_nowait(request)
            reply = await call.read()
        if reply is None:
            raise RpcError(StatusCode.INTERNAL, "the server ended the reflection stream early")
        return reply

    @staticmethod
    def _raise_error(reply: ServerReflectionResponse) -> None:
        if reply.WhichOneof("message_response") != "error_response":
            return
        error = reply.error_response
        try:
            code = StatusCode(error.error_code)
        except ValueError:
            code = StatusCode.UNKNOWN
        raise RpcError(code, error.error_message)

    async def list_services(self) -> list[str]:
        """The full names of the services the server serves, as it lists them."""
        reply = await self.ask(ServerReflectionRequest(list_services=""))
        self._raise_error(reply)
        return [s.name for s in reply.list_services_response.service]

    async def _ask_files(
        self, request: ServerReflectionRequest
    ) -> list[descriptor_pb2.FileDescriptorProto]:
        reply = await self.ask(request)
        self._raise_error(reply)
        if reply.WhichOneof("message_response") != "file_descriptor_response":
            raise RpcError(StatusCode.INTERNAL, "the server answered with no files")
        files = []
        for data in reply.file_descriptor_response.file_descriptor_proto:
            try:
                files.append(descriptor_pb2.FileDescriptorProto.FromString(data))
            except DecodeError:
                raise RpcError(
                    StatusCode.INTERNAL, "the server sent a file descriptor that does not parse"
                ) from None
        for file in files:
            self._files.setdefault(file.name, file)
        return files

    async def file_by_filename(self, name: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file named ``name`` first, then the imports not sent before on this stream."""
        return await self._ask_files(ServerReflectionRequest(file_by_filename=name))

    async def file_containing_symbol(self, symbol: str) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file declaring ``symbol`` first, then the imports not sent before."""
        return await self._ask_files(ServerReflectionRequest(file_containing_symbol=symbol))

    async def file_containing_extension(
        self, containing_type: str, number: int
    ) -> list[descriptor_pb2.FileDescriptorProto]:
        """The file declaring extension ``number`` of ``containing_type``, then its imports."""
        return await self._ask_files(
            ServerReflectionRequest(
                file_containing_extension=ExtensionRequest(
                    containing_type=containing_type, extension_number=number
                )
            )
        )

    async def extension_numbers(self, type_name: str) -> list[int]:
        """The extension numbers the server knows for message type ``type_name``."""
        reply = await self.ask(ServerReflectionRequest(all_extension_numbers_of_type=type_name))
        self._raise_error(reply)
        return list(reply.all_extension_numbers_response.extension_number)

    async def pool_for_symbol(self, symbol: str) -> descriptor_pool.DescriptorPool:
        """`pool`, after loading the file declaring ``symbol`` and all it imports.

        Imports the server left out (or never sent) are fetched by name.

        Raises:
            RpcError: NOT_FOUND for an unknown symbol or a missing import.
        """
        files = await self.file_containing_symbol(symbol)
        await self._load(files[0].name)
        return self.pool

    async def _load(self, name: str) -> None:
        """Add file ``name`` to `pool`, its imports first, fetching what is missing."""
        try:
            self.pool.FindFileByName(name)
            return
        except KeyError:
            pass
        if name not in self._files:
            await self.file_by_filename(name)
            if name not in self._files:
                raise RpcError(StatusCode.NOT_FOUND, f"the server did not send {name!r}")
        file = self._files[name]
        for dep in file.dependency:
            await self._load(dep)
        try:
            self.pool.Add(file)
        except (TypeError, ValueError) as exc:
            raise RpcError(StatusCode.INTERNAL, f"bad descriptor {name!r}: {exc}") from None

    @property
    def files(self) -> descriptor_pb2.FileDescriptorSet:
        """Every file received so far, as a descriptor set (what ``protoc`` would write)."""
        return descriptor_pb2.FileDescriptorSet(file=list(self._files.values()))
