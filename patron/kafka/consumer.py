"""The Kafka consumer component: a consumer group member on confluent-kafka.

It runs the consumer loop every patron consumer shares (:mod:`patron.messaging`), so batching,
retries, failure strategies, readiness, spans and correlation ids work as for all of them.

Threads
    Everything of one group member runs in one thread (the component's; with ``concurrency=N``,
    N members each in a thread of its own): ``consume()``, the processor, storing offsets, and
    the rebalance callbacks (librdkafka calls them from inside ``consume()``), so a rebalance
    never interrupts a processor and a batch is always settled before the next fetch can move
    partitions away. Only librdkafka's ``close()`` runs in a thread of its own
    (``patron-<name>-close``, see "Stop deadline"), while the member's thread waits for it and
    touches the client no more; the revocation it reports runs there.

Offsets (at-least-once)
    After the processor returned for a batch, the offsets of the messages it finished are
    *stored*, per partition only up to the first message that was not acknowledged; librdkafka
    commits stored offsets in the background every ``commit_interval`` seconds, when partitions
    are revoked in a rebalance, and when the consumer closes. Nothing else is ever committed.
    While consuming, the thread never waits on a commit, so a broker that dies in the middle
    of one cannot wedge it. With the ``exit`` strategy the failed message and what follows it in its
    partition are not stored: a restart, or the member that takes the partition over, sees
    them again. On stop the batch in hand is finished and stored, then the consumer closes,
    which commits and leaves the group (a static member, see ``instance_id``, keeps its
    partitions until its session times out, so that a restart gets them back without a
    rebalance). With ``concurrency`` above 1 the members leave together: each commits first
    (asynchronously, then waits until the coordinator confirms it) and waits until the others
    did, because the first member to leave starts a rebalance during which a coordinator may
    refuse the others' commits (librdkafka's mock cluster does). A process killed outright
    loses at most ``commit_interval`` of commits: those messages are processed again.

Stop deadline
    Under a Service the stop has a deadline (what is left of the shutdown budget, see
    :meth:`patron.messaging._consumer.Consumer.stop_by`). The commit before leaving and the
    wait for the other members give up at it (and at ``session_timeout`` at the latest).
    librdkafka's ``close()`` takes no timeout, and waits up to a session timeout for the final
    commit when no coordinator answers: it runs in a thread of its own, and when it has not
    returned by the deadline it is left to finish in the background (logged); offsets it did
    not commit are processed again by the next owner. Without a deadline (a consumer run
    outside a Service) it is waited for.

Session timeouts
    A member that dies without leaving (SIGKILL, a lost host) keeps its partitions until
    ``session_timeout`` passes, and the rebalance that follows waits for the other members to
    rejoin. The default of 10 s (Kafka's own is 45 s) keeps that recovery around 10-15 s; brokers
    accept 6 s at least unless ``group.min.session.timeout.ms`` says otherwise. Heartbeats go
    every ``session_timeout / 3``. Closing while every broker is gone waits up to one session
    timeout for the final commit (bounded by the stop deadline, see below).

Broker outages
    librdkafka reconnects by itself. When every broker stays down for ``connect_timeout``, the
    component recreates the client under its ``connection_retry`` policy and fails once those
    retries are used up, so a lasting outage ends the service instead of leaving it up and
    useless.

Metrics
    ``component_kafka_message_status{status, group, topic}`` counts messages ``received``,
    ``processed``, ``errored`` (the processor failed on them) and ``skipped`` (errored, then
    acknowledged by the ``skip`` strategy); ``component_kafka_offset_diff{group, topic,
    partition}`` is the lag of each assigned partition, updated every ``stats_interval``
    seconds; ``component_kafka_consumer_errors{name}`` counts errors the client reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from patron import metrics
from patron.kafka import _client
from patron.messaging import (
    Batch,
    ConnectionRetry,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    Processor,
    Retry,
    dedupe_by_key,
)
from patron.messaging._consumer import Consumer as ConsumerComponent
from patron.messaging._loop import Counts, Outcome, TransportBase
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_STATS_INTERVAL

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

#: the statuses of component_kafka_message_status each counted outcome adds to
_STATUSES = {
    (Outcome.RECEIVED, False): ("received",),
    (Outcome.ACKED, False): ("processed",),
    (Outcome.ACKED, True): ("skipped", "errored"),
    (Outcome.UNACKED, True): ("errored",),
}

#: librdkafka settings the at-least-once guarantee rests on; a user's config may not change them
_AT_LEAST_ONCE_SETTINGS = frozenset({"enable.auto.commit", "enable.auto.offset.store",
                                     "error_cb"})

AssignCallback = Callable[[Any, list[TopicPartition]], None]

BROKER_PROBE_TIMEOUT = 1.0
#: seconds between commits of the same offsets while waiting for the coordinator to confirm them
_RECOMMIT_INTERVAL = 1.0
#: seconds between reads of the committed offsets while the commit is not confirmed yet
_COMMITTED_POLL = 0.1
#: seconds between looks at the stop deadline while librdkafka closes
_CLOSE_SLICE = 0.1


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


class KafkaConsumer(ConsumerComponent):
    """A component consuming ``topics`` as member of consumer group ``group``.

    The options every consumer shares (see :mod:`patron.messaging`): ``processor`` gets a
    :class:`patron.messaging.Batch` of up to ``batch_size`` :class:`KafkaMessage` objects,
    waiting at most ``batch_timeout`` s for a batch to fill; ``failure`` is ``exit`` or ``skip``
    (Kafka cannot redeliver one message, so there is no ``nack``); ``processing_retry`` retries
    a failing batch before the strategy applies; ``connection_retry`` recreates the client after
    a failure (brokers unreachable, all brokers down for ``connect_timeout``, a fatal client
    error); ``concurrency`` members of the group consume in as many threads; the partitions' lag
    is read every ``stats_interval`` s; ``name`` (default ``kafka-<group>``) names the component.

    Kafka's own: ``check_topics`` fails the start with
    :class:`patron.messaging.PermanentError` when a topic does not exist. ``dedupe`` hands the
    processor only the latest message of each key in a batch (the others are acknowledged with
    it). ``on_assign(consumer, partitions)`` is called in the member's thread on each partition
    assignment (librdkafka's callback signature; it may change the partitions' start offsets).
    ``instance_id`` turns on static membership (``group.instance.id``; with ``concurrency``
    above 1, member ``i`` is ``<instance_id>-<i>``). ``session_timeout`` and
    ``commit_interval`` are explained in the module docstring. ``config`` adds or overrides
    librdkafka settings, except those at-least-once rests on (``enable.auto.commit``,
    ``enable.auto.offset.store``, ``error_cb``): passing them is a ``ValueError``.
    """

    #: every member reads the lag of its own partitions
    _stats_per_loop = True

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
        connection_retry: ConnectionRetry | None = None,
        concurrency: int = 1,
        stats_interval: float = DEFAULT_STATS_INTERVAL,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        name: str | None = None,
        check_topics: bool = True,
        dedupe: bool = False,
        on_assign: AssignCallback | None = None,
        instance_id: str | None = None,
        session_timeout: float = 10.0,
        commit_interval: float = 1.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.brokers = _client.bootstrap(brokers, "KafkaConsumer")
        self.topics = [topics] if isinstance(topics, str) else list(topics)
        if not group:
            raise ValueError("KafkaConsumer needs a consumer group")
        if not self.topics or not all(self.topics):
            raise ValueError("KafkaConsumer needs at least one topic, and no empty name")
        if session_timeout <= 0 or commit_interval <= 0:
            raise ValueError("session_timeout and commit_interval must be positive")
        managed = sorted(_AT_LEAST_ONCE_SETTINGS & set(config or ()))
        if managed:
            raise ValueError(f"KafkaConsumer sets {', '.join(managed)} itself, so that nothing "
                             "is committed before it was processed: leave them out of config")
        self.group = group
        self._check_topics = check_topics
        self._on_assign = on_assign
        self._instance_id = instance_id
        self._session_timeout = session_timeout
        # Set before super().__init__(), which creates the transports that share it.
        self._leaving = _Leaving(concurrency, session_timeout) if concurrency > 1 else None
        session_ms = int(session_timeout * 1000)
        self._config = _client.settings(
            self.brokers, connect_timeout, config,
            **{
                "group.id": group,
                # Background commits of the offsets settle() stores once messages were processed.
                "enable.auto.commit": True,
                "auto.commit.interval.ms": max(1, int(commit_interval * 1000)),
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",  # a new group starts at the beginning
                "session.timeout.ms": session_ms,
                "heartbeat.interval.ms": max(100, session_ms // 3),
            },
        )
        super().__init__(
            name=name or f"kafka-{group}",
            processor=dedupe_by_key(processor) if dedupe else processor,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            failure=failure,
            processing_retry=processing_retry,
            connection_retry=connection_retry,
            concurrency=concurrency,
            stats_interval=stats_interval,
            connect_timeout=connect_timeout,
            log=logger,
        )

    def _transport(self, index: int) -> _KafkaTransport:
        config = dict(self._config)
        if self._instance_id:
            config.setdefault(
                "group.instance.id",
                self._instance_id if self.concurrency == 1 else f"{self._instance_id}-{index}",
            )
        return _KafkaTransport(
            name=self._loop_name(index),
            brokers=self.brokers,
            group=self.group,
            topics=self.topics,
            check_topics=self._check_topics,
            connect_timeout=self.connect_timeout,
            on_assign=self._on_assign,
            config=config,
            session_timeout=self._session_timeout,
            leaving=self._leaving,
            index=index,
        )

    def run(self, stop: threading.Event) -> None:
        if self._leaving is not None:
            self._leaving.start(stop)
        super().run(stop)

    def _describe(self) -> str:
        return f"{','.join(self.topics)} as group {self.group}"


class _Leaving:
    """Lets the members of one consumer (``concurrency`` above 1) leave the group together.

    The first member to leave starts a rebalance, and until it completes a coordinator may
    refuse the commits of the members still leaving (librdkafka's mock cluster refuses every
    one), which would lose their last offsets on a clean stop. So on stop each member commits,
    then waits until every member has (at most ``timeout`` s, for a member still finishing a
    long batch, and no longer than the stop deadline allows), and only then leaves. Members
    call it from their own threads.
    """

    def __init__(self, members: int, timeout: float) -> None:
        self._members = members
        self._timeout = timeout
        self._cond = threading.Condition()
        self._stop: threading.Event | None = None
        self._arrived: set[int] = set()

    def start(self, stop: threading.Event) -> None:
        """A run of the component begins; ``stop`` is its stop event."""
        with self._cond:
            self._stop = stop
            self._arrived.clear()

    def stopping(self) -> bool:
        """Whether the component was asked to stop (not a reconnect, not a failing sibling)."""
        stop = self._stop
        return stop is not None and stop.is_set()

    def arrive(self, index: int, wait: bool, left: float | None = None) -> bool:
        """Member ``index`` committed (or has nothing to commit); with ``wait``, return once
        every member has (True), or ``timeout`` passed, or ``left`` seconds (the time left
        before the stop deadline; None: no deadline) (False). A member counts once per run."""
        timeout = self._timeout if left is None else min(self._timeout, left)
        with self._cond:
            self._arrived.add(index)
            self._cond.notify_all()
            if not wait:
                return True
            return self._cond.wait_for(lambda: len(self._arrived) >= self._members, timeout)


class _KafkaTransport(TransportBase):
    """The client side of one group member; every method runs in its loop's thread."""

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
        session_timeout: float = 10.0,
        leaving: _Leaving | None = None,
        index: int = 0,
    ) -> None:
        self.name = name
        self.session_timeout = session_timeout
        self.leaving = leaving
        self.index = index
        self.brokers = brokers
        self.group = group
        self.topics = topics
        self.check_topics = check_topics
        self.connect_timeout = connect_timeout
        self.user_on_assign = on_assign
        self.config = dict(config, error_cb=self._on_error)
        self.consumer: Any = None
        self._partitions: set[tuple[str, int]] = set()
        self._down_since = 0.0  # when every broker went down (monotonic), 0 while one is up
        self._assigned = False  # the group gave this member an assignment (maybe empty)
        self._status: dict[tuple[str, str], Any] = {}  # metric children, labelled once
        self._lag: dict[tuple[str, int], Any] = {}
        self._next_offsets: dict[tuple[str, int], int] = {}  # next offset to process
        self._errors = _CONSUMER_ERRORS.labels(name)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._down_since, self._assigned = 0.0, False
        try:
            self.consumer = Consumer(self.config)
        except (KafkaException, ValueError, TypeError) as exc:
            raise PermanentError(f"{self.name}: invalid Kafka client configuration: {exc}") from exc
        try:
            metadata = self.consumer.list_topics(timeout=self.connect_timeout)
        except KafkaException as exc:
            raise ConnectionError(
                f"cannot reach the Kafka brokers {self.brokers} within "
                f"{self.connect_timeout:g}s: {_client.describe(exc)}"
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
            self.topics, on_assign=self._on_assigned, on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        raw = self.consumer.consume(max_messages, timeout)
        if not raw:
            if self._down_since and time.monotonic() - self._down_since >= self.connect_timeout:
                # librdkafka reports brokers going down but not coming back: on an idle topic
                # ask them before concluding the outage lasts.
                if self._brokers_answer():
                    self._brokers_back()
                    return ()
                # librdkafka would keep trying forever: recreate the client under the
                # component's retry policy instead, so that a lasting outage ends in an error.
                raise ConnectionError(f"all Kafka brokers have been down for "
                                      f"{self.connect_timeout:g}s")
            return ()
        if self._down_since:
            self._brokers_back()
        messages: list[Message] = []
        topic = ""  # one str object per run of a topic: the loop counts by source identity
        for item in raw:
            error = item.error()
            if error is not None:
                self._on_message_error(error)
                continue
            name = item.topic()
            if name != topic:
                topic = name
            messages.append(KafkaMessage(item, topic))
        return messages

    def _brokers_answer(self) -> bool:
        try:
            self.consumer.list_topics(timeout=BROKER_PROBE_TIMEOUT)
        except KafkaException:
            return False
        return True

    def settle(self, batch: Batch) -> None:
        acked = MessageState.ACKED
        if len(batch) == 1:  # the default batch size: no bookkeeping of partitions to do
            message = batch[0]
            offsets = ({(message.source, message.raw.partition()): message.raw.offset() + 1}
                       if message._state is acked else {})
        else:
            offsets = {}
            blocked: set[tuple[str, int]] = set()
            for message in batch:  # one pass: this runs for every message consumed
                raw = message.raw
                partition = (message.source, raw.partition())
                if message._state is acked:
                    if partition not in blocked:
                        offsets[partition] = raw.offset() + 1
                else:  # nothing behind an unfinished message may be committed
                    blocked.add(partition)
        # Only partitions still ours: a rebalance during the collection of this batch moved the
        # others, and their new owner starts from their last commit.
        store = [
            TopicPartition(topic, partition, offset)
            for (topic, partition), offset in offsets.items()
            if (topic, partition) in self._partitions
        ]
        if not store:
            return
        try:
            self.consumer.store_offsets(offsets=store)
        except KafkaException as exc:
            if exc.args[0].code() not in _REASSIGNED_ERRORS:
                raise
            logger.warning("%s: offsets not stored, partitions were reassigned: %s",
                           self.name, _client.describe(exc))
        else:
            for tp in store:
                self._next_offsets[(tp.topic, tp.partition)] = tp.offset

    def record(self, counts: Counts) -> None:
        for (topic, outcome, failed), n in counts.items():
            for status in _STATUSES.get((outcome, failed), ()):
                child = self._status.get((status, topic))
                if child is None:
                    child = self._status[(status, topic)] = _MESSAGE_STATUS.labels(
                        status, self.group, topic
                    )
                child.inc(n)

    def probe(self) -> None:
        """The lag of every partition this member processed, from librdkafka's cached high
        watermarks (no broker call)."""
        for (topic, partition), offset in list(self._next_offsets.items()):
            if (topic, partition) not in self._partitions:
                continue
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

    def close(self) -> None:
        consumer = self.consumer
        stored: list[TopicPartition] = []
        if consumer is not None:
            try:
                self.probe()
            except Exception:  # metrics must not stand in the way of leaving the group
                logger.debug("%s: lag update failed", self.name, exc_info=True)
            stored = [TopicPartition(topic, partition, offset)
                      for (topic, partition), offset in self._next_offsets.items()
                      if (topic, partition) in self._partitions]
        self.consumer = None
        self._partitions.clear()
        self._next_offsets.clear()
        leaving = self.leaving if self.leaving is not None and self.leaving.stopping() else None
        if consumer is None:
            if leaving is not None:  # closed already (a retry pause): nothing to commit
                leaving.arrive(self.index, wait=False)
            return
        if leaving is not None:
            self._commit_stored(consumer, stored)
            if not leaving.arrive(self.index, wait=True, left=self.time_left()):
                logger.warning("%s: leaving the group before every member committed", self.name)
        self._close_client(consumer)

    def _commit_stored(self, consumer: Any, stored: list[TopicPartition]) -> None:
        """Commit the stored offsets now, while still a member (see :class:`_Leaving`), and wait
        until the coordinator has them, at most until the stop deadline or ``session_timeout``.

        ``commit(asynchronous=False)`` would wait as long as librdkafka's request timeout
        allows; this commits asynchronously (again every second, in case the coordinator
        refused it) and reads the committed offsets back, each read bounded by the time left.
        """
        if self._down_since or not stored:  # no broker to commit to, or nothing to commit
            return
        left = self.time_left()
        bound = self.session_timeout if left is None else min(self.session_timeout, left)
        deadline = time.monotonic() + bound
        wanted = {(tp.topic, tp.partition): tp.offset for tp in stored}
        next_commit = 0.0
        while True:
            now = time.monotonic()
            if now >= deadline:
                logger.warning("%s: the commit before leaving the group was not confirmed "
                               "within %.1fs", self.name, bound)
                return
            try:
                if now >= next_commit:  # what is stored for the assignment, as close() would
                    consumer.commit(asynchronous=True)
                    next_commit = now + _RECOMMIT_INTERVAL
                committed = consumer.committed(stored, timeout=max(0.001, deadline - now))
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError._TIMED_OUT:
                    logger.warning("%s: commit before leaving the group failed: %s", self.name,
                                   _client.describe(exc))
                    return
                continue
            if all(tp.error is None and tp.offset >= wanted[(tp.topic, tp.partition)]
                   for tp in committed):
                return
            time.sleep(min(_COMMITTED_POLL, max(0.0, deadline - time.monotonic())))

    def _close_client(self, consumer: Any) -> None:
        """``consumer.close()``: commits the stored offsets and leaves the group. It takes no
        timeout and waits up to a session timeout for a coordinator that does not answer, so it
        runs in a thread of its own, which this waits for until the stop deadline (for ever
        without one); past it, the close is left to finish in the background."""
        done = threading.Event()

        def close() -> None:
            try:
                consumer.close()  # leaves the group (a static member stays until its session ends)
            except Exception as exc:
                logger.warning("%s: closing the Kafka client failed: %r", self.name, exc)
                logger.debug("%s: closing the Kafka client failed", self.name, exc_info=True)
            finally:
                done.set()

        # A daemon: abandoned past the deadline, it must not hold up the interpreter's exit.
        threading.Thread(target=close, name=f"patron-{self.name}-close", daemon=True).start()
        while True:
            left = self.time_left()  # read again: a stop deadline may come while waiting
            if done.wait(_CLOSE_SLICE if left is None else min(left, _CLOSE_SLICE)):
                return
            if left is not None and self.time_left() == 0:
                logger.warning(
                    "%s: the Kafka client did not close by the stop deadline (brokers not "
                    "answering?); left closing in the background: messages processed since the "
                    "last commit will be processed again", self.name,
                )
                return

    # -- callbacks (the member's thread, from inside consume()) ------------------------------

    def _on_assigned(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # |=: with the cooperative protocol an assignment only adds partitions.
        self._partitions |= {(p.topic, p.partition) for p in partitions}
        logger.info("%s: assigned %s", self.name, _names(partitions))
        if self.user_on_assign is not None:
            try:
                self.user_on_assign(consumer, partitions)
            except Exception as exc:
                failure = PermanentError(f"{self.name}: the on_assign callback failed: {exc!r}")
                failure.__cause__ = exc
                self.fail(failure)
                return
        self._assigned = True
        self.connected = not self._down_since

    def _on_revoke(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        # Every processed batch was settled (offsets stored) before this consume() call, and
        # librdkafka commits the stored offsets of revoked partitions itself.
        self._partitions -= {(p.topic, p.partition) for p in partitions}
        logger.info("%s: revoked %s", self.name, _names(partitions))

    def _on_lost(self, consumer: Any, partitions: list[TopicPartition]) -> None:
        self._partitions -= {(p.topic, p.partition) for p in partitions}
        self._assigned = self.connected = False
        logger.warning("%s: lost %s (session timed out?)", self.name, _names(partitions))

    def _on_error(self, error: KafkaError) -> None:
        self._errors.inc()
        if error.fatal():
            self.fail(KafkaException(error))
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            # Often transient (a restart, idle connections closed together): give librdkafka
            # connect_timeout to get a broker back before counting it as a failure.
            self._down_since = self._down_since or time.monotonic()
            self.connected = False
            logger.warning("%s: all Kafka brokers are down: %s", self.name, error.str())
        else:  # librdkafka logs the details itself (logger patron.kafka.client)
            logger.debug("%s: Kafka client error: %s", self.name, error.str())

    def _brokers_back(self) -> None:
        self._down_since = 0.0
        self.connected = self._assigned

    def _on_message_error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            return
        self._errors.inc()
        if error.fatal():
            raise KafkaException(error)
        logger.warning("%s: consumer error: %s", self.name, error.str())


def _names(partitions: Iterable[TopicPartition]) -> str:
    return ", ".join(f"{p.topic}[{p.partition}]" for p in partitions) or "no partitions"
