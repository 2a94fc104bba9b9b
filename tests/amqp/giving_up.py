"""A service whose AMQP consumer gives up quickly, for ``python -m patron
tests.amqp.giving_up`` (see test_sample.py): ``AMQP_URL`` and ``AMQP_QUEUE`` from the
environment, two connection retries 0.1 s apart."""

from __future__ import annotations

import os

from patron import Service
from patron.amqp import AMQPConsumer
from patron.messaging import ConnectionRetry

__all__ = ["service"]


def service() -> Service:
    consumer = AMQPConsumer(os.environ["AMQP_URL"], os.environ["AMQP_QUEUE"], lambda batch: None,
                            connect_timeout=2,
                            connection_retry=ConnectionRetry(count=2, wait=0.1, jitter=0))
    return Service("giving-up", "1.0.0", components=[consumer])
