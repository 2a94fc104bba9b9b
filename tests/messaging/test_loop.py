"""The consumer loop against an in-memory transport: batching, acknowledgement, failures,
connection retries and the stop sequence, which every transport inherits."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patron import correlation, log
from patron.component import STOP_RESERVE
from patron.messaging import (
    Batch,
    ConnectionRetry,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    ProcessingError,
    Retry,
    TransportError,
    dedupe_by_key,
    per_message,
)
from patron.messaging._loop import ConsumerLoop, Outcome
from tests.conftest import wait_for
from tests.messaging.fakes import FakeTransport, ScriptedTransport
from tests.support.components import Runner

FAST = Retry(count=0, wait=0.01, backoff=1.0)
NO_RETRY = ConnectionRetry(count=0, wait=0.0)


@pytest.fixture
def running(run: Callable[[ConsumerLoop], Runner]) -> Callable[[ConsumerLoop], Runner]:
    """``running(loop)``: the loop runs in a thread, as in a consumer component."""
    return run


def make_loop(transport: FakeTransport, processor: Callable[[Batch], None], **kw: object
              ) -> ConsumerLoop:
    kw.setdefault("poll_timeout", 0.02)
    kw.setdefault("retry", FAST)
    kw.setdefault("connection", NO_RETRY)
    return ConsumerLoop(transport, processor, name="test", **kw)  # type: ignore[arg-type]


# -- batching ---------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=12), max_size=25),
    size=st.integers(min_value=1, max_value=10),
)
def test_batches_fill_to_size_keep_order_and_are_never_empty(chunks: list[int], size: int
                                                             ) -> None:
    stop = threading.Event()
    transport = ScriptedTransport(chunks, stop)
    batches: list[list[bytes]] = []
    loop = ConsumerLoop(transport, lambda b: batches.append([m.body for m in b]),
                        batch_size=size, batch_timeout=1000.0, poll_timeout=0.01)
    loop.run(stop)
    assert [body for batch in batches for body in batch] == transport.produced
    assert all(0 < len(batch) <= size for batch in batches)
    # With a timeout that never expires only the last batch (cut short by stop) may be short.
    assert all(len(batch) == size for batch in batches[:-1])


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.integers(min_value=0, max_value=12), max_size=25),
    size=st.integers(min_value=1, max_value=10),
)
def test_with_a_zero_timeout_a_batch_is_what_one_fetch_returned(chunks: list[int], size: int
                                                                ) -> None:
    stop = threading.Event()
    transport = ScriptedTransport(chunks, stop)
    batches: list[int] = []
    loop = ConsumerLoop(transport, lambda b: batches.append(len(b)), batch_size=size,
                        batch_timeout=0.0, poll_timeout=0.01)
    loop.run(stop)
    expected = []
    for chunk in chunks:
        while chunk > 0:
            expected.append(min(chunk, size))
            chunk -= size
    assert batches == expected


def test_a_partial_batch_is_processed_when_the_batch_timeout_expires(running) -> None:
    transport = FakeTransport()
    seen: list[int] = []
    done = threading.Event()

    def process(batch: Batch) -> None:
        seen.append(len(batch))
        done.set()

    run = running(make_loop(transport, process, batch_size=100, batch_timeout=0.05))
    transport.push("a", "b", "c")
    assert done.wait(5)
    assert seen == [3]
    assert run.finish() is None


# -- acknowledgement --------------------------------------------------------------------------

def test_returning_acknowledges_every_undecided_message_and_keeps_explicit_decisions(
        running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        assert all(m.state is MessageState.PENDING for m in batch)  # nothing acked before
        batch[1].nack(requeue=False)

    run = running(make_loop(transport, process, batch_size=3, batch_timeout=1.0))
    transport.push("a", "b", "c")
    assert transport.wait_settled(1)
    assert run.finish() is None
    settled = transport.settled[0]
    assert settled.bodies(MessageState.ACKED) == [b"a", b"c"]
    assert settled.bodies(MessageState.NACKED) == [b"b"]
    assert transport.closes == 1


def test_a_decision_after_settlement_is_ignored(running) -> None:
    transport = FakeTransport()
    kept: list[Batch] = []
    run = running(make_loop(transport, kept.append))
    transport.push("a")
    assert transport.wait_settled(1)
    kept[0][0].nack()
    assert kept[0][0].state is MessageState.ACKED
    assert run.finish() is None


def test_stop_finishes_the_batch_in_hand_settles_it_and_closes(running) -> None:
    transport = FakeTransport()
    entered, release = threading.Event(), threading.Event()

    def process(batch: Batch) -> None:
        entered.set()
        assert release.wait(5)

    run = running(make_loop(transport, process))
    transport.push("a", "b")
    assert entered.wait(5)
    run.stop.set()
    release.set()
    assert run.ended() is None
    assert transport.acked == [b"a"]
    assert transport.given_back == []  # "b" was never fetched: one message per batch
    assert transport.closes == 1


# -- failures ---------------------------------------------------------------------------------

def test_exit_raises_without_acknowledging_and_gives_the_message_back(running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        if batch[0].body == b"poison":
            raise ValueError("bad payload")

    run = running(make_loop(transport, process, failure=FailureStrategy.EXIT))
    transport.push("ok", "poison", "after")
    error = run.ended()
    assert isinstance(error, ProcessingError)
    assert "bad payload" in str(error) and "exit" in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert transport.acked == [b"ok"]
    assert transport.settled[-1].items[0][1] is MessageState.PENDING
    assert transport.given_back == [b"poison"]


def test_skip_acknowledges_logs_and_goes_on(running, caplog: pytest.LogCaptureFixture) -> None:
    log.setup("test", "1")  # stamps records with the correlation id
    transport = FakeTransport()
    calls: list[bytes] = []

    def process(batch: Batch) -> None:
        calls.append(batch[0].body)
        if batch[0].body == b"poison":
            raise ValueError("bad payload")

    run = running(make_loop(transport, process, failure="skip",
                            retry=Retry(count=2, wait=0.001)))
    transport.push("poison", "after", headers={"X-Correlation-Id": "cid-42"})
    assert transport.wait_acked(2)
    assert run.finish() is None
    assert calls == [b"poison"] * 3 + [b"after"]  # 1 attempt + 2 retries, then on
    poison = transport.settled[0].items[0]
    assert poison[1] is MessageState.ACKED and isinstance(poison[3], ValueError)
    skip_logs = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skip_logs) == 1 and skip_logs[0].levelno == logging.ERROR
    assert getattr(skip_logs[0], "correlationID", None) == "cid-42"


def test_retries_back_off_and_a_success_acknowledges(running) -> None:
    transport = FakeTransport()
    attempts: list[float] = []

    def process(batch: Batch) -> None:
        attempts.append(1)
        if len(attempts) < 3:
            raise RuntimeError("transient")

    run = running(make_loop(transport, process, retry=Retry(count=5, wait=0.001)))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert len(attempts) == 3
    assert transport.settled[0].items[0][3] is None  # succeeded: no error recorded


def test_per_message_retries_resume_at_the_failed_message(running) -> None:
    transport = FakeTransport()
    handled: list[bytes] = []
    failed_once: set[bytes] = set()

    def handle(message) -> None:
        if message.body == b"b" and b"b" not in failed_once:
            failed_once.add(b"b")
            raise RuntimeError("once")
        handled.append(message.body)

    run = running(make_loop(transport, per_message(handle), batch_size=3, batch_timeout=1.0,
                            retry=Retry(count=1, wait=0.001)))
    transport.push("a", "b", "c")
    assert transport.wait_acked(3)
    assert run.finish() is None
    assert handled == [b"a", b"b", b"c"]  # "a" was not handled twice


def test_nack_strategy_hands_back_and_paces_redelivery(running) -> None:
    transport = FakeTransport()
    calls: list[int] = []
    three = threading.Event()

    def process(batch: Batch) -> None:
        calls.append(1)
        if len(calls) == 3:
            three.set()
        raise ValueError("always")

    run = running(make_loop(transport, process, failure=FailureStrategy.NACK,
                            retry=Retry(count=0, wait=0.05, backoff=2.0)))
    transport.push("poison")
    assert three.wait(5)
    assert run.finish() is None
    # Redelivered at once by the broker, yet the loop waited 0.05 s, then 0.1 s between calls.
    assert transport.settled[0].items[0][1:3] == (MessageState.NACKED, True)
    assert len(calls) <= 4


def test_nack_strategy_can_ask_for_no_requeue(running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        raise ValueError("dead letter me")

    run = running(make_loop(transport, process, failure="nack", requeue=False))
    transport.push("poison")
    assert transport.wait_settled(1)
    assert run.finish() is None
    assert transport.settled[0].items[0][1:3] == (MessageState.NACKED, False)


def test_nack_strategy_is_refused_by_a_transport_that_cannot_nack() -> None:
    with pytest.raises(ValueError, match="cannot nack"):
        make_loop(FakeTransport(supports_nack=False), lambda b: None, failure="nack")


def test_stop_during_a_retry_wait_gives_the_message_back_untouched(running) -> None:
    transport = PausingTransport()
    calls: list[bytes] = []

    def process(batch: Batch) -> None:
        calls.append(batch[0].body)
        raise RuntimeError("slow to recover")

    run = running(make_loop(transport, process, retry=Retry(count=3, wait=30.0)))
    transport.push("a")
    assert transport.paused.wait(5)  # the loop is in the 30 s wait before the first retry
    assert run.finish(timeout=5) is None  # cut short; no ProcessingError: no strategy applied
    assert transport.pauses == [30.0]
    assert calls == [b"a"]  # not tried again once stopped
    assert transport.settled[0].items[0][1] is MessageState.PENDING
    assert transport.given_back == [b"a"] and transport.acked == []


def test_a_base_exception_from_the_processor_is_not_swallowed(running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        raise KeyboardInterrupt

    run = running(make_loop(transport, process, failure="skip"))
    transport.push("a")
    assert isinstance(run.ended(), KeyboardInterrupt)
    assert transport.acked == [] and transport.given_back == [b"a"]


# -- connection retries -----------------------------------------------------------------------

def test_connection_failures_are_retried_then_reported(running) -> None:
    transport = FakeTransport()
    transport.connect_errors = [ConnectionError(f"refused {i}") for i in range(3)]
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=2, wait=0.001)))
    error = run.ended()
    assert isinstance(error, TransportError)
    assert "3 failed connection attempt(s)" in str(error) and "refused 2" in str(error)
    assert transport.connects == 3 and transport.closes >= 3


def test_a_connection_that_recovers_within_the_retries_goes_on(running) -> None:
    transport = FakeTransport()
    transport.connect_errors = [ConnectionError("refused")] * 2
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=2, wait=0.001)))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert transport.connects == 3


def test_the_retry_count_starts_again_after_a_successful_fetch(running) -> None:
    transport = FakeTransport()
    # Failures separated by a successful fetch are never two in a row: it never gives up.
    transport.fetch_errors = [OSError("reset"), None, OSError("reset"), None, OSError("reset")]
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=1, wait=0.001)))
    wait_for(lambda: not transport.fetch_errors and transport.connected)
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert transport.connects == 4  # the first connect and one per failure


def test_a_failed_settle_reconnects_and_processes_the_message_again(running) -> None:
    transport = FakeTransport()
    transport.settle_errors = [OSError("connection reset")]
    processed: list[bytes] = []
    run = running(make_loop(transport, lambda b: processed.append(b[0].body),
                            connection=ConnectionRetry(count=1, wait=0.001)))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert processed == [b"a", b"a"]  # at-least-once: never acknowledged, so redelivered
    assert transport.given_back == [b"a"] and transport.acked == [b"a"]


def test_settling_that_keeps_failing_uses_up_the_connection_retries(running) -> None:
    transport = FakeTransport()
    transport.settle_errors = [OSError(f"ack refused {i}") for i in range(100)]
    processed: list[bytes] = []
    run = running(make_loop(transport, lambda b: processed.append(b[0].body),
                            connection=ConnectionRetry(count=2, wait=0.001)))
    transport.push("a")
    error = run.ended()
    # Each reconnect fetched the message again, but that is no proof the connection works.
    assert isinstance(error, TransportError) and "ack refused 2" in str(error)
    assert processed == [b"a"] * 3 and transport.acked == []


def test_a_permanent_error_is_not_retried(running) -> None:
    transport = FakeTransport()
    transport.connect_errors = [PermanentError("queue q does not exist")]
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=5, wait=0.001)))
    assert isinstance(run.ended(), PermanentError)
    assert transport.connects == 1


def test_stop_during_the_connection_retry_wait_returns_cleanly(
    running, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport()
    transport.connect_errors = [ConnectionError("refused")]
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=3, wait=30.0, jitter=0)))
    # Logged right before the loop waits 30 s to connect again: the stop below cuts it short.
    wait_for(lambda: any("retry 1 of 3 in 30.0s" in r.getMessage() for r in caplog.records))
    assert run.finish(timeout=5) is None
    assert transport.connects == 1  # not connected again once stopped


def test_a_transport_failing_to_close_is_one_warning_line_with_the_traceback_at_debug(
    running, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenClose(FakeTransport):
        def close(self) -> None:
            super().close()
            raise OSError("socket already gone")

    caplog.set_level(logging.DEBUG, logger="patron.messaging")
    transport = BrokenClose()
    transport.connect_errors = [ConnectionError("refused")]
    run = running(make_loop(transport, lambda b: None,
                            connection=ConnectionRetry(count=1, wait=0.001)))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    records = [r for r in caplog.records if "closing the transport failed" in r.getMessage()]
    loud = [r for r in records if r.levelno >= logging.WARNING]
    assert loud and all(r.levelno == logging.WARNING and r.exc_info is None for r in loud)
    assert all("socket already gone" in r.getMessage() for r in loud)
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in records)  # for whoever digs


def test_stop_by_hands_the_deadline_to_the_transport_which_keeps_a_margin() -> None:
    transport = FakeTransport()
    loop = make_loop(transport, lambda b: None)
    assert transport.stop_deadline is None and transport.time_left() is None
    deadline = time.monotonic() + 10.0
    loop.stop_by(deadline)
    assert transport.stop_deadline == deadline
    left = transport.time_left()
    assert left is not None and 9.0 < left <= 10.0 - STOP_RESERVE
    loop.stop_by(time.monotonic() - 1.0)  # passed already: nothing left, never negative
    assert transport.time_left() == 0.0


# -- context ----------------------------------------------------------------------------------

def test_a_batch_of_one_runs_with_the_message_correlation_id(running) -> None:
    transport = FakeTransport()
    seen: list[str | None] = []
    run = running(make_loop(transport, lambda b: seen.append(correlation.current())))
    transport.push("a", headers={"x-correlation-id": b"from-header"})
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert seen == ["from-header"]
    assert correlation.current() is None


def test_dedupe_by_key_keeps_the_latest_of_each_key_and_acknowledges_all(running) -> None:
    transport = FakeTransport()
    seen: list[list[bytes]] = []
    run = running(make_loop(transport, dedupe_by_key(lambda b: seen.append([m.body for m in b])),
                            batch_size=5, batch_timeout=1.0))
    for body, key in [("a1", b"a"), ("b1", b"b"), ("a2", b"a"), ("n", None), ("b2", b"b")]:
        transport.push(body, key=key)
    assert transport.wait_acked(5)
    assert run.finish() is None
    assert seen == [[b"a2", b"n", b"b2"]]


@given(st.integers(min_value=0, max_value=200), st.floats(min_value=0, max_value=100),
       st.floats(min_value=1, max_value=10), st.floats(min_value=0, max_value=1000))
def test_retry_delays_grow_and_are_capped(attempt: int, wait: float, backoff: float,
                                          max_wait: float) -> None:
    retry = Retry(count=1, wait=wait, backoff=backoff, max_wait=max_wait)
    assert 0 <= retry.delay(attempt) <= max_wait
    assert retry.delay(attempt) <= retry.delay(attempt + 1)


@pytest.mark.parametrize("kw", [{"count": -1}, {"wait": -1.0}, {"backoff": 0.5}])
def test_invalid_retry_policies_are_refused(kw: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Retry(**kw)  # type: ignore[arg-type]


def test_invalid_loop_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        make_loop(FakeTransport(), lambda b: None, batch_size=0)
    with pytest.raises(ValueError):
        ConnectionRetry(count=-1)


# -- the transport hooks ----------------------------------------------------------------------

class PausingTransport(FakeTransport):
    """Records every pause the loop asks for; ``paused`` is set as the first one begins."""

    def __init__(self, **kw: bool) -> None:
        super().__init__(**kw)
        self.pauses: list[float] = []
        self.paused = threading.Event()

    def pause(self, stop: threading.Event, seconds: float) -> bool:
        self.pauses.append(seconds)
        self.paused.set()
        return super().pause(stop, seconds)


def test_fetch_is_told_whether_it_starts_a_batch(running) -> None:
    transport = FakeTransport()
    run = running(make_loop(transport, lambda batch: None, batch_size=3, batch_timeout=0.2))
    transport.push("a")  # a batch of one: the top-up fetches find nothing
    assert transport.wait_settled(1)
    assert run.finish() is None
    first = transport.starts.index(True)
    assert transport.starts[first + 1] is False  # the fetch after the first message tops up
    assert transport.starts.count(False) >= 1


def test_retry_and_nack_pauses_go_through_the_transport(running) -> None:
    transport = PausingTransport()
    failures = iter([ValueError("once")])

    def process(batch: Batch) -> None:
        error = next(failures, None)
        if error is not None:
            raise error

    run = running(make_loop(transport, process, retry=Retry(count=1, wait=0.01)))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert transport.pauses == [0.01]


def test_a_failure_kept_from_a_client_callback_is_a_connection_failure(running) -> None:
    class FailingCallback(FakeTransport):
        def fetch(self, max_messages: int, timeout: float, starts_batch: bool
                  ) -> list[object]:
            got = super().fetch(max_messages, timeout, starts_batch)
            if self.connects == 1 and got:
                self.fail(ConnectionError("callback saw the connection break"))
            return got  # type: ignore[return-value]

    transport = FailingCallback()
    run = running(make_loop(transport, lambda batch: None,
                            connection=ConnectionRetry(count=1, wait=0.001)))
    transport.push("a")
    assert transport.wait_acked(1)  # fetched again after the reconnect, processed once
    assert run.finish() is None
    assert transport.connects == 2
    assert transport.given_back == [b"a"]  # the first fetch was not processed but given back


def test_an_idle_pause_rests_after_empty_fetches_only(running) -> None:
    transport = PausingTransport()
    transport.idle_pause = 0.01
    run = running(make_loop(transport, lambda batch: None))
    wait_for(lambda: len(transport.pauses) >= 3)
    assert run.finish() is None
    assert set(transport.pauses) == {0.01}


def test_counts_are_recorded_by_source_outcome_and_failure(running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        if batch[0].body == b"bad":
            raise ValueError("bad")
        if batch[0].body == b"give back":
            batch[0].nack(requeue=False)

    run = running(make_loop(transport, process, failure="skip"))
    transport.push("ok", "give back", "bad")
    assert transport.wait_settled(3)
    assert run.finish() is None
    assert transport.recorded == {
        ("q", Outcome.RECEIVED, False): 3,
        ("q", Outcome.ACKED, False): 1,
        ("q", Outcome.NACKED, False): 1,
        ("q", Outcome.ACKED, True): 1,
    }


def test_a_message_left_unacknowledged_by_exit_is_counted_as_failed(running) -> None:
    transport = FakeTransport()

    def process(batch: Batch) -> None:
        raise ValueError("bad")

    run = running(make_loop(transport, process))
    transport.push("bad")
    assert isinstance(run.ended(), ProcessingError)
    assert transport.recorded == {("q", Outcome.RECEIVED, False): 1,
                                  ("q", Outcome.UNACKED, True): 1}


def test_statistics_are_read_every_stats_interval(running) -> None:
    transport = FakeTransport()
    run = running(make_loop(transport, lambda batch: None, stats_interval=0.05))
    wait_for(lambda: transport.probes >= 2)
    assert run.finish() is None


def test_no_statistics_without_a_stats_interval(running) -> None:
    transport = FakeTransport()
    run = running(make_loop(transport, lambda batch: None))
    transport.push("a")
    assert transport.wait_acked(1)
    assert run.finish() is None
    assert transport.probes == 0


def test_connection_retries_back_off_with_jitter() -> None:
    retry = ConnectionRetry(count=5, wait=1.0, backoff=2.0, max_wait=10.0, jitter=0.5)
    for attempt, full in enumerate([1.0, 2.0, 4.0, 8.0, 10.0, 10.0]):
        delays = {retry.delay(attempt) for _ in range(50)}
        assert all(full / 2 <= d <= full for d in delays)
        assert len(delays) > 1  # not in lock-step
    assert ConnectionRetry(jitter=0.0).delay(3) == 8.0
    with pytest.raises(ValueError):
        ConnectionRetry(jitter=1.5)


def test_messages_of_several_sources_in_one_batch_are_counted_by_source(running) -> None:
    transport = FakeTransport()
    mixed = [Message(b"1", source="a"), Message(b"2", source="b"), Message(b"3", source="a")]
    mixed[1].nack(requeue=False)
    run = running(make_loop(transport, lambda batch: None, batch_size=3, batch_timeout=1.0))
    with transport._cond:  # two sources' messages arrive together (a multi-topic consumer)
        transport._queue.extend(mixed)
        transport._cond.notify_all()
    assert transport.wait_settled(1)
    assert run.finish() is None
    assert transport.recorded == {
        ("a", Outcome.RECEIVED, False): 2, ("a", Outcome.ACKED, False): 2,
        ("b", Outcome.RECEIVED, False): 1, ("b", Outcome.NACKED, False): 1,
    }
