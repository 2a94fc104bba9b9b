"""The RabbitMQ (AMQP 0-9-1) consumer component, on pika's ``BlockingConnection``.

It is a :class:`patron.messaging.ConsumerLoop` driven by an AMQP transport, so batching,
retries, failure strategies, spans and correlation ids work as for every patron consumer.

Threads
    pika connections are not thread-safe, so the connection lives in the component's thread
    and nowhere else: connect, subscribe, receive, ack/nack, the queue-size probe and close all
    run there, and so does the processor. :meth:`Message.ack` / :meth:`Message.nack` only
    record a decision; the transport carries it out after the processor returned. Messages
    expose no channel, so user code cannot touch the connection from another thread. Only
    :meth:`AMQPConsumer.ready` is called from other threads; it reads a flag.

Acknowledgement (at-least-once)
    Manual acks with a prefetch window (``basic_qos``): a message is acked once the processor
    returned for it, or nacked (requeued, or dead-lettered when ``requeue`` is false and the
    queue has a dead-letter exchange). When the connection breaks, whatever was not acked yet
    is redelivered by the broker, to this consumer after it reconnected or to another one.

    Acks of a fast stream are coalesced into one ``basic_ack(multiple=True)`` frame, which
    saves a system call and a pika I/O round per message. A decided ack is sent at the latest
    when half the prefetch window is waiting, when the oldest waiting one is ``ack_delay``
    (20 ms) old, before the consumer waits for more messages, before any nack, during the
    loop's pauses, and on stop; the ack of a batch whose processing took ``ack_delay`` or more
    goes out at once. So an ack waits at most for the next batch's processor call, and a crash
    (SIGKILL, a lost connection) may redeliver up to half a prefetch window of processed
    messages, which at-least-once allows; a graceful stop sends every ack first. With
    ``ack_delay=0`` every ack is sent before the next batch is handed to the processor.

Heartbeats and processing time
    pika only answers heartbeats while it does I/O. The transport does I/O whenever it waits
    for messages, acks them, and during the loop's pauses (processing retries, the pause after
    a nacked batch), so an idle or retrying consumer stays connected. While the processor runs,
    nothing is serviced: **one processor call must return within the heartbeat timeout**
    (``heartbeat``, 30 s by default), or the broker drops the connection; the batch is then
    redelivered and processed again. Raise ``heartbeat`` for slow processors (0 turns
    heartbeats off, leaving dead connections to TCP). RabbitMQ's own ``consumer_timeout``
    (30 min by default) bounds how long a delivery may stay unacked.

Stop
    On stop the batch in hand is finished and acked, then the consumer is cancelled, every
    message prefetched but not processed is handed back at once (``basic_nack`` with requeue),
    and the channel and connection are closed.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import pika
from pika import exceptions as pika_errors

from patron import metrics
from patron.amqp._connection import describe, parameters, redact
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
)

__all__ = ["AMQPConsumer", "Delivery", "QueueDeclaration"]

logger = logging.getLogger("patron.amqp")

_MESSAGE_COUNTER = metrics.counter(
    "component_amqp_message_counter",
    "AMQP messages by state (FETCHED, ACK, NACK) and whether processing failed",
    ["queue", "state", "hasError"],
)
_MESSAGE_AGE = metrics.gauge(
    "component_amqp_message_age",
    "Age in seconds of the last message received, from its AMQP timestamp property",
    ["queue"],
)
_QUEUE_SIZE = metrics.gauge(
    "component_amqp_queue_size",
    "Messages ready in the queue, as the broker reported at the last check",
    ["queue"],
)

_ACKED = MessageState.ACKED
_MAX_PREFETCH = 65535  # basic.qos prefetch-count is an AMQP short
_IDLE_SLICE = 0.2  # seconds per I/O round while the loop pauses: bounds how late a stop is seen


@dataclasses.dataclass(frozen=True)
class QueueDeclaration:
    """The topology an :class:`AMQPConsumer` creates when its queue does not exist.

    When the queue exists it is used as it is (its arguments are not compared). When it is
    missing it is declared with ``durable``, ``auto_delete`` and ``arguments`` (for example
    ``{"x-dead-letter-exchange": "dlx"}``). With ``exchange`` set, that exchange is declared
    (``exchange_type``, ``exchange_durable``; an existing one of another type is an error) and
    the queue bound to it with ``routing_key`` (the queue name when None).
    """

    durable: bool = True
    auto_delete: bool = False
    arguments: Mapping[str, Any] | None = None
    exchange: str | None = None
    exchange_type: str = "direct"
    exchange_durable: bool = True
    routing_key: str | None = None


class Delivery:
    """What the broker delivered with a message: the ``raw`` of every AMQP :class:`Message`.

    ``method`` is pika's ``Basic.Deliver`` (``delivery_tag``, ``redelivered``, ``exchange``,
    ``routing_key``), ``properties`` its ``BasicProperties`` (``message_id``, ``content_type``,
    ``timestamp``, ...). It gives no access to the channel: acknowledge through the message.
    """

    __slots__ = ("generation", "method", "properties")

    def __init__(self, method: Any, properties: Any, generation: int) -> None:
        self.method = method
        self.properties = properties
        self.generation = generation  # which connection delivered it: tags are per channel

    @property
    def delivery_tag(self) -> int:
        return int(self.method.delivery_tag)

    @property
    def redelivered(self) -> bool:
        return bool(self.method.redelivered)

    @property
    def exchange(self) -> str:
        return str(self.method.exchange)

    @property
    def routing_key(self) -> str:
        return str(self.method.routing_key)

    @property
    def message_id(self) -> str | None:
        value = self.properties.message_id
        return None if value is None else str(value)

    def __repr__(self) -> str:
        return (f"<Delivery tag={self.delivery_tag} exchange={self.exchange!r} "
                f"routing_key={self.routing_key!r} redelivered={self.redelivered}>")


class AMQPConsumer:
    """A component consuming queue ``queue`` of the broker at ``url`` (``amqp://``/``amqps://``).

    ``processor`` gets a :class:`patron.messaging.Batch` of up to ``batch_size`` messages,
    waiting at most ``batch_timeout`` s after the first one for the batch to fill (it is never
    called with an empty batch). ``prefetch`` is the number of unacked messages the broker
    may push ahead (``basic_qos``); it defaults to ``max(10, 2 * batch_size)`` and must be at
    least ``batch_size``.

    ``failure`` applies when the processor keeps raising for a message (after
    ``processing_retry``): ``exit`` (not acked; the component fails), ``skip`` (acked, counted
    with ``hasError="true"``) or ``nack`` (handed back: requeued when ``requeue``, else
    dead-lettered by the queue's ``x-dead-letter-exchange``, or dropped without one). The
    processor may also decide per message with ``message.nack(requeue=...)``.

    ``retries`` / ``retry_wait`` are the connection retries: after a failure (broker
    unreachable, wrong credentials, connection closed) it reconnects and resubscribes at most
    ``retries`` times in a row, the count starting again once consuming works; then the
    component fails with :class:`patron.messaging.TransportError`. A missing queue (without
    ``declare``), a queue the user may not read, or a declaration that conflicts with the
    broker's fails at once with :class:`patron.messaging.PermanentError`.

    ``declare`` (a :class:`QueueDeclaration`, or True for a durable queue) creates the queue,
    and optionally an exchange and binding, when the queue is missing; by default the
    existing topology is used as is. ``heartbeat`` (s, see the module docstring) bounds one
    processor call; ``connect_timeout`` bounds each connection attempt. ``ack_delay`` (s)
    is how long acks of a fast stream may be held back to go out together (see the module
    docstring); 0 sends each batch's ack before the next batch is handed out. Every
    ``stats_interval`` s the queue's size is read with a passive declare for
    ``component_amqp_queue_size``. ``connection_name`` is the connection's name as the broker
    shows it (default ``patron-<name>``).

    ``ready()`` is true while subscribed to the queue. Messages carry ``raw`` (a
    :class:`Delivery`), ``headers`` (the AMQP headers table, pika's value types) and
    ``timestamp`` (the AMQP timestamp property, when set).
    """

    def __init__(
        self,
        url: str,
        queue: str,
        processor: Processor,
        *,
        batch_size: int = 1,
        batch_timeout: float = 0.1,
        prefetch: int | None = None,
        failure: FailureStrategy | str = FailureStrategy.EXIT,
        processing_retry: Retry | None = None,
        requeue: bool = True,
        retries: int = 10,
        retry_wait: float = 5.0,
        heartbeat: int = 30,
        connect_timeout: float = 30.0,
        stats_interval: float = 5.0,
        ack_delay: float = 0.02,
        declare: QueueDeclaration | bool | None = None,
        connection_name: str | None = None,
        name: str | None = None,
    ) -> None:
        if not isinstance(queue, str) or not queue:
            raise ValueError("AMQPConsumer needs a queue name")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if prefetch is None:
            prefetch = min(_MAX_PREFETCH, max(10, 2 * batch_size))
        if not batch_size <= prefetch <= _MAX_PREFETCH:
            raise ValueError(
                f"prefetch must be between batch_size ({batch_size}) and {_MAX_PREFETCH}, "
                f"not {prefetch}: a smaller window could never fill a batch"
            )
        if stats_interval <= 0:
            raise ValueError(f"stats_interval must be positive, not {stats_interval}")
        if ack_delay < 0:
            raise ValueError(f"ack_delay must be >= 0, not {ack_delay}")
        if declare is True:
            declare = QueueDeclaration()
        elif declare is False:
            declare = None
        self.name = name or f"amqp-{queue}"
        self.queue = queue
        self.url = redact(url)
        self.prefetch = prefetch
        self._transport = _AmqpTransport(
            name=self.name,
            url=self.url,
            queue=queue,
            params=parameters(
                url,
                heartbeat=heartbeat,
                connect_timeout=connect_timeout,
                connection_name=connection_name or f"patron-{self.name}",
            ),
            prefetch=prefetch,
            declaration=declare,
            stats_interval=stats_interval,
            ack_delay=ack_delay,
        )
        self._loop = ConsumerLoop(
            self._transport,
            processor,
            name=self.name,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            failure=failure,
            retry=processing_retry,
            connection=ConnectionRetry(retries, retry_wait),
            requeue=requeue,
            log=logger,
        )

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; see the module docstring for what that involves.

        Raises :class:`patron.messaging.ProcessingError`, ``TransportError`` or
        ``PermanentError`` after the connection was closed.
        """
        logger.info("%s: consuming queue %s at %s (prefetch %d)", self.name, self.queue,
                    self.url, self.prefetch)
        self._loop.run(_ServicingStop(stop, self._transport))
        logger.info("%s: stopped", self.name)

    def ready(self) -> bool:
        """True while subscribed to the queue (any thread)."""
        return self._transport.consuming


class _ServicingStop(threading.Event):
    """The component's stop event as the loop sees it: waiting on it keeps the connection
    alive (answers heartbeats) instead of sleeping. Runs in the component thread, the only one
    that waits on it; setting and reading it is delegated to the Service's event."""

    def __init__(self, stop: threading.Event, transport: _AmqpTransport) -> None:
        super().__init__()
        self._stop = stop
        self._transport = transport

    def is_set(self) -> bool:
        return self._stop.is_set()

    def set(self) -> None:
        self._stop.set()

    def clear(self) -> None:
        self._stop.clear()

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            left = _IDLE_SLICE if deadline is None else deadline - time.monotonic()
            if left <= 0:
                return False
            if not self._transport.idle(min(left, _IDLE_SLICE)):
                return self._stop.wait(None if deadline is None else left)
        return True


class _AmqpTransport:
    """The client side of :class:`AMQPConsumer`; every method runs in the component thread."""

    supports_nack = True

    def __init__(
        self,
        *,
        name: str,
        url: str,
        queue: str,
        params: pika.URLParameters,
        prefetch: int,
        declaration: QueueDeclaration | None,
        stats_interval: float,
        ack_delay: float,
    ) -> None:
        self.name = name
        self.url = url
        self.queue = queue
        self.params = params
        self.prefetch = prefetch
        self.declaration = declaration
        self.stats_interval = stats_interval
        self.ack_delay = ack_delay
        self.consuming = False  # read by ready() from other threads: a plain bool is enough
        self._connection: Any = None
        self._channel: Any = None
        self._tag: str | None = None
        self._generation = 0
        self._buffer: collections.deque[tuple[Any, Any, bytes]] = collections.deque()
        self._failure: BaseException | None = None
        self._settled_tag = 0  # every delivery tag up to this one is decided on
        self._acked_tag = 0  # ... and up to this one, the broker was told
        self._deferred_since = 0.0  # when the oldest ack not sent yet was decided
        self._handed_out = 0.0  # when fetch last handed messages to the loop
        self._ack_window = max(1, prefetch // 2)
        self._next_stats = 0.0
        self._fetched = _MESSAGE_COUNTER.labels(queue, "FETCHED", "false")
        self._counters = {
            (state, error): _MESSAGE_COUNTER.labels(queue, state, error)
            for state in ("ACK", "NACK") for error in ("false", "true")
        }
        self._age = _MESSAGE_AGE.labels(queue)
        self._size = _QUEUE_SIZE.labels(queue)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._failure = None
        self._buffer.clear()
        self._settled_tag = self._acked_tag = 0
        self._deferred_since = 0.0
        self._generation += 1
        try:
            self._connection = pika.BlockingConnection(self.params)
        except (pika_errors.AMQPError, OSError) as exc:
            raise ConnectionError(f"cannot connect to {self.url}: {describe(exc)}") from exc
        try:
            self._channel = self._connection.channel()
            ready_count = self._prepare_topology()
            self._channel.basic_qos(prefetch_count=self.prefetch)
            self._channel.add_on_cancel_callback(self._on_cancelled)
            self._tag = f"patron-{self.name}-{uuid.uuid4().hex}"
            self._channel.basic_consume(
                self.queue, self._on_message, auto_ack=False, consumer_tag=self._tag
            )
        except pika_errors.ChannelClosedByBroker as exc:
            # 403 (no permission), 404, 406 (conflicting declaration): retrying cannot help.
            raise PermanentError(
                f"{self.name}: cannot consume queue {self.queue!r} at {self.url}: {describe(exc)}"
            ) from exc
        self._size.set(ready_count)
        self._next_stats = time.monotonic() + self.stats_interval
        self.consuming = True
        logger.info("%s: subscribed to %s (%d message(s) ready)", self.name, self.queue,
                    ready_count)

    def fetch(self, max_messages: int, timeout: float) -> Sequence[Message]:
        self._raise_failure()
        buffer = self._buffer
        now = time.monotonic()
        if len(buffer) < max_messages:
            # Deliveries reach the buffer only while pika processes I/O, which also answers
            # heartbeats; block only when there is nothing to hand out. Waiting acks go
            # first, so that the broker refills the prefetch window.
            if self._deferred_since:
                self._send_acks()
            self._connection.process_data_events(time_limit=timeout if not buffer else 0)
            self._raise_failure()
        elif self._deferred_since and now - self._deferred_since >= self.ack_delay:
            self._send_acks()
        if time.monotonic() >= self._next_stats:
            self._probe_queue()
        count = min(max_messages, len(buffer))
        if not count:
            return []
        messages = []
        queue, generation, pop = self.queue, self._generation, buffer.popleft
        for _ in range(count):
            method, properties, body = pop()
            stamp = properties.timestamp
            messages.append(Message(
                body,
                headers=properties.headers,  # None when the message has none
                source=queue,
                raw=Delivery(method, properties, generation),
                timestamp=None if stamp is None else float(stamp),
                transport="amqp",
            ))
        self._fetched.inc(count)
        self._handed_out = time.monotonic()
        last = messages[-1].timestamp
        if last is not None:
            self._age.set(max(0.0, time.time() - last))
        return messages

    def settle(self, batch: Batch) -> None:
        self._raise_failure()  # the connection broke during a pause: the broker redelivers
        channel, generation = self._channel, self._generation
        first, last = batch[0].raw, batch[-1].raw
        if (
            last.generation == generation
            and first.delivery_tag == self._settled_tag + 1
            and last.delivery_tag - first.delivery_tag + 1 == len(batch)
            and all(m.state is _ACKED for m in batch)
        ):
            # Everything up to the last tag is decided: one frame (now or soon) acks all of it.
            self._settled_tag = last.delivery_tag
            now = time.monotonic()
            if not self._deferred_since:
                self._deferred_since = now
            if (
                now - self._handed_out >= self.ack_delay  # slow processing: no reason to wait
                or now - self._deferred_since >= self.ack_delay
                or self._settled_tag - self._acked_tag >= self._ack_window
            ):
                self._send_acks()
        else:
            if self._deferred_since:
                self._send_acks()
            gap = False
            for message in batch:
                delivery: Delivery = message.raw
                if delivery.generation != generation:
                    continue  # its channel is gone; the broker redelivers it
                if message.state is MessageState.ACKED:
                    channel.basic_ack(delivery.delivery_tag)
                elif message.state is MessageState.NACKED:
                    channel.basic_nack(delivery.delivery_tag, requeue=message.requeue)
                else:
                    gap = True
                if not gap:
                    self._settled_tag = delivery.delivery_tag
            self._acked_tag = self._settled_tag
        self._count(batch)

    def close(self) -> None:
        self.consuming = False
        connection, channel, tag = self._connection, self._channel, self._tag
        self._connection = self._channel = self._tag = None
        if connection is None:
            self._buffer.clear()
            return
        held = 0
        try:
            if channel is not None and channel.is_open:
                if self._deferred_since:
                    self._send_acks(channel)
                connection.process_data_events(time_limit=0)  # count what already arrived
                held = len(self._buffer)
                if tag is not None:
                    channel.basic_cancel(tag)  # no more deliveries; rejects in-flight ones
                # Everything delivered and not settled goes back now, not at connection close.
                channel.basic_nack(0, multiple=True, requeue=True)
                if held:
                    logger.info("%s: gave back %d prefetched message(s)", self.name, held)
                channel.close()
        except Exception as exc:  # a broken connection requeues everything anyway
            logger.debug("%s: closing the channel: %s", self.name, describe(exc))
        self._buffer.clear()
        try:
            if connection.is_open:
                connection.close()
        except Exception as exc:
            logger.debug("%s: closing the connection: %s", self.name, describe(exc))

    # -- used by _ServicingStop --------------------------------------------------------------

    def idle(self, seconds: float) -> bool:
        """Do the connection's I/O for ``seconds``; False when there is no working connection
        (the caller then just waits). A failure is kept for the next fetch or settle."""
        if self._connection is None or self._failure is not None:
            return False
        try:
            if self._deferred_since:
                self._send_acks()
            self._connection.process_data_events(time_limit=seconds)
        except Exception as exc:
            self._failure = exc
            self.consuming = False
            return False
        return True

    # -- internals ---------------------------------------------------------------------------

    def _prepare_topology(self) -> int:
        """Check (or declare) the queue, exchange and binding; the queue's ready count."""
        try:
            ok = self._channel.queue_declare(self.queue, passive=True)
        except pika_errors.ChannelClosedByBroker as exc:
            if exc.reply_code != 404 or self.declaration is None:
                if exc.reply_code == 404:
                    raise PermanentError(
                        f"{self.name}: queue {self.queue!r} does not exist at {self.url} "
                        "(create it, or pass declare=QueueDeclaration(...) to declare it)"
                    ) from exc
                raise
            wanted = self.declaration
            self._channel = self._connection.channel()  # the 404 closed the first one
            ok = self._channel.queue_declare(
                self.queue, durable=wanted.durable, auto_delete=wanted.auto_delete,
                arguments=dict(wanted.arguments) if wanted.arguments else None,
            )
            logger.info("%s: declared queue %s", self.name, self.queue)
        topology = self.declaration
        if topology is not None and topology.exchange:
            self._channel.exchange_declare(topology.exchange,
                                           exchange_type=topology.exchange_type,
                                           durable=topology.exchange_durable)
            self._channel.queue_bind(
                self.queue, topology.exchange,
                routing_key=self.queue if topology.routing_key is None else topology.routing_key,
            )
        return int(ok.method.message_count)

    def _send_acks(self, channel: Any = None) -> None:
        """Ack every decided message not acked yet, with one ``multiple`` frame."""
        (channel or self._channel).basic_ack(self._settled_tag, multiple=True)
        self._acked_tag = self._settled_tag
        self._deferred_since = 0.0

    def _probe_queue(self) -> None:
        self._next_stats = time.monotonic() + self.stats_interval
        ok = self._channel.queue_declare(self.queue, passive=True)
        self._size.set(int(ok.method.message_count))

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._buffer.append((method, properties, body))

    def _on_cancelled(self, frame: Any) -> None:
        self.consuming = False
        self._failure = ConnectionError(
            f"the broker cancelled the consumer of queue {self.queue!r} "
            "(queue deleted, or its node went down)"
        )

    def _raise_failure(self) -> None:
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise failure

    def _count(self, batch: Batch) -> None:
        counts: dict[tuple[str, str], int] = {}
        for message in batch:
            state = message.state
            if state is MessageState.PENDING:
                continue
            key = ("ACK" if state is _ACKED else "NACK",
                   "false" if message.error is None else "true")
            counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            self._counters[key].inc(n)
