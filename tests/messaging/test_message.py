"""Message and Batch: headers, correlation id, span context, decisions."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import opentracing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentracing.mocktracer import MockTracer

from patron import correlation
from patron.messaging import Batch, Message, MessageState


@pytest.fixture
def tracer() -> Iterator[MockTracer]:
    previous = opentracing.global_tracer()
    mock = MockTracer()
    opentracing.set_global_tracer(mock)
    yield mock
    opentracing.set_global_tracer(previous)


def is_uuid4(text: str) -> bool:
    try:
        return uuid.UUID(text).version == 4
    except ValueError:
        return False


def test_headers_from_pairs_keep_the_last_value_of_a_repeated_name() -> None:
    message = Message(b"x", headers=[("a", b"1"), ("b", None), ("a", b"2")])
    assert dict(message.headers) == {"a": b"2", "b": None}
    assert message.header("A") == b"2"
    assert message.header("missing") is None


def test_text_headers_keep_only_text_values() -> None:
    message = Message(b"", headers={"s": "text", "b": b"utf8 \xc3\xa9", "bad": b"\xff\xfe",
                                    "n": 3, "none": None})
    assert message.text_headers() == {"s": "text", "b": "utf8 é"}


@pytest.mark.parametrize("value", [b"abc-123", "abc-123"])
def test_the_correlation_id_comes_from_the_header_in_any_case(value: bytes | str) -> None:
    assert Message(b"", headers={"x-correlation-ID": value}).correlation_id == "abc-123"


@pytest.mark.parametrize("value", [None, b"", b"\xff\xfe", "has space", "x" * 500, 42])
def test_a_missing_or_insane_correlation_id_is_replaced_by_a_uuid4(value: object) -> None:
    headers = {} if value is None else {correlation.HEADER: value}
    message = Message(b"", headers=headers)
    assert is_uuid4(message.correlation_id)
    assert message.correlation_id == message.correlation_id  # stable once made


@given(st.binary(max_size=300))
def test_any_header_bytes_give_a_sane_correlation_id(value: bytes) -> None:
    cid = Message(b"", headers=[(correlation.HEADER, value)]).correlation_id
    assert 0 < len(cid) <= 128 and all("!" <= ch <= "~" for ch in cid)


def test_text_decodes_utf8_and_refuses_the_rest() -> None:
    assert Message("é".encode()).text == "é"
    with pytest.raises(UnicodeDecodeError):
        _ = Message(b"\xff").text


def test_activate_continues_the_trace_of_the_headers_and_sets_the_correlation_id(
        tracer: MockTracer) -> None:
    with tracer.start_active_span("producer") as parent:
        carrier: dict[str, str] = {}
        tracer.inject(parent.span.context, opentracing.Format.TEXT_MAP, carrier)
    message = Message(b"", headers={**carrier, correlation.HEADER: "cid-1"}, source="orders",
                      transport="fake")
    with message.activate() as span:
        assert correlation.current() == "cid-1"
        assert message.span is span
        with message.activate() as again:  # re-entrant: the same span, not a child
            assert again is span
    assert correlation.current() is None and message.span is None
    finished = [s for s in tracer.finished_spans() if s.operation_name == "orders process"]
    assert len(finished) == 1
    assert finished[0].parent_id == parent.span.context.span_id
    assert finished[0].tags["span.kind"] == "consumer"
    assert finished[0].tags["component"] == "fake"


def test_an_exception_in_activate_marks_the_span_failed(tracer: MockTracer) -> None:
    message = Message(b"", source="q")
    with pytest.raises(ValueError), message.activate():
        raise ValueError("boom")
    assert tracer.finished_spans()[-1].tags.get("error") is True


def test_the_first_decision_wins() -> None:
    message = Message(b"")
    message.nack(requeue=False)
    message.ack()
    assert (message.state, message.requeue) == (MessageState.NACKED, False)


def test_a_transport_that_cannot_nack_says_so() -> None:
    message = Message(b"", transport="kafka", nackable=False)
    with pytest.raises(NotImplementedError, match="kafka cannot redeliver"):
        message.nack()
    assert message.state is MessageState.PENDING


def test_batch_decisions_apply_to_undecided_messages_only() -> None:
    a, b, c = Message(b"a"), Message(b"b"), Message(b"c")
    b.ack()
    batch = Batch([a, b, c])
    assert len(batch) == 3 and list(batch) == [a, b, c] and batch[1] is b
    assert batch.pending() == [a, c]
    batch.nack(requeue=True)
    assert [m.state for m in batch] == [MessageState.NACKED, MessageState.ACKED,
                                        MessageState.NACKED]


def test_the_decision_can_be_read_but_not_written_by_user_code() -> None:
    message = Message(b"x")
    message.nack(requeue=False)
    assert (message.state, message.requeue, message.error) == (MessageState.NACKED, False, None)
    for attribute, value in (("state", MessageState.ACKED), ("requeue", True),
                             ("error", ValueError())):
        with pytest.raises(AttributeError):
            setattr(message, attribute, value)
    assert message.state is MessageState.NACKED
