"""What the Kafka consumer and publisher share: client settings and error texts.

Nothing here opens a connection or keeps state; every function runs in its caller's thread.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException

__all__ = ["bootstrap", "describe", "settings"]


def bootstrap(brokers: str | Sequence[str], owner: str) -> str:
    """``brokers`` as librdkafka's ``bootstrap.servers``; ``ValueError`` when there is none."""
    joined = brokers if isinstance(brokers, str) else ",".join(brokers)
    if not joined.strip():
        raise ValueError(f"{owner} needs at least one broker")
    return joined


def settings(brokers: str, connect_timeout: float, extra: Mapping[str, Any] | None,
             **own: Any) -> dict[str, Any]:
    """librdkafka settings: the common ones, then ``own`` (the client's), then ``extra`` (the
    user's, which override everything)."""
    config: dict[str, Any] = {
        "bootstrap.servers": brokers,
        "socket.connection.setup.timeout.ms": max(1000, int(connect_timeout * 1000)),
        "log.connection.close": False,
        # librdkafka's own log lines go to the standard logging module
        "logger": logging.getLogger("patron.kafka.client"),
        **own,
    }
    config.update(extra or {})
    return config


def describe(exc: KafkaException) -> str:
    """The librdkafka error text of ``exc``."""
    error = exc.args[0] if exc.args else None
    return error.str() if isinstance(error, KafkaError) else str(exc)
