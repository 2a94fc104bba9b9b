"""The Kafka consumer component: a consumer group member on confluent-kafka.

It is a :class:`patron.messaging.ConsumerLoop` driven by a Kafka transport, so batching,
retries, failure strategies, spans and correlation ids work as for every patron consumer.

Threads
    Everything runs in the component's thread: ``consume()``, the processor, storing offsets,
    and the rebalance callbacks (librdkafka calls them from inside ``consume()``), so a
    rebalance never interrupts a processor and a batch is always settled before the next
    fetch can move partitions away.

Offsets (at-least-once)
    After the processor returned for a batch, the offsets of the messages it finished are
    *stored*, per partition only up to the first message that was not acknowledged; librdkafka
    commits stored offsets in the background every ``commit_interval`` seconds, when partitions
    are revoked in a rebalance, and when the consumer closes. Nothing else is ever committed.
    The consumer thread never waits on a commit, so a broker that dies in the middle of one
    cannot wedge it. With the ``exit`` strategy the failed message and what follows it in its
    partition are not stored: a restart, or the member that takes the partition over, sees
    them again. On stop the batch in hand is finished and stored, then the consumer closes,
    which commits and leaves the group (a static member, see ``instance_id``, keeps its
    partitions until its session times out, so that a restart gets them back without a
    rebalance). A process killed outright loses at most ``commit_interval`` of commits: those
    messages are processed again.

Session timeouts
    A member that dies without leaving (SIGKILL, a lost host) keeps its partitions until
    ``session_timeout`` passes, and the rebalance that follows waits for the other members to
    rejoin. The default of 10 s (Kafka's own is 45 s) keeps that recovery around 10-15 s; brokers
    accept 6 s at least unless ``group.min.session.timeout.ms`` says otherwise. Heartbeats go
    every ``session_timeout / 3``. Closing while every broker is gone waits up to one session
    timeout for the final commit, so keep it below the Service's shutdown timeout.

Broker outages
    librdkafka reconnects by itself. When every broker stays down for ``connect_timeout``, the
    component recreates the client under its retry policy (``retries``, ``retry_wait``) and
    fails once those are used up, so a lasting outage ends the service instead of leaving it
    up and useless.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from patron import metrics
from patron.messaging import (
    Batch,
    ConnectionRetry,
    ConsumerLoop,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    Processor,
    Retry,
    dedupe_by_key,
)

__all__ = ["KafkaConsumer", "KafkaMessage"]

logger = logging.getLogger("patron.kafka")

_MESSAGE_STATUS = metrics.counter(
    "component_kafka_message_status",
    "Kafka messages by status: received, processed, errored, skipped",
    ["status", "group", "topic"],
)
_OFFSET_DIFF = metrics.gauge(
    "component_kafka_offset_diff",
    "Consumer lag: messages in the partition after the last processed one",
    ["group", "topic", "partition"],
)
_CONSUMER_ERRORS = metrics.counter(
    "component_kafka_consumer_errors",
    "Errors reported by the Kafka consumer client",
    ["name"],
)

#: store_offsets() failures meaning the partitions moved to another member: the new owner
#: processes the messages again (at-least-once), so they are logged, not a broken connection.
_REASSIGNED_ERRORS = frozenset({KafkaError._STATE, KafkaError._UNKNOWN_PARTITION,
                                KafkaError._ASSIGNMENT_LOST})

AssignCallback = Callable[[Any, list[TopicPartition]], None]

#: Updating Prometheus (locks, watermark queries) for every batch of one would cost more than
#: the batch: while messages keep coming, counts and lags are handed over this often (seconds),
#: and at once when the consumer goes idle or closes.
METRICS_INTERVAL = 0.5
BROKER_PROBE_TIMEOUT = 1.0


class KafkaMessage(Message):
    """A message of a Kafka topic; ``raw`` is the ``confluent_kafka.Message``.

    ``body``, ``key``, ``timestamp`` and ``headers`` are read from ``raw`` when first asked for,
    which keeps a batch cheap when the processor looks at a few fields only. A tombstone's
    ``body`` is ``b""`` (``raw.value()`` is None). :meth:`nack` raises: Kafka cannot give back
    one message; raise from the processor and let the failure strategy decide.
    """

    transport = "kafka"
    nackable = False

    def __init__(self, raw: Any, topic: str) -> None:  # no super(): the defaults are enough
        self.raw = raw
        self.source = topic

    @property
    def body(self) -> bytes:
        value = self.raw.value()
        return b"" if value is None else value

    @property
    def key(self) -> bytes | None:
        return self.raw.key()

    @property
    def timestamp(self) -> float | None:
        kind, milliseconds = self.raw.timestamp()
        return milliseconds / 1000 if kind else None

    @property
    def partition(self) -> int:
        return self.raw.partition()

    @property
    def offset(self) -> int:
        return self.raw.offset()

    def _load_headers(self) -> Mapping[str, Any]:
        return dict(self.raw.headers() or ())


class KafkaConsumer:
    """A component consuming ``topics`` as member of consumer group ``group``.

    ``processor`` gets a :class:`patron.messaging.Batch` of up to ``batch_size`` messages,
    waiting at most ``batch_timeout`` s for a batch to fill. ``failure`` is ``exit`` or
    ``skip`` (Kafka cannot redeliver one message, so there is no ``nack``); ``processing_retry``
    retries a failing batch before the strategy applies. ``retries`` / ``retry_wait`` are the
    connection retries: the client is recreated after a failure (brokers unreachable, all
    brokers down, a fatal client error) at most ``retries`` times in a row before the component
    fails; ``connect_timeout`` bounds each attempt to reach the brokers.

    ``check_topics`` fails the start with :class:`patron.messaging.PermanentError` when a topic
    does not exist. ``dedupe`` hands the processor only the latest message of each key in a
    batch (the others are acknowledged with it). ``on_assign(consumer, partitions)`` is called in
    the component thread on each partition assignment (librdkafka's callback signature; it may
    change the partitions' start offsets). ``instance_id`` turns on static membership
    (``group.instance.id``). ``session_timeout`` and ``commit_interval`` are explained in the
    module docstring. ``config`` adds or overrides librdkafka settings.

    ``ready()`` is true once the group assigned this member its partitions (possibly none),
    and false again while they are lost or the client is reconnecting. The processor gets
    :class:`KafkaMessage` objects (with ``partition``, ``offset`` and ``raw``).
    """

    def __init__(
        self,
        brokers: str | Sequence[str],
        group: str,
        topics: str | Sequence[str],
        processor: Processor,
        *,
        batch_size: int = 1,
        batch_timeout: float = 0.1,
        failure: FailureStrategy | str = FailureStrategy.EXIT,
        processing_retry: Retry | None = None,
        retries: int = 3,
        retry_wait: float = 10.0,
        connect_timeout: float = 10.0,
        check_topics: bool = True,
        dedupe: bool = False,
        on_assign: AssignCallback | None = None,
        instance_id: str | None = None,
        session_timeout: float = 10.0,
        commit_interval: float = 1.0,
        config: Mapping[str, Any] | None = None,
        name: str | None = None,
    ) -> None:
        brokers = brokers if isinstance(brokers, str) else ",".join(brokers)
        topic_list = [topics] if isinstance(topics, str) else list(topics)
        if not brokers.strip():
            raise ValueError("KafkaConsumer needs at least one broker")
        if not group:
            raise ValueError("KafkaConsumer needs a consumer group")
        if not topic_list or not all(topic_list):
            raise ValueError("KafkaConsumer needs at least one topic, and no empty name")
        if session_timeout <= 0 or connect_timeout <= 0 or commit_interval <= 0:
            raise ValueError("session_timeout, connect_timeout and commit_interval must be "
                             "positive")
        self.name = name or f"kafka-{group}"
        self.group = group
        self.topics = topic_list
        self._transport = _KafkaTransport(
            name=self.name,
            brokers=brokers,
            group=group,
            topics=topic_list,
            check_topics=check_topics,
            connect_timeout=connect_timeout,
            on_assign=on_assign,
            config=_client_config(brokers, group, instance_id, session_timeout, commit_interval,
                                  config),
        )
        self._loop = ConsumerLoop(
            self._transport,
            dedupe_by_key(processor) if dedupe else processor,
            name=self.name,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            failure=failure,
            retry=processing_retry,
            connection=ConnectionRetry(retries, retry_wait),
            log=logger,
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; see the module docstring for what that involves."""
        logger.info("%s: consuming %s as group %s", self.name, ",".join(self.topics), self.group)
        self._loop.run(stop)
        logger.info("%s: stopped", self.name)

    def ready(self) -> bool:
        return self._transport.assigned


def _client_config(
    brokers: str,
    group: str,
    instance_id: str | None,
    session_timeout: float,
    commit_interval: float,
    extra: Mapping[str, Any] | None,
) -> dict[str, Any]:
    session_ms = int(session_timeout * 1000)
    config: dict[str, Any] = {
        "bootstrap.servers": brokers,
        "group.id": group,
        # Background commits of the offsets settle() stores once messages were processed.
        "enable.auto.commit": True,
        "auto.commit.interval.ms": max(1, int(commit_interval * 1000)),
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",  # a new group starts at the beginning: nothing lost
        "session.timeout.ms": session_ms,
        "heartbeat.interval.ms": max(100, session_ms // 3),
        "log.connection.close": False,
        "logger": logging.getLogger("patron.kafka.client"),
    }
    if instance_id:
        config["group.instance.id"] = instance_id
    config.update(extra or {})
    return config


class _KafkaTransport:
    """The client side of :class:`KafkaConsumer`; every method runs in the component thread."""

    supports_nack = False

    def __init__(
        self,
        *,
        name: str,
        brokers: str,
        group: str,
        topics: list[str],
        check_topics: bool,
        connect_timeout: float,
        on_assign: AssignCallback | None,
        config: dict[str, Any],
    ) -> None:
        self.name = name
        self.brokers = brokers
        self.group = group
        self.topics = topics
        self.check_topics = check_topics
        self.connect_timeout = connect_timeout
        self.user_on_assign = on_assign
        self.config = dict(config, error_cb=self._on_error)
        self.consumer: Any = None
        self.assigned = False  # read by ready() from other threads: a plain bool is enough
        self._partitions: set[tuple[str, int]] = set()
        self._failure: BaseException | None = None
        self._down_since = 0.0  # when every broker went down (monotonic), 0 while one is up
        self._status: dict[tuple[str, str], Any] = {}  # metric children, labelled once
        self._lag: dict[tuple[str, int], Any] = {}
        self._lag_pending: dict[tuple[str, int], int] = {}  # next offset to process
        self._counts: dict[tuple[str, str], int] = {}
        self._metrics_due = 0.0
        self._errors = _CONSUMER_ERRORS.labels(name)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._failure, self._down_since = None, 0.0
        try:
            self.consumer = Consumer(self.config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise PermanentError(f"{self.name}: invalid Kafka client configuration: {exc}") from exc
        try:
            metadata = self.consumer.list_topics(timeout=self.connect_timeout)
        except KafkaException as exc:
            raise ConnectionError(
                f"cannot reach the Kafka brokers {self.brokers} within "
                f"{self.connect_timeout:g}s: {_describe(exc)}"
            ) from None
        if self.check_topics:
            missing = [
                t for t in self.topics
                if t not in metadata.topics or metadata.topics[t].error is not None
            ]
            if missing:
                raise PermanentError(
                    f"{self.name}: topic(s) {', '.join(missing)} do not exist on {self.brokers} "
                    "(create them, or pass check_topics=False to wait for them)"
                )
        self.consumer.subscribe(
            self.topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def fetch(self, max_messages: int, timeout: float) -> Sequence[Message]:
        raw = self.consumer.consume(max_messages, timeout)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure
        if not raw:
            if self._down_since and time.monotonic() - self._down_since >= self.connect_timeout:
                # librdkafka reports brokers going down but not coming back: on an idle topic
                # ask them before concluding the outage lasts.
                if self._brokers_answer():
                    self._down_since = 0.0
                    return ()
                # librdkafka would keep trying forever: recreate the client under the
                # component's retry policy instead, so that a lasting outage ends in an error.
                raise ConnectionError(f"all Kafka brokers have been down for "
                                      f"{self.connect_timeout:g}s")
            self._flush_metrics()  # idle: let the metrics catch up with the last batches
            return ()
        self._down_since = 0.0
        messages: list[Message] = []
        topic, run = "", 0  # counted per run of one topic: a batch is mostly a single run
        for item in raw:
            error = item.error()
            if error is not None:
                self._on_message_error(error)
                continue
            name = item.topic()
            if name != topic:
                if run:
                    self._count("received", topic, run)
                topic, run = name, 0
            messages.append(KafkaMessage(item, topic))
            run += 1
        if run:
            self._count("received", topic, run)
        return messages

    def _brokers_answer(self) -> bool:
        try:
            self.consumer.list_topics(timeout=BROKER_PROBE_TIMEOUT)
        except KafkaException:
            return False
        return True

    def settle(self, batch: Batch) -> None:
        offsets: dict[tuple[str, int], int] = {}
        blocked: set[tuple[str, int]] = set()
        acked = MessageState.ACKED
        topic, run = "", 0  # processed messages, counted per run of one topic
        for message in batch:  # one pass: this runs for every message consumed
            raw = message.raw
            partition = (message.source, raw.partition())
            if message.state is acked:
                if partition not in blocked:
                    offsets[partition] = raw.offset() + 1
                if message.error is None:
                    if message.source != topic:
                        if run:
                            self._count("processed", topic, run)
                        topic, run = message.source, 0
                    run += 1
                else:  # skipped: it failed as well
                    self._count("skipped", message.source, 1)
                    self._count("errored", message.source, 1)
            else:  # nothing behind an unfinished message may be committed
                blocked.add(partition)
                if message.error is not None:
                    self._count("errored", message.source, 1)
        if run:
            self._count("processed", topic, run)
        # Only partitions still ours: a rebalance during the collection of this batch moved the
        # others, and their new owner starts from their last commit.
        store = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in offsets.items()
            if (topic, partition) in self._partitions
        ]
        if store:
            try:
                self.consumer.store_offsets(offsets=store)
            except KafkaException as exc:
                if exc.args[0].code() not in _REASSIGNED_ERRORS:
                    raise
                logger.warning("%s: offsets not stored, partitions were reassigned: %s",
                               self.name, _describe(exc))
            else:
                for tp in store:
                    self._lag_pending[(tp.topic, tp.partition)] = tp.offset
        now = time.monotonic()
        if now >= self._metrics_due:
            self._metrics_due = now + METRICS_INTERVAL
            self._flush_metrics()

    def close(self) -> None:
        try:
            self._flush_metrics()
        except Exception:  # metrics must not stand in the way of leaving the group
            logger.debug("%s: metrics update failed", self.name, exc_info=True)
        consumer, self.consumer = self.consumer, None
        self.assigned = False
        self._partitions.clear()
        if consumer is None:
            return
        try:
            consumer.close()  # leaves the group (a static member stays until its session ends)
        except Exception:
            logger.warning("%s: closing the Kafka client failed", self.name, exc_info=True)

    # -- callbacks (component thread, from inside consume()) ---------------------------------

    def _on_assign(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # |=: with the cooperative protocol an assignment only adds partitions.
        self._partitions |= {(p.topic, p.partition) for p in partitions}
        logger.info("%s: assigned %s", self.name, _names(partitions))
        if self.user_on_assign is not None:
            try:
                self.user_on_assign(consumer, partitions)
            except Exception as exc:
                self._failure = PermanentError(f"{self.name}: the on_assign callback failed: "
                                               f"{exc!r}")
                self._failure.__cause__ = exc
        self.assigned = True

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Every processed batch was settled (offsets stored) before this consume() call, and
        # librdkafka commits the stored offsets of revoked partitions itself.
        self._partitions -= {(p.topic, p.partition) for p in partitions}
        logger.info("%s: revoked %s", self.name, _names(partitions))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._partitions -= {(p.topic, p.partition) for p in partitions}
        self.assigned = False
        logger.warning("%s: lost %s (session timed out?)", self.name, _names(partitions))

    def _on_error(self, error: KafkaError) -> None:
        self._errors.inc()
        if error.fatal():
            self._failure = KafkaException(error)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            # Often transient (a restart, idle connections closed together): give librdkafka
            # connect_timeout to get a broker back before counting it as a failure.
            self._down_since = self._down_since or time.monotonic()
            logger.warning("%s: all Kafka brokers are down: %s", self.name, error.str())
        else:  # librdkafka logs the details itself (logger patron.kafka.client)
            logger.debug("%s: Kafka client error: %s", self.name, error.str())

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self._errors.inc()
        if error.fatal():
            raise KafkaException(error)
        logger.warning("%s: consumer error: %s", self.name, error.str())

    # -- metrics -----------------------------------------------------------------------------

    def _count(self, status: str, topic: str, n: int) -> None:
        key = (status, topic)
        self._counts[key] = self._counts.get(key, 0) + n

    def _flush_metrics(self) -> None:
        """Hand the counts and lags gathered since the last call to Prometheus."""
        counts, self._counts = self._counts, {}
        for (status, topic), n in counts.items():
            child = self._status.get((status, topic))
            if child is None:
                child = self._status[(status, topic)] = _MESSAGE_STATUS.labels(
                    status, self.group, topic
                )
            child.inc(n)
        if not self._lag_pending or self.consumer is None:
            return
        pending, self._lag_pending = self._lag_pending, {}
        for (topic, partition), offset in pending.items():
            try:
                _low, high = self.consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high < 0:
                continue
            gauge = self._lag.get((topic, partition))
            if gauge is None:
                gauge = self._lag[(topic, partition)] = _OFFSET_DIFF.labels(
                    self.group, topic, str(partition)
                )
            gauge.set(max(0, high - offset))


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "no partitions"


def _describe(exc: KafkaException) -> str:
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
