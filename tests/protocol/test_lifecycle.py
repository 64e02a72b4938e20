"""Tests for the client lifecycle table, and for the diagrams rendered from the state tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from quicflow.errors import LocalProtocolError
from quicflow.protocol.lifecycle import (
    TRANSITIONS,
    ClientLifecycle,
    ClientState,
    LifecycleEvent,
)

S, E = ClientState, LifecycleEvent
ALLOWED: dict[ClientState, dict[LifecycleEvent, ClientState]] = {
    S.IDLE: {E.CONNECT: S.CONNECTING, E.CLOSE: S.CLOSED},
    S.CONNECTING: {E.CONNECTED: S.CONNECTED, E.CONNECT_FAILED: S.RECONNECTING, E.CLOSE: S.CLOSED},
    S.CONNECTED: {E.CONNECTION_LOST: S.RECONNECTING, E.GOAWAY: S.RECONNECTING, E.CLOSE: S.CLOSED},
    S.RECONNECTING: {E.CONNECT: S.CONNECTING, E.CLOSE: S.CLOSED},
    S.CLOSED: {},
}
"""The lifecycle, written out by hand from the issue (the table must agree)."""
PATH_TO: dict[ClientState, list[LifecycleEvent]] = {
    S.IDLE: [],
    S.CONNECTING: [E.CONNECT],
    S.CONNECTED: [E.CONNECT, E.CONNECTED],
    S.RECONNECTING: [E.CONNECT, E.CONNECT_FAILED],
    S.CLOSED: [E.CLOSE],
}
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "state_diagrams.py"


def lifecycle_in(state: ClientState) -> ClientLifecycle:
    """A lifecycle driven into ``state`` through legal events."""
    life = ClientLifecycle()
    for event in PATH_TO[state]:
        life.fire(event)
    assert life.state is state
    return life


def test_table_is_exactly_the_documented_lifecycle() -> None:
    """Check that TRANSITIONS equals the hand-written lifecycle, every state included."""
    assert TRANSITIONS == ALLOWED
    assert set(TRANSITIONS) == set(ClientState)


@pytest.mark.parametrize(
    ("state", "event"),
    [(s, e) for s, row in ALLOWED.items() for e in row],
    ids=lambda x: x.name,
)
def test_every_allowed_transition(state: ClientState, event: LifecycleEvent) -> None:
    """Check that each allowed event moves to its target and is recorded in history."""
    life = lifecycle_in(state)
    before = len(life.history)
    assert life.fire(event) == (state, ALLOWED[state][event])
    assert life.state is ALLOWED[state][event]
    assert life.history[before:] == [(state, event, ALLOWED[state][event])]


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (s, e)
        for s in ClientState
        for e in LifecycleEvent
        if e not in ALLOWED[s] and not (s is S.CLOSED and e is E.CLOSE)
    ],
    ids=lambda x: x.name,
)
def test_every_illegal_transition_raises(state: ClientState, event: LifecycleEvent) -> None:
    """Check that an event the table lacks raises 'cannot <event> in <state>', state unchanged."""
    life = lifecycle_in(state)
    history = list(life.history)
    with pytest.raises(LocalProtocolError) as info:
        life.fire(event)
    assert str(info.value) == f"cannot {event.name} in {state.name}"
    assert life.state is state
    assert life.history == history


def test_illegal_pairs_are_the_complement_of_the_table() -> None:
    """Check that the pairs add up: 30 (state, event) pairs, 10 allowed, 1 no-op, 19 illegal."""
    allowed = sum(len(row) for row in ALLOWED.values())
    assert allowed == 10
    assert len(ClientState) * len(LifecycleEvent) - allowed - 1 == 19


def test_close_in_closed_is_a_no_op() -> None:
    """Check that closing twice returns (CLOSED, CLOSED) and records nothing."""
    life = lifecycle_in(S.CONNECTED)
    assert life.fire(E.CLOSE) == (S.CONNECTED, S.CLOSED)
    assert life.fire(E.CLOSE) == (S.CLOSED, S.CLOSED)
    assert life.fire(E.CLOSE) == (S.CLOSED, S.CLOSED)
    assert life.history[-1] == (S.CONNECTED, E.CLOSE, S.CLOSED)
    assert len(life.history) == 3


def test_a_long_life_records_every_transition() -> None:
    """Check that connect, drop, retry, goaway and close leave the full history in order."""
    life = ClientLifecycle()
    assert life.state is S.IDLE and life.history == []
    events = [
        E.CONNECT,
        E.CONNECT_FAILED,
        E.CONNECT,
        E.CONNECTED,
        E.CONNECTION_LOST,
        E.CONNECT,
        E.CONNECTED,
        E.GOAWAY,
        E.CONNECT,
        E.CLOSE,
    ]
    for event in events:
        life.fire(event)
    assert [(old.name, ev.name, new.name) for old, ev, new in life.history] == [
        ("IDLE", "CONNECT", "CONNECTING"),
        ("CONNECTING", "CONNECT_FAILED", "RECONNECTING"),
        ("RECONNECTING", "CONNECT", "CONNECTING"),
        ("CONNECTING", "CONNECTED", "CONNECTED"),
        ("CONNECTED", "CONNECTION_LOST", "RECONNECTING"),
        ("RECONNECTING", "CONNECT", "CONNECTING"),
        ("CONNECTING", "CONNECTED", "CONNECTED"),
        ("CONNECTED", "GOAWAY", "RECONNECTING"),
        ("RECONNECTING", "CONNECT", "CONNECTING"),
        ("CONNECTING", "CLOSE", "CLOSED"),
    ]


# -- scripts/state_diagrams.py ----------------------------------------------------


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    """Run the diagram script with ``args`` and capture its output."""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, check=False
    )


def test_diagram_of_the_lifecycle_has_one_arrow_per_table_entry() -> None:
    """Check that the lifecycle diagram is exactly the table's arrows in Mermaid syntax."""
    result = run_script("client-lifecycle")
    assert result.returncode == 0, result.stderr
    arrows = [
        line.strip() for line in result.stdout.splitlines() if "-->" in line and "<!--" not in line
    ]
    expected = ["[*] --> IDLE"]
    expected += [
        f"{s.name} --> {t.name}: {e.name}" for s, row in ALLOWED.items() for e, t in row.items()
    ]
    expected += ["CLOSED --> [*]"]
    assert arrows == expected
    assert result.stdout.startswith("<!-- state-diagram:client-lifecycle -->\n```mermaid\n")
    assert "stateDiagram-v2" in result.stdout


def test_diagram_script_renders_all_five_machines() -> None:
    """Check that the script prints the lifecycle, both control ends and both call directions."""
    result = run_script()
    assert result.returncode == 0, result.stderr
    for name in (
        "client-lifecycle",
        "control-client",
        "control-server",
        "call-caller",
        "call-callee",
    ):
        assert f"<!-- state-diagram:{name} -->" in result.stdout
        assert f"<!-- /state-diagram:{name} -->" in result.stdout
    assert "IDLE --> HELLO_SENT: send HELLO" in result.stdout
    assert "HELLO_RECEIVED --> READY: send WELCOME" in result.stdout
    assert "TRAILED --> CLOSED: FIN" in result.stdout


def test_diagram_check_passes_on_fresh_output_and_fails_on_drift(tmp_path: Path) -> None:
    """Check that --check accepts the rendered blocks and rejects an edited or unknown one."""
    rendered = run_script().stdout
    doc = tmp_path / "connections.md"
    doc.write_text(f"# Connections\n\nSome prose.\n\n{rendered}\n\nMore prose.\n")
    assert run_script("--check", str(doc)).returncode == 0

    doc.write_text(doc.read_text().replace("CONNECTED --> RECONNECTING: GOAWAY\n", "", 1))
    drift = run_script("--check", str(doc))
    assert drift.returncode == 1
    assert "client-lifecycle differs from its table" in drift.stderr
    assert "+    CONNECTED --> RECONNECTING: GOAWAY" in drift.stderr

    assert run_script("--write", str(doc)).returncode == 0
    assert run_script("--check", str(doc)).returncode == 0
    assert doc.read_text().startswith("# Connections\n\nSome prose.\n")

    unknown = tmp_path / "unknown.md"
    unknown.write_text(
        "<!-- state-diagram:nope -->\n```mermaid\nx\n```\n<!-- /state-diagram:nope -->\n"
    )
    assert "unknown diagram 'nope'" in run_script("--check", str(unknown)).stderr
    bare = tmp_path / "bare.md"
    bare.write_text("no markers here\n")
    assert run_script("--check", str(bare)).returncode == 1
