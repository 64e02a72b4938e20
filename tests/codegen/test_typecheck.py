"""The generated echo modules are real, typed Python: import them and type-check uses of them."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from .helpers import ROOT, mypy_strict

GOOD = """
    from collections.abc import AsyncIterator

    import quicflow
    from {messages} import EchoReply, EchoRequest
    from {stubs} import EchoBase, EchoStub


    async def client(channel: quicflow.Channel) -> None:
        stub = EchoStub(channel)
        reply: EchoReply = await stub.say(EchoRequest(text="hi"), timeout=1.5)
        async for item in stub.stream(EchoRequest(text="hi"), metadata=[("k", "v")]):
            reveal_type(item)
        total: EchoReply = await stub.collect([EchoRequest(text="a")])
        async for chat in stub.chat([EchoRequest(text="a")]):
            print(chat.text, reply.text, total.text)


    class Echo(EchoBase):
        async def say(self, request: EchoRequest, context: quicflow.ServicerContext) -> EchoReply:
            return EchoReply(text=request.text)

        async def stream(
            self, request: EchoRequest, context: quicflow.ServicerContext
        ) -> AsyncIterator[EchoReply]:
            yield EchoReply(text=request.text)

        async def collect(
            self, requests: AsyncIterator[EchoRequest], context: quicflow.ServicerContext
        ) -> EchoReply:
            return EchoReply(text="".join([r.text async for r in requests]))

        async def chat(
            self, requests: AsyncIterator[EchoRequest], context: quicflow.ServicerContext
        ) -> AsyncIterator[EchoReply]:
            async for request in requests:
                yield EchoReply(text=request.text)
"""

BAD = """
    import quicflow
    from {messages} import EchoReply
    from {stubs} import EchoStub


    async def client(channel: quicflow.Channel) -> None:
        await EchoStub(channel).say(EchoReply(text="wrong type"))  # error: a reply, not a request
"""

FLAVOURS = {
    "protobuf": ("echo.echo_pb2", "echo.echo_quicflow"),
    "betterproto": ("betterproto_flavour.echo", "betterproto_flavour.echo.echo_quicflow"),
}


def _check(tmp_path: Path, flavour: str, source: str) -> tuple[int, str]:
    messages, stubs = FLAVOURS[flavour]
    snippet = tmp_path / "snippet.py"
    snippet.write_text(textwrap.dedent(source.format(messages=messages, stubs=stubs)))
    done = mypy_strict(tmp_path, [snippet], extra_path=[ROOT / "generated"])
    return done.returncode, done.stdout + done.stderr


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_snippet_using_generated_code_type_checks(flavour: str, tmp_path: Path) -> None:
    """Check that typed client and server code using the generated echo module passes mypy."""
    code, output = _check(tmp_path, flavour, GOOD)
    assert code == 0, output
    assert f'Revealed type is "{FLAVOURS[flavour][0]}.EchoReply"' in output


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_wrong_request_type_fails_type_check(flavour: str, tmp_path: Path) -> None:
    """Check that passing a reply where a request belongs is a mypy error, so the types are real."""
    code, output = _check(tmp_path, flavour, BAD)
    assert code == 1, output
    assert 'Argument 1 to "say" of "EchoStub" has incompatible type "EchoReply"' in output


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_generated_base_maps_every_route(flavour: str) -> None:
    """Check that the generated base lists each rpc's route with its cardinality and name."""
    import importlib

    module = importlib.import_module(FLAVOURS[flavour][1])
    handlers = module.EchoBase().__quicflow_handlers__()
    assert {route: h.method.cardinality.value for route, h in handlers.items()} == {
        "/echo.Echo/Say": "unary_unary",
        "/echo.Echo/Stream": "unary_stream",
        "/echo.Echo/Collect": "stream_unary",
        "/echo.Echo/Chat": "stream_stream",
    }
    assert module.EchoBase.SERVICE_NAME == "echo.Echo"
    assert module.__all__ == ["EchoBase", "EchoStub"]


@pytest.mark.parametrize("flavour", sorted(FLAVOURS))
def test_generated_method_round_trips_messages(flavour: str) -> None:
    """Check that a generated Method's serializers turn a message into bytes and back."""
    import importlib

    messages = importlib.import_module(FLAVOURS[flavour][0])
    module = importlib.import_module(FLAVOURS[flavour][1])
    handlers = module.EchoBase().__quicflow_handlers__()
    method = handlers["/echo.Echo/Say"].method
    request = messages.EchoRequest(text="hi", repeat=3)
    assert method.deserialize_request(method.serialize_request(request)) == request
