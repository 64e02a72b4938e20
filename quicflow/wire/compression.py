"""Message compression: the encodings of docs/wire-protocol.md §4.4.

Pure functions over bytes, no I/O. ``gzip`` (RFC 1952, one member) comes from
the standard library's zlib; ``zstd`` (RFC 8878, one frame) from the standard
library's ``compression.zstd`` on Python 3.14+, else from the ``backports.zstd``
package (``pip install 'quicflow[zstd]'``), and is simply not offered without
either. `decompress` checks the size as it inflates: it never holds more than
``limit + 1`` bytes of output, so a small message that would inflate to a
gigabyte is refused after at most ``limit + 1`` bytes.

Example::

    data = compress("gzip", message)
    assert decompress("gzip", data, limit=4 << 20) == message
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from types import ModuleType
from typing import Final

from ..errors import FrameTooLarge
from .codec import MalformedFrame

__all__ = [
    "ENCODINGS",
    "IDENTITY",
    "KNOWN_ENCODINGS",
    "UnsupportedEncoding",
    "check_compression",
    "compress",
    "decompress",
]

IDENTITY: Final = "identity"
"""No compression; ``""`` means the same on the wire."""

KNOWN_ENCODINGS: Final = ("gzip", "zstd")
"""Every encoding this implementation knows, installed or not."""

_GZIP_WBITS: Final = 16 + zlib.MAX_WBITS  # gzip header and trailer, not zlib's


def _load_zstd() -> ModuleType | None:
    try:
        from compression import zstd  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        try:
            from backports import zstd  # type: ignore[import-not-found,no-redef,unused-ignore]
        except ImportError:
            return None
    module: ModuleType = zstd
    return module


_zstd: Final = _load_zstd()

ENCODINGS: Final[tuple[str, ...]] = ("gzip", "zstd") if _zstd is not None else ("gzip",)
"""The encodings this process can compress and decompress, in preference order."""


class UnsupportedEncoding(MalformedFrame):
    """A message names an encoding this side does not support."""


def check_compression(name: str, value: object, error: Callable[[str, str], Exception]) -> None:
    """Check a compression setting (a config field or a call argument): `IDENTITY` or an
    encoding this process supports; else raise ``error(name, message)``."""
    if value == IDENTITY or value in ENCODINGS:
        return
    if value in KNOWN_ENCODINGS:
        raise error(name, f"{value!r} needs its package: pip install 'quicflow[{value}]'")
    choices = ", ".join(repr(e) for e in (IDENTITY, *KNOWN_ENCODINGS))
    raise error(name, f"must be one of {choices} or None, got {value!r}")


def _gzip(data: bytes) -> bytes:
    c = zlib.compressobj(6, zlib.DEFLATED, _GZIP_WBITS)
    return c.compress(data) + c.flush()


def _zstd_compress(data: bytes) -> bytes:
    assert _zstd is not None
    # With the content checksum (as gzip has its CRC-32), so damage is found, not inflated.
    out: bytes = _zstd.compress(data, options={_zstd.CompressionParameter.checksum_flag: 1})
    return out


_COMPRESSORS: Final[dict[str, Callable[[bytes], bytes]]] = {"gzip": _gzip}
if _zstd is not None:
    _COMPRESSORS["zstd"] = _zstd_compress


def compress(encoding: str, data: bytes) -> bytes:
    """``data`` compressed with ``encoding`` (one of `ENCODINGS`).

    Raises:
        UnsupportedEncoding: not an encoding of `ENCODINGS`.
    """
    compressor = _COMPRESSORS.get(encoding)
    if compressor is None:
        raise UnsupportedEncoding(f"message encoding {encoding!r} is not supported")
    return compressor(data)


def decompress(encoding: str, data: bytes, limit: int) -> bytes:
    """Inflate one compressed message, refusing it once its size passes ``limit``.

    Raises:
        FrameTooLarge: the message inflates to more than ``limit`` bytes (found after
            at most ``limit + 1`` bytes of output).
        MalformedFrame: the bytes are not one complete, valid ``encoding`` stream
            (corrupt, truncated, or followed by more bytes).
        UnsupportedEncoding: not an encoding of `ENCODINGS`.
    """
    if encoding == "gzip":
        return _inflate_gzip(data, limit)
    if encoding == "zstd" and _zstd is not None:
        return _inflate_zstd(data, limit)
    raise UnsupportedEncoding(f"message encoding {encoding!r} is not supported")


def _too_large(limit: int) -> FrameTooLarge:
    return FrameTooLarge(f"message inflates to more than the limit of {limit} bytes")


def _whole(encoding: str, out: bytearray, eof: bool, unused_data: bytes) -> bytes:
    """``out``, if the ``encoding`` stream it came from ended, and with nothing after it."""
    if not eof:
        raise MalformedFrame(f"corrupt {encoding} message: truncated")
    if unused_data:
        raise MalformedFrame(f"corrupt {encoding} message: bytes after its end")
    return bytes(out)


def _inflate_gzip(data: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(_GZIP_WBITS)
    out = bytearray()
    pending = data
    try:
        while True:
            # max_length > 0 always (len(out) <= limit here): zlib stops there and keeps
            # the rest of the input in unconsumed_tail.
            out += inflater.decompress(pending, limit + 1 - len(out))
            if len(out) > limit:
                raise _too_large(limit)
            pending = inflater.unconsumed_tail
            if inflater.eof or not pending:
                break
    except zlib.error as exc:
        raise MalformedFrame(f"corrupt gzip message: {exc}") from None
    return _whole("gzip", out, inflater.eof, inflater.unused_data)


def _inflate_zstd(data: bytes, limit: int) -> bytes:
    assert _zstd is not None
    inflater = _zstd.ZstdDecompressor()
    out = bytearray()
    pending = data
    try:
        while True:
            out += inflater.decompress(pending, limit + 1 - len(out))
            pending = b""  # the decompressor keeps input it has not used yet
            if len(out) > limit:
                raise _too_large(limit)
            if inflater.eof or inflater.needs_input:
                break
    except _zstd.ZstdError as exc:
        raise MalformedFrame(f"corrupt zstd message: {exc}") from None
    return _whole("zstd", out, inflater.eof, inflater.unused_data)
