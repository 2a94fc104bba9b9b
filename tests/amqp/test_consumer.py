"""The AMQP consumer component against the real RabbitMQ, in-process Services."""

from __future__ import annotations

import datetime
import decimal
import itertools
import logging
import os
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import pika
import pytest

from patron import EXIT_FAILURE, EXIT_OK, Service, correlation
from patron.amqp import AMQPConsumer, AMQPMessage, AMQPPublisher, QueueDeclaration
from patron.messaging import Batch, ConnectionRetry, PermanentError, Retry, TransportError
from tests.amqp.conftest import Broker, Watched
from tests.conftest import free_port, wait_for
from tests.messaging.proxy import Proxy
from tests.support.components import FAST, Recorder, Runner, running
from tests.support.jaeger import SpanCapture
from tests.support.metrics import await_sample, sample

pytestmark = pytest.mark.amqp

_COUNTER = "component_amqp_message_counter_total"
_CONNECTED = "component_consumer_connected"


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records]


# -- the happy path ---------------------------------------------------------------------------


def test_processes_and_acks_each_message_with_the_correlation_id_of_its_headers(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"one"], headers={"X-Correlation-Id": "corr-1"})
    broker.publish(queue, [b"two"], headers={"x-correlation-id": "corr-2"})  # any case
    broker.publish(queue, [b"three"])  # none: a new one
    recorder = Recorder()
    consumer = AMQPConsumer(amqp_url, queue, recorder,
                            connection_retry=ConnectionRetry(wait=0.1, jitter=0))
    assert not consumer.ready()
    with running(consumer):
        assert recorder.wait_for(3) == [b"one", b"two", b"three"]
        assert consumer.ready()
    assert not consumer.ready()
    assert recorder.correlation_ids[:2] == ["corr-1", "corr-2"]
    assert uuid.UUID(recorder.correlation_ids[2]).version == 4
    message = recorder.messages[0]
    assert isinstance(message, AMQPMessage) and message.delivery_tag == 1
    assert isinstance(message.raw, pika.spec.Basic.Deliver) and message.raw.delivery_tag == 1
    assert message.source == queue and not message.redelivered
    # Stopping gives back whatever is not acked: an empty queue means all three were acked.
    assert broker.ready(queue) == 0


def test_trace_and_correlation_id_travel_from_the_publisher_to_the_processor(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    recorder = Recorder()
    consumer = AMQPConsumer(amqp_url, queue, recorder)
    with SpanCapture() as capture:
        with running(consumer, config=capture.config(shutdown_timeout=15.0)), AMQPPublisher(
            amqp_url
        ) as publisher, correlation.correlation_id("corr-trace"):
            publisher.publish("", queue, b"traced")
            recorder.wait_for(1)
        spans = {span.operation: span for span in capture.spans(count=2)}
    published, processed = spans[f"{queue} publish"], spans[f"{queue} process"]
    assert processed.trace_id_low == published.trace_id_low
    assert processed.parent_span_id == published.span_id
    assert recorder.correlation_ids == ["corr-trace"]


def test_batches_fill_up_to_the_batch_size_or_the_timeout_and_are_never_empty(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [f"m{i}".encode() for i in range(25)])
    recorder = Recorder()
    consumer = AMQPConsumer(amqp_url, queue, recorder, batch_size=10, batch_timeout=0.3)
    with running(consumer):
        recorder.wait_for(25)
        assert [len(batch) for batch in recorder.batches] == [10, 10, 5]
        broker.publish(queue, [b"late"])
        recorder.wait_for(26)
    # The idle time before "late" produced no processor call at all.
    assert recorder.batches[3:] == [[b"late"]]
    assert recorder.bodies == [f"m{i}".encode() for i in range(25)] + [b"late"]
    assert broker.ready(queue) == 0


@pytest.mark.parametrize(
    ("batch_size", "prefetch", "window"),
    [(10, None, 20), (1, 3, 3)],
    ids=["prefetch-from-batch-size", "explicit-prefetch"],
)
def test_stop_finishes_the_batch_in_hand_acks_it_and_requeues_the_prefetched_at_once(
    broker: Broker, amqp_url: str, batch_size: int, prefetch: int | None, window: int
) -> None:
    queue = broker.queue()
    total = 60
    broker.publish(queue, [f"m{i:02d}".encode() for i in range(total)])
    entered, release = threading.Event(), threading.Event()

    def hold_first(batch: Batch) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(10)

    recorder = Recorder(hold_first)
    consumer = Watched(AMQPConsumer(amqp_url, queue, recorder, batch_size=batch_size,
                                    prefetch=prefetch))
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    service.start()
    try:
        assert entered.wait(10)
        # The prefetch window is all the broker hands out while the first batch is in hand.
        wait_for(lambda: broker.ready(queue) == total - window, timeout=5)
        service.stop()
        wait_for(consumer.stopping, timeout=5)  # told to stop with the batch still in hand
        release.set()
        assert service.wait(15) == EXIT_OK
    finally:
        release.set()
        service.stop()
        service.wait(15)
    assert recorder.batches == [[f"m{i:02d}".encode() for i in range(batch_size)]]
    # The batch in hand was acked; everything else is ready again, before any timeout.
    assert broker.ready(queue) == total - batch_size
    assert broker.consumers(queue) == 0
    remaining = [body for _, _, body in broker.drain(queue)]
    assert remaining == [f"m{i:02d}".encode() for i in range(batch_size, total)]


def test_acks_reach_the_broker_while_consuming_not_only_at_stop(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [f"m{i}".encode() for i in range(7)])
    recorder = Recorder()
    with running(AMQPConsumer(amqp_url, queue, recorder, prefetch=20)):
        recorder.wait_for(7)
        # Coalesced acks are sent once the stream pauses, while the consumer keeps running.
        wait_for(lambda: broker.unacked(queue) == 0, timeout=10, interval=0.2)


def test_without_ack_delay_each_ack_is_sent_before_the_next_message_is_processed(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"first", b"second"])
    entered, release = threading.Event(), threading.Event()

    def hold_second(batch: Batch) -> None:
        if batch[0].body == b"second":
            entered.set()
            assert release.wait(20)

    recorder = Recorder(hold_second)
    with running(AMQPConsumer(amqp_url, queue, recorder, ack_delay=0)):
        try:
            assert entered.wait(10)
            assert broker.unacked(queue) == 1  # only the one in hand
        finally:
            release.set()


def test_concurrency_two_connections_share_the_queue_each_message_processed_once(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    recorder = Recorder()
    consumer = AMQPConsumer(amqp_url, queue, recorder, concurrency=2)
    expected = [f"m{i:02d}".encode() for i in range(40)]
    with running(consumer):
        wait_for(consumer.ready, timeout=10)  # both connections subscribed
        assert broker.consumers(queue) == 2
        await_sample(_CONNECTED, 2, name=consumer.name)
        # Published once both are subscribed: the broker hands them out to both in turn.
        broker.publish(queue, expected)
        recorder.wait_for(len(expected))
        assert consumer.ready()
    assert sorted(recorder.bodies) == expected  # each one exactly once
    assert recorder.threads == {f"patron-{consumer.name}-0", f"patron-{consumer.name}-1"}
    assert not any(m.redelivered for m in recorder.messages if isinstance(m, AMQPMessage))
    assert broker.ready(queue) == 0 and broker.consumers(queue) == 0
    assert not consumer.ready()
    assert sample(_CONNECTED, name=consumer.name) == 0


# -- bad input --------------------------------------------------------------------------------


def test_empty_binary_and_large_bodies_arrive_intact(broker: Broker, amqp_url: str) -> None:
    queue = broker.queue()
    bodies = [b"", bytes(range(256)) * 4, os.urandom(4 * 1024 * 1024), b"\x00"]
    broker.publish(queue, bodies)
    recorder = Recorder()
    with running(AMQPConsumer(amqp_url, queue, recorder)):
        got = recorder.wait_for(len(bodies))
    assert got == bodies
    assert broker.ready(queue) == 0


def test_headers_of_unexpected_types_are_delivered_and_do_not_break_processing(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    when = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    odd = {
        "X-Correlation-Id": 12345,  # not text: a new id is made
        "uber-trace-id": b"\xff\xfe not utf-8",
        "nested": {"a": [1, "x", None]},
        "when": when,
        "flag": True,
        "price": decimal.Decimal("1.5"),
        "nothing": None,
    }
    broker.publish(queue, [b"odd"], headers=odd)
    broker.publish(queue, [b"bad-trace"], headers={"uber-trace-id": "not:a:trace"})
    recorder = Recorder()
    with running(AMQPConsumer(amqp_url, queue, recorder)):
        assert recorder.wait_for(2) == [b"odd", b"bad-trace"]
    headers = recorder.messages[0].headers
    assert headers["nested"] == {"a": [1, "x", None]}
    assert headers["when"] == when and headers["flag"] is True
    assert headers["price"] == decimal.Decimal("1.5") and headers["nothing"] is None
    assert uuid.UUID(recorder.correlation_ids[0]).version == 4
    assert broker.ready(queue) == 0


# -- poison messages and failure strategies ---------------------------------------------------


def _poison(attempts: list[float]) -> Recorder:
    def fail_on_poison(batch: Batch) -> None:
        if batch[0].body == b"poison":
            attempts.append(time.monotonic())
            raise ValueError("cannot process this one")

    return Recorder(fail_on_poison)


def test_poison_with_exit_fails_the_component_and_leaves_the_message_in_the_queue(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"ok1", b"poison", b"ok2"])
    attempts: list[float] = []
    recorder = _poison(attempts)
    consumer = AMQPConsumer(amqp_url, queue, recorder, failure="exit")
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    assert service.start().wait(15) == EXIT_FAILURE
    assert recorder.bodies == [b"ok1"] and len(attempts) == 1
    assert [body for _, _, body in broker.drain(queue)] == [b"poison", b"ok2"]
    assert any("failure strategy exit" in m for m in _messages(caplog))


def test_poison_with_skip_is_retried_then_acked_counted_and_the_rest_goes_on(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"ok1", b"poison", b"ok2"])
    attempts: list[float] = []
    recorder = _poison(attempts)
    consumer = AMQPConsumer(amqp_url, queue, recorder, failure="skip",
                            processing_retry=Retry(count=1, wait=0.05))
    with running(consumer):
        assert recorder.wait_for(2) == [b"ok1", b"ok2"]
        await_sample(_COUNTER, 1, queue=queue, state="ACK", hasError="true")
    assert len(attempts) == 2  # one retry, then skipped
    # Stopped: the consumer handed every count over when it closed.
    assert sample(_COUNTER, queue=queue, state="ACK", hasError="false") == 2
    assert broker.ready(queue) == 0


def test_poison_with_nack_is_redelivered_with_growing_pauses_not_in_a_hot_loop(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"poison"])
    seen: list[tuple[float, bool]] = []

    def fail_three_times(batch: Batch) -> None:
        message = batch[0]
        assert isinstance(message, AMQPMessage)
        seen.append((time.monotonic(), message.redelivered))
        if len(seen) <= 3:
            raise ValueError("not yet")

    recorder = Recorder(fail_three_times)
    consumer = AMQPConsumer(amqp_url, queue, recorder, failure="nack",
                            processing_retry=Retry(count=0, wait=0.1, backoff=2))
    with running(consumer):
        assert recorder.wait_for(1) == [b"poison"]
    assert [redelivered for _, redelivered in seen] == [False, True, True, True]
    gaps = [later - earlier for (earlier, _), (later, _) in itertools.pairwise(seen)]
    # Paced by the retry policy, growing while it keeps failing: never a hot loop.
    assert all(gap >= least for gap, least in zip(gaps, [0.095, 0.195, 0.395], strict=True)), gaps
    assert sample(_COUNTER, queue=queue, state="NACK", hasError="true") == 3
    assert broker.ready(queue) == 0


def test_nack_without_requeue_lands_in_the_dead_letter_queue_of_the_source_queue(
    broker: Broker, amqp_url: str
) -> None:
    source, dead_letters = broker.dead_lettered_queue()
    broker.publish(source, [b"ok1", b"poison", b"reject-me", b"ok2"])
    attempts: list[float] = []

    def hook(batch: Batch) -> None:
        if batch[0].body == b"reject-me":
            batch[0].nack(requeue=False)  # the processor's own decision
        elif batch[0].body == b"poison":
            attempts.append(time.monotonic())
            raise ValueError("cannot process this one")

    recorder = Recorder(hook)
    consumer = AMQPConsumer(amqp_url, source, recorder, failure="nack", requeue=False,
                            processing_retry=Retry(count=0, wait=0.05))
    with running(consumer):
        recorder.wait_for(3)
        wait_for(lambda: broker.ready(dead_letters) == 2, timeout=5)
    assert recorder.bodies == [b"ok1", b"reject-me", b"ok2"]
    assert len(attempts) == 1  # not redelivered to us
    dead = broker.drain(dead_letters)
    assert [body for _, _, body in dead] == [b"poison", b"reject-me"]
    assert all(props.headers["x-death"][0]["queue"] == source for _, props, _ in dead)
    assert broker.ready(source) == 0


# -- start-up failures ------------------------------------------------------------------------


def test_an_unreachable_broker_keeps_it_unready_is_retried_then_fails_clearly(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = broker.queue()
    url = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    consumer = AMQPConsumer(url, queue, Recorder(), connect_timeout=2,
                            connection_retry=ConnectionRetry(count=2, wait=0.3, jitter=0))
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    service.start()
    try:
        wait_for(lambda: any("retry 1 of 2" in m for m in _messages(caplog)), timeout=5)
        assert not consumer.ready() and not service.ready()
        assert service.wait(10) == EXIT_FAILURE
    finally:
        service.stop()
        service.wait(10)
    messages = _messages(caplog)
    assert sum("connection failed" in m for m in messages) == 2
    assert any("giving up after 3 failed connection attempt(s)" in m
               and "Connection refused" in m for m in messages), messages


@pytest.mark.parametrize("fault", ["password", "user", "unknown vhost", "forbidden vhost"])
def test_a_refused_login_or_virtual_host_fails_at_once_naming_the_url_without_the_password(
    broker: Broker, amqp_url: str, run: Callable[[Any], Runner],
    caplog: pytest.LogCaptureFixture, fault: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="patron")
    queue = broker.queue()
    if fault == "password":
        url, reason = amqp_url.replace("guest:guest", "guest:wrong-secret"), "authentication"
    elif fault == "user":
        url, reason = amqp_url.replace("guest:guest", "nobody:wrong-secret"), "authentication"
    elif fault == "unknown vhost":
        url, reason = broker.url_of(f"{broker.prefix}-no-such-vhost"), "access denied"
    else:  # a virtual host that exists but guest may not use
        url, reason = broker.url_of(broker.vhost(permitted=False)), "access denied"
    # Slow retries: a retried failure could not end within the wait below.
    consumer = AMQPConsumer(url, queue, Recorder(),
                            connection_retry=ConnectionRetry(count=5, wait=30.0, jitter=0))
    error = run(consumer).ended(timeout=10)
    assert isinstance(error, PermanentError), error
    text = str(error)
    assert "\n" not in text and reason in text and consumer.url in text, text
    assert ":***@" in consumer.url and "wrong-secret" not in text
    assert not consumer.ready()
    messages = _messages(caplog)
    assert not any("connection failed" in m or "retry 1" in m for m in messages), messages
    assert not any("wrong-secret" in m for m in messages), messages


def test_a_missing_queue_fails_at_once_with_a_clear_error(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = broker.name()  # never declared
    consumer = AMQPConsumer(amqp_url, queue, Recorder(),
                            connection_retry=ConnectionRetry(count=5, wait=5.0, jitter=0))
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    # Well within the first retry wait: the error is permanent, never retried.
    assert service.start().wait(4) == EXIT_FAILURE
    messages = _messages(caplog)
    assert any(f"queue {queue!r} does not exist" in m for m in messages), messages
    assert not any("retry 1" in m for m in messages)
    assert not broker.exists(queue)


def test_a_queue_deleted_while_consuming_is_noticed_and_fails_the_component(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    queue = broker.queue()
    consumer = AMQPConsumer(amqp_url, queue, Recorder(),
                            connection_retry=ConnectionRetry(count=2, wait=0.1, jitter=0))
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    service.start()
    try:
        wait_for(consumer.ready, timeout=5)
        broker.channel.queue_delete(queue)
        assert service.wait(10) == EXIT_FAILURE
        assert not consumer.ready()  # gave up
    finally:
        service.stop()
        service.wait(10)
    messages = _messages(caplog)
    assert any("cancelled the consumer" in m for m in messages), messages
    assert any("does not exist" in m for m in messages), messages


# -- declaration ------------------------------------------------------------------------------


def test_declaration_creates_a_missing_queue_with_its_exchange_and_binding(
    broker: Broker, amqp_url: str
) -> None:
    queue, exchange = broker.name(), broker.exchange_name()
    recorder = Recorder()
    consumer = AMQPConsumer(
        amqp_url, queue, recorder,
        declare=QueueDeclaration(exchange=exchange, exchange_type="topic",
                                 routing_key="orders.*"),
    )
    with running(consumer), AMQPPublisher(amqp_url) as publisher:
        wait_for(consumer.ready, timeout=5)
        publisher.publish(exchange, "orders.new", b"routed", mandatory=True)
        assert recorder.wait_for(1) == [b"routed"]
    assert broker.exists(queue)


def test_declaration_uses_an_existing_queue_as_it_is(broker: Broker, amqp_url: str) -> None:
    source, _ = broker.dead_lettered_queue()  # declared with arguments the consumer lacks
    broker.publish(source, [b"kept"])
    recorder = Recorder()
    with running(AMQPConsumer(amqp_url, source, recorder, declare=True)):
        assert recorder.wait_for(1) == [b"kept"]


def test_a_declaration_conflicting_with_the_broker_fails_at_once(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    exchange = broker.exchange("fanout")
    consumer = AMQPConsumer(
        amqp_url, broker.name(), Recorder(),
        connection_retry=ConnectionRetry(count=5, wait=5.0, jitter=0),
        declare=QueueDeclaration(exchange=exchange, exchange_type="topic", exchange_durable=False),
    )
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    assert service.start().wait(4) == EXIT_FAILURE
    assert any("406" in m and "PRECONDITION_FAILED" in m for m in _messages(caplog))


def test_invalid_settings_are_refused_at_construction() -> None:
    def nothing(batch: Batch) -> None:
        pass

    url = "amqp://guest:guest@127.0.0.1:5672/"
    with pytest.raises(ValueError, match="prefetch"):
        AMQPConsumer(url, "q", nothing, batch_size=10, prefetch=5)
    with pytest.raises(ValueError, match="amqp://"):
        AMQPConsumer("http://127.0.0.1:5672/", "q", nothing)
    with pytest.raises(ValueError, match="queue"):
        AMQPConsumer(url, "", nothing)
    assert AMQPConsumer(url, "q", nothing, batch_size=40).prefetch == 80


# -- metrics ----------------------------------------------------------------------------------


def test_metrics_count_messages_and_report_their_age_and_the_queue_size(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    old = pika.BasicProperties(timestamp=int(time.time()) - 120, delivery_mode=2)
    broker.publish(queue, [b"x"] * 30, properties=old)
    entered, release = threading.Event(), threading.Event()

    def hold_first(batch: Batch) -> None:
        if not entered.is_set():
            entered.set()
            assert release.wait(10)

    recorder = Recorder(hold_first)
    consumer = AMQPConsumer(amqp_url, queue, recorder, stats_interval=0.2)
    with running(consumer):
        assert entered.wait(10)
        # Read at subscription (30), or at a later probe once the prefetch window left (20).
        assert 20 <= sample("component_amqp_queue_size", queue=queue) <= 30
        release.set()
        recorder.wait_for(30)
        await_sample("component_amqp_queue_size", 0, queue=queue)
        await_sample(_COUNTER, 30, queue=queue, state="ACK", hasError="false")
        await_sample(_COUNTER, 30, queue=queue, state="FETCHED", hasError="false")
    assert sample("component_amqp_message_age", queue=queue) >= 119


# -- connection faults ------------------------------------------------------------------------


def test_heartbeats_are_answered_while_idle_and_while_waiting_between_retries(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = broker.queue()
    attempts: list[float] = []

    def flaky(batch: Batch) -> None:
        attempts.append(time.monotonic())
        if len(attempts) < 3:
            raise RuntimeError("not yet")

    recorder = Recorder(flaky)
    # heartbeat=1: the broker drops a connection that stays silent for about 2 s. No
    # connection retries: a dropped connection would fail the component.
    consumer = AMQPConsumer(amqp_url, queue, recorder, heartbeat=1,
                            connection_retry=ConnectionRetry(count=0),
                            processing_retry=Retry(count=2, wait=1.5, backoff=1))
    with running(consumer) as service:
        wait_for(consumer.ready, timeout=5)
        time.sleep(3)  # the stimulus: an idle consumer, 3 heartbeat timeouts long
        broker.publish(queue, [b"flaky"])
        assert recorder.wait_for(1, timeout=10) == [b"flaky"]
        assert attempts[2] - attempts[0] >= 2.9  # 3 s of retry waits without a fetch
        assert service.wait(0) is None and consumer.ready()
    assert not any("connection failed" in m for m in _messages(caplog))
    assert broker.ready(queue) == 0  # acked over the same connection


def test_every_connection_closed_by_the_broker_reconnects_and_loses_nothing(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    queue = broker.queue()
    expected = [f"m{i:03d}".encode() for i in range(200)]
    broker.publish(queue, expected)
    reached, release = threading.Event(), threading.Event()

    def pause_at_50(batch: Batch) -> None:
        if batch[0].body == b"m050" and not reached.is_set():
            reached.set()
            assert release.wait(20)

    recorder = Recorder(pause_at_50)
    consumer = AMQPConsumer(amqp_url, queue, recorder,
                            connection_retry=ConnectionRetry(count=3, wait=0.2, jitter=0),
                            connection_name=broker.app_name("consumer"))
    with running(consumer) as service, AMQPPublisher(
        amqp_url, connection_name=broker.app_name("publisher")
    ) as publisher:
        publisher.publish("", queue, b"before")
        assert reached.wait(10)
        try:
            assert broker.close_app_connections() == 2  # the consumer's and the publisher's
        finally:
            release.set()
        publisher.publish("", queue, b"after")  # reconnects by itself
        expected += [b"before", b"after"]
        wait_for(lambda: set(recorder.bodies) >= set(expected), timeout=15)
        wait_for(consumer.ready, timeout=5)
        assert service.wait(0) is None  # still running
    assert any("connection failed" in m for m in _messages(caplog))
    assert broker.ready(queue) == 0


def test_ready_stays_true_while_it_reconnects_then_it_consumes_again(
    broker: Broker, amqp_url: str, run: Callable[[Any], Runner]
) -> None:
    queue = broker.queue()
    recorder = Recorder()
    # One second between losing the connection and the next attempt: a window to look into.
    consumer = AMQPConsumer(amqp_url, queue, recorder, connection_name=broker.app_name("c"),
                            connection_retry=ConnectionRetry(count=3, wait=1.0, jitter=0))
    runner = run(consumer)
    wait_for(consumer.ready, timeout=10)
    seen: list[tuple[float, bool]] = []  # (connections up, ready()) every 20 ms
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.02):
            seen.append((sample(_CONNECTED, name=consumer.name), consumer.ready()))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        assert broker.close_app_connections() == 1
        # The connection went down and came back: the watcher saw both.
        wait_for(lambda: any(up == 0 for up, _ in list(seen)), timeout=10)
        wait_for(lambda: seen and seen[-1][0] == 1, timeout=10)
    finally:
        done.set()
        watcher.join(5)
    assert all(ready for _, ready in seen), seen
    assert broker.consumers(queue) == 1
    broker.publish(queue, [b"after"])
    assert recorder.wait_for(1) == [b"after"]
    assert consumer.ready() and runner.error is None and runner.thread.is_alive()


def test_ready_turns_false_once_it_gives_up_on_a_broker_that_keeps_refusing(
    broker: Broker, run: Callable[[Any], Runner], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    # A virtual host of the test's own: deleting it closes the consumer's connection and makes
    # the broker refuse every reconnection, without touching anybody else's.
    vhost = broker.vhost()
    consumer = AMQPConsumer(broker.url_of(vhost), f"{broker.prefix}-q", Recorder(),
                            declare=True,
                            connection_retry=ConnectionRetry(count=2, wait=1.0, jitter=0))
    runner = run(consumer)
    wait_for(consumer.ready, timeout=10)
    broker.delete_vhost(vhost)
    # Retrying (waits of 1 s, then 2 s before giving up): still ready.
    wait_for(lambda: any("retry 1 of 2" in m for m in _messages(caplog)), timeout=15)
    assert consumer.ready()
    error = runner.ended(30)
    assert isinstance(error, TransportError), error
    assert "giving up after 3 failed connection attempt(s)" in str(error)
    assert not consumer.ready()


def test_ready_follows_the_subscription(broker: Broker, amqp_url: str) -> None:
    queue = broker.queue()
    consumer = AMQPConsumer(amqp_url, queue, Recorder())
    service = Service("amqp-test", components=[consumer], config=FAST, default_http=False)
    assert not consumer.ready()
    with service:
        wait_for(consumer.ready, timeout=5)
        assert broker.consumers(queue) == 1
    assert not consumer.ready()
    assert broker.consumers(queue) == 0


def test_a_message_shows_its_delivery(broker: Broker, amqp_url: str) -> None:
    queue = broker.queue()
    props = pika.BasicProperties(message_id="id-7", content_type="text/plain", timestamp=1_700)
    broker.publish(queue, [b"hello"], properties=props)
    recorder = Recorder()
    with running(AMQPConsumer(amqp_url, queue, recorder)):
        recorder.wait_for(1)
    message = recorder.messages[0]
    assert isinstance(message, AMQPMessage)
    assert message.message_id == "id-7" and message.routing_key == queue
    assert message.exchange == "" and message.timestamp == 1700.0
    assert message.properties.content_type == "text/plain"
    assert message.raw.routing_key == queue  # pika's Basic.Deliver
    assert message.text == "hello"


def test_a_stop_deadline_bounds_the_closing_when_the_broker_stops_answering(
    broker: Broker, amqp_url: str, run: Callable[[Any], Runner]
) -> None:
    queue = broker.queue()
    broker.publish(queue, [b"one"])
    parts = urllib.parse.urlsplit(amqp_url)
    with Proxy((parts.hostname or "127.0.0.1", parts.port or 5672)) as proxy:
        url = urllib.parse.urlunsplit(
            parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
        recorder = Recorder()
        # Heartbeats a minute apart: pika would take minutes to notice the silence itself.
        consumer = AMQPConsumer(url, queue, recorder, heartbeat=60)
        runner = run(consumer)
        assert recorder.wait_for(1) == [b"one"]
        proxy.freeze()  # the broker goes silent: cancelling and closing get no answer
        consumer.stop_by(time.monotonic() + 1.0)
        runner.stop.set()
        # Without the deadline, closing would wait for the broker until heartbeats gave up.
        assert runner.ended(timeout=15) is None
        assert not consumer.ready()
    # The dropped connection gave everything not acked back; the ack of "one" may not have
    # reached the broker before it went silent (at-least-once): "one" is there at most.
    wait_for(lambda: broker.consumers(queue) == 0, timeout=10)
    assert broker.ready(queue) <= 1
