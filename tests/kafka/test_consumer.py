"""The Kafka consumer component in-process, under a Service, against the test broker."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator

import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from patron import EXIT_FAILURE, EXIT_OK, Service, correlation
from patron.config import Config
from patron.kafka import Batch, KafkaConsumer, Message, Retry
from patron.messaging import per_message
from patron.testing.kafka import ENV_BROKERS, MockClusterProcess
from tests.conftest import free_port
from tests.kafka.conftest import SESSION_TIMEOUT, Kafka

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WAIT = 30.0  # generous bound for a group join plus consumption on a loaded machine


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def services() -> Iterator[list[Service]]:
    started: list[Service] = []
    yield started
    for service in started:
        service.stop()
        service.wait(30)


def start(services: list[Service], consumer: KafkaConsumer) -> Service:
    service = Service("kafka-test", components=[consumer], default_http=False,
                      config=Config(shutdown_timeout=20))
    services.append(service)
    return service.start()


def consumer_for(kafka: Kafka, topic: str, group: str, processor, **kw) -> KafkaConsumer:
    kw.setdefault("session_timeout", SESSION_TIMEOUT)
    return KafkaConsumer(kafka.brokers, group, topic, processor, **kw)


class Collector:
    """A per-message handler recording what it saw, signalling once ``expected`` arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: list[tuple[bytes, bytes | None, str | None, Message]] = []
        self.threads: set[str] = set()
        self.done = threading.Event()

    def __call__(self, message: Message) -> None:
        self.seen.append((message.body, message.key, correlation.current(), message))
        self.threads.add(threading.current_thread().name)
        if len(self.seen) >= self.expected:
            self.done.set()


def test_a_stream_is_processed_committed_and_counted(kafka: Kafka, services) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    values = [f"m{i}".encode() for i in range(40)]
    kafka.produce(topic, values[:20], headers=[("X-Correlation-Id", b"cid-stream")])
    kafka.produce(topic, values[20:], keys=[f"k{i}" for i in range(20)])
    collect = Collector(len(values))
    assignments: list[tuple[int, bool, str]] = []
    consumer_box: list[KafkaConsumer] = []

    def on_assign(client, partitions) -> None:
        assignments.append((len(partitions), consumer_box[0].ready(),
                            threading.current_thread().name))

    consumer = consumer_for(kafka, topic, group, per_message(collect), batch_size=10,
                            on_assign=on_assign, instance_id=kafka.name("static"))
    consumer_box.append(consumer)
    received = metric("component_kafka_message_status_total", status="received", group=group,
                      topic=topic)
    assert not consumer.ready()
    service = start(services, consumer)
    assert collect.done.wait(WAIT)
    assert consumer.ready()
    service.stop()
    assert service.wait(30) == EXIT_OK

    assert sorted(body for body, *_ in collect.seen) == sorted(values)
    by_body = {body: cid for body, _, cid, _ in collect.seen}
    assert all(by_body[v] == "cid-stream" for v in values[:20])
    assert len({by_body[v] for v in values[20:]}) == 20  # a fresh id for each
    assert collect.threads == {"patron-kafka-" + group}  # the component thread
    assert assignments == [(4, False, "patron-kafka-" + group)]  # not ready before assignment

    committed = kafka.committed(group, topic)
    assert sum(committed.values()) == len(values)
    assert metric("component_kafka_message_status_total", status="received", group=group,
                  topic=topic) - received == len(values)
    assert metric("component_kafka_message_status_total", status="processed", group=group,
                  topic=topic) == len(values)
    for partition in committed:
        assert metric("component_kafka_offset_diff", group=group, topic=topic,
                      partition=str(partition)) == 0


def test_odd_payloads_are_delivered_as_they_are(kafka: Kafka, services) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    huge = b"h" * 200_000
    kafka.produce(topic, [b"\xff\xfe not utf-8"], partition=0)
    kafka.produce(topic, [b""], keys=[b"\x00\xffbinary-key"], partition=0)
    kafka.produce(topic, [None], keys=[b"tombstone"], partition=0)
    kafka.produce(topic, [b"big headers"], partition=0,
                  headers=[("huge", huge), ("X-Correlation-Id", b"\xff bad id"), ("nil", None)])
    collect = Collector(4)
    start(services, consumer_for(kafka, topic, group, per_message(collect)))
    assert collect.done.wait(WAIT)

    bodies = [(body, key) for body, key, *_ in collect.seen]
    assert bodies == [(b"\xff\xfe not utf-8", None), (b"", b"\x00\xffbinary-key"),
                      (b"", b"tombstone"), (b"big headers", None)]
    tombstone, big = collect.seen[2][3], collect.seen[3][3]
    assert tombstone.raw.value() is None
    assert big.headers["huge"] == huge and big.headers["nil"] is None
    assert big.correlation_id != "\xff bad id" and len(big.correlation_id) == 36
    services[0].stop()
    assert services[0].wait(30) == EXIT_OK
    assert kafka.committed(group, topic) == {0: 4}


def test_a_poison_message_with_skip_is_committed_counted_logged_and_passed(
        kafka: Kafka, services, caplog: pytest.LogCaptureFixture) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"ok-1", b"poison", b"ok-2"], partition=0)
    calls: list[bytes] = []
    done = threading.Event()

    def process(batch: Batch) -> None:
        calls.append(batch[0].body)
        if batch[0].body == b"poison":
            raise ValueError("cannot parse poison")
        if batch[0].body == b"ok-2":
            done.set()

    service = start(services, consumer_for(kafka, topic, group, process, failure="skip",
                                           processing_retry=Retry(count=2, wait=0.01)))
    assert done.wait(WAIT)
    service.stop()
    assert service.wait(30) == EXIT_OK
    assert calls == [b"ok-1", b"poison", b"poison", b"poison", b"ok-2"]  # 2 retries, no more
    assert kafka.committed(group, topic) == {0: 3}
    for status, count in (("skipped", 1), ("errored", 1), ("processed", 2)):
        assert metric("component_kafka_message_status_total", status=status, group=group,
                      topic=topic) == count
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("cannot parse poison" in line and "skipped" in line for line in logged)


def test_a_poison_message_with_exit_stops_the_service_uncommitted_and_comes_back(
        kafka: Kafka, services, caplog: pytest.LogCaptureFixture) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"ok-1", b"poison", b"ok-2"], partition=0)
    calls: list[bytes] = []

    def process(batch: Batch) -> None:
        calls.append(batch[0].body)
        if batch[0].body == b"poison":
            raise ValueError("cannot parse poison")

    service = start(services, consumer_for(kafka, topic, group, process))  # exit: the default
    assert service.wait(WAIT) == EXIT_FAILURE
    assert calls == [b"ok-1", b"poison"]  # tried once, then the component failed
    assert kafka.committed(group, topic) == {0: 1}  # nothing past ok-1
    assert any("failure strategy exit" in r.getMessage() for r in caplog.records)

    again = Collector(1)
    restarted = start(services, consumer_for(kafka, topic, group, per_message(again)))
    assert again.done.wait(WAIT)
    assert again.seen[0][0] == b"poison"  # a restart sees it again
    restarted.stop()
    restarted.wait(30)


def test_stop_finishes_and_commits_the_batch_in_hand(kafka: Kafka, services) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [f"m{i}".encode() for i in range(5)], partition=0)
    entered, release = threading.Event(), threading.Event()
    batches: list[int] = []

    def process(batch: Batch) -> None:
        batches.append(len(batch))
        entered.set()
        assert release.wait(WAIT)

    service = start(services, consumer_for(kafka, topic, group, process, batch_size=5,
                                           batch_timeout=5.0))
    assert entered.wait(WAIT)
    service.stop()
    release.set()
    assert service.wait(30) == EXIT_OK
    assert batches == [5]
    assert kafka.committed(group, topic) == {0: 5}


def test_dedupe_hands_over_the_latest_message_of_each_key(kafka: Kafka, services) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"a1", b"b1", b"a2", b"c1", b"b2"], keys=[b"a", b"b", b"a", b"c", b"b"],
                  partition=0)
    seen: list[list[bytes]] = []
    done = threading.Event()

    def process(batch: Batch) -> None:
        seen.append([m.body for m in batch])
        done.set()

    service = start(services, consumer_for(kafka, topic, group, process, batch_size=5,
                                           batch_timeout=5.0, dedupe=True))
    assert done.wait(WAIT)
    service.stop()
    assert service.wait(30) == EXIT_OK
    assert seen == [[b"a2", b"c1", b"b2"]]
    assert kafka.committed(group, topic) == {0: 5}  # the dropped ones are committed too


def test_a_missing_topic_fails_the_start_with_a_clear_error(
        kafka: Kafka, services, caplog: pytest.LogCaptureFixture) -> None:
    missing, group = kafka.name("missing"), kafka.name("g")
    consumer = consumer_for(kafka, missing, group, lambda b: None)
    service = start(services, consumer)
    assert service.wait(WAIT) == EXIT_FAILURE
    assert not consumer.ready()
    assert any(f"topic(s) {missing} do not exist" in r.getMessage() for r in caplog.records)


def test_unreachable_brokers_are_retried_then_the_service_fails(
        services, caplog: pytest.LogCaptureFixture) -> None:
    address = f"127.0.0.1:{free_port()}"
    consumer = KafkaConsumer(address, "g", "t", lambda b: None, retries=2, retry_wait=0.05,
                             connect_timeout=0.3)
    readiness: list[bool] = []
    service = start(services, consumer)
    while service.wait(0.05) is None:
        readiness.append(consumer.ready())
    assert service.wait() == EXIT_FAILURE
    assert not any(readiness)
    retried = [r for r in caplog.records if "connection failed" in r.getMessage()]
    assert len(retried) == 2
    failure = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert failure and "3 failed connection attempt(s)" in failure[0]
    assert f"cannot reach the Kafka brokers {address}" in failure[0]


def test_nack_is_not_a_kafka_strategy() -> None:
    with pytest.raises(ValueError, match="cannot nack"):
        KafkaConsumer("127.0.0.1:9", "g", "t", lambda b: None, failure="nack")


def test_brokers_lost_while_consuming_are_retried_then_the_service_fails(
        services, caplog: pytest.LogCaptureFixture) -> None:
    if os.environ.get(ENV_BROKERS):
        pytest.skip("needs a broker this test may kill: runs on the mock cluster only")
    cluster = MockClusterProcess()  # its own: this test kills it
    try:
        topic = Kafka.name("t")
        Producer({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        Kafka(cluster.bootstrap).produce(topic, [b"before"])
        collect = Collector(1)
        consumer = KafkaConsumer(cluster.bootstrap, Kafka.name("g"), topic, per_message(collect),
                                 session_timeout=SESSION_TIMEOUT, retries=1, retry_wait=0.05,
                                 connect_timeout=0.5)
        service = start(services, consumer)
        assert collect.done.wait(WAIT)
    finally:
        cluster.kill()
    assert service.wait(WAIT) == EXIT_FAILURE
    assert not consumer.ready()
    messages = [r.getMessage() for r in caplog.records]
    assert any("all Kafka brokers have been down" in m and "retry 1 of 1" in m for m in messages)
    assert any("giving up after 2 failed connection attempt(s)" in m for m in messages)
