"""Tests for `normalize_metadata` and `metadata_get`: the rules user metadata must follow."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from quicflow import ArgumentError, UsageError
from quicflow.metadata import RESERVED_PREFIX, MetadataValue, metadata_get, normalize_metadata


def test_empty_and_none_normalize_to_empty_tuple() -> None:
    """Check that None and every empty container normalize to ()."""
    assert normalize_metadata(None) == ()
    assert normalize_metadata(()) == ()
    assert normalize_metadata([]) == ()


def test_valid_metadata_keeps_order_and_duplicates() -> None:
    """Check that valid pairs come back as a tuple of tuples, in order, duplicates kept."""
    given: list[tuple[str, MetadataValue]] = [
        ("x-trace", "abc"),
        ("bin-bin", b"\x00\xff"),
        ("x-trace", "again"),
        ("a.b_c-9", ""),
        ("lang", "\u65e5\u672c\u8a9e \u00e9"),
    ]
    result = normalize_metadata(given)
    assert result == tuple(given)
    assert isinstance(result, tuple)
    assert all(type(pair) is tuple for pair in result)


def test_generators_and_list_pairs_are_accepted() -> None:
    """Check that any iterable of two-item sequences is accepted."""

    def pairs() -> Iterator[tuple[str, str]]:
        yield ("a", "1")
        yield ("b", "2")

    assert normalize_metadata(pairs()) == (("a", "1"), ("b", "2"))
    assert normalize_metadata([["k", "v"]]) == (("k", "v"),)  # type: ignore[list-item]


@pytest.mark.parametrize("value", [bytearray(b"\x01\x02"), memoryview(b"\x01\x02")])
def test_bin_values_are_copied_to_bytes(value: bytearray | memoryview) -> None:
    """Check that bytearray and memoryview values for -bin keys become immutable bytes."""
    ((_, out),) = normalize_metadata([("k-bin", value)])  # type: ignore[list-item]
    assert out == b"\x01\x02"
    assert type(out) is bytes


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("Upper", "may only contain lower-case"),
        ("X-TRACE", "may only contain lower-case"),
        ("has space", "may only contain lower-case"),
        ("colon:key", "may only contain lower-case"),
        ("caf\u00e9", "may only contain lower-case"),
        ("new\nline", "may only contain lower-case"),
        ("", "non-empty str"),
        (b"bytes-key", "non-empty str"),
        (1, "non-empty str"),
        (None, "non-empty str"),
    ],
)
def test_bad_keys_are_refused(key: object, message: str) -> None:
    """Check that keys outside lower-case 0-9 a-z - _ . (or not a non-empty str) are refused."""
    with pytest.raises(ArgumentError, match=message):
        normalize_metadata([(key, "v")])  # type: ignore[list-item]


@pytest.mark.parametrize("key", [RESERVED_PREFIX + "id", RESERVED_PREFIX + "x-bin", "quicflow-"])
def test_reserved_prefix_is_refused(key: str) -> None:
    """Check that keys starting with the protocol's reserved prefix are refused."""
    value: MetadataValue = b"v" if key.endswith("-bin") else "v"
    with pytest.raises(ArgumentError, match="reserved prefix 'quicflow-'"):
        normalize_metadata([(key, value)])


def test_similar_but_unreserved_prefix_is_allowed() -> None:
    """Check that only the exact reserved prefix is refused."""
    assert normalize_metadata([("quicflow", "v"), ("x-quicflow-id", "v")]) == (
        ("quicflow", "v"),
        ("x-quicflow-id", "v"),
    )


@pytest.mark.parametrize("value", ["text", "", 1, None])
def test_bin_key_needs_bytes(value: object) -> None:
    """Check that a -bin key with a str (or other non-bytes) value is refused."""
    with pytest.raises(ArgumentError, match="ends in -bin and needs a bytes value"):
        normalize_metadata([("trace-bin", value)])  # type: ignore[list-item]


@pytest.mark.parametrize("value", [b"bytes", bytearray(b"x"), 1, None])
def test_text_key_needs_str(value: object) -> None:
    """Check that a text key with bytes (or any non-str) value is refused, pointing to -bin."""
    with pytest.raises(ArgumentError, match="needs a str value"):
        normalize_metadata([("trace", value)])  # type: ignore[list-item]


@pytest.mark.parametrize("value", ["a\nb", "\r", "tab\there", "\x00", "del\x7f", "\x1f"])
def test_control_characters_in_text_values_are_refused(value: str) -> None:
    """Check that text values with C0 control characters or DEL are refused."""
    with pytest.raises(ArgumentError, match="contains control characters"):
        normalize_metadata([("k", value)])


def test_control_bytes_in_bin_values_are_fine() -> None:
    """Check that -bin values may hold any bytes, control bytes included."""
    assert normalize_metadata([("k-bin", b"\n\x00\x7f")]) == (("k-bin", b"\n\x00\x7f"),)


@pytest.mark.parametrize(
    "item",
    [("k",), ("k", "v", "extra"), "k", 5, None, b"kv"],
    ids=["one", "three", "str-of-1", "int", "none", "bytes-of-2"],
)
def test_non_pair_items_are_refused(item: object) -> None:
    """Check that items that are not (key, value) pairs are refused."""
    with pytest.raises(ArgumentError):
        normalize_metadata([item])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "metadata",
    [["ab"], {"ab": "cd"}],
    ids=["str-of-2", "dict"],
)
def test_two_character_strings_are_not_pairs(metadata: object) -> None:
    """Check that a two-character str (e.g. a dict key) is not mistaken for a (key, value) pair."""
    with pytest.raises(ArgumentError):
        normalize_metadata(metadata)  # type: ignore[arg-type]


def test_bad_metadata_is_an_argument_error_in_the_errors_tree() -> None:
    """Check that bad metadata raises quicflow's ArgumentError naming the argument, which is
    a UsageError and (as before) a ValueError, not a bare ValueError."""
    with pytest.raises(ArgumentError) as info:
        normalize_metadata([("Bad", "v")])
    assert type(info.value) is ArgumentError
    assert isinstance(info.value, UsageError) and isinstance(info.value, ValueError)
    assert info.value.argument == "metadata"
    assert str(info.value) == (
        "metadata: key 'Bad' may only contain lower-case letters, digits, '-', '_' and '.'"
    )


def test_first_bad_item_fails_the_whole_call() -> None:
    """Check that one bad item anywhere refuses the whole metadata."""
    with pytest.raises(ArgumentError, match="'BAD'"):
        normalize_metadata([("good", "v"), ("BAD", "v")])


def test_metadata_get_returns_first_value_or_none() -> None:
    """Check that metadata_get finds the first value for a key and None when absent."""
    md: tuple[tuple[str, MetadataValue], ...] = (("a", "1"), ("b-bin", b"2"), ("a", "3"))
    assert metadata_get(md, "a") == "1"
    assert metadata_get(md, "b-bin") == b"2"
    assert metadata_get(md, "c") is None
    assert metadata_get((), "a") is None
