"""Call metadata: ordered (key, value) pairs, as in gRPC.

Keys are lower-case ASCII (``0-9 a-z - _ .``). A key that ends in ``-bin``
carries ``bytes``; every other key carries ``str``. Keys starting with
``quicflow-`` are reserved for the protocol. On the wire every value is bytes
(docs/wire-protocol.md §4.1); text values are UTF-8.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeAlias

from .errors import ArgumentError

__all__ = [
    "Metadata",
    "MetadataLike",
    "MetadataValue",
    "normalize_metadata",
]

MetadataValue: TypeAlias = str | bytes
Metadata: TypeAlias = tuple[tuple[str, MetadataValue], ...]
"""Metadata as QuicFlow hands it to you: an immutable tuple of pairs."""
MetadataLike: TypeAlias = Sequence[tuple[str, MetadataValue]] | Iterable[tuple[str, MetadataValue]]
"""Anything you may pass as metadata: a list or tuple of pairs."""

KEY_CHARS = frozenset("0123456789abcdefghijklmnopqrstuvwxyz-_.")
"""The characters a metadata key may use."""
RESERVED_PREFIX = "quicflow-"


def _check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ArgumentError("metadata", f"a key must be a non-empty str, got {key!r}")
    if not KEY_CHARS.issuperset(key):
        raise ArgumentError(
            "metadata",
            f"key {key!r} may only contain lower-case letters, digits, '-', '_' and '.'",
        )
    if key.startswith(RESERVED_PREFIX):
        raise ArgumentError("metadata", f"key {key!r} uses the reserved prefix {RESERVED_PREFIX!r}")
    return key


def normalize_metadata(metadata: MetadataLike | None) -> Metadata:
    """Validate user metadata and return it as an immutable tuple.

    Raises:
        ArgumentError: (a `UsageError` and a `ValueError`) a key is malformed or
            reserved, or a value has the wrong type for its key (``-bin`` keys
            take bytes, others take str) or holds control characters.
    """
    if not metadata:
        return ()
    out: list[tuple[str, MetadataValue]] = []
    for item in metadata:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise ArgumentError("metadata", f"items must be (key, value) pairs, got {item!r}")
        key, value = item
        _check_key(key)
        if key.endswith("-bin"):
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ArgumentError("metadata", f"key {key!r} ends in -bin and needs a bytes value")
            value = bytes(value)
        elif not isinstance(value, str):
            raise ArgumentError(
                "metadata", f"key {key!r} needs a str value (use a -bin key for bytes)"
            )
        elif any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
            raise ArgumentError("metadata", f"the value for {key!r} contains control characters")
        out.append((key, value))
    return tuple(out)


def metadata_get(metadata: Sequence[tuple[str, MetadataValue]], key: str) -> MetadataValue | None:
    """Return the first value for ``key``, or None."""
    for k, v in metadata:
        if k == key:
            return v
    return None
