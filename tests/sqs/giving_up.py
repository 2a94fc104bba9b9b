"""A service whose SQS consumer gives up quickly, for ``python -m patron tests.sqs.giving_up``
(see test_sample.py): ``SQS_ENDPOINT_URL`` and ``SQS_QUEUE`` (a URL) from the environment,
batches of ten, two connection retries 0.1 s apart. The processor logs "processing", then
returns once the file ``RELEASE`` exists: the test takes the endpoint away meanwhile, so the
deletes of the batch fail."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from patron import Service
from patron.messaging import Batch, ConnectionRetry
from patron.sqs import SQSConsumer

__all__ = ["service"]

logger = logging.getLogger("tests.sqs.giving_up")


def _process(batch: Batch) -> None:
    logger.info("processing %d message(s)", len(batch))
    release = Path(os.environ["RELEASE"])
    while not release.exists():  # another process's doing: a file is the simplest signal
        time.sleep(0.02)


def service() -> Service:
    consumer = SQSConsumer(os.environ["SQS_QUEUE"], _process,
                           endpoint_url=os.environ["SQS_ENDPOINT_URL"], wait_time=1,
                           max_messages=10, batch_size=10, batch_timeout=0.5, connect_timeout=2,
                           connection_retry=ConnectionRetry(count=2, wait=0.1, jitter=0))
    return Service("giving-up", "1.0.0", components=[consumer])
