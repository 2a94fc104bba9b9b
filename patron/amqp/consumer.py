"""The RabbitMQ (AMQP 0-9-1) consumer component, on pika's ``BlockingConnection``.

It runs the consumer loop every patron consumer shares (:mod:`patron.messaging`), so batching,
retries, failure strategies, readiness, spans and correlation ids work as for all of them.

Threads
    pika connections are not thread-safe, so each connection lives in one thread and nowhere
    else (the component's; with ``concurrency=N``, N connections each in a thread of its own):
    connect, subscribe, receive, ack/nack, the queue-size probe and close all run there, and so
    does the processor. :meth:`Message.ack` / :meth:`Message.nack` only record a decision; the
    transport carries it out after the processor returned. Messages expose no channel, so user
    code cannot touch the connection from another thread. Only :meth:`AMQPConsumer.ready` is
    called from other threads; it reads flags.

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
    and the channel and connection are closed. With a stop deadline (the Service's shutdown
    budget) a broker that does not answer the closing by then gets the connection dropped: it
    requeues whatever was not acked itself. Opening a connection is bounded by
    ``connect_timeout`` only.

Metrics
    ``component_amqp_message_counter{queue, state, hasError}`` counts messages ``FETCHED``,
    ``ACK`` and ``NACK``, ``hasError`` telling whether the processor failed on them;
    ``component_amqp_message_age{queue}`` is the age in seconds of the last message received
    (from its AMQP timestamp); ``component_amqp_queue_size{queue}`` the messages ready in the
    queue, read with a passive declare every ``stats_interval`` seconds.
"""

from __future__ import annotations

import collections
import contextlib
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
from patron.amqp._client import (
    CONNECT_ERRORS,
    Stalled,
    cut_off,
    describe,
    is_refused_login,
    parameters,
    redact,
)
from patron.messaging import (
    Batch,
    ConnectionRetry,
    FailureStrategy,
    Message,
    MessageState,
    PermanentError,
    Processor,
    Retry,
)
from patron.messaging._consumer import Consumer
from patron.messaging._counter import StateCounter
from patron.messaging._loop import Counts, TransportBase
from patron.messaging._options import DEFAULT_CONNECT_TIMEOUT, DEFAULT_STATS_INTERVAL

__all__ = ["AMQPConsumer", "AMQPMessage", "QueueDeclaration"]

logger = logging.getLogger("patron.amqp")

_MESSAGE_COUNTER = StateCounter("amqp")
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


class AMQPMessage(Message):
    """A message RabbitMQ delivered; ``raw`` is pika's ``Basic.Deliver`` method.

    ``properties`` are its ``BasicProperties`` (``message_id``, ``content_type``,
    ``timestamp``...), ``headers`` the AMQP headers table (pika's value types), ``timestamp``
    the AMQP timestamp property when set. ``delivery_tag``, ``redelivered``, ``exchange`` and
    ``routing_key`` come from the delivery. It gives no access to the channel: acknowledge
    through :meth:`ack` / :meth:`nack`.
    """

    transport = "amqp"

    def __init__(self, method: Any, properties: Any, body: bytes, queue: str) -> None:
        # no super().__init__(): the class defaults are enough, and this runs per message
        self.raw = method
        self.properties = properties
        self._body = body
        self.source = queue

    @property
    def timestamp(self) -> float | None:
        stamp = self.properties.timestamp
        return None if stamp is None else float(stamp)

    def _load_headers(self) -> Mapping[str, Any]:
        return self.properties.headers or {}

    @property
    def delivery_tag(self) -> int:
        return int(self.raw.delivery_tag)

    @property
    def redelivered(self) -> bool:
        return bool(self.raw.redelivered)

    @property
    def exchange(self) -> str:
        return str(self.raw.exchange)

    @property
    def routing_key(self) -> str:
        return str(self.raw.routing_key)

    @property
    def message_id(self) -> str | None:
        value = self.properties.message_id
        return None if value is None else str(value)


class AMQPConsumer(Consumer):
    """A component consuming queue ``queue`` of the broker at ``url`` (``amqp://``/``amqps://``).

    The options every consumer shares (see :mod:`patron.messaging`): ``processor`` gets a
    :class:`patron.messaging.Batch` of up to ``batch_size`` :class:`AMQPMessage` objects,
    waiting at most ``batch_timeout`` s after the first one for the batch to fill;
    ``failure`` applies when the processor keeps raising for a message (after
    ``processing_retry``): ``exit`` (not acked; the component fails), ``skip`` (acked, counted
    with ``hasError="true"``) or ``nack`` (handed back: requeued when ``requeue``, else
    dead-lettered by the queue's ``x-dead-letter-exchange``, or dropped without one);
    ``connection_retry`` reconnects and resubscribes after a failure (broker unreachable,
    connection closed), ``connect_timeout`` bounding each attempt; ``concurrency`` connections
    consume in as many threads; the queue's size is read every ``stats_interval`` s; ``name``
    (default ``amqp-<queue>``) names the component. A missing queue (without ``declare``), a
    queue the user may not read, a declaration that conflicts with the broker's, and a login
    or virtual host the broker refuses before the consumer ever subscribed (wrong user or
    password, unknown virtual host, no permission on it) fail at once with
    :class:`patron.messaging.PermanentError`; a login refused after that is retried.

    AMQP's own: ``prefetch`` is the number of unacked messages the broker may push ahead per
    connection (``basic_qos``); it defaults to ``max(10, 2 * batch_size)`` and must be at least
    ``batch_size``. ``requeue`` is what the ``nack`` strategy asks for; the processor may also
    decide per message with ``message.nack(requeue=...)``. ``declare`` (a
    :class:`QueueDeclaration`, or True for a durable queue) creates the queue, and optionally
    an exchange and binding, when the queue is missing; by default the existing topology is
    used as is. ``heartbeat`` (s, see the module docstring) bounds one processor call.
    ``ack_delay`` (s) is how long acks of a fast stream may be held back to go out together
    (see the module docstring); 0 sends each batch's ack before the next batch is handed out.
    ``connection_name`` is the connection's name as the broker shows it (default
    ``patron-<name>``).
    """

    def __init__(
        self,
        url: str,
        queue: str,
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
        prefetch: int | None = None,
        requeue: bool = True,
        heartbeat: int = 30,
        ack_delay: float = 0.02,
        declare: QueueDeclaration | bool | None = None,
        connection_name: str | None = None,
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
        if ack_delay < 0:
            raise ValueError(f"ack_delay must be >= 0, not {ack_delay}")
        name = name or f"amqp-{queue}"
        self.queue = queue
        self.url = redact(url)
        self.prefetch = prefetch
        self._heartbeat = heartbeat
        self._connection_name = connection_name or f"patron-{name}"
        self._declaration = QueueDeclaration() if declare is True else declare or None
        self._ack_delay = ack_delay
        self._raw_url = url
        parameters(url, heartbeat=heartbeat, connect_timeout=connect_timeout,
                   connection_name=self._connection_name)  # a bad URL fails here, not at start
        super().__init__(
            name=name,
            processor=processor,
            batch_size=batch_size,
            batch_timeout=batch_timeout,
            failure=failure,
            processing_retry=processing_retry,
            connection_retry=connection_retry,
            concurrency=concurrency,
            stats_interval=stats_interval,
            connect_timeout=connect_timeout,
            requeue=requeue,
            log=logger,
        )

    def _transport(self, index: int) -> _AmqpTransport:
        suffix = "" if self.concurrency == 1 else f"-{index}"
        return _AmqpTransport(
            name=self._loop_name(index),
            url=self.url,
            queue=self.queue,
            params=parameters(
                self._raw_url,
                heartbeat=self._heartbeat,
                connect_timeout=self.connect_timeout,
                connection_name=f"{self._connection_name}{suffix}",
            ),
            prefetch=self.prefetch,
            declaration=self._declaration,
            ack_delay=self._ack_delay,
        )

    def _describe(self) -> str:
        return f"queue {self.queue} at {self.url} (prefetch {self.prefetch})"


class _AmqpTransport(TransportBase):
    """The client side of one connection; every method runs in its loop's thread."""

    def __init__(
        self,
        *,
        name: str,
        url: str,
        queue: str,
        params: pika.URLParameters,
        prefetch: int,
        declaration: QueueDeclaration | None,
        ack_delay: float,
    ) -> None:
        self.name = name
        self.url = url
        self.queue = queue
        self.params = params
        self.prefetch = prefetch
        self.declaration = declaration
        self.ack_delay = ack_delay
        self._connection: Any = None
        self._channel: Any = None
        self._tag: str | None = None
        self._buffer: collections.deque[tuple[Any, Any, bytes]] = collections.deque()
        self._settled_tag = 0  # every delivery tag up to this one is decided on
        self._acked_tag = 0  # ... and up to this one, the broker was told
        self._deferred_since = 0.0  # when the oldest ack not sent yet was decided
        self._handed_out = 0.0  # when fetch last handed messages to the loop
        self._ack_window = max(1, prefetch // 2)
        self._age = _MESSAGE_AGE.labels(queue)
        self._size = _QUEUE_SIZE.labels(queue)

    # -- Transport ---------------------------------------------------------------------------

    def connect(self) -> None:
        self._buffer.clear()
        self._settled_tag = self._acked_tag = 0
        self._deferred_since = 0.0
        try:
            self._connection = pika.BlockingConnection(self.params)
        except CONNECT_ERRORS as exc:
            if is_refused_login(exc) and not self.has_connected:
                # Wrong credentials or virtual host: retrying cannot help. Once the consumer
                # ran, the same refusal is retried: a password being rotated, a virtual host
                # being recreated, may come right within the retries.
                raise PermanentError(
                    f"{self.name}: cannot connect to {self.url}: {describe(exc)}"
                ) from exc
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
        self.connected = True
        logger.info("%s: subscribed to %s (%d message(s) ready)", self.name, self.queue,
                    ready_count)

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        buffer = self._buffer
        if len(buffer) < max_messages:
            # Deliveries reach the buffer only while pika processes I/O, which also answers
            # heartbeats; block only when there is nothing to hand out. Waiting acks go
            # first, so that the broker refills the prefetch window.
            if self._deferred_since:
                self._send_acks()
            self._connection.process_data_events(time_limit=timeout if not buffer else 0)
        elif self._deferred_since and time.monotonic() - self._deferred_since >= self.ack_delay:
            self._send_acks()
        count = min(max_messages, len(buffer))
        if not count:
            return []
        messages = []
        queue, pop = self.queue, buffer.popleft
        for _ in range(count):
            method, properties, body = pop()
            messages.append(AMQPMessage(method, properties, body, queue))
        self._handed_out = time.monotonic()
        last = messages[-1].timestamp
        if last is not None:
            self._age.set(max(0.0, time.time() - last))
        return messages

    def settle(self, batch: Batch) -> None:
        # Every message comes from the current channel: a broken connection is a failure the
        # loop raises before it settles, and what that channel delivered is redelivered.
        first, last = batch[0].raw.delivery_tag, batch[-1].raw.delivery_tag
        if (
            first == self._settled_tag + 1
            and last - first + 1 == len(batch)
            and all(m._state is _ACKED for m in batch)
        ):
            # Everything up to the last tag is decided: one frame (now or soon) acks all of it.
            self._settled_tag = last
            now = time.monotonic()
            if not self._deferred_since:
                self._deferred_since = now
            if (
                now - self._handed_out >= self.ack_delay  # slow processing: no reason to wait
                or now - self._deferred_since >= self.ack_delay
                or self._settled_tag - self._acked_tag >= self._ack_window
            ):
                self._send_acks()
            return
        if self._deferred_since:
            self._send_acks()
        channel, gap = self._channel, False
        for message in batch:
            tag = message.raw.delivery_tag
            if message._state is _ACKED:
                channel.basic_ack(tag)
            elif message._state is MessageState.NACKED:
                channel.basic_nack(tag, requeue=message._requeue)
            else:
                gap = True
            if not gap:
                self._settled_tag = tag
        self._acked_tag = self._settled_tag

    def pause(self, stop: threading.Event, seconds: float) -> bool:
        """Process the connection's I/O (heartbeats, waiting acks) while waiting, in slices
        that bound how late ``stop`` is seen."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if self.failure is not None:  # the loop reconnects at its next step: go there
                return stop.is_set()
            if self._connection is None:
                return stop.wait(left)
            try:
                if self._deferred_since:
                    self._send_acks()
                self._connection.process_data_events(time_limit=min(left, _IDLE_SLICE))
            except Exception as exc:
                self.fail(exc)
                self.connected = False
        return True

    def record(self, counts: Counts) -> None:
        _MESSAGE_COUNTER.record(counts)

    def probe(self) -> None:
        ok = self._channel.queue_declare(self.queue, passive=True)
        self._size.set(int(ok.method.message_count))

    def close(self) -> None:
        connection, channel, tag = self._connection, self._channel, self._tag
        self._connection = self._channel = self._tag = None
        if connection is None:
            self._buffer.clear()
            return
        left = self.time_left()
        unacked = self._settled_tag - self._acked_tag  # processed, their ack not sent yet
        # With a stop deadline, a broker that does not answer the closing by then gets the
        # connection dropped (the call waiting raises Stalled); it requeues what was not acked.
        # A connection already gone has nothing left to wait for (and no timers to set).
        bound: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if left is not None and connection.is_open:
            bound = cut_off(connection, left)
        with bound:
            try:
                self._close_channel(connection, channel, tag)
            except Stalled:
                logger.warning("%s: closing was cut off at the stop deadline; the broker "
                               "redelivers what was not acknowledged (up to %d processed "
                               "message(s) among it)", self.name, unacked)
            except Exception as exc:  # a broken connection requeues everything anyway
                logger.debug("%s: closing the channel: %s", self.name, describe(exc))
            self._buffer.clear()
            try:
                if connection.is_open:
                    connection.close()
            except Exception as exc:
                logger.debug("%s: closing the connection: %s", self.name, describe(exc))

    def _close_channel(self, connection: Any, channel: Any, tag: str | None) -> None:
        """Send the waiting acks, cancel the consumer, give back the prefetched, close."""
        if channel is None or not channel.is_open:
            return
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

    def _on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self._buffer.append((method, properties, body))

    def _on_cancelled(self, frame: Any) -> None:
        self.connected = False
        self.fail(ConnectionError(
            f"the broker cancelled the consumer of queue {self.queue!r} "
            "(queue deleted, or its node went down)"
        ))
