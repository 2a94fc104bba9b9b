"""What the Kafka, AMQP and SQS consumers share: messages, batches, failure handling, the loop.

A consumer component is a :class:`ConsumerLoop` plus a :class:`Transport`. The transport is the
client code (connect, fetch, settle, close); the loop does everything else, the same way for
every broker: batching, calling the processor, per-message retries, failure strategies,
connection retries, per-message span and correlation id, and the stop sequence.

Threads
    :meth:`ConsumerLoop.run` runs in the component's thread (the Service starts it). Every
    transport method and the user's processor are called in that thread and no other, so a
    client that is not thread-safe (pika) is only ever touched by one thread. The processor is
    called once per batch, never with an empty batch.

Acknowledgement (at-least-once)
    :meth:`Message.ack` and :meth:`Message.nack` only *record* a decision; the loop hands the
    batch to :meth:`Transport.settle` once the processor returned (or the failure strategy
    decided), and a message counts as acknowledged when ``settle`` returned for it: Kafka
    offset stored (librdkafka commits it within a second, on a rebalance and on close), AMQP
    ``basic_ack`` sent, SQS ``DeleteMessageBatch`` answered. When the
    processor returns without raising, every message of the batch it did not decide on itself is
    acknowledged. Nothing is acknowledged before the processor returned for it.

Failure
    When the processor raises, the messages of the batch not yet decided on are given to it
    again up to :attr:`Retry.count` times, waiting :meth:`Retry.delay` between attempts; then
    the :class:`FailureStrategy` applies to them: ``EXIT`` leaves them unacknowledged and the
    loop raises :class:`ProcessingError` (the component fails, the Service stops non-zero);
    ``SKIP`` acknowledges them (logged, and counted by the transport from
    :attr:`Message.error`); ``NACK`` hands them back to the broker for redelivery and then
    pauses before the next fetch so a poison message cannot cause a hot loop.

    An exception from a transport method is a connection failure: the loop closes the
    transport, waits :attr:`ConnectionRetry.wait` and connects again, at most
    :attr:`ConnectionRetry.count` times in a row, then raises :class:`TransportError`. The count
    starts again after a fetch succeeds. :class:`PermanentError` (a missing topic or queue) is
    not retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Protocol, overload

import opentracing

from patron import correlation, tracing

__all__ = [
    "Batch",
    "ConnectionRetry",
    "ConsumerError",
    "ConsumerLoop",
    "FailureStrategy",
    "Message",
    "MessageState",
    "PermanentError",
    "ProcessingError",
    "Processor",
    "PublishError",
    "Retry",
    "Transport",
    "TransportError",
    "dedupe_by_key",
    "per_message",
]

logger = logging.getLogger("patron.messaging")


class PublishError(Exception):
    """Base of what the publishing clients raise when a message was not accepted, so callers
    can handle a failed publish the same way for every broker."""


class ConsumerError(Exception):
    """Base of the errors a consumer loop raises; ``str(error)`` is fit for an operator."""


class ProcessingError(ConsumerError):
    """The processor failed on a message and the failure strategy is ``EXIT``."""


class TransportError(ConsumerError):
    """The broker could not be reached (or kept failing) after every connection retry."""


class PermanentError(ConsumerError):
    """A transport failure that retrying cannot fix (missing topic or queue); never retried."""


class FailureStrategy(enum.Enum):
    """What happens to a message the processor failed on, once its retries are used up."""

    EXIT = "exit"  #: do not acknowledge; the component fails and the service stops
    SKIP = "skip"  #: acknowledge it anyway, log it and count it as skipped
    NACK = "nack"  #: give it back to the broker for redelivery (AMQP, SQS; not Kafka)


class MessageState(enum.Enum):
    PENDING = "pending"  #: no decision yet
    ACKED = "acked"  #: to be acknowledged (processed, or skipped when ``error`` is set)
    NACKED = "nacked"  #: to be given back (redelivered when ``requeue`` is true)


@dataclasses.dataclass(frozen=True)
class Retry:
    """Per-message processing retries: ``count`` more attempts, ``wait * backoff**n`` apart.

    ``delay(n)`` is the pause before retry ``n`` (0-based), capped at ``max_wait``. The same
    delays pace the loop after a batch was nacked by the ``NACK`` strategy (growing while
    batches keep failing), so redelivery of a poison message is never a hot loop.
    """

    count: int = 0
    wait: float = 1.0
    backoff: float = 2.0
    max_wait: float = 30.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.wait < 0 or self.backoff < 1 or self.max_wait < 0:
            raise ValueError(f"invalid retry policy {self!r}: needs count >= 0, wait >= 0, "
                             "backoff >= 1, max_wait >= 0")

    def delay(self, attempt: int) -> float:
        return float(min(self.max_wait, self.wait * self.backoff ** min(attempt, 64)))


@dataclasses.dataclass(frozen=True)
class ConnectionRetry:
    """Connection retries: after a transport failure, wait ``wait`` s and connect again, at
    most ``count`` times in a row (``count + 1`` attempts in all) before giving up."""

    count: int = 3
    wait: float = 10.0

    def __post_init__(self) -> None:
        if self.count < 0 or self.wait < 0:
            raise ValueError(f"invalid connection retry {self!r}: needs count >= 0, wait >= 0")


class Message:
    """One received message.

    ``body`` is bytes (empty for a Kafka tombstone; ``text`` decodes it as UTF-8). ``key`` is the
    Kafka key, or None. ``headers`` maps names to the transport's values (bytes or None for
    Kafka, pika's types for AMQP, str/bytes/number for SQS attributes); when a name repeats,
    the last value wins. ``source`` is the topic or queue, ``raw`` the client's own message
    object, ``timestamp`` the broker's (seconds since the epoch) when known.

    ``correlation_id`` comes from the ``X-Correlation-Id`` header (any case), or is a new UUID4
    when that is missing or not a sane id. :meth:`activate` makes it current together with a
    span ``"{source} process"`` that continues the trace found in the headers; the loop
    activates the message of a batch of one around the processor call, and a batch processor
    activates each message itself (see :func:`per_message`).

    ``ack()`` / ``nack()`` record a decision (the first one wins) that the transport carries
    out after the processor returned; they may be called from any thread until then.

    A transport may subclass it to read ``body``, ``key``, ``timestamp`` and the headers
    (:meth:`_load_headers`) from ``raw`` only when they are asked for; the Kafka one does.
    """

    # Class-level defaults, so that creating a message sets only what it has: the loop creates
    # one per message received, and at hundreds of thousands a second every attribute counts.
    source: str = ""
    raw: Any = None
    transport: str = "messaging"
    nackable: bool = True
    state: MessageState = MessageState.PENDING
    requeue: bool = False
    #: the exception the processor raised for it, once the failure strategy applied
    error: BaseException | None = None
    _body: bytes = b""
    _key: bytes | None = None
    _timestamp: float | None = None
    _headers: Mapping[str, Any] | None = None
    _pairs: Iterable[tuple[str, Any]] | None = None
    _correlation_id: str | None = None
    _span: opentracing.Span | None = None
    _sealed: bool = False

    def __init__(
        self,
        body: bytes,
        *,
        key: bytes | None = None,
        headers: Mapping[str, Any] | Iterable[tuple[str, Any]] | None = None,
        source: str = "",
        raw: Any = None,
        timestamp: float | None = None,
        transport: str = "messaging",
        nackable: bool = True,
    ) -> None:
        self._body = body
        self._key = key
        self.source = source
        self.raw = raw
        self._timestamp = timestamp
        self.transport = transport
        self.nackable = nackable
        # A list of pairs (Kafka) becomes a dict only when someone asks for the headers.
        if isinstance(headers, Mapping):
            self._headers = headers
        elif headers is not None:
            self._pairs = headers

    @property
    def body(self) -> bytes:
        return self._body

    @property
    def key(self) -> bytes | None:
        return self._key

    @property
    def timestamp(self) -> float | None:
        return self._timestamp

    def _load_headers(self) -> Mapping[str, Any]:
        """The headers, built on first use (a transport subclass may read them from ``raw``)."""
        pairs, self._pairs = self._pairs, None
        return dict(pairs or ())

    def __repr__(self) -> str:
        return (f"<Message {self.source} key={self.key!r} {self.state.value} "
                f"body={self.body[:32]!r}{'...' if len(self.body) > 32 else ''}>")

    @property
    def headers(self) -> Mapping[str, Any]:
        if self._headers is None:
            self._headers = self._load_headers()
        return self._headers

    @property
    def text(self) -> str:
        """The body decoded as UTF-8; raises ``UnicodeDecodeError`` when it is not."""
        return self.body.decode("utf-8")

    def header(self, name: str) -> Any:
        """The value of header ``name`` compared without case, or None."""
        headers = self.headers
        if name in headers:
            return headers[name]
        lower = name.lower()
        for key, value in headers.items():
            if key.lower() == lower:
                return value
        return None

    def text_headers(self) -> dict[str, str]:
        """The headers whose values are text (or UTF-8 bytes), as a str dict: a trace carrier."""
        carrier: dict[str, str] = {}
        for name, value in self.headers.items():
            if isinstance(value, str):
                carrier[name] = value
            elif isinstance(value, (bytes, bytearray)):
                try:
                    carrier[name] = bytes(value).decode("utf-8")
                except UnicodeDecodeError:
                    continue
        return carrier

    @property
    def correlation_id(self) -> str:
        if self._correlation_id is None:
            value = self.header(correlation.HEADER)
            self._correlation_id = correlation.ensure(
                value if isinstance(value, (str, bytes)) else None
            )
        return self._correlation_id

    @property
    def span(self) -> opentracing.Span | None:
        """The message's span while it is activated, else None."""
        return self._span

    def activate(self) -> contextlib.AbstractContextManager[opentracing.Span]:
        """Make the correlation id current and run the block in the message's span.

        Re-entrant: inside an active block it yields the same span. An exception leaving the
        outermost block marks the span as failed.
        """
        return _Activation(self)

    def ack(self) -> None:
        """Acknowledge it once the processor returns (no-op when already decided)."""
        self._decide(MessageState.ACKED, False)

    def nack(self, requeue: bool = True) -> None:
        """Give it back once the processor returns: redelivered when ``requeue`` (AMQP), made
        visible again (SQS). Kafka cannot give back one message: there it raises
        ``NotImplementedError``; raise from the processor instead."""
        if not self.nackable:
            raise NotImplementedError(
                f"{self.transport} cannot redeliver a single message; raise from the processor "
                "and let the failure strategy decide"
            )
        self._decide(MessageState.NACKED, requeue)

    def _decide(self, state: MessageState, requeue: bool) -> None:
        if self._sealed:
            logger.warning("%s: %s() after the message was settled is ignored", self.source,
                           state.value[:-2])
            return
        if self.state is MessageState.PENDING:
            self.state = state
            self.requeue = requeue


class _Activation:
    """What :meth:`Message.activate` returns: a class, not a generator, as it runs per message."""

    __slots__ = ("_correlation", "_message", "_scope")

    def __init__(self, message: Message) -> None:
        self._message = message
        self._scope: opentracing.Scope | None = None
        self._correlation: contextlib.AbstractContextManager[str] | None = None

    def __enter__(self) -> opentracing.Span:
        message = self._message
        if message._span is not None:  # already active: reuse it
            return message._span
        current = correlation.correlation_id(message.correlation_id)
        current.__enter__()
        try:
            scope = tracing.start_span(
                f"{message.source} process",
                carrier=message.text_headers(),
                kind=tracing.tags.SPAN_KIND_CONSUMER,
                component=message.transport,
            )
        except BaseException:
            current.__exit__(None, None, None)
            raise
        self._correlation, self._scope = current, scope
        message._span = scope.span
        return scope.span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        scope, current = self._scope, self._correlation
        if scope is None or current is None:
            return
        self._scope = self._correlation = None
        self._message._span = None
        try:
            scope.__exit__(exc_type, exc, tb)  # finishes the span, marked failed on an error
        finally:
            current.__exit__(None, None, None)


class Batch(Sequence[Message]):
    """The messages handed to one processor call, in the order they were fetched (never empty).

    ``ack()`` / ``nack()`` decide on every message of the batch not decided on yet.
    """

    __slots__ = ("_messages",)

    def __init__(self, messages: Iterable[Message]) -> None:
        self._messages = tuple(messages)

    @overload
    def __getitem__(self, index: int) -> Message: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[Message]: ...

    def __getitem__(self, index: int | slice) -> Message | Sequence[Message]:
        return self._messages[index]

    def __len__(self) -> int:
        return len(self._messages)

    def __iter__(self) -> Iterator[Message]:
        return iter(self._messages)

    def __repr__(self) -> str:
        return f"<Batch of {len(self._messages)}>"

    def pending(self) -> list[Message]:
        return [m for m in self._messages if m.state is MessageState.PENDING]

    def ack(self) -> None:
        for message in self._messages:
            message.ack()

    def nack(self, requeue: bool = True) -> None:
        for message in self._messages:
            message.nack(requeue)


#: The user's processor: called with a non-empty batch in the component's thread. Returning
#: acknowledges every message it did not decide on; raising starts retries / the strategy.
Processor = Callable[[Batch], None]


def per_message(handler: Callable[[Message], None]) -> Processor:
    """A processor that calls ``handler`` for each message in its own activated context and
    acknowledges it as soon as ``handler`` returned, so a retry resumes at the failed one."""

    def process(batch: Batch) -> None:
        for message in batch:
            if message.state is not MessageState.PENDING:
                continue
            with message.activate():
                handler(message)
            message.ack()

    return process


def dedupe_by_key(processor: Processor) -> Processor:
    """Wrap ``processor`` so it sees only the latest message of each key in a batch (messages
    without a key are all kept, order preserved). The dropped ones are acknowledged with the
    batch when ``processor`` returns."""

    def process(batch: Batch) -> None:
        latest: dict[bytes, int] = {}
        for index, message in enumerate(batch):
            if message.key is not None:
                latest[message.key] = index
        kept = [m for i, m in enumerate(batch) if m.key is None or latest[m.key] == i]
        processor(batch if len(kept) == len(batch) else Batch(kept))

    return process


class Transport(Protocol):
    """The client side of a consumer, driven by :class:`ConsumerLoop` from one thread.

    Any exception from these methods is a connection failure (retried per
    :class:`ConnectionRetry`), except :class:`ConsumerError` subclasses, which end the loop.
    """

    #: whether messages can be given back one by one (``FailureStrategy.NACK``, ``nack()``)
    supports_nack: bool

    def connect(self) -> None:
        """Open the client and subscribe. Called again after :meth:`close` on a retry."""

    def fetch(self, max_messages: int, timeout: float) -> Sequence[Message]:
        """Up to ``max_messages`` messages, waiting about ``timeout`` s at most for the first
        one; empty when none came. Stop is noticed between calls, so keep waits short."""
        ...

    def settle(self, batch: Batch) -> None:
        """Carry out the decisions of a processed batch (called once per batch, messages in
        fetch order): acknowledge ``ACKED``, give back ``NACKED`` (with ``requeue``). ``PENDING``
        messages stay unacknowledged (the loop is failing or stopping, and :meth:`close` gives
        them back); the transport must not acknowledge anything that ordering would imply
        behind them (Kafka offsets)."""

    def close(self) -> None:
        """Give back everything fetched but not acknowledged, leave the group, close.
        Idempotent; must not raise."""


class ConsumerLoop:
    """The processing loop every consumer component runs inside its ``run(stop)``.

    ``batch_size`` messages are collected per processor call, waiting at most ``batch_timeout``
    seconds after the first one arrived for the rest. ``poll_timeout`` bounds each fetch, hence
    how long a stop request may wait. ``requeue`` is what the ``NACK`` strategy asks for
    (False sends the message to the queue's dead-letter exchange on AMQP).

    :meth:`run` blocks in the calling (component) thread until ``stop`` is set, then finishes
    the batch in hand, settles it, closes the transport and returns. It raises
    :class:`ProcessingError`, :class:`TransportError` or :class:`PermanentError`, after
    closing the transport.
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
        log: logging.Logger | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        if batch_timeout < 0 or poll_timeout <= 0:
            raise ValueError("batch_timeout must be >= 0 and poll_timeout > 0")
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
        self.log = log if log is not None else logger
        # Since the last connect, a fetch came back empty or a batch was settled: the
        # connection works. A fetch that returns messages proves nothing yet: when settling
        # keeps failing, the same messages come back after every reconnect.
        self._healthy = False
        self._failed_batches = 0  # consecutive batches the NACK strategy handed back

    # -- the connection level ----------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        failures = 0
        try:
            while not stop.is_set():
                self._healthy = False
                try:
                    self.transport.connect()
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
                    self.log.warning(
                        "%s: connection failed (%s); retry %d of %d in %.1fs",
                        self.name, error, failures, self.connection.count, self.connection.wait,
                    )
                    if stop.wait(self.connection.wait):
                        return
        finally:
            self._close()

    def _close(self) -> None:
        try:
            self.transport.close()
        except Exception:  # close must not mask the error that brought us here
            self.log.exception("%s: closing the transport failed", self.name)

    def _consume(self, stop: threading.Event) -> None:
        while not stop.is_set():
            messages = self._collect(stop)
            if messages:
                self._process(Batch(messages), stop)

    # -- batching ----------------------------------------------------------------------------

    def _collect(self, stop: threading.Event) -> list[Message]:
        """Messages for one batch: wait for the first, then up to ``batch_timeout`` for the rest.
        Returns early, maybe empty, when ``stop`` is set."""
        messages: list[Message] = []
        deadline = 0.0
        fetch, size = self.transport.fetch, self.batch_size
        if size == 1:  # the default: no deadline to keep
            while not stop.is_set():
                got = fetch(1, self.poll_timeout)
                if got:
                    return list(got)
                self._healthy = True
            return messages
        while not stop.is_set():
            if messages:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                got = fetch(size - len(messages), min(left, self.poll_timeout))
            else:
                got = fetch(size, self.poll_timeout)
                if got:
                    deadline = time.monotonic() + self.batch_timeout
                else:
                    self._healthy = True
            if got:
                messages.extend(got)
                if len(messages) >= size:
                    break
        return messages

    # -- processing --------------------------------------------------------------------------

    def _call(self, batch: Batch) -> None:
        if len(batch) == 1:
            with batch[0].activate():
                self.processor(batch)
        else:
            self.processor(batch)

    def _process(self, batch: Batch, stop: threading.Event) -> None:
        attempt = 0
        view = batch
        error: Exception | None = None
        interrupted = False
        while True:
            try:
                self._call(view)
            except Exception as exc:
                error = exc
            else:
                pending_state, acked = MessageState.PENDING, MessageState.ACKED
                for message in view:
                    if message.state is pending_state:
                        message.state = acked
                error = None
                break
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
            if stop.wait(delay):  # stopping: give the rest back untouched
                interrupted = True
                break
            view = Batch(pending)

        failed = batch.pending() if error is not None and not interrupted else []
        if failed:
            self._apply_strategy(failed, error)
        try:
            self.transport.settle(batch)
            self._healthy = True
        finally:
            if error is not None:  # only a failed batch can hold undecided messages
                for message in batch.pending():
                    message._sealed = True
        if failed and self.failure is FailureStrategy.EXIT:
            first = failed[0]
            raise ProcessingError(
                f"{self.name}: processor failed on a message from {first.source} "
                f"(correlation id {first.correlation_id}): {error!r}; failure strategy exit, "
                f"{len(failed)} message(s) not acknowledged"
            ) from error
        if failed and self.failure is FailureStrategy.NACK:
            self._failed_batches += 1
            stop.wait(self.retry.delay(self._failed_batches - 1))
        elif error is None:
            self._failed_batches = 0

    def _apply_strategy(self, failed: list[Message], error: BaseException | None) -> None:
        strategy = self.failure
        for message in failed:
            message.error = error
            if strategy is FailureStrategy.SKIP:
                message.state = MessageState.ACKED
            elif strategy is FailureStrategy.NACK:
                message.state, message.requeue = MessageState.NACKED, self.requeue
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
