"""The end-to-end suite runs on either QUIC engine: ``QUICFLOW_QUIC_ENGINE=qh3`` picks
qh3 for every client and server that leaves ``quic_engine`` at "auto" (`make test` runs
this directory a second time that way).

On qh3, a test that needs what only aioquic offers is skipped, with the reason: a server
asking for client certificates (the transport raises ConfigError naming ``quic_engine``,
turned into a skip here; test_security.py runs its mutual-TLS servers on aioquic, so there
qh3 clients present their certificates) and the behaviours listed in `_AIOQUIC_ONLY`.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest
from pluggy import Result

from quicflow.errors import ConfigError
from quicflow.transport.engine import resolve_engine

ENGINE = resolve_engine("auto")

_AIOQUIC_ONLY = {
    "test_slow_reader_bounds_what_the_server_buffers": (
        "qh3 grants stream receive credit itself as data arrives; the consumption-based "
        "bound (stream_receive_window) is aioquic-only"
    ),
    "test_full_dispatcher_holds_back_the_lane_then_delivers_everything": (
        "qh3 grants stream receive credit itself as data arrives, so a full dispatcher "
        "cannot hold the sender back through the message lane's credit"
    ),
    "test_alpn_mismatch_is_refused_with_no_application_protocol": (
        "qh3 closes a handshake without a common ALPN with handshake_failure (TLS alert 40), "
        "not no_application_protocol (120)"
    ),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if ENGINE != "qh3":
        return
    for item in items:
        reason = _AIOQUIC_ONLY.get(getattr(item, "originalname", item.name))
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"on qh3: {reason}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Result[None], None]:
    outcome = yield
    if ENGINE != "qh3":
        return
    excinfo = outcome.excinfo
    if excinfo is not None and isinstance(excinfo[1], ConfigError):
        error = excinfo[1]
        if error.field == "quic_engine":
            outcome.force_exception(pytest.skip.Exception(f"on qh3: {error}"))
