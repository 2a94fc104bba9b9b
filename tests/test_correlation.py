from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patron import correlation


def _is_uuid4(value: str) -> bool:
    return uuid.UUID(value).version == 4


def test_sane_ids_are_kept() -> None:
    assert correlation.ensure("abc-123") == "abc-123"
    assert correlation.ensure(b"abc") == "abc"
    assert correlation.ensure("x" * 128) == "x" * 128


@pytest.mark.parametrize(
    "value", [None, "", "x" * 129, "has space", "tab\there", "naïve", "line\nbreak", b"\xff\xfe"]
)
def test_missing_or_insane_ids_become_a_new_uuid4(value: str | bytes | None) -> None:
    result = correlation.ensure(value)
    assert result != value and _is_uuid4(result)


@given(st.text(max_size=200))
def test_ensure_always_returns_a_sane_id(value: str) -> None:
    result = correlation.ensure(value)
    assert 0 < len(result) <= 128 and all("!" <= ch <= "~" for ch in result)


def test_context_scopes_nest_and_restore() -> None:
    assert correlation.current() is None
    with correlation.correlation_id("outer"):
        with correlation.correlation_id("inner"):
            assert correlation.current() == "inner"
        assert correlation.current() == "outer"
    assert correlation.current() is None


def test_outgoing_is_the_current_id_or_a_new_one() -> None:
    with correlation.correlation_id("abc"):
        assert correlation.outgoing() == "abc"
    assert _is_uuid4(correlation.outgoing())
    assert correlation.outgoing() != correlation.outgoing()
