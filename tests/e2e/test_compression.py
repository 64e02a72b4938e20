"""Message compression end to end (wire-protocol.md §4.4): negotiated in HELLO/WELCOME,
chosen per channel, per call and per handler, over real QUIC.

"Compressed on the wire" is read from the server's byte counters of the client's
session (``bytes_in``, ``bytes_out``): a 256 KiB compressible message that crosses
in a few KiB was compressed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import pytest
from echo.echo_pb2 import EchoReply, EchoRequest
from echo.echo_quicflow import EchoBase, EchoStub

from quicflow import (
    ArgumentError,
    Client,
    ConfigError,
    RpcError,
    ServicerContext,
    StatusCode,
    UsageError,
)
from quicflow.config import ClientConfig, ServerConfig
from quicflow.testing import ClientFor
from quicflow.wire.compression import ENCODINGS

from .service import TestEcho

BIG = b"compressible " * 20_000  # 260 KB that gzip turns into about 1 KB
SMALL = b"tiny"


class Compressing(EchoBase):
    """Say answers with its payload; ``set:<encoding>`` picks the response encoding."""

    def __init__(self) -> None:
        self.late_error: Exception | None = None

    async def say(self, request: EchoRequest, context: ServicerContext) -> EchoReply:
        if request.text.startswith("set:"):
            context.set_compression(request.text[4:])
        if request.text.startswith("grow:"):
            return EchoReply(payload=bytes(int(request.text[5:])))
        return EchoReply(text=request.text, payload=request.payload)

    async def stream(
        self, request: EchoRequest, context: ServicerContext
    ) -> AsyncIterator[EchoReply]:
        yield EchoReply(payload=request.payload)
        try:
            context.set_compression("gzip")
        except UsageError as exc:
            self.late_error = exc
        yield EchoReply(payload=request.payload)


def _traffic(harness: ClientFor) -> tuple[int, int]:
    [info] = harness.server.list_clients()
    return info.bytes_in, info.bytes_out


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_requests_and_responses_are_compressed_when_both_sides_choose_it(
    encoding: str,
) -> None:
    """Check that with compression set on the client and the server, a large request and
    its response each cross compressed, arrive intact, and small ones go as they are."""
    harness = ClientFor(
        [Compressing()],
        server_options={"compression": encoding},
        client_options={"compression": encoding},
    )
    async with harness as client:
        reply = await EchoStub(client).say(EchoRequest(payload=BIG))
        assert reply.payload == BIG
        bytes_in, bytes_out = _traffic(harness)
        assert bytes_in < 5_000 and bytes_out < 5_000
        reply = await EchoStub(client).say(EchoRequest(payload=SMALL))
        assert reply.payload == SMALL


async def test_without_compression_nothing_is_compressed() -> None:
    """Check that by default (no compression anywhere) the big message crosses whole."""
    harness = ClientFor([Compressing()])
    async with harness as client:
        assert (await EchoStub(client).say(EchoRequest(payload=BIG))).payload == BIG
        bytes_in, bytes_out = _traffic(harness)
        assert bytes_in > len(BIG) and bytes_out > len(BIG)


async def test_per_call_compression_overrides_the_channel_default() -> None:
    """Check that compression="gzip" on one call compresses its request only, and
    compression="identity" turns the channel's default off for one call."""
    harness = ClientFor([Compressing()])
    async with harness as client:
        stub = EchoStub(client)
        await stub.say(EchoRequest(payload=BIG), compression="gzip")
        bytes_in, bytes_out = _traffic(harness)
        assert bytes_in < 5_000 < len(BIG) < bytes_out
    harness = ClientFor([Compressing()], client_options={"compression": "gzip"})
    async with harness as client:
        await EchoStub(client).say(EchoRequest(payload=BIG), compression="identity")
        bytes_in, _ = _traffic(harness)
        assert bytes_in > len(BIG)


async def test_a_handler_chooses_its_response_encoding() -> None:
    """Check that context.set_compression compresses that call's responses, and that
    calling it after the first response raises UsageError."""
    service = Compressing()
    harness = ClientFor([service])
    async with harness as client:
        stub = EchoStub(client)
        reply = await stub.say(EchoRequest(text="set:gzip", payload=BIG))
        assert reply.payload == BIG
        bytes_in, bytes_out = _traffic(harness)
        assert bytes_out < 5_000 < len(BIG) < bytes_in
        replies = [r async for r in stub.stream(EchoRequest(payload=SMALL))]
        assert [r.payload for r in replies] == [SMALL, SMALL]
        assert isinstance(service.late_error, UsageError)
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="set:brotli"))
        assert info.value.code is StatusCode.UNKNOWN  # the handler's ArgumentError


async def test_an_encoding_the_peer_does_not_accept_is_not_used() -> None:
    """Check that a client whose server did not list gzip in WELCOME sends uncompressed
    although gzip was asked for (as a peer that predates compression would need)."""
    harness = ClientFor([TestEcho()], client_options={"compression": "gzip"})
    async with harness as client:
        link = client._link
        assert link is not None
        assert link.peer_encodings == frozenset(ENCODINGS)
        link.peer_encodings = frozenset()
        reply = await EchoStub(client).say(EchoRequest(payload=BIG))
        assert reply.payload == BIG
        bytes_in, _ = _traffic(harness)
        assert bytes_in > len(BIG)


def _count_writes(monkeypatch: pytest.MonkeyPatch, conn: object) -> Callable[[], int]:
    """Count the bytes ``conn`` is asked to write on call streams (not the control stream)."""
    written = [0]
    write = conn.write  # type: ignore[attr-defined]

    def counting(stream_id: int, data: bytes, end_stream: bool = False) -> bool:
        if stream_id != 0:
            written[0] += len(data)
        result: bool = write(stream_id, data, end_stream)
        return result

    monkeypatch.setattr(conn, "write", counting)
    return lambda: written[0]


@pytest.mark.parametrize("client_accepts", [True, False])
async def test_pushed_calls_compress_with_what_the_other_side_accepts(
    monkeypatch: pytest.MonkeyPatch, client_accepts: bool
) -> None:
    """Check that a server push and the client's answer to it are compressed when both
    sides choose gzip (each reads what the other accepts from its session or its link), and
    that a server whose session records no accepted encoding pushes uncompressed."""
    harness = ClientFor([TestEcho()], server_options={"compression": "gzip"})
    async with harness:
        client = Client(harness.client_config(client_id="pushed", compression="gzip"))
        client.add_service(Compressing())
        await client.connect()
        try:
            session = harness.server.sessions.get("pushed")
            link = client._link
            assert session is not None and link is not None
            assert session.peer_encodings == link.peer_encodings == frozenset(ENCODINGS)
            if not client_accepts:
                session.peer_encodings = frozenset()
            pushed = _count_writes(monkeypatch, session.conn)
            answered = _count_writes(monkeypatch, link.conn)
            reply = await EchoStub(harness.server.client("pushed")).say(EchoRequest(payload=BIG))
            assert reply.payload == BIG
            assert answered() < 5_000
            if client_accepts:
                assert pushed() < 5_000
            else:
                assert pushed() > len(BIG)
        finally:
            await client.close()


async def test_a_message_inflating_past_the_limit_is_resource_exhausted() -> None:
    """Check that a response that is small compressed but over the client's
    max_message_size once inflated fails RESOURCE_EXHAUSTED, and the connection is kept."""
    harness = ClientFor(
        [Compressing()],
        server_options={"compression": "gzip"},
        client_options={"max_message_size": 100_000},
    )
    async with harness as client:
        stub = EchoStub(client)
        with pytest.raises(RpcError) as info:
            await stub.say(EchoRequest(text="grow:200000"))
        assert info.value.code is StatusCode.RESOURCE_EXHAUSTED
        assert "inflates to more than the limit of 100000 bytes" in info.value.message
        assert (await stub.say(EchoRequest(text="grow:99000"))).payload == bytes(99000)


def test_bad_compression_settings_are_config_errors_naming_the_field() -> None:
    """Check that an unknown encoding or a bad threshold fails at construction."""
    with pytest.raises(ConfigError, match="compression: must be one of 'identity', 'gzip'"):
        ClientConfig(compression="brotli")
    with pytest.raises(ConfigError, match="compression_threshold"):
        ServerConfig(cert_file="x.pem", compression_threshold=-1)
    assert ClientConfig(compression="identity").compression == "identity"


async def test_an_unknown_per_call_encoding_is_an_argument_error() -> None:
    """Check that compression="brotli" on a call raises ArgumentError and sends nothing."""
    harness = ClientFor([TestEcho()])
    async with harness as client:
        with pytest.raises(ArgumentError, match="compression: must be one of"):
            EchoStub(client).say(EchoRequest(), compression="brotli")
        [info] = harness.server.list_clients()
        assert info.calls_in == 0
