"""The Kafka publisher: synchronous and asynchronous publishing with tracing and correlation.

Threads
    A :class:`KafkaPublisher` is safe to share between threads. It owns one thread,
    ``patron-kafka-publisher``, that serves librdkafka's delivery reports: callbacks given to
    :meth:`KafkaPublisher.publish_async` run there (keep them short), and
    :meth:`KafkaPublisher.publish` waits for its report in the caller's thread.
    :meth:`KafkaPublisher.close` flushes what is queued and joins that thread; call it (or use
    the publisher as a context manager).

Headers
    Every message gets ``X-Correlation-Id`` (the current correlation id, or a new one, unless
    the caller's headers have one) and the trace context of a ``"{topic} publish"`` span, so a
    patron consumer continues the trace and logs with the same id.

Metrics
    ``client_kafka_producer_message_status{status, topic, type}``: messages ``sent``,
    ``send-errors`` (not delivered) and ``creation-errors`` (not even queued), by ``type``
    ``sync`` (:meth:`~KafkaPublisher.publish`) or ``async``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from patron import messaging, metrics
from patron.kafka import _client
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_PUBLISH_TIMEOUT
from patron.messaging._publisher import Publisher

__all__ = ["DeliveryCallback", "DeliveryReport", "KafkaPublisher", "PublishError"]

logger = logging.getLogger("patron.kafka")

_STATUS = metrics.counter(
    "client_kafka_producer_message_status",
    "Kafka messages produced by status: sent, creation-errors, send-errors",
    ["status", "topic", "type"],
)

HeaderValue = str | bytes | None
Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]


class PublishError(messaging.PublishError):
    """A message could not be queued, was not delivered, or not within the publish timeout."""


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Where a message was written."""

    topic: str
    partition: int
    offset: int


#: ``callback(error, delivery)``: exactly one of them is None.
DeliveryCallback = Callable[[PublishError | None, DeliveryReport | None], None]


class KafkaPublisher(Publisher):
    """Publishes to the Kafka cluster at ``brokers``; ``config`` adds librdkafka settings.

    Idempotence is on by default (``enable.idempotence``), so a message librdkafka sends again
    is not written twice. librdkafka gives up on a message after ``publish_timeout``
    (``message.timeout.ms``), so an asynchronous publish reports within it too.
    :meth:`publish` and :meth:`publish_async` raise :class:`PublishError` at once when the
    message cannot be queued (closed publisher, full local queue, a value over the size limit).
    """

    transport = "kafka"

    def __init__(
        self,
        brokers: str | Sequence[str],
        *,
        publish_timeout: float = DEFAULT_PUBLISH_TIMEOUT,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(publish_timeout=publish_timeout, connect_timeout=connect_timeout)
        settings = _client.settings(
            _client.bootstrap(brokers, "KafkaPublisher"), connect_timeout, config,
            **{
                "enable.idempotence": True,
                # librdkafka gives up a little before publish() does, so that its report, with
                # the real reason, reaches the caller in time (reports are served every 0.1 s)
                "message.timeout.ms": max(1, int(1000 * max(
                    publish_timeout / 2, publish_timeout - max(0.25, publish_timeout / 10)))),
            },
        )
        self._producer: Any = Producer(settings)
        self._closing = False  # no publish may start once set (under _idle)
        self._closed = threading.Event()  # the report thread may end
        # Messages without a delivery report yet; flush() waits on it so that reports are only
        # ever served by the publisher's own thread (librdkafka's flush would serve them in the
        # caller's).
        self._idle = threading.Condition()
        self._outstanding = 0
        self._poller = threading.Thread(
            target=self._serve_reports,
            name="patron-kafka-publisher",
            daemon=True,  # joined by close(); daemon only so a forgotten close can't hang exit
        )
        self._poller.start()

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        body: str | bytes | None,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
    ) -> DeliveryReport:
        """Publish and wait for the broker's acknowledgement (at most ``publish_timeout``).

        ``body`` None is a tombstone. Raises :class:`PublishError` when the message is not
        delivered in time or at all.
        """
        done = threading.Event()
        outcome: list[Any] = []

        def on_delivery(error: PublishError | None, delivery: DeliveryReport | None) -> None:
            outcome.append(error if error is not None else delivery)
            done.set()

        with self._span(topic):
            self._produce(topic, body, key, headers, on_delivery, "sync")
            if not done.wait(self.publish_timeout):
                # The report still comes later and is counted then; the caller learns now.
                raise PublishError(f"no delivery report for a message to {topic} "
                                   f"within {self.publish_timeout:g}s")
        result = outcome[0]
        if isinstance(result, PublishError):
            raise result
        assert isinstance(result, DeliveryReport)
        return result

    def publish_async(
        self,
        topic: str,
        body: str | bytes | None,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        """Queue the message and return; ``callback(error, delivery)`` runs in the publisher's
        thread once the broker answered or ``publish_timeout`` passed (an exception from it is
        logged)."""
        with self._span(topic):
            self._produce(topic, body, key, headers, callback, "async")

    def flush(self, timeout: float | None = None) -> int:
        """Wait until every message published so far got its delivery report (at most
        ``timeout`` s, default ``publish_timeout``); return how many are still waiting."""
        with self._idle:
            self._idle.wait_for(lambda: self._outstanding == 0,
                                self.publish_timeout if timeout is None else timeout)
            return self._outstanding

    def close(self) -> None:
        """Refuse new publishes, flush (at most ``publish_timeout``), then stop the report
        thread. Idempotent. From a delivery callback it returns at once; the report thread then
        ends once every report was served."""
        with self._idle:
            if self._closing:
                return
            self._closing = True
            if threading.current_thread() is self._poller:  # it cannot wait for itself
                if self._outstanding == 0:
                    self._closed.set()
                return
        left = self.flush()
        if left:
            logger.warning("kafka publisher closed with %d undelivered message(s)", left)
        self._closed.set()
        self._poller.join()

    # -- internals ---------------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        body: str | bytes | None,
        key: str | bytes | None,
        headers: Headers | None,
        callback: DeliveryCallback | None,
        kind: str,
    ) -> None:
        def report(error: KafkaError | None, message: Any) -> None:
            try:
                if error is not None:
                    _STATUS.labels("send-errors", topic, kind).inc()
                    problem = PublishError(f"message to {topic} not delivered: {error.str()}")
                    self._call(callback, problem, None)
                else:
                    _STATUS.labels("sent", topic, kind).inc()
                    delivery = DeliveryReport(
                        message.topic(), message.partition(), message.offset()
                    )
                    self._call(callback, None, delivery)
            finally:
                self._settled()

        pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
        pairs.extend(self._context(name for name, _ in pairs).items())
        with self._idle:  # with close(): a publish either counts for its flush, or is refused
            if self._closing:
                raise PublishError("the Kafka publisher is closed")
            self._outstanding += 1
        try:
            self._producer.produce(topic, value=body, key=key, headers=pairs,
                                   on_delivery=report)
        except (BufferError, KafkaException, TypeError, ValueError) as exc:
            self._settled()
            _STATUS.labels("creation-errors", topic, kind).inc()
            reason = "the local queue is full" if isinstance(exc, BufferError) else str(exc)
            raise PublishError(f"cannot queue a message to {topic}: {reason}") from exc

    def _settled(self) -> None:
        with self._idle:
            self._outstanding -= 1
            if self._outstanding == 0:
                self._idle.notify_all()
                if self._closing:  # closed from a callback: the report thread may end now
                    self._closed.set()

    @staticmethod
    def _call(callback: DeliveryCallback | None, error: PublishError | None,
              delivery: DeliveryReport | None) -> None:
        if callback is None:
            return
        try:
            callback(error, delivery)
        except Exception:
            logger.exception("kafka publisher: a delivery callback raised")

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)
        self._producer.poll(0)
