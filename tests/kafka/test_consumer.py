"""The Kafka consumer component in-process, under a Service, against the test broker."""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import pytest
from confluent_kafka import Producer

from patron import EXIT_FAILURE, EXIT_OK, Config
from patron.kafka import KafkaConsumer
from patron.kafka.consumer import _Leaving
from patron.messaging import Batch, ConnectionRetry, Processor, Retry, per_message
from patron.testing.kafka import ENV_BROKERS, MockClusterProcess
from tests.conftest import free_port, wait_for
from tests.kafka.conftest import SESSION_TIMEOUT, Kafka
from tests.support.components import Recorder, running
from tests.support.metrics import await_sample, sample

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WAIT = 30.0  # generous bound for a group join plus consumption on a loaded machine
STATUS = "component_kafka_message_status_total"


def consumer_for(kafka: Kafka, topic: str, group: str, processor: Processor, **kw: Any
                 ) -> KafkaConsumer:
    kw.setdefault("session_timeout", SESSION_TIMEOUT)
    return KafkaConsumer(kafka.brokers, group, topic, processor, **kw)


def each(recorder: Recorder) -> Processor:
    """``recorder`` fed one activated message at a time (:func:`per_message`), so that its
    ``correlation_ids`` are those current while each message was handled."""
    return per_message(lambda message: recorder(Batch([message])))


def test_a_stream_is_processed_committed_and_counted(kafka: Kafka) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    values = [f"m{i}".encode() for i in range(40)]
    kafka.produce(topic, values[:20], headers=[("X-Correlation-Id", b"cid-stream")])
    kafka.produce(topic, values[20:], keys=[f"k{i}" for i in range(20)])
    recorder = Recorder()
    assignments: list[tuple[int, bool, str]] = []
    consumer_box: list[KafkaConsumer] = []

    def on_assign(client: Any, partitions: list[Any]) -> None:
        assignments.append((len(partitions), consumer_box[0].ready(),
                            threading.current_thread().name))

    consumer = consumer_for(kafka, topic, group, each(recorder), batch_size=10,
                            on_assign=on_assign, instance_id=kafka.name("static"))
    consumer_box.append(consumer)
    received = sample(STATUS, status="received", group=group, topic=topic)
    assert not consumer.ready()
    with running(consumer) as service:
        recorder.wait_for(len(values), WAIT)
        assert consumer.ready()
        service.stop()
        assert service.wait(30) == EXIT_OK

    assert sorted(recorder.bodies) == sorted(values)
    by_body = dict(zip(recorder.bodies, recorder.correlation_ids, strict=True))
    assert all(by_body[v] == "cid-stream" for v in values[:20])
    assert len({by_body[v] for v in values[20:]}) == 20  # a fresh id for each
    assert recorder.threads == {"patron-kafka-" + group}  # the component thread
    assert assignments == [(4, False, "patron-kafka-" + group)]  # not ready before assignment

    committed = kafka.committed(group, topic)
    assert sum(committed.values()) == len(values)
    await_sample(STATUS, received + len(values), status="received", group=group, topic=topic)
    await_sample(STATUS, len(values), status="processed", group=group, topic=topic)
    for partition in committed:
        await_sample("component_kafka_offset_diff", 0, group=group, topic=topic,
                     partition=str(partition))


def test_odd_payloads_are_delivered_as_they_are(kafka: Kafka) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    huge = b"h" * 200_000
    kafka.produce(topic, [b"\xff\xfe not utf-8"], partition=0)
    kafka.produce(topic, [b""], keys=[b"\x00\xffbinary-key"], partition=0)
    kafka.produce(topic, [None], keys=[b"tombstone"], partition=0)
    kafka.produce(topic, [b"big headers"], partition=0,
                  headers=[("huge", huge), ("X-Correlation-Id", b"\xff bad id"), ("nil", None)])
    recorder = Recorder()
    with running(consumer_for(kafka, topic, group, each(recorder))) as service:
        recorder.wait_for(4, WAIT)
        service.stop()
        assert service.wait(30) == EXIT_OK

    assert [(m.body, m.key) for m in recorder.messages] == [
        (b"\xff\xfe not utf-8", None), (b"", b"\x00\xffbinary-key"), (b"", b"tombstone"),
        (b"big headers", None)]
    tombstone, big = recorder.messages[2], recorder.messages[3]
    assert tombstone.raw.value() is None
    assert big.headers["huge"] == huge and big.headers["nil"] is None
    assert big.correlation_id != "\xff bad id" and len(big.correlation_id) == 36
    assert kafka.committed(group, topic) == {0: 4}


def test_a_poison_message_with_skip_is_committed_counted_logged_and_passed(
        kafka: Kafka, caplog: pytest.LogCaptureFixture) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"ok-1", b"poison", b"ok-2"], partition=0)
    calls: list[bytes] = []

    def hook(batch: Batch) -> None:
        calls.append(batch[0].body)
        if batch[0].body == b"poison":
            raise ValueError("cannot parse poison")

    recorder = Recorder(hook)
    consumer = consumer_for(kafka, topic, group, recorder, failure="skip",
                            processing_retry=Retry(count=2, wait=0.01))
    with running(consumer) as service:
        assert recorder.wait_for(2, WAIT) == [b"ok-1", b"ok-2"]
        service.stop()
        assert service.wait(30) == EXIT_OK
    assert calls == [b"ok-1", b"poison", b"poison", b"poison", b"ok-2"]  # 2 retries, no more
    assert kafka.committed(group, topic) == {0: 3}
    for status, count in (("skipped", 1), ("errored", 1), ("processed", 2)):
        await_sample(STATUS, count, status=status, group=group, topic=topic)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any("cannot parse poison" in line and "skipped" in line for line in logged)


def test_a_poison_message_with_exit_stops_the_service_uncommitted_and_comes_back(
        kafka: Kafka, caplog: pytest.LogCaptureFixture) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"ok-1", b"poison", b"ok-2"], partition=0)
    calls: list[bytes] = []

    def hook(batch: Batch) -> None:
        calls.append(batch[0].body)
        if batch[0].body == b"poison":
            raise ValueError("cannot parse poison")

    # exit: the default strategy
    with running(consumer_for(kafka, topic, group, Recorder(hook))) as service:
        assert service.wait(WAIT) == EXIT_FAILURE
    assert calls == [b"ok-1", b"poison"]  # tried once, then the component failed
    assert kafka.committed(group, topic) == {0: 1}  # nothing past ok-1
    assert any("failure strategy exit" in r.getMessage() for r in caplog.records)

    again = Recorder()
    with running(consumer_for(kafka, topic, group, again)):
        assert again.wait_for(1, WAIT)[0] == b"poison"  # a restart sees it again


def test_stop_finishes_and_commits_the_batch_in_hand(kafka: Kafka) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [f"m{i}".encode() for i in range(5)], partition=0)
    entered, release = threading.Event(), threading.Event()

    def hook(batch: Batch) -> None:
        entered.set()
        assert release.wait(WAIT)

    recorder = Recorder(hook)
    consumer = consumer_for(kafka, topic, group, recorder, batch_size=5, batch_timeout=5.0)
    with running(consumer) as service:
        assert entered.wait(WAIT)
        service.stop()
        release.set()
        assert service.wait(30) == EXIT_OK
    assert [len(batch) for batch in recorder.batches] == [5]
    assert kafka.committed(group, topic) == {0: 5}


def test_dedupe_hands_over_the_latest_message_of_each_key(kafka: Kafka) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    kafka.produce(topic, [b"a1", b"b1", b"a2", b"c1", b"b2"], keys=[b"a", b"b", b"a", b"c", b"b"],
                  partition=0)
    recorder = Recorder()
    consumer = consumer_for(kafka, topic, group, recorder, batch_size=5, batch_timeout=5.0,
                            dedupe=True)
    with running(consumer) as service:
        recorder.wait_for(1, WAIT)
        service.stop()
        assert service.wait(30) == EXIT_OK
    assert recorder.batches == [[b"a2", b"c1", b"b2"]]
    assert kafka.committed(group, topic) == {0: 5}  # the dropped ones are committed too


def test_a_missing_topic_fails_the_start_with_a_clear_error(
        kafka: Kafka, caplog: pytest.LogCaptureFixture) -> None:
    missing, group = kafka.name("missing"), kafka.name("g")
    consumer = consumer_for(kafka, missing, group, Recorder())
    with running(consumer) as service:
        assert service.wait(WAIT) == EXIT_FAILURE
    assert not consumer.ready()
    assert any(f"topic(s) {missing} do not exist" in r.getMessage() for r in caplog.records)


def test_unreachable_brokers_are_retried_then_the_service_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    address = f"127.0.0.1:{free_port()}"
    consumer = KafkaConsumer(address, "g", "t", Recorder(),
                             connection_retry=ConnectionRetry(count=2, wait=0.05, jitter=0),
                             connect_timeout=0.3)
    readiness: list[bool] = []
    with running(consumer) as service:
        while service.wait(0.05) is None:
            readiness.append(consumer.ready())
        assert service.wait() == EXIT_FAILURE
    assert not any(readiness)  # never assigned partitions: never ready
    retried = [r for r in caplog.records if "connection failed" in r.getMessage()]
    assert len(retried) == 2
    failure = [r.getMessage() for r in caplog.records if "giving up" in r.getMessage()]
    assert failure and "3 failed connection attempt(s)" in failure[0]
    assert f"cannot reach the Kafka brokers {address}" in failure[0]


def test_nack_is_not_a_kafka_strategy() -> None:
    with pytest.raises(ValueError, match="cannot nack"):
        KafkaConsumer("127.0.0.1:9", "g", "t", Recorder(), failure="nack")


class ReadinessAtRetry(logging.Handler):
    """Records ``consumer.ready()`` when the consumer logs a connection retry: in its own
    thread, while it waits to reconnect, so the reading cannot miss that moment."""

    def __init__(self, consumer: KafkaConsumer) -> None:
        super().__init__()
        self.consumer = consumer
        self.readings: list[bool] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "connection failed" in record.getMessage():
            self.readings.append(self.consumer.ready())


def test_brokers_lost_while_consuming_are_retried_then_the_service_fails(
        caplog: pytest.LogCaptureFixture) -> None:
    if os.environ.get(ENV_BROKERS):
        pytest.skip("needs a broker this test may kill: runs on the mock cluster only")
    cluster = MockClusterProcess()  # its own: this test kills it
    try:
        topic = Kafka.name("t")
        Producer({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        Kafka(cluster.bootstrap).produce(topic, [b"before"])
        recorder = Recorder()
        consumer = KafkaConsumer(
            cluster.bootstrap, Kafka.name("g"), topic, recorder,
            session_timeout=SESSION_TIMEOUT, connect_timeout=0.5,
            connection_retry=ConnectionRetry(count=1, wait=0.05, jitter=0),
        )
        at_retry = ReadinessAtRetry(consumer)
        logging.getLogger("patron.kafka").addHandler(at_retry)
        try:
            with running(consumer) as service:
                recorder.wait_for(1, WAIT)
                assert consumer.ready()
                cluster.kill()
                assert service.wait(WAIT) == EXIT_FAILURE
        finally:
            logging.getLogger("patron.kafka").removeHandler(at_retry)
    finally:
        cluster.kill()
    assert at_retry.readings == [True]  # still ready while it retried ...
    assert not consumer.ready()  # ... not once it gave up
    messages = [r.getMessage() for r in caplog.records]
    assert any("all Kafka brokers have been down" in m and "retry 1 of 1" in m for m in messages)
    assert any("giving up after 2 failed connection attempt(s)" in m for m in messages)


def test_concurrency_2_makes_two_members_that_share_the_partitions(kafka: Kafka) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    recorder = Recorder()
    assigned: dict[str, list[int]] = {}  # member thread -> its latest partitions

    def on_assign(client: Any, partitions: list[Any]) -> None:
        assigned[threading.current_thread().name] = sorted(p.partition for p in partitions)

    consumer = consumer_for(kafka, topic, group, recorder, concurrency=2, on_assign=on_assign)
    members = {f"patron-kafka-{group}-0", f"patron-kafka-{group}-1"}
    with running(consumer) as service:
        # Ready once both members got an assignment; produced only then, on every partition,
        # so that each member has messages to process.
        wait_for(consumer.ready, WAIT)
        # The member that joined first may still hold everything until its new assignment
        # of the rebalance arrives: wait for the partitions to be split.
        wait_for(lambda: set(assigned) == members
                 and sorted(p for m in members for p in assigned[m]) == [0, 1, 2, 3], WAIT)
        assert all(assigned[m] for m in members)  # both got partitions
        values = [f"p{p}-{i}".encode() for p in range(4) for i in range(10)]
        for p in range(4):
            kafka.produce(topic, values[p * 10:(p + 1) * 10], partition=p)
        assert sorted(recorder.wait_for(len(values), WAIT)) == sorted(values)
        assert consumer.ready()
        service.stop()
        assert service.wait(30) == EXIT_OK
    assert recorder.threads == members  # processed from both members' threads
    assert sorted(recorder.bodies) == sorted(values)  # each once: no rebalance in between
    assert kafka.committed(group, topic) == {p: 10 for p in range(4)}
    await_sample(STATUS, len(values), status="processed", group=group, topic=topic)


def test_ready_stays_true_through_a_rebalance(kafka: Kafka, run) -> None:
    topic, group = kafka.topic(), kafka.name("g")
    first_assignments: list[tuple[int, bool]] = []  # (partitions, ready() at that moment)
    first_box: list[KafkaConsumer] = []

    def on_assign(client: Any, partitions: list[Any]) -> None:
        # Inside the rebalance, in the member's own thread: a reading that cannot miss it.
        first_assignments.append((len(partitions), first_box[0].ready()))

    first = consumer_for(kafka, topic, group, Recorder(), on_assign=on_assign)
    first_box.append(first)
    second = consumer_for(kafka, topic, group, Recorder())
    run(first)
    wait_for(first.ready, WAIT)
    assert first_assignments == [(4, False)]  # ready once assigned, not before

    run(second)  # joining the group makes every member give up its partitions and rejoin
    readings: list[bool] = []

    def rebalanced() -> bool:
        readings.append(first.ready())
        return second.ready() and len(first_assignments) >= 2

    wait_for(rebalanced, WAIT, 0.005)
    assert readings and all(readings)  # sampled all along the rebalance
    # Assigned again, now part of the partitions, and ready at that moment already.
    assert all(ready for _, ready in first_assignments[1:])
    assert 0 < first_assignments[-1][0] < 4
    assert first.ready() and second.ready()


@pytest.mark.parametrize("setting", ["enable.auto.commit", "enable.auto.offset.store"])
def test_config_cannot_switch_off_at_least_once(setting: str) -> None:
    with pytest.raises(ValueError, match=setting):
        KafkaConsumer("127.0.0.1:9092", "g", "t", lambda batch: None, config={setting: True})


@pytest.mark.parametrize("concurrency", [1, 2])
def test_brokers_gone_at_the_stop_it_still_stops_within_the_shutdown_budget(
        concurrency: int, caplog: pytest.LogCaptureFixture) -> None:
    if os.environ.get(ENV_BROKERS):
        pytest.skip("needs a broker this test may kill: runs on the mock cluster only")
    cluster = MockClusterProcess()  # its own: this test kills it
    group = Kafka.name("g")
    try:
        topic = Kafka.name("t")
        producer = Kafka(cluster.bootstrap)
        Producer({"bootstrap.servers": cluster.bootstrap}).list_topics(topic, timeout=10)
        recorder = Recorder()
        # librdkafka's close() waits up to a session timeout for a coordinator that is gone,
        # far beyond the budget. A long connect_timeout: the outage is not acted on before
        # the stop.
        consumer = KafkaConsumer(cluster.bootstrap, group, topic, recorder,
                                 session_timeout=10.0, connect_timeout=60.0,
                                 concurrency=concurrency)
        with running(consumer, config=Config(shutdown_timeout=2.0, drain_delay=0.0)
                     ) as service:
            wait_for(consumer.ready, WAIT)
            producer.produce(topic, [b"m"] * 4)  # an offset to commit
            recorder.wait_for(4, WAIT)
            cluster.kill()
            service.stop()
            assert service.wait(30) == EXIT_OK  # not EXIT_TIMEOUT: it returned in time
    finally:
        cluster.kill()
        for thread in threading.enumerate():  # the closes left to finish in the background
            if thread.name.startswith(f"patron-kafka-{group}") and thread.name.endswith("-close"):
                thread.join(30)
    assert any("did not close by the stop deadline" in r.getMessage() for r in caplog.records)


def test_members_waiting_for_each_other_to_commit_give_up_at_the_stop_deadline() -> None:
    leaving = _Leaving(members=2, timeout=60.0)
    stop = threading.Event()
    leaving.start(stop)
    stop.set()
    assert leaving.stopping()
    # Member 1 never commits (still in a long processor call): member 0 waits for it until the
    # time left before the stop deadline, not for the whole session timeout.
    waited = threading.Thread(target=lambda: results.append(leaving.arrive(0, True, left=0.2)))
    results: list[bool] = []
    waited.start()
    waited.join(10)
    assert not waited.is_alive() and results == [False]
    # Without a deadline the session timeout bounds it, and the other member's arrival ends it.
    late = threading.Thread(target=lambda: results.append(leaving.arrive(0, True)))
    late.start()
    leaving.arrive(1, False)
    late.join(10)
    assert not late.is_alive() and results == [False, True]
