"""The ``quicflow`` command.

``quicflow certs DIR``  writes a development CA, server and client certificates.

Errors print one line to stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .certs import write_dev_certs

__all__ = ["main"]


def _certs(args: argparse.Namespace) -> int:
    names = tuple(args.name) if args.name else ("localhost", "127.0.0.1", "::1")
    certs = write_dev_certs(Path(args.directory), names=names, days=args.days)
    print(f"CA:     {certs.ca_file}")
    print(f"server: {certs.cert_file} (key {certs.key_file}) for {', '.join(names)}")
    print(f"client: {certs.client_cert_file} (key {certs.client_key_file})")
    print("These are for development only.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (public for tests and docs)."""
    parser = argparse.ArgumentParser(prog="quicflow", description="QuicFlow tools")
    sub = parser.add_subparsers(dest="command", required=True)
    certs = sub.add_parser("certs", help="write development certificates")
    certs.add_argument("directory", help="where to write ca.pem, server.pem, client.pem, ...")
    certs.add_argument(
        "--name",
        action="append",
        help="a DNS name or IP address for the server certificate (repeatable; "
        "default: localhost, 127.0.0.1, ::1)",
    )
    certs.add_argument("--days", type=int, default=30, help="validity in days (default 30)")
    certs.set_defaults(func=_certs)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (OSError, ValueError) as exc:
        print(f"quicflow {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
