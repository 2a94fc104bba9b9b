"""The consumer loop and the transport protocol: the transport-author side of messaging.

A consumer component is one :class:`ConsumerLoop` per ``concurrency`` (see
:class:`patron.messaging._consumer.Consumer`), each driving a :class:`Transport` of its own. The
transport is the client code (connect, fetch, settle, close); the loop does everything else, the
same way for every broker: batching, calling the processor, processing retries, failure
strategies, connection retries with backoff, the per-message span and correlation id, message
counts and the stop sequence.

Threads
    :meth:`ConsumerLoop.run` runs in one thread (the component's, or one of its loop threads).
    Every transport method and the user's processor are called in that thread and no other, so
    a client that is not thread-safe (pika) is only ever touched by one thread. Only
    :attr:`Transport.connected` and :attr:`Transport.has_connected` are read from other threads
    (plain attributes). The processor is called once per batch, never with an empty batch.

Acknowledgement (at-least-once)
    :meth:`Message.ack` and :meth:`Message.nack` only *record* a decision; the loop hands the
    batch to :meth:`Transport.settle` once the processor returned (or the failure strategy
    decided), which carries the decisions out, or queues them to go out together soon and at
    the latest when the transport closes (AMQP acks, SQS deletes). When the processor returns
    without raising, every message of the batch it did not decide on itself is acknowledged.
    Nothing is acknowledged before the processor returned for it.

Failure
    When the processor raises, the messages of the batch not yet decided on are given to it
    again up to :attr:`Retry.count` times, with :meth:`Retry.delay` pauses between attempts;
    then the :class:`FailureStrategy` applies to them: ``EXIT`` leaves them unacknowledged and
    the loop raises :class:`ProcessingError`; ``SKIP`` acknowledges them (logged and counted as
    failed); ``NACK`` hands them back to the broker for redelivery and then pauses before the
    next fetch, so a poison message cannot cause a hot loop.

    An exception from a transport method (or kept by :meth:`TransportBase.fail` from a client
    callback) is a connection failure: the loop closes the transport, waits
    :meth:`ConnectionRetry.delay` and connects again, at most :attr:`ConnectionRetry.count`
    times in a row, then raises :class:`TransportError`. The count starts again once the
    connection proved to work (an empty fetch, or a batch settled). A :class:`ConsumerError`
    from the transport (:class:`PermanentError`: a missing topic or queue) ends the loop at once.
    Each connection failure is logged as one WARNING line (the traceback of a transport that
    fails to close goes to DEBUG): a broker outage is routine, not a bug.

Stop deadline
    :meth:`ConsumerLoop.stop_by` hands the transport the ``time.monotonic()`` by which the loop
    must have returned once ``stop`` is set (:attr:`Transport.stop_deadline`); the transport
    bounds the waits of its closing with it (a last commit, giving messages back, closing the
    connection) and leaves what it cannot finish to the broker's redelivery.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

from patron import correlation
from patron.component import time_left
from patron.messaging._errors import ConsumerError, ProcessingError, TransportError
from patron.messaging._message import Batch, Message, MessageState, Processor
from patron.messaging._options import ConnectionRetry, FailureStrategy, Retry

__all__ = [
    "METRICS_INTERVAL",
    "ConsumerLoop",
    "Counts",
    "Outcome",
    "Transport",
    "TransportBase",
]

logger = logging.getLogger("patron.messaging")

#: Handing counts to Prometheus (a lock per metric child) for every batch of one would cost more
#: than the batch: while messages keep coming, the loop hands them over this often (seconds),
#: and at once when a fetch comes back empty or the transport closes.
METRICS_INTERVAL = 0.5

_PENDING, _ACKED, _NACKED = MessageState.PENDING, MessageState.ACKED, MessageState.NACKED


class Outcome(enum.Enum):
    """What the loop counts for each message, by source and whether the processor failed on it."""

    RECEIVED = "received"  #: handed to the loop by a fetch
    ACKED = "acked"  #: acknowledged: processed, or skipped after a failure
    NACKED = "nacked"  #: given back to the broker
    UNACKED = "unacked"  #: failed and left unacknowledged (the ``exit`` strategy)


#: ``(source, outcome, failed) -> number of messages`` since the last :meth:`Transport.record`
Counts = Mapping[tuple[str, Outcome, bool], int]

# The loop tallies per source in a list of counters, one slot per (outcome, failed): a list
# index is far cheaper per message than hashing an enum tuple; Counts are built on record.
_SLOTS = (
    (Outcome.RECEIVED, False), (Outcome.ACKED, False), (Outcome.ACKED, True),
    (Outcome.NACKED, False), (Outcome.NACKED, True), (Outcome.UNACKED, True),
)
_RECEIVED, _ACKED_OK, _NACKED_OK, _UNACKED_FAILED = 0, 1, 3, 5  # ACKED/NACKED failed: +1


class Transport(Protocol):
    """The client side of a consumer, driven by one :class:`ConsumerLoop` from one thread.

    Any exception from these methods is a connection failure (retried per
    :class:`ConnectionRetry`), except :class:`ConsumerError` subclasses, which end the loop.
    :class:`TransportBase` implements the optional parts.
    """

    #: whether messages can be given back one by one (``FailureStrategy.NACK``, ``nack()``)
    supports_nack: bool
    #: 0 for transports whose fetch waits for messages. More for one that cannot (an SQS short
    #: poll): the loop then rests that long (through :meth:`pause`) after a fetch that starts a
    #: batch came back empty, and stops topping a batch up at the first empty fetch, so that an
    #: idle source is not polled in a hot loop
    idle_pause: float
    #: a failure caught in a client callback; the loop raises it at its next step
    failure: BaseException | None
    #: whether the transport can deliver right now (subscribed; Kafka: partitions assigned)
    connected: bool
    #: whether it ever could since it was created: the consumer's readiness
    has_connected: bool
    #: the ``time.monotonic()`` by which :meth:`close` must have returned when the consumer
    #: stops (None: no bound); set from another thread, before ``stop`` is set
    stop_deadline: float | None

    def connect(self) -> None:
        """Open the client and subscribe. Called again after :meth:`close` on a retry."""

    def fetch(self, max_messages: int, timeout: float, starts_batch: bool) -> Sequence[Message]:
        """Up to ``max_messages`` messages, waiting about ``timeout`` s at most for the first
        one; empty when none came. ``starts_batch`` is true for the fetch that waits for a
        batch's first message, false for those that top a batch up within ``timeout``. A
        transport whose broker long-polls (SQS) may wait its own poll time on a fetch that
        starts a batch, which then bounds how late a stop is seen; keep waits short."""
        ...

    def settle(self, batch: Batch) -> None:
        """Carry out the decisions of a processed batch (called once per batch, messages in
        fetch order): acknowledge ``ACKED``, give back ``NACKED`` (with ``requeue``). ``PENDING``
        messages stay unacknowledged (the loop is failing or stopping, and :meth:`close` gives
        them back); the transport must not acknowledge anything that ordering would imply
        behind them (Kafka offsets)."""

    def pause(self, stop: threading.Event, seconds: float) -> bool:
        """Wait ``seconds``, or until ``stop`` is set (then return True), keeping the connection
        serviced meanwhile (AMQP answers heartbeats). A failure is kept in :attr:`failure`."""
        ...

    def record(self, counts: Counts) -> None:
        """Add ``counts`` to the transport's metrics (it must not keep the mapping)."""

    def probe(self) -> None:
        """Read the broker's statistics into metrics (queue size, lag); called every
        ``stats_interval`` seconds between batches."""

    def close(self) -> None:
        """Give back everything fetched but not acknowledged, leave the group, close, by
        :attr:`stop_deadline` when there is one. Idempotent; must not raise."""


class TransportBase:
    """Defaults for the optional parts of :class:`Transport`."""

    supports_nack = True
    idle_pause = 0.0
    failure: BaseException | None = None
    has_connected = False
    stop_deadline: float | None = None
    _connected = False

    def time_left(self) -> float | None:
        """Seconds left for closing before :attr:`stop_deadline`, less
        :data:`patron.component.STOP_RESERVE` for what follows it (0 once that passed); None
        without a deadline."""
        deadline = self.stop_deadline
        return None if deadline is None else time_left(deadline)

    @property
    def connected(self) -> bool:
        return self._connected

    @connected.setter
    def connected(self, value: bool) -> None:
        self._connected = value
        if value:
            self.has_connected = True

    def fail(self, error: BaseException) -> None:
        """Keep ``error``, caught in a client callback, for the loop to raise at its next step
        (the first one wins). Callbacks run inside a client call in the loop's thread, where
        raising would unwind through the client library."""
        if self.failure is None:
            self.failure = error

    def pause(self, stop: threading.Event, seconds: float) -> bool:
        return stop.wait(seconds)

    def probe(self) -> None:
        pass


class ConsumerLoop:
    """The processing loop of one consumer connection; runs inside ``run(stop)``.

    ``batch_size`` messages are collected per processor call, waiting at most ``batch_timeout``
    seconds after the first one arrived for the rest. ``poll_timeout`` bounds each fetch, hence
    how long a stop request may wait. ``requeue`` is what the ``NACK`` strategy asks for (False
    dead-letters the message on AMQP). Every ``stats_interval`` seconds (0: never) the transport
    reads the broker's statistics.

    :meth:`run` blocks in the calling thread until ``stop`` is set, then finishes the batch in
    hand, settles it, closes the transport and returns. It raises :class:`ProcessingError`,
    :class:`TransportError` or :class:`PermanentError`, after closing the transport.
    :meth:`stop_by` may be called from any thread before ``stop`` is set.
    """

    def __init__(
        self,
        transport: Transport,
        processor: Processor,
        *,
        name: str = "consumer",
        batch_size: int = 1,
        batch_timeout: float = 0.1,
        poll_timeout: float = 0.25,
        failure: FailureStrategy | str = FailureStrategy.EXIT,
        retry: Retry | None = None,
        connection: ConnectionRetry | None = None,
        requeue: bool = True,
        stats_interval: float = 0.0,
        log: logging.Logger | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if batch_timeout < 0 or poll_timeout <= 0:
            raise ValueError("batch_timeout must be >= 0 and poll_timeout > 0")
        if stats_interval < 0:
            raise ValueError(f"stats_interval must be >= 0 (0: never), not {stats_interval}")
        failure = FailureStrategy(failure)
        if failure is FailureStrategy.NACK and not transport.supports_nack:
            raise ValueError(f"{name}: this transport cannot nack; use exit or skip")
        self.transport = transport
        self.processor = processor
        self.name = name
        self.batch_size = batch_size
        self.batch_timeout = batch_timeout
        self.poll_timeout = poll_timeout
        self.failure = failure
        self.retry = retry if retry is not None else Retry()
        self.connection = connection if connection is not None else ConnectionRetry()
        self.requeue = requeue
        self.stats_interval = stats_interval
        self.log = log if log is not None else logger
        # Since the last connect, a fetch came back empty or a batch was settled: the
        # connection works. A fetch that returns messages proves nothing yet: when settling
        # keeps failing, the same messages come back after every reconnect.
        self._healthy = False
        self._failed_batches = 0  # consecutive batches the NACK strategy handed back
        self._tallies: dict[str, list[int]] = {}  # by source, one slot per _SLOTS entry
        self._next_record = 0.0
        self._next_probe = 0.0

    # -- the connection level ----------------------------------------------------------------

    def stop_by(self, deadline: float) -> None:
        """The stop about to be asked for must be over by ``deadline`` (``time.monotonic()``):
        the transport bounds its closing with it. Any thread; never blocks."""
        self.transport.stop_deadline = deadline

    def run(self, stop: threading.Event) -> None:
        failures = 0
        transport = self.transport
        try:
            while not stop.is_set():
                self._healthy = False
                transport.failure = None
                try:
                    transport.connect()
                    self._next_probe = time.monotonic() + self.stats_interval
                    self._consume(stop)
                    return
                except ConsumerError:
                    raise
                except Exception as error:
                    failures = 1 if self._healthy else failures + 1
                    self._close()
                    if failures > self.connection.count:
                        raise TransportError(
                            f"{self.name}: giving up after {failures} failed connection "
                            f"attempt(s) in a row: {error}"
                        ) from error
                    delay = self.connection.delay(failures - 1)
                    self.log.warning(
                        "%s: connection failed (%s); retry %d of %d in %.1fs",
                        self.name, error, failures, self.connection.count, delay,
                    )
                    if stop.wait(delay):  # the transport is closed: nothing to service
                        return
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self._record()
        except Exception:  # metrics must not stand in the way of giving messages back
            self.log.debug("%s: recording message counts failed", self.name, exc_info=True)
        try:
            self.transport.close()
        except Exception as exc:  # close must not mask the error that brought us here
            # One line: closing after a broken connection failing too is routine.
            self.log.warning("%s: closing the transport failed: %r", self.name, exc)
            self.log.debug("%s: closing the transport failed", self.name, exc_info=True)
        self.transport.connected = False

    def _consume(self, stop: threading.Event) -> None:
        while not stop.is_set():
            messages = self._collect(stop)
            if messages:
                self._process(Batch(messages), stop)

    def _raise_failure(self) -> None:
        transport = self.transport
        failure = transport.failure
        if failure is not None:
            transport.failure = None
            raise failure

    # -- batching ----------------------------------------------------------------------------

    def _collect(self, stop: threading.Event) -> list[Message]:
        """Messages for one batch: wait for the first, then up to ``batch_timeout`` for the rest.
        Returns early, maybe empty, when ``stop`` is set."""
        transport = self.transport
        fetch, size = transport.fetch, self.batch_size
        while not stop.is_set():  # wait for the first message
            got = fetch(size, self.poll_timeout, True)
            if transport.failure is not None:
                self._raise_failure()
            if got:
                break
            self._idle(stop)
        else:
            return []
        messages = list(got)
        if len(messages) < size:
            deadline = time.monotonic() + self.batch_timeout
            while len(messages) < size and not stop.is_set():  # then top it up
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                got = fetch(size - len(messages), min(left, self.poll_timeout), False)
                if transport.failure is not None:
                    self._raise_failure()
                if not got and transport.idle_pause:  # its fetch does not wait: no hot loop
                    break
                messages.extend(got)
        return messages

    def _idle(self, stop: threading.Event) -> None:
        """After an empty fetch: the connection works, the metrics catch up, and a transport
        whose fetch does not wait gets its rest."""
        self._healthy = True
        if self._tallies:
            self._record()
        now = time.monotonic()
        if self.stats_interval and now >= self._next_probe:
            self._probe(now)
        if self.transport.idle_pause:
            self.transport.pause(stop, self.transport.idle_pause)

    # -- processing --------------------------------------------------------------------------

    def _call(self, batch: Batch) -> None:
        if len(batch) == 1:
            with batch[0].activate():
                self.processor(batch)
        else:
            self.processor(batch)

    def _process(self, batch: Batch, stop: threading.Event) -> None:
        try:
            self._call(batch)
        except Exception as error:
            self._recover(batch, error, stop)
            return
        # The common case, kept lean as it runs per batch: every message the processor did not
        # decide on is acknowledged, and the batch counted in the same pass.
        source, nacked, mixed = batch[0].source, 0, False
        for message in batch:
            if message._state is _PENDING:
                message._state = _ACKED
            elif message._state is _NACKED:
                nacked += 1
            if message.source is not source:
                mixed = True
        settled = False
        try:
            self._settle(batch)
            settled = True
        finally:
            if mixed or not settled:
                self._tally(batch, settled)
            else:
                slots = self._slots(source)
                slots[_RECEIVED] += len(batch)
                slots[_ACKED_OK] += len(batch) - nacked
                slots[_NACKED_OK] += nacked
        self._failed_batches = 0
        self._housekeeping()

    def _recover(self, batch: Batch, error: Exception, stop: threading.Event) -> None:
        """The processor raised for ``batch``: retry the undecided messages, then apply the
        failure strategy to those still failing, settle, and raise or pause as it says."""
        transport = self.transport
        attempt = 0
        interrupted = False
        while True:
            pending = batch.pending()
            if not pending:  # it decided on everything before raising: its decisions stand
                break
            if attempt >= self.retry.count:
                break
            delay = self.retry.delay(attempt)
            self.log.warning(
                "%s: processing %d message(s) failed (%r); retry %d of %d in %.2fs",
                self.name, len(pending), error, attempt + 1, self.retry.count, delay,
            )
            attempt += 1
            if transport.pause(stop, delay):  # stopping: give the rest back untouched
                interrupted = True
                break
            if transport.failure is not None:  # the connection broke: the broker redelivers
                self._raise_failure()
            view = Batch(pending)
            try:
                self._call(view)
            except Exception as exc:
                error = exc
            else:
                for message in view:
                    if message._state is _PENDING:
                        message._state = _ACKED
                self._finish(batch, [], error, stop)
                self._failed_batches = 0
                return
        self._finish(batch, [] if interrupted else batch.pending(), error, stop)

    def _finish(self, batch: Batch, failed: list[Message], error: Exception,
                stop: threading.Event) -> None:
        """Settle a batch that failed at least once; ``failed`` are the messages the strategy
        applies to (none when a retry succeeded, or a stop interrupted the retries)."""
        settled = False
        try:
            if failed:
                self._apply_strategy(failed, error)
            self._settle(batch)
            settled = True
        finally:
            for message in batch.pending():  # undecided: given back when the transport closes
                message._sealed = True
            self._tally(batch, settled)
        if failed and self.failure is FailureStrategy.EXIT:
            first = failed[0]
            raise ProcessingError(
                f"{self.name}: processor failed on a message from {first.source} "
                f"(correlation id {first.correlation_id}): {error!r}; failure strategy exit, "
                f"{len(failed)} message(s) not acknowledged"
            ) from error
        self._housekeeping()
        if failed and self.failure is FailureStrategy.NACK:
            self._failed_batches += 1
            self.transport.pause(stop, self.retry.delay(self._failed_batches - 1))

    def _settle(self, batch: Batch) -> None:
        transport = self.transport
        if transport.failure is not None:  # it broke while the processor ran
            self._raise_failure()
        transport.settle(batch)
        self._healthy = True

    def _housekeeping(self) -> None:
        """Between batches: hand the counts over and read statistics when they are due."""
        now = time.monotonic()
        if now >= self._next_record:
            self._record()
            if self.stats_interval and now >= self._next_probe:
                self._probe(now)

    def _apply_strategy(self, failed: list[Message], error: BaseException | None) -> None:
        strategy = self.failure
        for message in failed:
            message._error = error
            if strategy is FailureStrategy.SKIP:
                message._state = _ACKED
            elif strategy is FailureStrategy.NACK:
                message._state, message._requeue = _NACKED, self.requeue
            with correlation.correlation_id(message.correlation_id):
                self.log.error(
                    "%s: processor failed on a message from %s (key %r, %d bytes): %r; %s",
                    self.name, message.source, message.key, len(message.body), error,
                    {FailureStrategy.EXIT: "not acknowledged, stopping",
                     FailureStrategy.SKIP: "skipped and acknowledged",
                     FailureStrategy.NACK: "handed back" + (
                         " for redelivery" if self.requeue else " without requeue")}[strategy],
                    exc_info=error if message is failed[0] else None,
                )

    # -- counting ----------------------------------------------------------------------------

    def _slots(self, source: str) -> list[int]:
        slots = self._tallies.get(source)
        if slots is None:
            slots = self._tallies[source] = [0] * len(_SLOTS)
        return slots

    def _tally(self, batch: Batch, settled: bool) -> None:
        """Count the messages of ``batch`` as received and, once ``settled``, by the decision on
        each (the general case: see :meth:`_process` for the common one)."""
        for message in batch:
            slots = self._slots(message.source)
            slots[_RECEIVED] += 1
            if not settled:
                continue
            state, failed = message._state, message._error is not None
            if state is _ACKED:
                slots[_ACKED_OK + failed] += 1
            elif state is _NACKED:
                slots[_NACKED_OK + failed] += 1
            elif failed:
                slots[_UNACKED_FAILED] += 1
            # else interrupted by a stop: given back when the transport closes, not counted

    def _record(self) -> None:
        self._next_record = time.monotonic() + METRICS_INTERVAL
        if not self._tallies:
            return
        tallies, self._tallies = self._tallies, {}
        counts = {
            (source, *_SLOTS[slot]): n
            for source, slots in tallies.items()
            for slot, n in enumerate(slots) if n
        }
        self.transport.record(counts)

    def _probe(self, now: float) -> None:
        self._next_probe = now + self.stats_interval
        self.transport.probe()
