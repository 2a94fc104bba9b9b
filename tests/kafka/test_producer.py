"""The Kafka producer client against the test broker."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import opentracing
import pytest
from opentracing.mocktracer import MockTracer
from prometheus_client import REGISTRY

from patron import correlation
from patron.kafka import DeliveryReport, KafkaProducer, PublishError
from patron.messaging import Message
from tests.conftest import free_port
from tests.kafka.conftest import Kafka

pytestmark = [pytest.mark.kafka]


def status(status: str, topic: str, kind: str) -> float:
    labels = {"status": status, "topic": topic, "type": kind}
    return REGISTRY.get_sample_value("client_kafka_producer_message_status_total", labels) or 0.0


@pytest.fixture
def producer(kafka: Kafka) -> Iterator[KafkaProducer]:
    client = KafkaProducer(kafka.brokers)
    yield client
    client.close(10)


@pytest.fixture
def tracer() -> Iterator[MockTracer]:
    previous = opentracing.global_tracer()
    mock = MockTracer()
    opentracing.set_global_tracer(mock)
    yield mock
    opentracing.set_global_tracer(previous)


def test_send_waits_for_delivery_and_injects_correlation_and_trace(
        kafka: Kafka, producer: KafkaProducer, tracer: MockTracer) -> None:
    topic = kafka.topic()
    with correlation.correlation_id("cid-send"), tracer.start_active_span("handler"):
        delivery = producer.send(topic, b"payload", key="k1", headers={"app": "x"})
    assert isinstance(delivery, DeliveryReport) and delivery.topic == topic and delivery.offset == 0
    [raw] = kafka.read(topic, 1)
    assert (raw.value(), raw.key(), raw.partition()) == (b"payload", b"k1", delivery.partition)

    received = Message(raw.value(), headers=raw.headers(), source=topic)
    assert received.headers["app"] == b"x"
    assert received.correlation_id == "cid-send"
    with received.activate():  # the consumer side continues the producer's trace
        pass
    spans = {s.operation_name: s for s in tracer.finished_spans()}
    assert spans[f"{topic} send"].tags["span.kind"] == "producer"
    assert spans[f"{topic} process"].parent_id == spans[f"{topic} send"].context.span_id
    assert status("sent", topic, "sync") == 1


def test_a_correlation_id_given_in_the_headers_is_kept(kafka: Kafka, producer: KafkaProducer
                                                       ) -> None:
    topic = kafka.topic()
    producer.send(topic, "v", headers=[("x-correlation-id", "mine")])
    [raw] = kafka.read(topic, 1)
    ids = [value for name, value in raw.headers() if name.lower() == "x-correlation-id"]
    assert ids == [b"mine"]


def test_without_a_current_id_each_message_gets_a_new_one(kafka: Kafka, producer: KafkaProducer
                                                          ) -> None:
    topic = kafka.topic()
    producer.send(topic, "a", key="same")
    producer.send(topic, "b", key="same")
    ids = {dict(raw.headers())["X-Correlation-Id"] for raw in kafka.read(topic, 2)}
    assert len(ids) == 2


def test_send_async_reports_in_the_producer_thread_and_is_safe_from_many_threads(
        kafka: Kafka, producer: KafkaProducer) -> None:
    topic = kafka.topic()
    reports: list[tuple[PublishError | None, DeliveryReport | None, str]] = []
    lock = threading.Lock()

    def callback(error: PublishError | None, delivery: DeliveryReport | None) -> None:
        with lock:
            reports.append((error, delivery, threading.current_thread().name))

    def send_many(worker: int) -> None:
        for i in range(50):
            producer.send_async(topic, f"{worker}-{i}", callback=callback)

    workers = [threading.Thread(target=send_many, args=(w,)) for w in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert producer.flush(30) == 0
    assert len(reports) == 200
    assert all(error is None and delivery is not None for error, delivery, _ in reports)
    assert {thread for *_, thread in reports} == {"patron-kafka-producer"}
    values = sorted(raw.value() for raw in kafka.read(topic, 200))
    assert values == sorted(f"{w}-{i}".encode() for w in range(4) for i in range(50))
    assert status("sent", topic, "async") == 200


def test_a_message_over_the_size_limit_is_refused_at_once(kafka: Kafka) -> None:
    topic = kafka.topic()
    with (
        KafkaProducer(kafka.brokers, config={"message.max.bytes": 2000}) as small,
        pytest.raises(PublishError, match=f"cannot queue a message to {topic}"),
    ):
        small.send(topic, b"x" * 5000)
    assert status("creation-errors", topic, "sync") == 1


def test_an_undeliverable_message_raises_and_is_counted() -> None:
    producer = KafkaProducer(f"127.0.0.1:{free_port()}", config={"message.timeout.ms": 300})
    try:
        with pytest.raises(PublishError, match="not delivered"):
            producer.send("nowhere", b"v", timeout=10)
    finally:
        producer.close(1)
    assert status("send-errors", "nowhere", "sync") >= 1


def test_a_closed_producer_refuses_to_send(kafka: Kafka) -> None:
    producer = KafkaProducer(kafka.brokers)
    producer.close()
    producer.close()  # idempotent
    with pytest.raises(PublishError, match="closed"):
        producer.send_async("t", b"v")
    assert "patron-kafka-producer" not in {t.name for t in threading.enumerate()}
