"""The SQS consumer against a real endpoint (moto's server): receive, process, delete, give back."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from patron import EXIT_FAILURE, Service, correlation
from patron.messaging import Batch, ProcessingError, Processor, Retry, per_message
from patron.sqs import Outgoing, SQSConsumer, SQSMessage, SQSPublisher
from tests.conftest import wait_for
from tests.sqs.conftest import ENV_ENDPOINT, QueueFactory, counts, session
from tests.support.components import Recorder, Runner
from tests.support.metrics import await_sample, sample

Run = Callable[[Any], Runner]

pytestmark = pytest.mark.sqs

COUNTER = "component_sqs_message_counter_total"
EMPTY = {"available": 0, "invisible": 0, "delayed": 0}


def consumer(queue: str, processor: Any, connection: dict[str, Any], **kwargs: Any) -> SQSConsumer:
    kwargs.setdefault("wait_time", 1)
    kwargs.setdefault("max_messages", 10)
    return SQSConsumer(queue, processor, **connection, **kwargs)


def received(recorder: Recorder) -> list[SQSMessage]:
    """The messages ``recorder`` got, as the SQS messages they are."""
    messages = [m for m in recorder.messages if isinstance(m, SQSMessage)]
    assert len(messages) == len(recorder.messages)
    return messages


def each(decide: Callable[[SQSMessage], None]) -> Callable[[Batch], None]:
    """A :class:`Recorder` hook calling ``decide`` on every message of a batch."""
    def hook(batch: Batch) -> None:
        for message in batch:
            assert isinstance(message, SQSMessage)
            decide(message)
    return hook


def poisoned(recorder: Recorder) -> Processor:
    """A processor that records the batch, then fails on a message whose body is ``poison``
    (recorded first, so a test can count the attempts on it)."""
    def process(batch: Batch) -> None:
        recorder(batch)
        if any(m.body == b"poison" for m in batch):
            raise ValueError("cannot digest this")
    return process


def test_every_message_is_processed_once_then_deleted(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=30)
    sent = [f"message {i}" for i in range(20)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    recorder = Recorder()
    component = consumer(name, recorder, connection)
    assert not component.ready()

    runner = run(component)
    recorder.wait_for(20, timeout=15)
    assert component.ready()
    assert runner.finish() is None

    assert sorted(recorder.bodies) == sorted(b.encode() for b in sent)  # each exactly once
    assert component.queue_url == url
    assert not component.ready()
    assert counts(sqs, url) == EMPTY
    await_sample(COUNTER, 20, queue=name, state="FETCHED", hasError="false")
    await_sample(COUNTER, 20, queue=name, state="ACK", hasError="false")


def test_batches_hold_up_to_batch_size_messages(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    sent = [f"m{i}" for i in range(10)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    recorder = Recorder()
    runner = run(consumer(name, recorder, connection, batch_size=4, batch_timeout=0.5))
    recorder.wait_for(10, timeout=15)
    assert runner.finish() is None
    sizes = [len(batch) for batch in recorder.batches]
    assert max(sizes) <= 4 and sum(sizes) == 10
    assert max(sizes) > 1  # messages received together are processed together
    assert sorted(recorder.bodies) == sorted(b.encode() for b in sent)
    assert counts(sqs, url)["available"] + counts(sqs, url)["invisible"] == 0


def test_a_message_carries_body_attributes_timestamps_and_correlation_id(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    headers: dict[str, Any] = {
        "text": "plain",
        "count": 42,
        "ratio": 0.25,
        "blob": b"\x00\xffbinary",
        "doc": {"DataType": "String.json", "StringValue": '{"a": 1}'},
        "big": {"DataType": "Number.big", "StringValue": "123456789012345678901234567890"},
        "zipped": {"DataType": "Binary.gz", "BinaryValue": b"\x1f\x8b"},
    }
    before = time.time()
    with correlation.correlation_id("corr-sqs-1"):
        message_id = SQSPublisher(url, client=sqs).publish("hello", headers=headers)
    recorder = Recorder()

    runner = run(consumer(name, recorder, connection))
    recorder.wait_for(1, timeout=10)
    assert runner.finish() is None

    [message] = received(recorder)
    # the loop made the message's correlation id current around the processor call
    assert recorder.correlation_ids == ["corr-sqs-1"] == [message.correlation_id]
    assert message.body == b"hello" and message.text == "hello"
    assert message.message_id == message_id
    assert message.source == name
    assert message.receive_count == 1
    assert message.timestamp is not None
    assert before - 5 <= message.timestamp <= time.time() + 5  # milliseconds read as such
    assert message.attributes["SentTimestamp"].isdigit()
    got = message.headers
    assert got["text"] == "plain"
    assert got["count"] == 42 and isinstance(got["count"], int)
    assert got["ratio"] == 0.25
    assert got["blob"] == b"\x00\xffbinary"
    assert got["doc"] == '{"a": 1}'
    assert got["big"] == 123456789012345678901234567890
    assert got["zipped"] == b"\x1f\x8b"
    assert message.raw["MessageAttributes"]["big"]["DataType"] == "Number.big"


def test_unicode_bodies_and_bodies_at_the_256_kib_limit_arrive_intact(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(MaximumMessageSize=256 * 1024)
    bodies = [
        "héllo wörld ✓ 日本語 🚀 \u200b\ttab\nnew line",
        "a" * (256 * 1024),
        "é" * (128 * 1024),  # 256 KiB of UTF-8 in two-byte characters
    ]
    publisher = SQSPublisher(url, client=sqs)
    for body in bodies:
        publisher.publish(body)
    recorder = Recorder()
    runner = run(consumer(name, recorder, connection))
    recorder.wait_for(3, timeout=15)
    assert runner.finish() is None
    assert sorted(recorder.bodies) == sorted(b.encode() for b in bodies)


def test_nack_makes_the_message_visible_again_at_once(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)  # a timeout would take a minute
    SQSPublisher(url, client=sqs).publish("again")
    recorder = Recorder(each(lambda m: m.nack() if m.receive_count == 1 else None))
    runner = run(consumer(name, recorder, connection))
    recorder.wait_for(2, timeout=10)
    assert runner.finish() is None
    assert [m.receive_count for m in received(recorder)] == [1, 2]
    assert counts(sqs, url) == EMPTY
    await_sample(COUNTER, 1, queue=name, state="NACK", hasError="false")


def test_nack_delay_keeps_the_message_away_that_long(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).publish("later")
    seen: list[float] = []

    def nack_the_first(batch: Batch) -> None:
        seen.append(time.monotonic())
        if len(seen) == 1:
            batch[0].nack()

    recorder = Recorder(nack_the_first)
    runner = run(consumer(name, recorder, connection, nack_delay=2))
    recorder.wait_for(2, timeout=10)
    assert runner.finish() is None
    assert seen[1] - seen[0] >= 1.5  # a lower bound only: SQS keeps it away for 2 s


def test_nack_without_requeue_leaves_the_message_invisible(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).publish("dead")
    recorder = Recorder(each(lambda m: m.nack(requeue=False)))
    runner = run(consumer(name, recorder, connection))
    recorder.wait_for(1, timeout=10)
    await_sample(COUNTER, 1, queue=name, state="NACK", hasError="false")
    assert runner.finish() is None
    assert counts(sqs, url) == {"available": 0, "invisible": 1, "delayed": 0}
    assert len(recorder.messages) == 1


def test_processing_retries_come_before_the_strategy(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    SQSPublisher(url, client=sqs).publish("flaky")
    attempts: list[int] = []

    def fail_twice(message: SQSMessage) -> None:
        attempts.append(message.receive_count)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    recorder = Recorder(each(fail_twice))  # records only the attempt that succeeded
    runner = run(consumer(name, recorder, connection,
                          processing_retry=Retry(count=2, wait=0.05)))
    recorder.wait_for(1, timeout=10)
    wait_for(lambda: counts(sqs, url) == EMPTY, timeout=10)
    assert runner.finish() is None
    assert attempts == [1, 1, 1]  # retried in hand, not redelivered


def test_poison_with_exit_fails_the_service_and_gives_the_message_back(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    with correlation.correlation_id("corr-poison"):
        SQSPublisher(url, client=sqs).publish("poison")
    recorder = Recorder()
    service = Service("sqs-exit", components=[consumer(name, poisoned(recorder), connection)],
                      default_http=False, handle_signals=False)
    with caplog.at_level(logging.ERROR):
        service.start()
        assert service.wait(20) == EXIT_FAILURE
    assert len(recorder.messages) == 1
    assert "corr-poison" in caplog.text and "failure strategy exit" in caplog.text
    # not deleted, and visible again at once rather than after its visibility timeout
    assert counts(sqs, url) == {"available": 1, "invisible": 0, "delayed": 0}


def test_poison_with_skip_is_deleted_and_counted(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    SQSPublisher(url, client=sqs).publish_batch(["poison", "good"])
    recorder = Recorder()
    runner = run(consumer(name, poisoned(recorder), connection, failure="skip"))
    recorder.wait_for(2, timeout=10)
    wait_for(lambda: counts(sqs, url) == EMPTY, timeout=10)
    assert runner.finish() is None
    assert sorted(recorder.bodies) == [b"good", b"poison"]
    await_sample(COUNTER, 1, queue=name, state="ACK", hasError="true")
    await_sample(COUNTER, 1, queue=name, state="ACK", hasError="false")


def test_poison_with_nack_is_redelivered_at_a_growing_pace(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).publish("poison")
    seen: list[float] = []

    def at(batch: Batch) -> None:
        seen.append(time.monotonic())

    recorder = Recorder(at)
    runner = run(consumer(name, poisoned(recorder), connection, failure="nack",
                          processing_retry=Retry(count=0, wait=0.1, backoff=2.0)))
    recorder.wait_for(4, timeout=10)
    assert runner.finish() is None
    # redelivered, visibility reset each time
    assert [m.receive_count for m in received(recorder)[:4]] == [1, 2, 3, 4]
    gaps = [b - a for a, b in itertools.pairwise(seen)]
    # the loop pauses 0.1, 0.2, 0.4 s before fetching again: no hot loop (lower bounds only)
    for i, gap in enumerate(gaps[:3]):
        assert gap >= 0.1 * 2**i * 0.9, gaps
    # counted as the loop settled them; the stop handed the counts over
    assert sample(COUNTER, queue=name, state="NACK", hasError="true") >= 4


def test_repeated_nacks_end_in_the_dead_letter_queue(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    _dlq_name, dlq_url = make_queue("dlq")
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])[
        "Attributes"]["QueueArn"]
    name, url = make_queue(
        VisibilityTimeout=60,
        RedrivePolicy=f'{{"deadLetterTargetArn": "{dlq_arn}", "maxReceiveCount": "2"}}',
    )
    SQSPublisher(url, client=sqs).publish("poison")
    recorder = Recorder()
    runner = run(consumer(name, poisoned(recorder), connection, failure="nack",
                          processing_retry=Retry(count=0, wait=0.05)))
    wait_for(lambda: counts(sqs, dlq_url)["available"] == 1, timeout=15)
    assert runner.finish() is None
    assert len(recorder.messages) == 2  # maxReceiveCount receives, then moved
    assert counts(sqs, url) == EMPTY
    moved = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert moved[0]["Body"] == "poison"


def test_stop_finishes_the_batch_in_hand_and_gives_back_the_rest_at_once(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, url = make_queue(VisibilityTimeout=60)  # not given back, they would hide a minute
    SQSPublisher(url, client=sqs).publish_batch([f"m{i}" for i in range(10)])
    runners: list[Runner] = []

    def process(batch: Batch) -> None:
        runners[0].stop.set()  # a stop request arrives while the first message is processed

    component = consumer(name, process, connection, max_messages=10, batch_size=1)
    with caplog.at_level(logging.INFO, logger="patron.sqs"):
        runners.append(run(component))
        assert runners[0].ended() is None
    assert counts(sqs, url) == {"available": 9, "invisible": 0, "delayed": 0}
    if not os.environ.get(ENV_ENDPOINT):  # moto answers one receive with all ten
        assert "gave back 9 received but unprocessed message(s)" in caplog.text


def test_concurrency_2_processes_each_message_once_in_two_threads(
    make_queue: QueueFactory, sqs: Any, serial_sqs_endpoint: str, run: Run
) -> None:
    # A long visibility timeout: a message received twice, or not deleted, cannot hide.
    name, url = make_queue(VisibilityTimeout=60)
    sent = [f"m{i}" for i in range(20)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    pollers = {f"patron-sqs-{name}-{i}" for i in range(2)}
    entered: set[str] = set()
    both = threading.Event()
    lock = threading.Lock()

    def hold_until_both_process(batch: Batch) -> None:
        # Each poller holds its first message until the other one has one too: the two
        # process at the same time, not one after the other.
        with lock:
            entered.add(threading.current_thread().name)
            if len(entered) == 2:
                both.set()
        both.wait(10)

    recorder = Recorder(hold_until_both_process)
    component = SQSConsumer(name, recorder, endpoint_url=serial_sqs_endpoint,
                            session=session(), wait_time=1, max_messages=5, concurrency=2)
    runner = run(component)
    recorder.wait_for(20, timeout=20)
    assert component.ready()
    assert runner.finish() is None

    assert both.is_set(), f"only {entered} processed"
    assert recorder.threads == pollers
    assert sorted(recorder.bodies) == sorted(b.encode() for b in sent)  # each exactly once
    assert counts(sqs, url) == EMPTY  # every one deleted
    await_sample(COUNTER, 20, queue=name, state="FETCHED", hasError="false")
    await_sample(COUNTER, 20, queue=name, state="ACK", hasError="false")
    assert not [t for t in threading.enumerate() if t.name in pollers]


def test_concurrent_pollers_share_the_queue_and_stop_together(
    make_queue: QueueFactory, sqs: Any, serial_sqs_endpoint: str, run: Run
) -> None:
    name, url = make_queue()
    sent = [f"m{i}" for i in range(30)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    recorder = Recorder()
    component = SQSConsumer(name, recorder, endpoint_url=serial_sqs_endpoint,
                            session=session(), wait_time=1, max_messages=10, concurrency=3)
    runner = run(component)
    recorder.wait_for(30, timeout=15)
    wait_for(component.ready, timeout=5)
    assert runner.finish() is None
    # At least once: a standard queue may deliver a message twice (the exact count is
    # test_concurrency_2_processes_each_message_once_in_two_threads's).
    assert set(recorder.bodies) == {b.encode() for b in sent}
    assert recorder.threads <= {f"patron-sqs-{name}-{i}" for i in range(3)}
    assert not [t for t in threading.enumerate() if t.name.startswith(f"patron-sqs-{name}")]
    assert counts(sqs, url) == EMPTY


def test_a_failing_poller_stops_the_others_and_fails_the_component(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    SQSPublisher(url, client=sqs).publish("poison")
    component = consumer(name, poisoned(Recorder()), connection, concurrency=3)
    error = run(component).ended(timeout=15)
    assert isinstance(error, ProcessingError)
    assert not component.ready()
    assert not [t for t in threading.enumerate() if t.name.startswith(f"patron-sqs-{name}")]


def test_queue_size_and_message_age_metrics(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    publisher = SQSPublisher(url, client=sqs)
    publisher.publish_batch(["now 1", "now 2", Outgoing("later", delay=60)])
    # The two it receives stay invisible: nack(requeue=False) leaves them alone.
    recorder = Recorder(each(lambda m: m.nack(requeue=False)))
    runner = run(consumer(name, recorder, connection, stats_interval=0.2))

    def size(state: str) -> float:
        return sample("component_sqs_queue_size", queue=name, state=state)

    wait_for(lambda: size("invisible") == 2 and size("delayed") == 1, timeout=10)
    assert runner.finish() is None
    assert size("available") == 0
    assert len(recorder.messages) == 2
    assert 0 < sample("component_sqs_message_age", queue=name) < 60


def test_an_idle_short_poll_is_paced(
    make_queue: QueueFactory, sqs: Any, run: Run
) -> None:
    _name, url = make_queue()
    calls: list[tuple[float, int]] = []

    class Counting:
        def __getattr__(self, attr: str) -> Any:
            return getattr(sqs, attr)

        def receive_message(self, **kwargs: Any) -> Any:
            calls.append((time.monotonic(), kwargs["WaitTimeSeconds"]))
            return sqs.receive_message(**kwargs)

    runner = run(SQSConsumer(url, Recorder(), client=Counting(), wait_time=0))
    wait_for(lambda: len(calls) >= 3, timeout=10)
    assert runner.finish() is None
    assert {wait for _, wait in calls} == {0}  # short polls, as asked
    # two pauses of 0.5 s between three empty receives; a hot loop would take milliseconds
    assert calls[2][0] - calls[0][0] >= 0.95


def test_per_message_helper_in_a_batch(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    with correlation.correlation_id("corr-batch"):
        SQSPublisher(url, client=sqs).publish_batch(["a", "b", "c"])
    seen: list[str | None] = []
    done = threading.Event()

    def handle(message: SQSMessage) -> None:
        seen.append(correlation.current())
        if len(seen) == 3:
            done.set()

    runner = run(consumer(name, per_message(handle), connection, batch_size=3,
                          batch_timeout=0.5))
    assert done.wait(10)
    assert runner.finish() is None
    assert seen == ["corr-batch"] * 3


@pytest.mark.parametrize("kwargs", [
    {"max_messages": 0}, {"max_messages": 11}, {"wait_time": 21}, {"wait_time": -1},
    {"concurrency": 0}, {"visibility_timeout": 43201}, {"nack_delay": -1},
    {"stats_interval": -1}, {"batch_size": 0}, {"connect_timeout": 0},
    {"client": object(), "region": "eu-west-1"},
])
def test_bad_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SQSConsumer("queue", Recorder(), **kwargs)
