"""The sans-IO parts of cluster mode: token encoding, codec, the view's epoch and liveness rules."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quicflow.cluster.codec import (
    STREAM_REQUESTS,
    STREAM_RESPONSES,
    BroadcastCall,
    CallOutcome,
    ClientOutcome,
    Frame,
    FrameType,
    NodeAnswer,
    NodeRecord,
    Registration,
    RoutedCall,
    StreamOpen,
    decode_client_infos,
    encode_client_infos,
)
from quicflow.cluster.streams import (
    BATCH_BYTES,
    MESSAGE_OVERHEAD,
    _Incoming,
    _Outgoing,
    coalesce,
    message_cost,
)
from quicflow.cluster.subjects import Names, decode_token, encode_token
from quicflow.cluster.view import ClusterView, kick_applies
from quicflow.sessions import ClientInfo, SessionState
from quicflow.status import StatusCode

_TOKEN_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@pytest.mark.parametrize(
    ("client_id", "token"),
    [
        ("sensor-1", "sensor-1"),
        ("a.b c", "a=2Eb=20c"),
        ("*", "=2A"),
        (">", "=3E"),
        ("=", "=3D"),
        ("", "="),
        ("é", "=C3=A9"),
        ("tab\there", "tab=09here"),
    ],
)
def test_encoding_of_known_ids(client_id: str, token: str) -> None:
    """Check the exact token of ids with subject-special characters, and the way back."""
    assert encode_token(client_id) == token
    assert decode_token(token) == client_id


@given(st.text())
def test_any_id_encodes_to_one_safe_token_and_back(client_id: str) -> None:
    """Check that every string becomes a token of safe characters that decodes to it."""
    token = encode_token(client_id)
    assert token and set(token) <= _TOKEN_CHARS
    assert decode_token(token) == client_id


@given(st.text(), st.text())
def test_distinct_ids_get_distinct_tokens(one: str, two: str) -> None:
    """Check that the encoding is injective: two ids never share a subject."""
    if one != two:
        assert encode_token(one) != encode_token(two)


@pytest.mark.parametrize("token", ["=4", "=zz", "a.b", "=41", "=C3", "é"])
def test_malformed_tokens_are_refused(token: str) -> None:
    """Check that a token no id encodes to (bad escape, escaped plain char, bad UTF-8) fails."""
    with pytest.raises(ValueError):
        decode_token(token)


def test_names_of_a_cluster() -> None:
    """Check the subjects, buckets and stream of a cluster, and that a bad name is refused."""
    names = Names("prod")
    assert names.client("a.b") == "qf.prod.c.a=2Eb"
    assert names.node("n 1") == "qf.prod.n.n=201"
    assert names.all == "qf.prod.all"
    assert names.held("x") == "qf.prod.h.x"
    assert (names.clients_bucket, names.nodes_bucket, names.held_stream) == (
        "qf_prod_clients",
        "qf_prod_nodes",
        "qf_prod_held",
    )
    with pytest.raises(ValueError):
        Names("a.b")


def test_routed_call_round_trip() -> None:
    """Check that a routed call with metadata of both kinds survives encoding."""
    call = RoutedCall(
        "/notify.Notify/Deliver",
        b"\x00payload",
        (("k", "v"), ("bin-bin", b"\xff")),
        1.5,
        b"\x01" * 16,
        "node-a",
        "",
        True,
    )
    assert RoutedCall.decode(call.encode()) == call
    assert RoutedCall.decode(RoutedCall("/r", b"").encode()).timeout is None


def test_outcomes_and_answers_round_trip() -> None:
    """Check that call outcomes and a node's broadcast answer survive encoding."""
    outcome = CallOutcome(StatusCode.NOT_FOUND, "no", b"x", (("t", "1"),), True, b"id")
    assert CallOutcome.decode(outcome.encode()) == outcome
    answer = NodeAnswer(
        "b",
        (
            ClientOutcome("c1", "delivered", CallOutcome(StatusCode.OK, payload=b"r")),
            ClientOutcome("c2", "timed_out", CallOutcome(StatusCode.DEADLINE_EXCEEDED, "late")),
        ),
    )
    assert NodeAnswer.decode(answer.encode()) == answer
    bcast = BroadcastCall(RoutedCall("/r", b"p", timeout=2.0), b"bid", {"zone": "x"}, 7)
    assert BroadcastCall.decode(bcast.encode()) == bcast


@pytest.mark.parametrize(
    ("decode", "data"),
    [
        (CallOutcome.decode, b""),
        (CallOutcome.decode, b"\x02\x00\x00"),
        (RoutedCall.decode, RoutedCall("/r", b"p").encode()[:-1]),
        (CallOutcome.decode, CallOutcome(StatusCode.OK).encode() + b"!"),
        (NodeAnswer.decode, NodeAnswer("n", ()).encode()[:-2]),
    ],
)
def test_truncated_or_foreign_messages_are_refused(
    decode: Callable[[bytes], object], data: bytes
) -> None:
    """Check that an empty or truncated message, a wrong version or trailing bytes raise
    ValueError, never a half-read message."""
    with pytest.raises(ValueError):
        decode(data)


def test_registry_records_round_trip() -> None:
    """Check that registrations and node records survive their JSON form."""
    reg = Registration("a", 1700000000.5, "127.0.0.1:5", {"zone": "x"}, 15.0)
    assert Registration.decode(reg.encode()) == reg
    rec = NodeRecord("a", "127.0.0.1:4433", 1700000000.0, 12)
    assert NodeRecord.decode(rec.encode()) == rec


def _reg(node: str) -> Registration:
    return Registration(node, 0.0)


def test_node_liveness_on_exact_times() -> None:
    """Check that a node is live for exactly node_ttl after its last record, then dead."""
    view = ClusterView(node_ttl=3.0)
    view.node_seen(NodeRecord("a", "h:1", 0.0), now=10.0)
    assert view.is_live("a", 12.999)
    assert not view.is_live("a", 13.0)
    assert view.next_expiry(11.0) == 13.0
    view.node_seen(NodeRecord("a", "h:1", 0.0), now=12.0)
    assert view.is_live("a", 14.999) and not view.is_live("a", 15.0)
    view.node_gone("a")
    assert not view.is_live("a", 12.0)
    assert view.next_expiry(12.0) is None


def test_dead_nodes_clients_leave_listings_and_become_stale() -> None:
    """Check that a dead node's registrations vanish from clients() and lookups, and are
    offered for compare-and-delete with their epochs."""
    view = ClusterView(node_ttl=1.0)
    view.node_seen(NodeRecord("a", "", 0.0), now=0.0)
    view.node_seen(NodeRecord("b", "", 0.0), now=0.5)
    view.client_put("x", 4, _reg("a"))
    view.client_put("y", 5, _reg("b"))
    assert [e.client_id for e in view.clients(0.9)] == ["x", "y"]
    assert view.clients_per_node(0.9) == {"a": 1, "b": 1}
    assert [e.client_id for e in view.clients(1.0)] == ["y"]
    assert view.lookup("x", 1.0) is None and view.lookup("y", 1.0) is not None
    assert [(e.client_id, e.epoch) for e in view.stale_registrations(1.0)] == [("x", 4)]


def test_epochs_order_registrations() -> None:
    """Check that an older revision never overwrites a newer one, and a delete at an old
    revision does not remove a newer registration."""
    view = ClusterView(node_ttl=10.0)
    view.node_seen(NodeRecord("a", "", 0.0), now=0.0)
    view.node_seen(NodeRecord("b", "", 0.0), now=0.0)
    view.client_put("x", 7, _reg("b"))
    view.client_put("x", 6, _reg("a"))  # late, older
    entry = view.lookup("x", 0.0)
    assert entry is not None and (entry.epoch, entry.registration.node_id) == (7, "b")
    view.client_deleted("x", 7)  # a delete marker is a newer revision than what it deletes
    assert view.lookup("x", 0.0) is not None
    view.client_deleted("x", 8)
    assert view.lookup("x", 0.0) is None


@pytest.mark.parametrize(
    ("local", "superseded", "applies"),
    [(None, 3, True), (3, 3, True), (2, 3, True), (4, 3, False)],
)
def test_kick_closes_only_the_superseded_session(
    local: int | None, superseded: int, applies: bool
) -> None:
    """Check that a kick closes a session at or before the epoch it supersedes, never a newer."""
    assert kick_applies(local, superseded) is applies


def test_refused_compare_and_set_names_the_real_revision() -> None:
    """Check that the revision a refused KV write names is read back (the retry after a
    read from a lagging replica uses it), and that other errors give None."""
    from nats.js.errors import KeyWrongLastSequenceError

    from quicflow.cluster.nats_backend import _last_sequence

    assert _last_sequence(KeyWrongLastSequenceError(description="wrong last sequence: 37")) == 37
    assert _last_sequence(ValueError("something else")) is None


def test_stream_open_round_trips_and_refuses_bad_kinds() -> None:
    """Check that a StreamOpen survives encode/decode and that a kind with no bits, an
    unknown bit or a zero window is refused."""
    call = RoutedCall("/echo.Echo/Chat", b"", (("k", "v"),), 2.5, b"id", "node-a")
    opened = StreamOpen(call, STREAM_REQUESTS | STREAM_RESPONSES, 16)
    assert StreamOpen.decode(opened.encode()) == opened
    for kind, window in ((0, 16), (4, 16), (STREAM_RESPONSES, 0)):
        with pytest.raises(ValueError):
            StreamOpen.decode(StreamOpen(call, kind, window).encode())


@pytest.mark.parametrize(
    "frame",
    [
        Frame(FrameType.OPENED, 0, node="c", subject="_QF.abc.7", credit=16),
        Frame(FrameType.HEADERS, 1, metadata=(("a", "b"), ("x-bin", b"\x00"))),
        Frame(FrameType.MESSAGE, 2, payload=b"\x00\x01payload"),
        Frame(FrameType.MESSAGE, 3),
        Frame(FrameType.CREDIT, 4, credit=8),
        Frame(FrameType.HALF_CLOSE, 5),
        Frame(
            FrameType.END,
            6,
            code=StatusCode.UNAVAILABLE,
            message="gone",
            metadata=(("t", "1"),),
            not_here=True,
        ),
        Frame(FrameType.CANCEL, 2**32 - 1, code=StatusCode.CANCELLED, message="call cancelled"),
        Frame(FrameType.MESSAGES, 7, payloads=(b"a", b"", b"\x00" * 300)),
    ],
)
def test_stream_frames_round_trip(frame: Frame) -> None:
    """Check that each frame type survives encode/decode field for field."""
    assert Frame.decode(frame.encode()) == frame


def test_stream_frames_refuse_unknown_types_and_truncation() -> None:
    """Check that an unknown frame type, a truncated frame and trailing bytes are refused."""
    good = Frame(FrameType.CREDIT, 1, credit=3).encode()
    with pytest.raises(ValueError, match="unknown stream frame type"):
        Frame.decode(bytes((1, 99)) + good[2:])
    with pytest.raises(ValueError):
        Frame.decode(good[:-1])
    with pytest.raises(ValueError):
        Frame.decode(good + b"x")


def test_client_infos_round_trip_and_refuse_garbage() -> None:
    """Check that live client snapshots survive encode/decode (None fields included) and
    that a malformed answer is a ValueError."""
    infos = [
        ClientInfo("a", "127.0.0.1:1", 1.5, None, 0, None, 5.0, 1, 2, 3, 4, {}, node="n"),
        ClientInfo(
            "b.c", "[::1]:2", 2.5, 9.25, 1, 0.003, 1.0, 5, 6, 7, 8, {"zone": "x"},
            SessionState.DRAINING, "m",
        ),
    ]  # fmt: skip
    assert decode_client_infos(encode_client_infos(infos)) == infos
    for bad in (b"{", b'[{"id": "a"}]', b"[1]", b'[{"state": "nope"}]'):
        with pytest.raises(ValueError):
            decode_client_infos(bad)


def test_stream_credit_allows_the_window_plus_one_message_and_grants_at_half() -> None:
    """Check the routed-stream credit rules: a sender may send while below its grant (so
    one message may overshoot), a receiver refuses a message sent with no credit left and
    grants back once half its window was consumed."""
    assert message_cost(b"abc") == 3 + MESSAGE_OVERHEAD
    out, inc = _Outgoing(1000), _Incoming(1000)
    sent = 0
    while out.open():
        out.sent += 300
        assert inc.accept(300)
        sent += 1
    assert sent == 4 and out.sent == 1200  # the fourth overshoots; a fifth may not go
    assert not inc.accept(300)
    assert inc.consumed(300) == 0  # 300 < 500: no grant yet
    assert inc.consumed(300) == 600  # half the window reached: grant what was consumed
    out.granted += 600
    assert out.open() and inc.granted == 1600


def test_queued_messages_are_coalesced_in_order_up_to_the_batch_size() -> None:
    """Check that runs of MESSAGE frames become MESSAGES frames of at most BATCH_BYTES, a
    lone message stays a MESSAGE, other frames keep their place, and nothing is reordered."""
    msg = [Frame(FrameType.MESSAGE, 0, payload=bytes([i]) * 1000) for i in range(100)]
    credit = Frame(FrameType.CREDIT, 0, credit=5)
    half = Frame(FrameType.HALF_CLOSE, 0)
    out = coalesce([msg[0], credit, *msg[1:], half, msg[0]])
    assert out[0] == msg[0] and out[1] == credit and out[-2:] == [half, msg[0]]
    batches = out[2:-2]
    assert all(f.type is FrameType.MESSAGES for f in batches)
    assert all(sum(map(len, f.payloads)) <= BATCH_BYTES for f in batches)
    assert [p for f in batches for p in f.payloads] == [m.payload for m in msg[1:]]
    assert len(batches) == 2  # 99 kB in 64 KiB batches
    big = Frame(FrameType.MESSAGE, 0, payload=bytes(BATCH_BYTES + 1))
    assert coalesce([msg[0], big]) == [msg[0], big]  # a larger message goes alone
