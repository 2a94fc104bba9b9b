"""An SQS consumer service: logs every message of a queue with its correlation id.

Run it with ``python -m patron samples.sqs_consumer``. Configuration, from the environment:

``SQS_ENDPOINT_URL``
    The SQS endpoint, for an emulator such as moto (``http://127.0.0.1:5000``); unset: AWS's
    own endpoint for the region.
``SQS_QUEUE``
    The queue to consume (default ``patron-sample``). It is created when it does not exist;
    an existing queue is used as it is, whatever its attributes.
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION`` (and the other ``AWS_*``)
    The standard AWS configuration: boto3 reads it (``AWS_SESSION_TOKEN``, ``AWS_PROFILE``,
    ``AWS_REGION``, profiles and instance roles work too).
``SAMPLE_OUTPUT``
    When set, each message body is appended to this file as one line (line breaks in a body
    are written as ``\\n``).
``SAMPLE_DELAY``
    Pretend work per message (default 0), in seconds (``0.2``) or as a duration (``200ms``), to
    watch a stop in the middle of a batch.
``SAMPLE_CONCURRENCY``
    Pollers receiving and processing in threads of their own (1 to 64, default 1): the
    consumer's ``concurrency``. The handler is thread-safe (output lines are written under a
    lock).

An invalid ``SAMPLE_DELAY`` or ``SAMPLE_CONCURRENCY`` stops the start with one line naming it
(exit status 2), before anything is asked of SQS.

Plus the usual ``PATRON_*`` variables (``PATRON_HTTP_DEFAULT_PORT`` for ``/ready``,
``/metrics``...). Try it against moto, in three shells::

    python -m patron.testing.sqs          # prints the endpoint, e.g. http://127.0.0.1:5000
    SQS_ENDPOINT_URL=http://127.0.0.1:5000 AWS_ACCESS_KEY_ID=testing \\
        AWS_SECRET_ACCESS_KEY=testing AWS_DEFAULT_REGION=us-east-1 \\
        python -m patron samples.sqs_consumer
    aws --endpoint-url http://127.0.0.1:5000 sqs send-message \\
        --queue-url http://127.0.0.1:5000/123456789012/patron-sample --message-body hello
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import boto3
import botocore.exceptions

from patron import Service
from patron.messaging import per_message
from patron.sqs import SQSConsumer, SQSMessage
from samples import _settings as settings

__all__ = ["service"]

logger = logging.getLogger("samples.sqs_consumer")


def _ensure_queue(endpoint: str | None, name: str) -> None:
    """Create queue ``name`` unless it exists (an existing queue is left as it is)."""
    client: Any = boto3.client("sqs", endpoint_url=endpoint)
    try:
        client.get_queue_url(QueueName=name)
    except client.exceptions.QueueDoesNotExist:
        client.create_queue(QueueName=name)
        logger.info("created SQS queue %s", name)


def service() -> Service:
    endpoint = os.environ.get("SQS_ENDPOINT_URL") or None
    queue = os.environ.get("SQS_QUEUE") or "patron-sample"
    output = os.environ.get("SAMPLE_OUTPUT") or None
    delay = settings.delay()
    concurrency = settings.concurrency()
    # With several pollers the handler runs in several threads: one line at a time.
    output_lock = threading.Lock()

    try:
        _ensure_queue(endpoint, queue)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        raise SystemExit(
            f"sqs_consumer: cannot reach or create SQS queue {queue!r}: {exc}"
        ) from None

    def handle(message: SQSMessage) -> None:
        if delay:
            time.sleep(delay)  # stands for real work
        text = message.body.decode("utf-8", errors="replace")
        logger.info("message %s (correlation id %s): %s", message.message_id,
                    message.correlation_id, text)
        if output:
            line = text.replace("\r", "\\r").replace("\n", "\\n")
            with output_lock, open(output, "a", encoding="utf-8") as sink:
                sink.write(line + "\n")

    consumer = SQSConsumer(queue, per_message(handle), endpoint_url=endpoint, max_messages=10,
                           wait_time=2, concurrency=concurrency)
    return Service("sqs-consumer", "1.0.0", components=[consumer])
