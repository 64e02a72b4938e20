"""Secret key files a server keeps across restarts (stateless reset, session tickets)."""

from __future__ import annotations

import os
import secrets

from ..errors import ConfigError

__all__ = ["read_key_file"]


def read_key_file(path: str, size: int, field: str) -> bytes:
    """The bytes of the key file ``path``. If it does not exist it is created with
    ``size`` random bytes, mode 0600, exclusively: of two processes starting at once,
    the one that loses the race reads the winner's file.

    Raises:
        ConfigError: naming ``field`` if the file cannot be read or created.
    """
    try:
        with open(path, "rb") as fh:
            return fh.read()
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ConfigError(field, f"cannot read: {exc}") from None
    key = secrets.token_bytes(size)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it meanwhile: use theirs
        return read_key_file(path, size, field)
    except OSError as exc:
        raise ConfigError(field, f"cannot create: {exc}") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(key)
    return key
