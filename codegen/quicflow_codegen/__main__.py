"""The protoc entry point: ``CodeGeneratorRequest`` on stdin, ``CodeGeneratorResponse`` on stdout.

`generate` is the whole plugin as a pure function; `main` only does the I/O
around it. Set ``QUICFLOW_DUMP_REQUEST=path`` to save the raw request protoc
sent, then replay it with ``python -m quicflow_codegen < path``.
"""

from __future__ import annotations

import os
import sys

from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest, CodeGeneratorResponse

from .naming import NamingError
from .options import OptionsError, parse_options
from .parse import ParseError, parse_request
from .render import render_file

__all__ = ["generate", "main"]

DUMP_ENV = "QUICFLOW_DUMP_REQUEST"


def generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse:
    """Answer one plugin request; problems go into ``response.error``, never raise.

    The response always declares ``FEATURE_PROTO3_OPTIONAL``: the plugin
    reads only services, rpcs and type names, which proto3 ``optional`` does
    not change.
    """
    response = CodeGeneratorResponse(
        supported_features=CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    try:
        options = parse_options(request.parameter)
        files = parse_request(request, options)
    except (OptionsError, ParseError, NamingError) as exc:
        response.error = f"protoc-gen-quicflow: {exc}"
        return response
    for file in files:
        response.file.add(name=file.output, content=render_file(file))
    return response


def main() -> int:
    """Run as protoc's plugin: read the request, write the response, return 0.

    A request protoc could not have sent (unparsable bytes) is reported on
    stderr with exit status 1; every other problem goes to protoc through
    ``response.error``.
    """
    data = sys.stdin.buffer.read()
    dump = os.environ.get(DUMP_ENV)
    if dump:
        with open(dump, "wb") as fh:
            fh.write(data)
    request = CodeGeneratorRequest()
    try:
        request.ParseFromString(data)
    except Exception as exc:  # protobuf raises DecodeError, but only documents Exception.
        print(f"protoc-gen-quicflow: cannot parse the request on stdin: {exc}", file=sys.stderr)
        return 1
    sys.stdout.buffer.write(generate(request).SerializeToString(deterministic=True))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
