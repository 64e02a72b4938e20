"""Tests for the error tree in `quicflow.errors`: codes, hierarchy, str and repr."""

from __future__ import annotations

import math
import pickle

import pytest

from quicflow import config
from quicflow.calls import MAX_CALL_TIMEOUT, check_timeout
from quicflow.errors import (
    ArgumentError,
    ClientNotConnected,
    ConfigError,
    ConnectionClosed,
    FrameTooLarge,
    LocalProtocolError,
    PayloadTooLarge,
    PromiseCapacityFull,
    ProtocolError,
    RemoteProtocolError,
    RpcError,
    Timeout,
    UsageError,
)
from quicflow.status import StatusCode
from quicflow.wire.codec import ErrorCode, MalformedFrame

DEFAULT_CODES: list[tuple[type[RpcError], StatusCode]] = [
    (RpcError, StatusCode.UNKNOWN),
    (ConnectionClosed, StatusCode.UNAVAILABLE),
    (ClientNotConnected, StatusCode.UNAVAILABLE),
    (PayloadTooLarge, StatusCode.RESOURCE_EXHAUSTED),
    (PromiseCapacityFull, StatusCode.RESOURCE_EXHAUSTED),
    (Timeout, StatusCode.DEADLINE_EXCEEDED),
]


def test_default_code_table_covers_every_rpc_error_subclass() -> None:
    """Check that the table below lists every RpcError subclass the module defines."""
    defined_here = {c for c in RpcError.__subclasses__() if c.__module__ == "quicflow.errors"}
    assert defined_here == {cls for cls, _ in DEFAULT_CODES} - {RpcError}


@pytest.mark.parametrize(("cls", "code"), DEFAULT_CODES, ids=lambda v: getattr(v, "__name__", ""))
def test_rpc_error_default_code(cls: type[RpcError], code: StatusCode) -> None:
    """Check that each RpcError class carries its documented default code and empty fields."""
    error = cls()
    assert error.code is code
    assert error.message == ""
    assert error.trailing_metadata == ()


@pytest.mark.parametrize(("cls", "code"), DEFAULT_CODES, ids=lambda v: getattr(v, "__name__", ""))
def test_rpc_error_subclasses_are_catchable_as_rpc_error(
    cls: type[RpcError], code: StatusCode
) -> None:
    """Check that every RpcError subclass is caught by `except RpcError` with its code intact."""
    with pytest.raises(RpcError) as info:
        raise cls(message="boom")
    assert info.value.code is code
    assert info.value.message == "boom"


def test_explicit_code_overrides_the_default() -> None:
    """Check that a code passed in wins over the class default and ints become StatusCode."""
    assert Timeout(StatusCode.CANCELLED).code is StatusCode.CANCELLED
    error = RpcError(5, "missing")  # type: ignore[arg-type]
    assert error.code is StatusCode.NOT_FOUND
    assert isinstance(error.code, StatusCode)


def test_invalid_code_is_refused() -> None:
    """Check that a number that is not a status code is refused at construction."""
    with pytest.raises(ValueError):
        RpcError(99)  # type: ignore[arg-type]


def test_trailing_metadata_is_stored_as_a_tuple() -> None:
    """Check that trailing metadata given as a list is kept as an immutable tuple."""
    error = RpcError(StatusCode.INTERNAL, "x", [("k", "v"), ("k-bin", b"\x00")])
    assert error.trailing_metadata == (("k", "v"), ("k-bin", b"\x00"))
    assert isinstance(error.trailing_metadata, tuple)


def test_str_and_repr() -> None:
    """Check that str is 'CODE: message' (or the code alone) and repr shows class, code, message."""
    assert str(RpcError(StatusCode.NOT_FOUND, "no such user")) == "NOT_FOUND: no such user"
    assert str(RpcError(StatusCode.NOT_FOUND)) == "NOT_FOUND"
    assert str(Timeout()) == "DEADLINE_EXCEEDED"
    assert repr(Timeout(message="too slow")) == "Timeout(DEADLINE_EXCEEDED, 'too slow')"
    assert repr(RpcError(StatusCode.INTERNAL, "it's")) == 'RpcError(INTERNAL, "it\'s")'


def test_rpc_error_survives_pickling() -> None:
    """Check that an RpcError pickles and unpickles with its code, message and metadata."""
    error = ConnectionClosed(message="gone", trailing_metadata=[("k", "v")])
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is ConnectionClosed
    assert (copy.code, copy.message, copy.trailing_metadata) == (
        StatusCode.UNAVAILABLE,
        "gone",
        (("k", "v"),),
    )


def test_may_have_run_defaults_to_true_and_survives_pickling() -> None:
    """Check that an RpcError may have run unless told otherwise (the safe default for
    retries), and that the flag survives pickling."""
    assert RpcError(StatusCode.UNAVAILABLE).may_have_run is True
    assert ConnectionClosed(message="gone").may_have_run is True
    refused = ConnectionClosed(message="refused", may_have_run=False)
    assert refused.may_have_run is False
    copy = pickle.loads(pickle.dumps(refused))
    assert type(copy) is ConnectionClosed and copy.may_have_run is False


def test_argument_error_is_a_usage_error_and_a_value_error() -> None:
    """Check that ArgumentError sits under UsageError, is a ValueError (as bad arguments are
    in Python), is no RpcError, and names its argument."""
    error = ArgumentError("timeout", "must be a number of seconds, got nan")
    assert isinstance(error, UsageError) and isinstance(error, ValueError)
    assert not isinstance(error, RpcError)
    assert error.argument == "timeout"
    assert str(error) == "timeout: must be a number of seconds, got nan"


def test_check_timeout_bounds_per_call_timeouts_like_config_durations() -> None:
    """Check that a per-call timeout may be None, any number up to MAX_CALL_TIMEOUT (ten
    years, the configs' bound), zero or negative, and nothing else."""
    assert MAX_CALL_TIMEOUT == config._MAX_DURATION
    assert check_timeout(None) is None
    assert check_timeout(2) == 2.0 and isinstance(check_timeout(2), float)
    assert check_timeout(MAX_CALL_TIMEOUT) == MAX_CALL_TIMEOUT
    assert check_timeout(0.0) == 0.0 and check_timeout(-1.5) == -1.5
    assert check_timeout(-math.inf) == -math.inf
    for bad in (math.nan, math.inf, MAX_CALL_TIMEOUT + 1, True, "1", b"1"):
        with pytest.raises(ArgumentError, match=r"^client_timeout: ") as info:
            check_timeout(bad, "client_timeout")  # type: ignore[arg-type]
        assert info.value.argument == "client_timeout"


def test_usage_and_config_errors_are_not_rpc_errors() -> None:
    """Check that UsageError and ConfigError are not RpcErrors, and ConfigError is a ValueError."""
    assert not issubclass(UsageError, RpcError)
    assert not issubclass(ConfigError, RpcError)
    assert issubclass(ConfigError, ValueError)
    error = ConfigError("port", "must be between 1 and 65535, got 0")
    assert error.field == "port"
    assert str(error) == "port: must be between 1 and 65535, got 0"


@pytest.mark.parametrize(
    ("cls", "base", "error_code", "status"),
    [
        (ProtocolError, Exception, ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (LocalProtocolError, ProtocolError, ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (RemoteProtocolError, ProtocolError, ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (MalformedFrame, RemoteProtocolError, ErrorCode.PROTOCOL_ERROR, StatusCode.INTERNAL),
        (
            FrameTooLarge,
            RemoteProtocolError,
            ErrorCode.EXCESSIVE_LOAD,
            StatusCode.RESOURCE_EXHAUSTED,
        ),
    ],
    ids=lambda v: getattr(v, "__name__", ""),
)
def test_protocol_error_tree(
    cls: type[ProtocolError], base: type[Exception], error_code: ErrorCode, status: StatusCode
) -> None:
    """Check that each protocol error has its parent, QUIC error code and reported status."""
    assert issubclass(cls, base)
    assert not issubclass(cls, RpcError)
    assert cls.error_code == error_code
    assert cls("x").error_code == error_code
    assert cls.status is status


def test_local_and_remote_protocol_errors_are_disjoint() -> None:
    """Check that h11's Local/Remote split holds: neither is a kind of the other."""
    assert not issubclass(LocalProtocolError, RemoteProtocolError)
    assert not issubclass(RemoteProtocolError, LocalProtocolError)


def test_module_docstring_draws_every_public_error() -> None:
    """Check that the tree in the errors module docstring names every error in its __all__."""
    import quicflow.errors as errors

    assert errors.__doc__ is not None
    for name in errors.__all__:
        assert name in errors.__doc__, name
