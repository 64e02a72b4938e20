"""The ``quicflow`` command.

``quicflow certs DIR``  writes a development CA, server and client certificates;
``quicflow certs DIR --add-client ID`` signs one more client certificate with it.

Errors print one line to stderr and exit non-zero.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .certs import issue_client_certificate, write_dev_certs

__all__ = ["main"]


def _certs(args: argparse.Namespace) -> int:
    if args.add_client:
        # Sign more client certificates with the CA already in DIR (no new CA).
        for client_id in args.add_client:
            cert, key = issue_client_certificate(Path(args.directory), client_id, days=args.days)
            print(f"client: {cert} (key {key}) for client id {client_id}")
        return 0
    names = tuple(args.name) if args.name else ("localhost", "127.0.0.1", "::1")
    certs = write_dev_certs(
        Path(args.directory), names=names, client_id=args.client_id, days=args.days
    )
    print(f"CA:     {certs.ca_file}")
    print(f"server: {certs.cert_file} (key {certs.key_file}) for {', '.join(names)}")
    print(
        f"client: {certs.client_cert_file} (key {certs.client_key_file}) "
        f"for client id {args.client_id}"
    )
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
    certs.add_argument(
        "--client-id",
        default="dev-client",
        help="client id named by client.pem (SAN URI quicflow://client/<id>; default dev-client)",
    )
    certs.add_argument(
        "--add-client",
        action="append",
        metavar="ID",
        help="instead of a new set, sign client-ID.pem/.key with the CA already in DIR "
        "(repeatable)",
    )
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
