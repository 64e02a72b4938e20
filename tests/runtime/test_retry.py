"""Retry policies as values: validation, backoff, lookup and gRPC service config parsing
(quicflow/retry.py)."""

from __future__ import annotations

import json
import math
import random
from typing import Any

import pytest

from quicflow import ConfigError, StatusCode
from quicflow.config import ClientConfig
from quicflow.retry import RetryPolicies, RetryPolicy, parse_service_config

GOOD: dict[str, Any] = {
    "max_attempts": 4,
    "initial_backoff": 0.5,
    "max_backoff": 3.0,
    "backoff_multiplier": 2.0,
    "retryable_status_codes": ["UNAVAILABLE", 10],
}


def test_a_policy_normalizes_its_codes_and_draws_exact_waits() -> None:
    """Check that names and numbers become StatusCodes and that, without jitter, the waits
    are 0.5, 1, 2, then capped at 3 s."""
    policy = RetryPolicy(**{**GOOD, "jitter": 0.0})
    assert policy.retryable_status_codes == {StatusCode.UNAVAILABLE, StatusCode.ABORTED}
    assert [policy.delay(n, 0.999) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    assert policy.retries(StatusCode.ABORTED) and not policy.retries(StatusCode.INTERNAL)
    assert repr(policy) == (
        "RetryPolicy(max_attempts=4, backoff=0.5..3 s x2, codes=[ABORTED, UNAVAILABLE])"
    )


def test_full_jitter_draws_up_to_the_cap() -> None:
    """Check that gRPC's full jitter (the default) spreads waits over [0, cap]."""
    policy = RetryPolicy(**GOOD)
    rng = random.Random(7)
    waits = [policy.delay(2, rng.random()) for _ in range(1000)]
    assert 0.0 < min(waits) < 0.05 and 0.95 < max(waits) <= 1.0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("max_attempts", 1, "must be an integer from 2 to 10, got 1"),
        ("max_attempts", 11, "got 11"),
        ("max_attempts", 2.0, "got 2.0"),
        ("initial_backoff", 0, "must be greater than 0"),
        ("initial_backoff", math.nan, "must be greater than 0"),
        ("max_backoff", 0.1, "must be at least initial_backoff (0.5)"),
        ("max_backoff", "1s", "must be a number of seconds"),
        ("backoff_multiplier", 0, "must be greater than 0 and at most 100"),
        ("backoff_multiplier", math.inf, "must be greater than 0 and at most 100"),
        ("retryable_status_codes", [], "must name at least one status code"),
        ("retryable_status_codes", ["OK"], "OK is not a failure"),
        ("retryable_status_codes", ["UNAVAILABLE", "NOPE"], "'NOPE' is not a status code"),
        ("retryable_status_codes", [17], "17 is not a status code"),
        ("retryable_status_codes", "UNAVAILABLE", "must be a list of status codes"),
        ("jitter", 1.5, "must be between 0 and 1"),
        ("only_if_not_run", "yes", "must be True or False"),
    ],
)
def test_bad_policy_values_are_config_errors_naming_the_field(
    field: str, value: object, message: str
) -> None:
    """Check that each nonsense value raises ConfigError with the field's name."""
    with pytest.raises(ConfigError) as info:
        RetryPolicy(**{**GOOD, field: value})
    assert info.value.field == f"RetryPolicy.{field}"
    assert message in str(info.value)


def test_lookup_is_most_specific_first() -> None:
    """Check that a route's own entry beats its service's, which beats the default."""
    a, b, c = (RetryPolicy(**{**GOOD, "max_attempts": n}) for n in (2, 3, 4))
    table = RetryPolicies({"/p.S/M": a, "p.S": b, "": c})
    assert table.for_route("/p.S/M") is a
    assert table.for_route("/p.S/Other") is b
    assert table.for_route("/q.T/M") is c
    assert RetryPolicies({"p.S": b}).for_route("/q.T/M") is None
    assert not RetryPolicies({})


SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": "echo.Echo", "method": "Say"}, {"service": "other.S"}],
            "timeout": "1s",
            "retryPolicy": {
                "maxAttempts": 3,
                "initialBackoff": "0.25s",
                "maxBackoff": "2s",
                "backoffMultiplier": 1.5,
                "retryableStatusCodes": ["UNAVAILABLE", "RESOURCE_EXHAUSTED"],
            },
        },
        {"name": [{}], "waitForReady": True},
    ],
}


def test_a_grpc_service_config_gives_the_same_policies() -> None:
    """Check that methodConfig names map to routes and services, other keys are ignored,
    and an entry without retryPolicy sets none."""
    table = parse_service_config(json.dumps(SERVICE_CONFIG))
    assert set(table) == {"/echo.Echo/Say", "other.S"}
    policy = table["/echo.Echo/Say"]
    assert (policy.max_attempts, policy.initial_backoff, policy.max_backoff) == (3, 0.25, 2.0)
    assert policy.backoff_multiplier == 1.5
    assert policy.retryable_status_codes == {
        StatusCode.UNAVAILABLE,
        StatusCode.RESOURCE_EXHAUSTED,
    }
    assert parse_service_config(SERVICE_CONFIG) == table


def _with_retry(**retry: Any) -> dict[str, Any]:
    base = {
        "maxAttempts": 3,
        "initialBackoff": "0.1s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    base.update(retry)
    return {"methodConfig": [{"name": [{"service": "s.S"}], "retryPolicy": base}]}


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("{not json", "service_config: not valid JSON"),
        ("[]", "service_config: must be a JSON object"),
        (
            _with_retry(maxAttempts=0),
            "methodConfig[0].retryPolicy.maxAttempts: must be an integer from 2 to 10, got 0",
        ),
        (
            _with_retry(initialBackoff="100ms"),
            'methodConfig[0].retryPolicy.initialBackoff: must be a duration like "0.1s"',
        ),
        (
            _with_retry(retryableStatusCodes=[]),
            "methodConfig[0].retryPolicy.retryableStatusCodes: must name at least one",
        ),
        (_with_retry(perAttemptRecvTimeout="1s"), "perAttemptRecvTimeout: is not a retryPolicy"),
        (
            {"methodConfig": [{"name": [{"method": "M"}]}]},
            "methodConfig[0].name[0]: a method needs its service",
        ),
        (
            {"methodConfig": [{"name": [{}]}, {"name": [{}]}]},
            "methodConfig[1].name[0]: the default is configured twice",
        ),
        (
            {"methodConfig": [{"name": [{"service": "s"}], "hedgingPolicy": {}}]},
            "hedging is not supported",
        ),
    ],
)
def test_bad_service_configs_name_the_path(source: Any, message: str) -> None:
    """Check that a bad service config is a ConfigError on service_config naming the path."""
    with pytest.raises(ConfigError) as info:
        ClientConfig(service_config=source)
    assert info.value.field == "service_config"
    assert message in str(info.value)


def test_client_config_merges_service_config_under_its_own_policies() -> None:
    """Check that retry_policies win over service_config for the same key, that the
    service config can come from the environment, and bad keys are refused."""
    own = RetryPolicy(**GOOD)
    config = ClientConfig.load(
        env={"QUICFLOW_CLIENT_SERVICE_CONFIG": json.dumps(SERVICE_CONFIG)},
        retry_policies={"other.S": own},
    )
    table = config.retry_table()
    assert table["other.S"] is own
    assert table["/echo.Echo/Say"].max_attempts == 3
    with pytest.raises(ConfigError, match=r"keys are '/pkg\.Service/Method'"):
        ClientConfig(retry_policies={"/a/b/c": own})
    with pytest.raises(ConfigError, match=r"retry_policies\['x'\]: must be a RetryPolicy"):
        ClientConfig(retry_policies={"x": GOOD})  # type: ignore[dict-item]
