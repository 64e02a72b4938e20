"""Parsing of the plugin parameter (``--quicflow_opt=key=value,...``)."""

from __future__ import annotations

import enum
import importlib.util
from dataclasses import dataclass

__all__ = ["Flavour", "Options", "OptionsError", "parse_options"]


class Flavour(enum.Enum):
    """Which message library the generated code imports its classes from."""

    PROTOBUF = "protobuf"
    """protoc's own ``--python_out`` classes (``foo/bar_pb2.py``)."""
    BETTERPROTO = "betterproto"
    """betterproto 2.0.0b7 dataclasses, one module per proto package."""


class OptionsError(ValueError):
    """The plugin parameter is malformed; the message says which part and why."""


@dataclass(frozen=True, slots=True)
class Options:
    """Everything the plugin parameter can set."""

    flavour: Flavour = Flavour.PROTOBUF
    """The message library (``flavour=protobuf|betterproto``)."""


_KNOWN = ("flavour",)


def _parse_flavour(value: str) -> Flavour:
    try:
        return Flavour(value)
    except ValueError:
        choices = "|".join(f.value for f in Flavour)
        raise OptionsError(f"option flavour={value!r} is not one of {choices}") from None


def parse_options(parameter: str) -> Options:
    """Parse protoc's comma-separated plugin parameter.

    An empty parameter gives the defaults. Raises `OptionsError` for an item
    that is not ``key=value``, an unknown key, a key given twice or a bad value.
    """
    seen: dict[str, str] = {}
    for item in parameter.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key:
            raise OptionsError(f"option {item!r} is not of the form key=value")
        if key not in _KNOWN:
            raise OptionsError(f"unknown option {key!r}; known options: {', '.join(_KNOWN)}")
        if key in seen:
            raise OptionsError(f"option {key!r} is given more than once")
        seen[key] = value
    flavour = _parse_flavour(seen["flavour"]) if "flavour" in seen else Flavour.PROTOBUF
    if flavour is Flavour.BETTERPROTO and importlib.util.find_spec("betterproto") is None:
        # The plugin asks betterproto itself how it names classes (naming.message_import).
        raise OptionsError(
            "flavour=betterproto needs betterproto installed next to the plugin: "
            "pip install 'betterproto[compiler]==2.0.0b7'"
        )
    return Options(flavour=flavour)
