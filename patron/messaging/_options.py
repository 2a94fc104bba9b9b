"""The options every consumer takes alike: failure strategy, processing and connection retries."""

from __future__ import annotations

import dataclasses
import enum
import random

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_PUBLISH_TIMEOUT",
    "DEFAULT_STATS_INTERVAL",
    "ConnectionRetry",
    "FailureStrategy",
    "Retry",
]

#: seconds allowed to open a connection to a broker, for consumers and publishers alike
DEFAULT_CONNECT_TIMEOUT = 10.0
#: seconds a publish may take before it raises
DEFAULT_PUBLISH_TIMEOUT = 30.0
#: how often (seconds) a consumer reads its broker's statistics (queue size, lag)
DEFAULT_STATS_INTERVAL = 5.0


class FailureStrategy(enum.Enum):
    """What happens to a message the processor failed on, once its retries are used up."""

    EXIT = "exit"  #: do not acknowledge; the component fails and the service stops
    SKIP = "skip"  #: acknowledge it anyway, log it and count it as failed
    NACK = "nack"  #: give it back to the broker for redelivery (AMQP, SQS; not Kafka)


@dataclasses.dataclass(frozen=True)
class _Backoff:
    """``count`` more attempts after a failure, waiting ``wait * backoff**n`` before attempt
    ``n`` (0-based), capped at ``max_wait``, and shortened by up to ``jitter`` (a fraction, 0 to
    1) at random so that many processes failing together do not retry together."""

    count: int
    wait: float
    backoff: float = 2.0
    max_wait: float = 30.0
    jitter: float = 0.0

    def __post_init__(self) -> None:
        if (self.count < 0 or self.wait < 0 or self.backoff < 1 or self.max_wait < 0
                or not 0 <= self.jitter <= 1):
            raise ValueError(f"invalid {type(self).__name__} {self!r}: needs count >= 0, "
                             "wait >= 0, backoff >= 1, max_wait >= 0 and jitter from 0 to 1")

    def delay(self, attempt: int) -> float:
        """The pause before retry ``attempt`` (0-based)."""
        delay = float(min(self.max_wait, self.wait * self.backoff ** min(attempt, 64)))
        if self.jitter:
            delay *= 1.0 - self.jitter * random.random()
        return delay


@dataclasses.dataclass(frozen=True)
class Retry(_Backoff):
    """Processing retries: a batch whose processor raised is given to it again ``count``
    times. The same delays pace the consumer after a batch was nacked by the ``nack``
    strategy (growing while batches keep failing), so a poison message never makes a hot
    loop."""

    count: int = 0
    wait: float = 1.0


@dataclasses.dataclass(frozen=True)
class ConnectionRetry(_Backoff):
    """Connection retries: after a broker failure the consumer closes its client, waits and
    connects again, at most ``count`` times in a row (``count + 1`` attempts in all), then
    fails. The count starts again once consuming works. Waits grow 1, 2, 4, 8, 16 s by
    default, each shortened at random by up to half, so a fleet does not reconnect in
    lock-step after a broker restart."""

    count: int = 5
    wait: float = 1.0
    jitter: float = 0.5
