"""The protoc entry point: ``CodeGeneratorRequest`` on stdin, ``CodeGeneratorResponse`` on stdout.

`generate` is the whole plugin as a pure function; `main` only does the I/O
around it. Set ``QUICFLOW_DUMP_REQUEST=path`` to save the raw request protoc
sent, then replay it with ``python -m quicflow_codegen < path``.
"""

from __future__ import annotations

import os
import sys

from google.protobuf.compiler.plugin_pb2 import CodeGeneratorRequest, CodeGeneratorResponse
from google.protobuf.descriptor_pb2 import Edition

from .naming import NamingError
from .options import OptionsError, parse_options
from .parse import ParseError, parse_request
from .render import render_file

__all__ = ["MAXIMUM_EDITION", "MINIMUM_EDITION", "generate", "main"]

DUMP_ENV = "QUICFLOW_DUMP_REQUEST"

MINIMUM_EDITION = Edition.EDITION_PROTO2
"""The oldest syntax the plugin handles: proto2 (proto3 comes between the two)."""
MAXIMUM_EDITION = Edition.EDITION_2024
"""The newest edition the plugin handles (protoc 35 knows no later one)."""

SUPPORTED_FEATURES = (
    CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL | CodeGeneratorResponse.FEATURE_SUPPORTS_EDITIONS
)


def generate(request: CodeGeneratorRequest) -> CodeGeneratorResponse:
    """Answer one plugin request; problems go into ``response.error``, never raise.

    The response always declares ``FEATURE_PROTO3_OPTIONAL`` and
    ``FEATURE_SUPPORTS_EDITIONS`` with the edition range
    `MINIMUM_EDITION`..`MAXIMUM_EDITION`: the plugin reads only services,
    rpcs, type names, comments and the ``deprecated`` option, which neither
    proto3 ``optional`` nor any edition's features change.

    ``response.error`` is one line. A bug of the plugin's own (any other
    exception) is reported there too, with its type, rather than as a
    traceback through protoc.
    """
    response = CodeGeneratorResponse(
        supported_features=SUPPORTED_FEATURES,
        minimum_edition=MINIMUM_EDITION,
        maximum_edition=MAXIMUM_EDITION,
    )
    try:
        options = parse_options(request.parameter)
        files = parse_request(request, options)
        rendered = [(file.output, render_file(file)) for file in files]
    except (OptionsError, ParseError, NamingError) as exc:
        response.error = f"protoc-gen-quicflow: {exc}"
        return response
    except Exception as exc:  # a plugin bug: one line through protoc, not a traceback
        response.error = (
            f"protoc-gen-quicflow: internal error {type(exc).__name__}: {exc} "
            f"(please report it with the request saved by {DUMP_ENV}=path)"
        )
        return response
    for output, content in rendered:
        response.file.add(name=output, content=content)
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
