"""The AMQP publisher client against the real RabbitMQ."""

from __future__ import annotations

import logging
import socket
import threading
import time
import uuid

import pika
import pytest

from patron import correlation
from patron.amqp import AMQPPublisher, PublishError
from tests.amqp.conftest import Broker
from tests.conftest import free_port
from tests.support.metrics import sample

pytestmark = pytest.mark.amqp

_DURATION = "client_amqp_publish_duration_seconds_count"


def _published(exchange: str, success: str) -> float:
    # Observed by publish itself before it returns or raises: no waiting needed.
    return sample(_DURATION, exchange=exchange, success=success)


def test_publish_is_confirmed_and_carries_correlation_id_timestamp_and_persistence(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    before = _published("", "true")
    with AMQPPublisher(amqp_url) as publisher, correlation.correlation_id("corr-pub"):
        publisher.publish("", queue, b"hello", headers={"k": "v"})
        # Confirmed: the broker holds it when publish returns, no waiting needed.
        assert broker.ready(queue) == 1
    [(_, props, body)] = broker.drain(queue)
    assert body == b"hello"
    assert props.headers["X-Correlation-Id"] == "corr-pub" and props.headers["k"] == "v"
    assert props.delivery_mode == 2
    assert abs(props.timestamp - time.time()) < 5
    assert _published("", "true") == before + 1


def test_a_new_correlation_id_outside_any_and_an_explicit_one_is_kept(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    explicit = pika.BasicProperties(headers={"x-correlation-id": "mine"}, timestamp=42,
                                    delivery_mode=1)
    with AMQPPublisher(amqp_url) as publisher:
        publisher.publish("", queue, b"fresh", persistent=False)
        publisher.publish("", queue, b"explicit", properties=explicit)
    (_, fresh, _), (_, kept, _) = broker.drain(queue)
    assert uuid.UUID(fresh.headers["X-Correlation-Id"]).version == 4
    assert fresh.delivery_mode is None
    assert kept.headers == {"x-correlation-id": "mine"}
    assert kept.timestamp == 42 and kept.delivery_mode == 1
    assert explicit.headers == {"x-correlation-id": "mine"}  # the caller's object is untouched


def test_an_unroutable_mandatory_message_raises_and_counts_as_failed(
    broker: Broker, amqp_url: str
) -> None:
    exchange = broker.exchange("direct")  # nothing bound
    before = _published(exchange, "false")
    with AMQPPublisher(amqp_url) as publisher:
        with pytest.raises(PublishError, match="returned: no queue is bound"):
            publisher.publish(exchange, "nowhere", b"lost", mandatory=True)
        publisher.publish(exchange, "nowhere", b"dropped by the broker")  # not mandatory
    assert _published(exchange, "false") == before + 1


def test_a_missing_exchange_raises_and_the_publisher_goes_on(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    missing = f"{broker.prefix}-no-such-exchange"
    with AMQPPublisher(amqp_url) as publisher:
        with pytest.raises(PublishError, match="404"):
            publisher.publish(missing, "key", b"x")
        publisher.publish("", queue, b"still works")
    assert broker.ready(queue) == 1


def test_reconnects_after_the_broker_closed_its_connection(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="patron.amqp")
    queue = broker.queue()
    with AMQPPublisher(amqp_url, connection_name=broker.app_name("publisher")) as publisher:
        publisher.publish("", queue, b"first")
        assert broker.close_app_connections() == 1
        publisher.publish("", queue, b"second")
    # Noticed before the message went out: published once, no duplicate.
    assert [body for _, _, body in broker.drain(queue)] == [b"first", b"second"]
    messages = [record.getMessage() for record in caplog.records]
    assert any("CONNECTION_FORCED" in m and "reconnecting" in m for m in messages), messages


def test_publishing_from_several_threads_at_once(broker: Broker, amqp_url: str) -> None:
    queue = broker.queue()
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def publish_many(publisher: AMQPPublisher, worker: int) -> None:
        try:
            start.wait(5)
            for i in range(50):
                publisher.publish("", queue, f"{worker}-{i}".encode())
        except BaseException as exc:
            errors.append(exc)

    with AMQPPublisher(amqp_url) as publisher:
        threads = [threading.Thread(target=publish_many, args=(publisher, w)) for w in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
    assert errors == []
    bodies = [body for _, _, body in broker.drain(queue)]
    assert sorted(bodies) == sorted(f"{w}-{i}".encode() for w in range(4) for i in range(50))


def test_an_unreachable_broker_is_a_clear_error(amqp_url: str) -> None:
    url = f"amqp://guest:secret@127.0.0.1:{free_port()}/"
    with AMQPPublisher(url, connect_timeout=2) as publisher, pytest.raises(
        PublishError, match=r"cannot connect to amqp://guest:\*\*\*@127.0.0.1:\d+/: .*refused"
    ):
        publisher.publish("", "q", b"x")


def test_a_broker_that_never_answers_is_a_publish_error_within_the_publish_timeout() -> None:
    # A listening socket nobody accepts from: the kernel completes the TCP handshake, and the
    # AMQP handshake never gets an answer.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        port = silent.getsockname()[1]
        url = f"amqp://guest:guest@127.0.0.1:{port}/"
        with AMQPPublisher(url, publish_timeout=1, connect_timeout=60) as publisher:
            started = time.monotonic()
            with pytest.raises(PublishError, match=r"cannot connect to .*Timeout"):
                publisher.publish("", "q", b"x")
            # Bounded by its 1 s publish timeout, not the 60 s allowed to connect.
            assert time.monotonic() - started < 10


def test_a_body_that_is_not_bytes_is_refused(amqp_url: str) -> None:
    with AMQPPublisher(amqp_url) as publisher, pytest.raises(TypeError, match="bytes"):
        publisher.publish("", "q", "text")  # type: ignore[arg-type]


def test_a_publish_the_broker_blocks_raises_at_its_deadline_and_holds_up_no_other(
    broker: Broker, amqp_url: str
) -> None:
    queue = broker.queue()
    failed_before = _published("", "false")
    outcomes: dict[str, tuple[float, float, BaseException | None]] = {}

    def publish(publisher: AMQPPublisher, body: bytes) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        try:
            publisher.publish("", queue, body)
        except BaseException as exc:
            error = exc
        outcomes[body.decode()] = (started, time.monotonic(), error)

    with AMQPPublisher(amqp_url, publish_timeout=1) as publisher:
        publisher.publish("", queue, b"before")  # connected, and the connection works
        with broker.memory_alarm():  # the broker blocks publishers; restored on the way out
            first = threading.Thread(target=publish, args=(publisher, b"first"))
            second = threading.Thread(target=publish, args=(publisher, b"second"))
            first.start()
            second.start()  # together: one holds the connection, the other waits for it
            first.join(30)
            second.join(30)
        # The alarm is over: the same publisher publishes again, on a new connection.
        publisher.publish("", queue, b"after")
    assert set(outcomes) == {"first", "second"}, outcomes
    for started, ended, error in outcomes.values():
        assert isinstance(error, PublishError), error
        assert ended - started < 10  # its own 1 s timeout, with room for a loaded machine
    latest_start = max(started for started, _, _ in outcomes.values())
    assert all(latest_start < ended for _, ended, _ in outcomes.values())  # they overlapped
    assert _published("", "false") == failed_before + 2
    # A publish cut off at its deadline may still be routed once the alarm clears (the broker
    # reads what the dropped connection had sent): whether it was is unknown, as the error says.
    bodies = [body for _, _, body in broker.drain(queue)]
    assert bodies[0] == b"before" and b"after" in bodies


@pytest.mark.parametrize("fault", ["password", "vhost"])
def test_a_refused_login_raises_at_once_without_the_password(
    broker: Broker, amqp_url: str, caplog: pytest.LogCaptureFixture, fault: str
) -> None:
    queue = broker.queue()
    url = (amqp_url.replace("guest:guest", "guest:wrong-secret") if fault == "password"
           else broker.url_of(f"{broker.prefix}-no-such-vhost"))
    attempts: list[float] = []
    real = pika.BlockingConnection

    def counting(*args: object, **kwargs: object) -> object:
        attempts.append(time.monotonic())
        return real(*args, **kwargs)

    publisher = AMQPPublisher(url, publish_timeout=30.0)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pika, "BlockingConnection", counting)
        with pytest.raises(PublishError) as raised:
            publisher.publish("", queue, b"refused")
    publisher.close()
    assert len(attempts) == 1  # not tried again within the publish timeout
    text = str(raised.value)
    reason = "authentication refused" if fault == "password" else "access denied"
    assert reason in text and "\n" not in text and "wrong-secret" not in text, text
    assert not any("wrong-secret" in r.getMessage() for r in caplog.records)
    assert broker.ready(queue) == 0
