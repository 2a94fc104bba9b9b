"""Messages and batches: what a processor receives and how it decides on each message.

Every decision is only *recorded* here (:meth:`Message.ack`, :meth:`Message.nack`); the consumer
loop carries it out with the broker once the processor returned, in the consumer's thread.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar, cast, overload

import opentracing

from patron import correlation, tracing

__all__ = ["Batch", "Message", "MessageState", "Processor", "dedupe_by_key", "per_message"]

logger = logging.getLogger("patron.messaging")


class MessageState(enum.Enum):
    """Where a message stands; read it from :attr:`Message.state`."""

    PENDING = "pending"  #: no decision yet
    ACKED = "acked"  #: to be acknowledged (processed, or skipped when ``error`` is set)
    NACKED = "nacked"  #: to be given back (redelivered when ``requeue`` is true)


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

    ``ack()`` / ``nack()`` record a decision (the first one wins) that the consumer carries
    out after the processor returned; they may be called from any thread until then. ``state``,
    ``requeue`` and ``error`` tell what was decided; only the consumer loop changes them.

    Each transport has its subclass (``KafkaMessage``, ``AMQPMessage``, ``SQSMessage``), which
    reads ``body``, ``key``, ``timestamp`` and the headers (:meth:`_load_headers`) from ``raw``
    only when they are asked for.
    """

    # Class-level defaults, so that creating a message sets only what it has: the loop creates
    # one per message received, and at hundreds of thousands a second every attribute counts.
    source: str = ""
    raw: Any = None
    transport: str = "messaging"
    nackable: bool = True
    _state: MessageState = MessageState.PENDING
    _requeue: bool = False
    _error: BaseException | None = None
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
    def state(self) -> MessageState:
        """The decision recorded so far."""
        return self._state

    @property
    def requeue(self) -> bool:
        """For a nacked message: whether it is to be redelivered (else dead-lettered)."""
        return self._requeue

    @property
    def error(self) -> BaseException | None:
        """The exception the processor raised for it, once the failure strategy applied."""
        return self._error

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
        if self._state is MessageState.PENDING:
            self._state = state
            self._requeue = requeue


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
        return [m for m in self._messages if m._state is MessageState.PENDING]

    def ack(self) -> None:
        for message in self._messages:
            message.ack()

    def nack(self, requeue: bool = True) -> None:
        for message in self._messages:
            message.nack(requeue)


#: The user's processor: called with a non-empty batch in the component's thread. Returning
#: acknowledges every message it did not decide on; raising starts retries / the strategy.
Processor = Callable[[Batch], None]


M = TypeVar("M", bound=Message)


def per_message(handler: Callable[[M], None]) -> Processor:
    """A processor that calls ``handler`` for each message in its own activated context and
    acknowledges it as soon as ``handler`` returned, so a retry resumes at the failed one.

    ``handler`` may take the transport's message class (``KafkaMessage``, ``AMQPMessage``,
    ``SQSMessage``): that is what its consumer hands out."""

    def process(batch: Batch) -> None:
        for message in batch:
            if message._state is not MessageState.PENDING:
                continue
            with message.activate():
                handler(cast(M, message))
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
