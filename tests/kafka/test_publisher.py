"""The Kafka publisher against the test broker."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import opentracing
import pytest
from opentracing.mocktracer import MockTracer

from patron import correlation
from patron.kafka import DeliveryReport, KafkaMessage, KafkaPublisher, PublishError
from tests.conftest import free_port, wait_for
from tests.kafka.conftest import Kafka
from tests.support.metrics import sample

pytestmark = [pytest.mark.kafka]

STATUS = "client_kafka_producer_message_status_total"
REPORT_THREAD = "patron-kafka-publisher"


@pytest.fixture
def publisher(kafka: Kafka) -> Iterator[KafkaPublisher]:
    with KafkaPublisher(kafka.brokers, publish_timeout=10) as client:
        yield client


@pytest.fixture
def tracer() -> Iterator[MockTracer]:
    previous = opentracing.global_tracer()
    mock = MockTracer()
    opentracing.set_global_tracer(mock)
    yield mock
    opentracing.set_global_tracer(previous)


def nowhere() -> str:
    """A broker address nothing listens on: every connection is refused."""
    return f"127.0.0.1:{free_port()}"


def test_publish_waits_for_delivery_and_injects_correlation_and_trace(
        kafka: Kafka, publisher: KafkaPublisher, tracer: MockTracer) -> None:
    topic = kafka.topic()
    with correlation.correlation_id("cid-publish"), tracer.start_active_span("handler"):
        delivery = publisher.publish(topic, b"payload", key="k1", headers={"app": "x"})
    assert isinstance(delivery, DeliveryReport) and delivery.topic == topic and delivery.offset == 0
    [raw] = kafka.read(topic, 1)
    assert (raw.value(), raw.key(), raw.partition()) == (b"payload", b"k1", delivery.partition)

    received = KafkaMessage(raw, topic)  # what a KafkaConsumer hands its processor
    assert received.headers["app"] == b"x"
    assert received.correlation_id == "cid-publish"
    with received.activate():  # the consumer side continues the publisher's trace
        pass
    spans = {s.operation_name: s for s in tracer.finished_spans()}
    published = spans[f"{topic} publish"]
    assert published.tags["span.kind"] == "producer"
    assert published.tags["message_bus.destination"] == topic
    assert spans[f"{topic} process"].parent_id == published.context.span_id
    assert sample(STATUS, status="sent", topic=topic, type="sync") == 1


def test_a_correlation_id_given_in_the_headers_is_kept(kafka: Kafka, publisher: KafkaPublisher
                                                       ) -> None:
    topic = kafka.topic()
    publisher.publish(topic, "v", headers=[("x-correlation-id", "mine")])
    [raw] = kafka.read(topic, 1)
    ids = [value for name, value in raw.headers() if name.lower() == "x-correlation-id"]
    assert ids == [b"mine"]


def test_without_a_current_id_each_message_gets_a_new_one(kafka: Kafka, publisher: KafkaPublisher
                                                          ) -> None:
    topic = kafka.topic()
    publisher.publish(topic, "a", key="same")
    publisher.publish(topic, "b", key="same")
    ids = {dict(raw.headers())["X-Correlation-Id"] for raw in kafka.read(topic, 2)}
    assert len(ids) == 2


def test_publish_async_reports_in_the_publisher_thread_and_is_safe_from_many_threads(
        kafka: Kafka, publisher: KafkaPublisher) -> None:
    topic = kafka.topic()
    reports: list[tuple[PublishError | None, DeliveryReport | None, str]] = []
    lock = threading.Lock()

    def callback(error: PublishError | None, delivery: DeliveryReport | None) -> None:
        with lock:
            reports.append((error, delivery, threading.current_thread().name))

    def publish_many(worker: int) -> None:
        for i in range(50):
            publisher.publish_async(topic, f"{worker}-{i}", callback=callback)

    workers = [threading.Thread(target=publish_many, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert publisher.flush(30) == 0
    assert len(reports) == 200
    assert all(error is None and delivery is not None for error, delivery, _ in reports)
    assert {thread for *_, thread in reports} == {REPORT_THREAD}
    values = sorted(raw.value() for raw in kafka.read(topic, 200))
    assert values == sorted(f"{w}-{i}".encode() for w in range(4) for i in range(50))
    assert sample(STATUS, status="sent", topic=topic, type="async") == 200


def test_a_message_over_the_size_limit_is_refused_at_once(kafka: Kafka) -> None:
    topic = kafka.topic()
    with (
        KafkaPublisher(kafka.brokers, config={"message.max.bytes": 2000}) as small,
        pytest.raises(PublishError, match=f"cannot queue a message to {topic}"),
    ):
        small.publish(topic, b"x" * 5000)
    assert sample(STATUS, status="creation-errors", topic=topic, type="sync") == 1


def test_an_undeliverable_message_raises_and_is_counted() -> None:
    # librdkafka gives up on the message (300 ms) long before publish stops waiting (10 s):
    # the caller gets the delivery failure itself, not the publish deadline.
    with (
        KafkaPublisher(nowhere(), publish_timeout=10, config={"message.timeout.ms": 300})
        as publisher,
        pytest.raises(PublishError, match="not delivered"),
    ):
        publisher.publish("nowhere", b"v")
    assert sample(STATUS, status="send-errors", topic="nowhere", type="sync") >= 1


def test_publish_timeout_bounds_publish_and_publish_async_without_a_broker() -> None:
    topic = Kafka.name("unreachable")
    with KafkaPublisher(nowhere(), publish_timeout=1) as publisher:
        began = time.monotonic()
        with pytest.raises(PublishError, match=topic):
            publisher.publish(topic, b"sync")
        assert time.monotonic() - began < 10  # bounded by publish_timeout, with ample slack

        reported = threading.Event()
        outcome: list[tuple[PublishError | None, DeliveryReport | None]] = []

        def callback(error: PublishError | None, delivery: DeliveryReport | None) -> None:
            outcome.append((error, delivery))
            reported.set()

        publisher.publish_async(topic, b"async", callback=callback)
        assert reported.wait(10)
        [(error, delivery)] = outcome
        assert isinstance(error, PublishError) and delivery is None
        assert f"message to {topic} not delivered" in str(error)
    # Leaving the block closed it: the report thread is gone and publishing is refused.
    assert REPORT_THREAD not in {t.name for t in threading.enumerate()}
    with pytest.raises(PublishError, match="closed"):
        publisher.publish(topic, b"late")


def test_a_closed_publisher_refuses_to_publish(kafka: Kafka) -> None:
    publisher = KafkaPublisher(kafka.brokers)
    publisher.close()
    publisher.close()  # idempotent
    with pytest.raises(PublishError, match="closed"):
        publisher.publish_async("t", b"v")
    with pytest.raises(PublishError, match="closed"):
        publisher.publish("t", b"v")
    assert REPORT_THREAD not in {t.name for t in threading.enumerate()}


def test_close_from_a_delivery_callback_ends_the_report_thread(kafka: Kafka) -> None:
    topic = kafka.topic()
    publisher = KafkaPublisher(kafka.brokers, publish_timeout=10)
    called = threading.Event()

    def close_from_here(error: PublishError | None, delivery: DeliveryReport | None) -> None:
        publisher.close()  # must neither deadlock nor raise in the report thread
        called.set()

    publisher.publish_async(topic, b"v", callback=close_from_here)
    assert called.wait(10)
    wait_for(lambda: REPORT_THREAD not in {t.name for t in threading.enumerate()})
    with pytest.raises(PublishError, match="closed"):
        publisher.publish(topic, b"late")


def test_a_publish_racing_close_is_either_refused_or_reported(kafka: Kafka) -> None:
    topic = kafka.topic()
    publisher = KafkaPublisher(kafka.brokers, publish_timeout=10)
    reports: list[PublishError | DeliveryReport | None] = []
    refused = []
    lock = threading.Lock()

    def publish_many() -> None:
        for n in range(200):
            try:
                publisher.publish_async(
                    topic, str(n),
                    callback=lambda error, delivery: reports.append(error or delivery))
            except PublishError:
                with lock:
                    refused.append(n)

    threads = [threading.Thread(target=publish_many) for _ in range(3)]
    for thread in threads:
        thread.start()
    publisher.close()  # flushes what was accepted, refuses the rest
    for thread in threads:
        thread.join(10)
    assert len(reports) + len(refused) == 600  # nothing accepted and left without a report
    assert all(isinstance(report, DeliveryReport) for report in reports)
