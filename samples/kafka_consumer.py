"""A Kafka consumer service: each message's value becomes one line of a file, and a log line.

Run it with ``python -m patron samples.kafka_consumer``. Configuration (environment):

``KAFKA_BROKERS``
    bootstrap servers, ``host:port[,host:port...]`` (default ``127.0.0.1:9092``)
``KAFKA_TOPIC``
    the topic to consume (default ``patron-sample``); it must exist, the consumer checks at start
``KAFKA_GROUP``
    the consumer group (default ``patron-sample``); a group without committed offsets starts
    from the earliest message of the topic
``SAMPLE_OUTPUT``
    when set, the file each message value is appended to, one line a message (decoded as
    UTF-8, invalid bytes as ``\\xNN`` escapes, newlines as ``\\n``), written before the
    message is acknowledged
``KAFKA_SESSION_TIMEOUT``
    optional, the group session timeout (default ``10s``; plain seconds or ``6500ms``): how
    long the group waits for a killed instance before giving its partitions to another
``SAMPLE_CONCURRENCY``
    optional, how many members of the group this instance runs, each in a thread of its own
    (1 to 64, default ``1``); the output file is written under a lock, so the lines stay whole

An invalid ``KAFKA_SESSION_TIMEOUT`` or ``SAMPLE_CONCURRENCY`` stops the start with one line
naming it (exit status 2).

Every message is logged with its correlation id (``X-Correlation-Id`` header, or a new one).
The default HTTP component serves ``/ready``, ``/alive`` and ``/metrics`` on
``PATRON_HTTP_DEFAULT_PORT`` (50000). To try it without a Kafka cluster, start librdkafka's
mock cluster with the topic in another terminal; it prints its address and runs until you
press Ctrl-D. Then start the sample and send it a message::

    python -m patron.testing.kafka --topic patron-sample
    export KAFKA_BROKERS=<the address it printed>
    SAMPLE_OUTPUT=out.txt python -m patron samples.kafka_consumer &
    python - <<'EOF'
    import os
    from patron.kafka import KafkaPublisher
    with KafkaPublisher(os.environ["KAFKA_BROKERS"]) as publisher:
        publisher.publish("patron-sample", "hello")
    EOF
"""

from __future__ import annotations

import logging
import os
import threading

from patron import ConfigError, Service
from patron.config import parse_duration
from patron.kafka import KafkaConsumer, KafkaMessage
from patron.messaging import per_message
from samples import _settings as settings

__all__ = ["service"]

logger = logging.getLogger("samples.kafka_consumer")


class _Lines:
    """Appends one line a message to ``path`` (or nowhere), written before the commit.

    Thread-safe: with ``SAMPLE_CONCURRENCY`` above 1 several members call :meth:`handle` at
    once, and the lock keeps their lines from interleaving.
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()

    def handle(self, message: KafkaMessage) -> None:
        line = message.body.decode("utf-8", "backslashreplace").replace("\n", "\\n")
        if self._path:
            with self._lock, open(self._path, "a", encoding="utf-8") as out:
                out.write(line + "\n")
        logger.info("message from %s: %s", message.source, line[:200])


def _session_timeout(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise ConfigError(f"KAFKA_SESSION_TIMEOUT={text!r} is invalid: expected a positive "
                          "duration such as 10, 10s or 6500ms")
    return seconds


def service() -> Service:
    """The sample service, configured from the environment when called."""
    env = os.environ
    consumer = KafkaConsumer(
        env.get("KAFKA_BROKERS", "127.0.0.1:9092"),
        env.get("KAFKA_GROUP", "patron-sample"),
        env.get("KAFKA_TOPIC", "patron-sample"),
        per_message(_Lines(env.get("SAMPLE_OUTPUT") or None).handle),
        session_timeout=_session_timeout(env.get("KAFKA_SESSION_TIMEOUT") or "10"),
        concurrency=settings.concurrency(),
    )
    return Service("kafka-consumer", "1.0.0", components=[consumer])
