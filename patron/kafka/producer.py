"""The Kafka producer client: synchronous and asynchronous sends with tracing and correlation.

Threads
    A :class:`KafkaProducer` is safe to share between threads. It owns one thread,
    ``patron-kafka-producer``, that serves librdkafka's delivery reports: callbacks given to
    :meth:`KafkaProducer.send_async` run there (keep them short), and :meth:`KafkaProducer.send`
    waits for its report from the caller's thread. :meth:`KafkaProducer.close` flushes what is
    queued and joins that thread; call it (or use the producer as a context manager).

Headers
    Every message gets ``X-Correlation-Id`` (the current correlation id, or a new one, unless
    the caller's headers have one) and the trace context of a ``"{topic} send"`` span, so a
    patron consumer continues the trace and logs with the same id.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from patron import correlation, messaging, metrics, tracing

__all__ = ["DeliveryCallback", "DeliveryReport", "KafkaProducer", "PublishError"]

logger = logging.getLogger("patron.kafka")

_STATUS = metrics.counter(
    "client_kafka_producer_message_status",
    "Kafka messages produced by status: sent, creation-errors, send-errors",
    ["status", "topic", "type"],
)

HeaderValue = str | bytes | None
Headers = Mapping[str, HeaderValue] | Iterable[tuple[str, HeaderValue]]


class PublishError(messaging.PublishError):
    """A message could not be queued or was not delivered; ``str(error)`` says why."""


@dataclasses.dataclass(frozen=True)
class DeliveryReport:
    """Where a message was written."""

    topic: str
    partition: int
    offset: int


#: ``callback(error, delivery)``: exactly one of them is None.
DeliveryCallback = Callable[[PublishError | None, DeliveryReport | None], None]


class KafkaProducer:
    """Produces to the Kafka cluster at ``brokers``; ``config`` adds librdkafka settings.

    Idempotence is on by default (``enable.idempotence``), so a retried send is not written
    twice. :meth:`send` and :meth:`send_async` raise :class:`PublishError` when the message
    cannot be queued (closed producer, full local queue, a value over the size limit).
    """

    def __init__(
        self,
        brokers: str | Sequence[str],
        *,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        brokers = brokers if isinstance(brokers, str) else ",".join(brokers)
        if not brokers.strip():
            raise ValueError("KafkaProducer needs at least one broker")
        settings: dict[str, Any] = {
            "bootstrap.servers": brokers,
            "enable.idempotence": True,
            "log.connection.close": False,
            "logger": logging.getLogger("patron.kafka.client"),
        }
        settings.update(config or {})
        self._producer: Any = Producer(settings)
        self._closed = threading.Event()
        # Messages without a delivery report yet; flush() waits on it so that reports are only
        # ever served by the producer's own thread (librdkafka's flush would serve them in the
        # caller's).
        self._idle = threading.Condition()
        self._outstanding = 0
        self._poller = threading.Thread(
            target=self._serve_reports,
            name="patron-kafka-producer",
            daemon=True,  # joined by close(); daemon only so a forgotten close can't hang exit
        )
        self._poller.start()

    # -- sending -----------------------------------------------------------------------------

    def send(
        self,
        topic: str,
        value: str | bytes | None,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        timeout: float = 30.0,
    ) -> DeliveryReport:
        """Send and wait (at most ``timeout`` s) for the broker's acknowledgement.

        Raises :class:`PublishError` when the message is not delivered in time or at all.
        """
        done = threading.Event()
        outcome: list[Any] = []

        def on_delivery(error: PublishError | None, delivery: DeliveryReport | None) -> None:
            outcome.append(error if error is not None else delivery)
            done.set()

        with tracing.start_span(f"{topic} send", kind=tracing.tags.SPAN_KIND_PRODUCER,
                                component="kafka"):
            self._produce(topic, value, key, headers, on_delivery, "sync")
            if not done.wait(timeout):
                # The report still comes later and is counted then; the caller learns now.
                raise PublishError(f"no delivery report for a message to {topic} "
                                    f"within {timeout:g}s")
        result = outcome[0]
        if isinstance(result, PublishError):
            raise result
        assert isinstance(result, DeliveryReport)
        return result

    def send_async(
        self,
        topic: str,
        value: str | bytes | None,
        *,
        key: str | bytes | None = None,
        headers: Headers | None = None,
        callback: DeliveryCallback | None = None,
    ) -> None:
        """Queue the message and return; ``callback(error, delivery)`` runs in the producer's
        thread once the broker answered (an exception from it is logged)."""
        with tracing.start_span(f"{topic} send", kind=tracing.tags.SPAN_KIND_PRODUCER,
                                component="kafka"):
            self._produce(topic, value, key, headers, callback, "async")

    def flush(self, timeout: float = 30.0) -> int:
        """Wait until every message sent so far got its delivery report (at most ``timeout``
        s); return how many are still waiting. Reports keep running in the producer's thread."""
        with self._idle:
            self._idle.wait_for(lambda: self._outstanding == 0, timeout)
            return self._outstanding

    def close(self, timeout: float = 30.0) -> None:
        """Flush (at most ``timeout`` s), then stop the report thread. Idempotent."""
        if self._closed.is_set():
            return
        left = self.flush(timeout)
        if left:
            logger.warning("kafka producer closed with %d undelivered message(s)", left)
        self._closed.set()
        self._poller.join()

    def __enter__(self) -> KafkaProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals ---------------------------------------------------------------------------

    def _produce(
        self,
        topic: str,
        value: str | bytes | None,
        key: str | bytes | None,
        headers: Headers | None,
        callback: DeliveryCallback | None,
        kind: str,
    ) -> None:
        if self._closed.is_set():
            raise PublishError("the Kafka producer is closed")

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

        with self._idle:
            self._outstanding += 1
        try:
            self._producer.produce(topic, value=value, key=key, headers=_outgoing(headers),
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

    @staticmethod
    def _call(callback: DeliveryCallback | None, error: PublishError | None,
              delivery: DeliveryReport | None) -> None:
        if callback is None:
            return
        try:
            callback(error, delivery)
        except Exception:
            logger.exception("kafka producer: a delivery callback raised")

    def _serve_reports(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.1)
        self._producer.poll(0)


def _outgoing(headers: Headers | None) -> list[tuple[str, HeaderValue]]:
    pairs = list(headers.items() if isinstance(headers, Mapping) else headers or ())
    lower = {name.lower() for name, _ in pairs}
    if correlation.HEADER.lower() not in lower:
        pairs.append((correlation.HEADER, correlation.outgoing()))
    carrier: dict[str, str] = {}
    tracing.inject(carrier)
    pairs.extend((name, value) for name, value in carrier.items() if name.lower() not in lower)
    return pairs
