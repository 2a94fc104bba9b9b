"""What every publisher shares: timeouts, the publish span, the outgoing context, ``with``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from types import TracebackType
from typing import ClassVar, TypeVar

import opentracing

from patron import correlation, tracing

__all__ = ["Publisher"]

P = TypeVar("P", bound="Publisher")


class Publisher:
    """Base of ``KafkaPublisher``, ``AMQPPublisher`` and ``SQSPublisher``.

    ``publish_timeout`` bounds every publish: it returns once the broker accepted the message or
    raises the package's ``PublishError`` by then, and a publish stalled in one thread holds
    the others no longer than their own timeouts. ``connect_timeout`` bounds opening a
    connection. Publishers are thread-safe; :meth:`close` (or leaving a ``with`` block)
    releases their connection.

    Each publish runs in a span ``"{destination} publish"`` (kind producer, child of the active
    span) whose context travels in the message's headers, beside ``X-Correlation-Id`` (the
    current correlation id, or a new one outside any).
    """

    #: the messaging system, for spans and logs
    transport: ClassVar[str] = "messaging"

    def __init__(self, *, publish_timeout: float, connect_timeout: float) -> None:
        if not publish_timeout > 0 or not connect_timeout > 0:
            raise ValueError("publish_timeout and connect_timeout must be positive, not "
                             f"{publish_timeout} and {connect_timeout}")
        self.publish_timeout = publish_timeout
        self.connect_timeout = connect_timeout

    def _deadline(self) -> float:
        """When (``time.monotonic()``) a publish starting now must be done."""
        return time.monotonic() + self.publish_timeout

    def _span(self, destination: str) -> opentracing.Scope:
        return tracing.start_span(
            f"{destination} publish",
            kind=tracing.tags.SPAN_KIND_PRODUCER,
            component=self.transport,
            tags={tracing.tags.MESSAGE_BUS_DESTINATION: destination},
        )

    @staticmethod
    def _context(taken: Iterable[str] = ()) -> dict[str, str]:
        """The correlation id and the active span's context as text headers, leaving out the
        names (compared without case) in ``taken``, which the caller set itself."""
        carrier = {correlation.HEADER: correlation.outgoing()}
        tracing.inject(carrier)
        lower = {name.lower() for name in taken}
        if not lower:
            return carrier
        return {name: value for name, value in carrier.items() if name.lower() not in lower}

    def close(self) -> None:
        """Release the connection; idempotent, never raises."""
        raise NotImplementedError

    def __enter__(self: P) -> P:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
