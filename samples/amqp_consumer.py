"""A RabbitMQ consumer service: logs every message of a queue and appends it to a file.

Run it with ``python -m patron samples.amqp_consumer``. Environment:

``AMQP_URL``
    the broker, default ``amqp://guest:guest@127.0.0.1:5672/``.
``AMQP_QUEUE``
    the queue to consume, default ``patron-sample``. Declared durable when it is missing; an
    existing queue is used as it is (whatever its arguments).
``SAMPLE_OUTPUT``
    when set, the file each message body is appended to, one line per message (decoded as
    UTF-8, undecodable bytes as ``\\xNN``, newlines as ``\\n``), written and flushed before the
    message is acknowledged.
``SAMPLE_DELAY``
    optional simulated work per message (default 0): seconds (``0.2``) or a duration
    (``200ms``), to watch a stream being processed or interrupted.
``SAMPLE_CONCURRENCY``
    how many connections consume the queue, each in a thread of its own (1 to 64, default 1);
    the processor then runs in that many threads at once, so it writes the output file under a
    lock.

An invalid ``SAMPLE_DELAY`` or ``SAMPLE_CONCURRENCY`` stops the start with one line naming it
(exit status 2).

Each message is logged with its correlation id (the ``X-Correlation-Id`` header, or a new
one). The default HTTP component serves ``/ready`` (ready once every connection subscribed),
``/alive`` and ``/metrics`` on ``PATRON_HTTP_DEFAULT_PORT`` (50000). SIGTERM or SIGINT stop it
gracefully: the message in hand is finished and acknowledged, prefetched ones go back to the
queue.
Try it::

    python -m patron samples.amqp_consumer &
    python -c "from patron.amqp import AMQPPublisher; \\
        AMQPPublisher('amqp://guest:guest@127.0.0.1:5672/').publish('', 'patron-sample', b'hi')"
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TextIO

from patron import Service
from patron.amqp import AMQPConsumer, AMQPMessage, QueueDeclaration
from patron.messaging import per_message
from samples import _settings as settings

__all__ = ["service"]

logger = logging.getLogger("samples.amqp_consumer")


def _line(body: bytes) -> str:
    return body.decode("utf-8", "backslashreplace").replace("\n", "\\n")


def service() -> Service:
    """The sample Service, configured from the environment when it is called."""
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    queue = os.environ.get("AMQP_QUEUE", "patron-sample")
    path = os.environ.get("SAMPLE_OUTPUT")
    delay = settings.delay()
    concurrency = settings.concurrency()
    output: TextIO | None = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115
    lock = threading.Lock()  # with concurrency above 1, handle runs in several threads at once

    def handle(message: AMQPMessage) -> None:
        if delay > 0:
            time.sleep(delay)  # the simulated work
        line = _line(message.body)
        if output is not None:
            with lock:  # whole lines, flushed before the message is acknowledged
                output.write(line + "\n")
                output.flush()
        logger.info("message: %s", line[:200])

    consumer = AMQPConsumer(url, queue, per_message(handle), concurrency=concurrency,
                            declare=QueueDeclaration(durable=True))
    return Service("amqp-consumer", "1.0.0", components=[consumer])
