"""The SQS consumer against a real endpoint (moto's server): receive, process, delete, give back."""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

import prometheus_client
import pytest

from patron import EXIT_FAILURE, Service, correlation
from patron.messaging import Batch, ProcessingError, Retry, per_message
from patron.sqs import Outgoing, SQSConsumer, SQSMessage, SQSPublisher
from tests.conftest import wait_for
from tests.sqs.conftest import ENV_ENDPOINT, QueueFactory, Runner, counts, metric

Run = Callable[[Any], Runner]

pytestmark = pytest.mark.sqs


class Recorder:
    """A processor that records every message it sees (thread-safe); ``fail(message)`` may
    raise or decide on the message."""

    def __init__(self, fail: Callable[[SQSMessage], None] | None = None) -> None:
        self.messages: list[SQSMessage] = []
        self.batches: list[int] = []
        self.threads: set[str] = set()
        self.fail = fail
        self._lock = threading.Lock()

    def __call__(self, batch: Batch) -> None:
        with self._lock:
            self.batches.append(len(batch))
            self.threads.add(threading.current_thread().name)
        for message in batch:
            assert isinstance(message, SQSMessage)
            with self._lock:
                self.messages.append(message)
            if self.fail is not None:
                self.fail(message)

    @property
    def bodies(self) -> list[str]:
        with self._lock:
            return [m.body.decode() for m in self.messages]


def consumer(queue: str, processor: Any, connection: dict[str, Any], **kwargs: Any) -> SQSConsumer:
    kwargs.setdefault("wait_time", 1)
    kwargs.setdefault("max_messages", 10)
    return SQSConsumer(queue, processor, **connection, **kwargs)


def test_every_message_is_processed_once_then_deleted(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=30)
    sent = [f"message {i}" for i in range(20)]
    SQSPublisher(url, client=sqs).send_batch(sent)
    recorder = Recorder()
    component = consumer(name, recorder, connection)
    assert not component.ready()

    runner = run(component)
    wait_for(lambda: len(recorder.messages) >= 20, timeout=15)
    assert component.ready()
    assert runner.finish() is None

    assert sorted(recorder.bodies) == sorted(sent)  # each exactly once
    assert component.queue_url == url
    assert not component.ready()
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}
    assert metric("component_sqs_message_counter_total", queue=name, state="FETCHED",
                  hasError="false") == 20
    assert metric("component_sqs_message_counter_total", queue=name, state="ACK",
                  hasError="false") == 20


def test_batches_hold_up_to_batch_size_messages(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    sent = [f"m{i}" for i in range(10)]
    SQSPublisher(url, client=sqs).send_batch(sent)
    recorder = Recorder()
    runner = run(consumer(name, recorder, connection, batch_size=4, batch_timeout=0.5))
    wait_for(lambda: len(recorder.messages) >= 10, timeout=15)
    assert runner.finish() is None
    assert max(recorder.batches) <= 4 and sum(recorder.batches) == 10
    assert max(recorder.batches) > 1  # messages received together are processed together
    assert sorted(recorder.bodies) == sorted(sent)
    assert counts(sqs, url)["available"] + counts(sqs, url)["invisible"] == 0


def test_a_message_carries_body_attributes_timestamps_and_correlation_id(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    attributes: dict[str, Any] = {
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
        message_id = SQSPublisher(url, client=sqs).send("hello", attributes=attributes)
    seen: dict[str, Any] = {}

    def process(batch: Batch) -> None:
        message = batch[0]
        assert isinstance(message, SQSMessage)
        seen.update(current=correlation.current(), message=message)

    runner = run(consumer(name, process, connection))
    wait_for(lambda: "message" in seen, timeout=10)
    assert runner.finish() is None

    message = seen["message"]
    assert seen["current"] == "corr-sqs-1" == message.correlation_id
    assert message.body == b"hello" and message.text == "hello"
    assert message.message_id == message_id
    assert message.source == name
    assert message.receive_count == 1
    assert before - 5 <= message.timestamp <= time.time() + 5  # milliseconds read as such
    assert message.attributes["SentTimestamp"].isdigit()
    headers = message.headers
    assert headers["text"] == "plain"
    assert headers["count"] == 42 and isinstance(headers["count"], int)
    assert headers["ratio"] == 0.25
    assert headers["blob"] == b"\x00\xffbinary"
    assert headers["doc"] == '{"a": 1}'
    assert headers["big"] == 123456789012345678901234567890
    assert headers["zipped"] == b"\x1f\x8b"
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
        publisher.send(body)
    recorder = Recorder()
    runner = run(consumer(name, recorder, connection))
    wait_for(lambda: len(recorder.messages) >= 3, timeout=15)
    assert runner.finish() is None
    assert sorted(m.body for m in recorder.messages) == sorted(b.encode() for b in bodies)


def test_nack_makes_the_message_visible_again_at_once(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)  # a timeout would take a minute
    SQSPublisher(url, client=sqs).send("again")
    recorder = Recorder(lambda m: m.nack() if m.receive_count == 1 else None)
    runner = run(consumer(name, recorder, connection))
    wait_for(lambda: len(recorder.messages) >= 2, timeout=10)
    assert runner.finish() is None
    assert [m.receive_count for m in recorder.messages] == [1, 2]
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}
    assert metric("component_sqs_message_counter_total", queue=name, state="NACK",
                  hasError="false") == 1


def test_nack_delay_keeps_the_message_away_that_long(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).send("later")
    seen: list[float] = []

    def process(batch: Batch) -> None:
        seen.append(time.monotonic())
        if len(seen) == 1:
            batch[0].nack()

    runner = run(consumer(name, process, connection, nack_delay=2))
    wait_for(lambda: len(seen) >= 2, timeout=10)
    assert runner.finish() is None
    assert seen[1] - seen[0] >= 1.5


def test_nack_without_requeue_leaves_the_message_invisible(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).send("dead")
    recorder = Recorder(lambda m: m.nack(requeue=False))
    runner = run(consumer(name, recorder, connection))
    wait_for(lambda: len(recorder.messages) >= 1, timeout=10)
    wait_for(lambda: metric("component_sqs_message_counter_total", queue=name, state="NACK",
                            hasError="false") == 1, timeout=5)
    assert runner.finish() is None
    assert counts(sqs, url) == {"available": 0, "invisible": 1, "delayed": 0}
    assert len(recorder.messages) == 1


def test_processing_retries_come_before_the_strategy(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    SQSPublisher(url, client=sqs).send("flaky")
    attempts: list[int] = []

    def process(batch: Batch) -> None:
        message = batch[0]
        assert isinstance(message, SQSMessage)
        attempts.append(message.receive_count)
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    runner = run(consumer(name, process, connection,
                          processing_retry=Retry(count=2, wait=0.05)))
    wait_for(lambda: counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0},
             timeout=10)
    assert runner.finish() is None
    assert attempts == [1, 1, 1]  # retried in hand, not redelivered


def _poison(message: SQSMessage) -> None:
    if message.body == b"poison":
        raise ValueError("cannot digest this")


def test_poison_with_exit_fails_the_service_and_gives_the_message_back(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    with correlation.correlation_id("corr-poison"):
        SQSPublisher(url, client=sqs).send("poison")
    recorder = Recorder(_poison)
    service = Service("sqs-exit", components=[consumer(name, recorder, connection)],
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
    SQSPublisher(url, client=sqs).send_batch(["poison", "good"])
    recorder = Recorder(_poison)
    runner = run(consumer(name, recorder, connection, failure="skip"))
    wait_for(lambda: counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0},
             timeout=10)
    assert runner.finish() is None
    assert sorted(recorder.bodies) == ["good", "poison"]
    assert metric("component_sqs_message_counter_total", queue=name, state="ACK",
                  hasError="true") == 1
    assert metric("component_sqs_message_counter_total", queue=name, state="ACK",
                  hasError="false") == 1


def test_poison_with_nack_is_redelivered_at_a_growing_pace(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).send("poison")
    seen: list[tuple[float, int]] = []

    def process(batch: Batch) -> None:
        message = batch[0]
        assert isinstance(message, SQSMessage)
        seen.append((time.monotonic(), message.receive_count))
        raise ValueError("still poison")

    runner = run(consumer(name, process, connection, failure="nack",
                          processing_retry=Retry(count=0, wait=0.1, backoff=2.0)))
    wait_for(lambda: len(seen) >= 4, timeout=10)
    assert runner.finish() is None
    assert [count for _, count in seen[:4]] == [1, 2, 3, 4]  # redelivered, visibility reset
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(seen)]
    # the loop pauses 0.1, 0.2, 0.4 s before fetching again: no hot loop
    for i, gap in enumerate(gaps[:3]):
        assert gap >= 0.1 * 2**i * 0.9, gaps
    assert metric("component_sqs_message_counter_total", queue=name, state="NACK",
                  hasError="true") >= 4


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
    SQSPublisher(url, client=sqs).send("poison")
    recorder = Recorder(_poison)
    runner = run(consumer(name, recorder, connection, failure="nack",
                          processing_retry=Retry(count=0, wait=0.05)))
    wait_for(lambda: counts(sqs, dlq_url)["available"] == 1, timeout=15)
    assert runner.finish() is None
    assert len(recorder.messages) == 2  # maxReceiveCount receives, then moved
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}
    moved = sqs.receive_message(QueueUrl=dlq_url)["Messages"]
    assert moved[0]["Body"] == "poison"


def test_stop_finishes_the_batch_in_hand_and_gives_back_the_rest_at_once(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name, url = make_queue(VisibilityTimeout=60)  # not given back, they would hide a minute
    SQSPublisher(url, client=sqs).send_batch([f"m{i}" for i in range(10)])
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


def test_pollers_share_the_queue_and_stop_together(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    sent = [f"m{i}" for i in range(30)]
    SQSPublisher(url, client=sqs).send_batch(sent)
    recorder = Recorder()
    component = consumer(name, recorder, connection, pollers=3)
    runner = run(component)
    wait_for(lambda: len(recorder.messages) >= 30, timeout=15)
    wait_for(component.ready, timeout=5)
    assert runner.finish() is None
    # At least once, not exactly once: a standard queue may deliver a message twice, and moto's
    # receive checks visibility and marks a message received without a lock, so concurrent
    # receives now and then hand out the same message.
    assert set(recorder.bodies) == set(sent)
    assert recorder.threads <= {f"patron-sqs-{name}-poller-{i}" for i in range(3)}
    assert not [t for t in threading.enumerate() if t.name.startswith(f"patron-sqs-{name}")]
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}


def test_a_failing_poller_stops_the_others_and_fails_the_component(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    SQSPublisher(url, client=sqs).send("poison")
    runner = run(consumer(name, Recorder(_poison), connection, pollers=3))
    error = runner.ended(timeout=15)
    assert isinstance(error, ProcessingError)
    assert not [t for t in threading.enumerate() if t.name.startswith(f"patron-sqs-{name}")]


def test_queue_size_and_message_age_metrics(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    publisher = SQSPublisher(url, client=sqs)
    publisher.send_batch(["now 1", "now 2", Outgoing("later", delay=60)])
    # The two it receives stay invisible: nack(requeue=False) leaves them alone.
    recorder = Recorder(lambda m: m.nack(requeue=False))
    runner = run(consumer(name, recorder, connection, stats_interval=0.2))

    def size(state: str) -> float | None:
        return prometheus_client.REGISTRY.get_sample_value(
            "component_sqs_queue_size", {"queue": name, "state": state})

    wait_for(lambda: size("invisible") == 2 and size("delayed") == 1, timeout=10)
    assert runner.finish() is None
    assert size("available") == 0
    assert len(recorder.messages) == 2
    assert 0 < metric("component_sqs_message_age", queue=name) < 60


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
        SQSPublisher(url, client=sqs).send_batch(["a", "b", "c"])
    seen: list[str | None] = []
    runner = run(consumer(name, per_message(lambda m: seen.append(correlation.current())),
                          connection, batch_size=3, batch_timeout=0.5))
    wait_for(lambda: len(seen) >= 3, timeout=10)
    assert runner.finish() is None
    assert seen == ["corr-batch"] * 3


@pytest.mark.parametrize("kwargs", [
    {"max_messages": 0}, {"max_messages": 11}, {"wait_time": 21}, {"wait_time": -1},
    {"pollers": 0}, {"visibility_timeout": 43201}, {"nack_delay": -1},
    {"stats_interval": -1}, {"batch_size": 0}, {"client": object(), "region": "eu-west-1"},
])
def test_bad_settings_are_refused_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        SQSConsumer("queue", Recorder(), **kwargs)
