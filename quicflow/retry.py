"""Retry policies for calls (gRPC's ``retryPolicy``, gRFC A6, without hedging).

A `RetryPolicy` says how often a failed call is tried again and how long to
wait between attempts; `RetryPolicies` finds the policy of a route. Both are
plain values: the call (quicflow/calls.py) asks `RetryPolicy.delay` for the
wait and arms it on the client's `Clock`, so tests run the backoff on virtual
time.

A call is retried when all of these hold (docs/connections.md "Retries"):

* it is unary or server-streaming (its one request can be sent again; the
  requests of a client-streaming or bidi call came from an iterator that was
  partly consumed), and no response HEADERS or message has arrived yet (the
  call is not *committed*: nothing has been handed to the application);
* it failed with one of ``retryable_status_codes``, not by its own deadline,
  ``cancel()`` or the caller's task being cancelled;
* fewer than ``max_attempts`` attempts were made, and the wait ends before the
  call's deadline (no attempt is started past it);
* with ``only_if_not_run``, the failure says the server did not run it
  (`RpcError.may_have_run` False: never sent, or refused unprocessed), for
  methods that are not idempotent.

Each attempt after the first carries ``grpc-previous-rpc-attempts: N`` in its
metadata (N attempts went before it), as in gRPC.

Example::

    policy = RetryPolicy(max_attempts=4, initial_backoff=0.1, max_backoff=1.0,
                         backoff_multiplier=2.0, retryable_status_codes=["UNAVAILABLE"])
    ClientConfig(..., retry_policies={"/echo.Echo/Say": policy})
    # or, as grpc's service config:
    ClientConfig(..., service_config='{"methodConfig": [{"name": [{"service": "echo.Echo"}],'
                 ' "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s",'
                 ' "maxBackoff": "1s", "backoffMultiplier": 2,'
                 ' "retryableStatusCodes": ["UNAVAILABLE"]}}]}')
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

from .errors import ConfigError
from .protocol.numbers import MAX_DURATION
from .status import StatusCode

__all__ = ["PREVIOUS_ATTEMPTS", "RetryPolicies", "RetryPolicy", "parse_service_config"]

PREVIOUS_ATTEMPTS: Final = "grpc-previous-rpc-attempts"
"""Metadata key of a retried attempt: how many attempts went before it (gRPC's name)."""

MAX_ATTEMPTS_LIMIT: Final = 10
"""The most attempts a policy may ask for (gRPC caps at 5 silently; QuicFlow refuses more
than this instead)."""


def _error(prefix: str, name: str, message: str) -> ConfigError:
    return ConfigError(f"{prefix}{name}", message)


def _seconds(prefix: str, name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _error(prefix, name, f"must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or not 0 < value <= MAX_DURATION:
        raise _error(prefix, name, f"must be greater than 0 and at most ten years, got {value!r}")
    return float(value)


def _codes(prefix: str, name: str, value: object) -> frozenset[StatusCode]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise _error(prefix, name, f"must be a list of status codes, got {value!r}")
    codes: set[StatusCode] = set()
    for item in value:
        code: StatusCode | None = None
        if isinstance(item, StatusCode):
            code = item
        elif isinstance(item, str) and item.upper() in StatusCode.__members__:
            code = StatusCode[item.upper()]
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= 16:
            code = StatusCode(item)
        if code is None:
            raise _error(prefix, name, f"{item!r} is not a status code")
        if code is StatusCode.OK:
            raise _error(prefix, name, "OK is not a failure and cannot be retried")
        codes.add(code)
    if not codes:
        raise _error(prefix, name, "must name at least one status code")
    return frozenset(codes)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How a failed call is retried; validated when built (`ConfigError` names the field).

    The wait before retry n (1 for the second attempt) is drawn from
    ``[cap * (1 - jitter), cap]`` with ``cap = min(initial_backoff *
    backoff_multiplier ** (n - 1), max_backoff)``; gRPC's full jitter is ``jitter=1``.
    """

    max_attempts: int
    """Attempts in all, the first included: 2 to 10."""
    initial_backoff: float
    """Seconds before the first retry (at most; see ``jitter``): > 0."""
    max_backoff: float
    """The longest wait between attempts, seconds: ≥ ``initial_backoff``."""
    backoff_multiplier: float
    """Factor between successive waits: > 0 (gRPC allows < 1 as well)."""
    retryable_status_codes: Collection[StatusCode | str | int] = field(default_factory=frozenset)
    """The failures worth another attempt: names, numbers or `StatusCode`s (not OK),
    kept as a frozenset of `StatusCode` (`codes`)."""
    jitter: float = 1.0
    """Fraction of each wait drawn at random, 0 ≤ jitter ≤ 1 (0: exact waits)."""
    only_if_not_run: bool = False
    """Retry only attempts the server certainly did not run (`RpcError.may_have_run`
    False), whatever their status: for methods that are not idempotent."""

    def __post_init__(self) -> None:
        self._validate("RetryPolicy.")

    def _validate(self, prefix: str) -> None:
        n = self.max_attempts
        if isinstance(n, bool) or not isinstance(n, int) or not 2 <= n <= MAX_ATTEMPTS_LIMIT:
            raise _error(
                prefix,
                "max_attempts",
                f"must be an integer from 2 to {MAX_ATTEMPTS_LIMIT}, got {n!r}",
            )
        initial = _seconds(prefix, "initial_backoff", self.initial_backoff)
        maximum = _seconds(prefix, "max_backoff", self.max_backoff)
        if maximum < initial:
            raise _error(prefix, "max_backoff", f"must be at least initial_backoff ({initial!r})")
        multiplier = self.backoff_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, (int, float))
            or not math.isfinite(multiplier)
            or not 0 < multiplier <= 100
        ):
            raise _error(
                prefix,
                "backoff_multiplier",
                f"must be greater than 0 and at most 100, got {multiplier!r}",
            )
        codes = _codes(prefix, "retryable_status_codes", self.retryable_status_codes)
        jitter = self.jitter
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise _error(prefix, "jitter", f"must be between 0 and 1, got {jitter!r}")
        if not isinstance(self.only_if_not_run, bool):
            raise _error(prefix, "only_if_not_run", "must be True or False")
        object.__setattr__(self, "initial_backoff", initial)
        object.__setattr__(self, "max_backoff", maximum)
        object.__setattr__(self, "backoff_multiplier", float(multiplier))
        object.__setattr__(self, "retryable_status_codes", codes)
        object.__setattr__(self, "jitter", float(jitter))

    def delay(self, retry: int, draw: float) -> float:
        """Seconds to wait before retry ``retry`` (1: the second attempt), with ``draw``
        from ``random()`` in [0, 1)."""
        cap = min(self.initial_backoff * self.backoff_multiplier ** (retry - 1), self.max_backoff)
        return cap * (1.0 - self.jitter * draw)

    @property
    def codes(self) -> frozenset[StatusCode]:
        """The retryable status codes."""
        return cast(frozenset[StatusCode], self.retryable_status_codes)

    def retries(self, code: StatusCode) -> bool:
        """True when ``code`` is one of the retryable codes."""
        return code in self.retryable_status_codes

    def __repr__(self) -> str:
        codes = ", ".join(sorted(c.name for c in self.codes))
        return (
            f"RetryPolicy(max_attempts={self.max_attempts}, "
            f"backoff={self.initial_backoff:g}..{self.max_backoff:g} s "
            f"x{self.backoff_multiplier:g}, codes=[{codes}]"
            + (", only_if_not_run" if self.only_if_not_run else "")
            + ")"
        )


class RetryPolicies:
    """The policy of each route, found most specific first: the route
    (``/pkg.Service/Method``), then its service (``pkg.Service``), then ``""`` (every
    method); None when no entry matches."""

    __slots__ = ("_table",)

    def __init__(self, table: Mapping[str, RetryPolicy]) -> None:
        self._table = dict(table)

    def __bool__(self) -> bool:
        return bool(self._table)

    def for_route(self, route: str) -> RetryPolicy | None:
        """The policy that applies to ``route``, or None."""
        table = self._table
        if not table:
            return None
        found = table.get(route)
        if found is None:
            service = route[1:].rpartition("/")[0]
            found = table.get(service)
            if found is None:
                found = table.get("")
        return found


_DURATION = re.compile(r"^(\d+(?:\.\d{1,9})?)s$")


def _json_duration(prefix: str, name: str, value: object) -> float:
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise _error(prefix, name, f'must be a duration like "0.1s", got {value!r}')
        return float(match.group(1))
    raise _error(prefix, name, f'must be a duration like "0.1s", got {value!r}')


def _retry_from_json(prefix: str, raw: object) -> RetryPolicy:
    if not isinstance(raw, Mapping):
        raise ConfigError(prefix.rstrip("."), f"must be an object, got {raw!r}")
    known = {
        "maxAttempts",
        "initialBackoff",
        "maxBackoff",
        "backoffMultiplier",
        "retryableStatusCodes",
        "quicflowOnlyIfNotRun",
    }
    for key in raw:
        if key not in known:
            raise _error(prefix, str(key), "is not a retryPolicy field")
    for key in ("maxAttempts", "initialBackoff", "maxBackoff", "backoffMultiplier"):
        if key not in raw:
            raise _error(prefix, key, "is required")
    attempts = raw["maxAttempts"]
    if isinstance(attempts, float) and attempts.is_integer():
        attempts = int(attempts)
    policy = object.__new__(RetryPolicy)
    for name, value in (
        ("max_attempts", attempts),
        ("initial_backoff", _json_duration(prefix, "initialBackoff", raw["initialBackoff"])),
        ("max_backoff", _json_duration(prefix, "maxBackoff", raw["maxBackoff"])),
        ("backoff_multiplier", raw["backoffMultiplier"]),
        ("retryable_status_codes", raw.get("retryableStatusCodes", ())),
        ("jitter", 1.0),
        ("only_if_not_run", raw.get("quicflowOnlyIfNotRun", False)),
    ):
        object.__setattr__(policy, name, value)
    try:
        policy._validate(prefix)
    except ConfigError as exc:  # name the JSON spelling of the field
        spelled = {
            "max_attempts": "maxAttempts",
            "initial_backoff": "initialBackoff",
            "max_backoff": "maxBackoff",
            "backoff_multiplier": "backoffMultiplier",
            "retryable_status_codes": "retryableStatusCodes",
            "only_if_not_run": "quicflowOnlyIfNotRun",
        }
        name = exc.field[len(prefix) :]
        message = str(exc).partition(": ")[2]
        raise _error(prefix, spelled.get(name, name), message) from None
    return policy


def parse_service_config(source: str | Mapping[str, Any]) -> dict[str, RetryPolicy]:
    """The retry policies of a gRPC service config (JSON text or its parsed object),
    keyed as `RetryPolicies` looks them up.

    Only ``methodConfig[].name`` and ``methodConfig[].retryPolicy`` are read;
    other keys (``timeout``, ``waitForReady``, load balancing, ...) are ignored.
    A ``name`` entry ``{"service": "pkg.S", "method": "M"}`` is one method,
    ``{"service": "pkg.S"}`` every method of the service, ``{}`` every method.

    Raises:
        ConfigError: not JSON, not shaped like a service config, a name listed
            twice, or a bad retryPolicy value; the field is ``service_config`` and
            the message names the path (``methodConfig[0].retryPolicy.maxAttempts``).
    """

    def bad(message: str) -> ConfigError:
        return ConfigError("service_config", message)

    if isinstance(source, str):
        try:
            data: object = json.loads(source)
        except json.JSONDecodeError as exc:
            raise bad(f"not valid JSON: {exc}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise bad("must be a JSON object")
    configs = data.get("methodConfig", [])
    if not isinstance(configs, list):
        raise bad("methodConfig must be a list")
    table: dict[str, RetryPolicy] = {}
    seen: set[str] = set()
    for i, entry in enumerate(configs):
        where = f"methodConfig[{i}]"
        if not isinstance(entry, Mapping):
            raise bad(f"{where} must be an object")
        names = entry.get("name", [])
        if not isinstance(names, list) or not names:
            raise bad(f"{where}.name must be a non-empty list")
        raw = entry.get("retryPolicy")
        if "hedgingPolicy" in entry:
            raise bad(f"{where}.hedgingPolicy: hedging is not supported")
        policy = None
        if raw is not None:
            try:
                policy = _retry_from_json(f"{where}.retryPolicy.", raw)
            except ConfigError as exc:
                raise bad(f"{exc.field}: {str(exc).partition(': ')[2]}") from None
        for j, name in enumerate(names):
            if not isinstance(name, Mapping):
                raise bad(f"{where}.name[{j}] must be an object")
            service = name.get("service", "")
            method = name.get("method", "")
            if not isinstance(service, str) or not isinstance(method, str):
                raise bad(f"{where}.name[{j}]: service and method must be strings")
            if method and not service:
                raise bad(f"{where}.name[{j}]: a method needs its service")
            key = f"/{service}/{method}" if method else service
            if key in seen:
                raise bad(f"{where}.name[{j}]: {key or 'the default'} is configured twice")
            seen.add(key)
            if policy is not None:
                table[key] = policy
    return table
