"""AWS SQS for patron: a consumer component and a publisher client, on boto3.

:class:`SQSConsumer` is a component (receive, process, delete; see :mod:`patron.sqs.consumer`
for threads, acknowledgement and stop); :class:`SQSPublisher` sends messages with the
correlation id and trace context in message attributes (:mod:`patron.sqs.publisher`).
Installed with the ``sqs`` extra (``pip install patron[sqs]``).
"""

from patron.messaging import Batch, FailureStrategy, Message, Retry, per_message
from patron.sqs.consumer import SQSConsumer, SQSMessage
from patron.sqs.publisher import MAX_ATTRIBUTES, Outgoing, PublishError, SQSPublisher

__all__ = [
    "MAX_ATTRIBUTES",
    "Batch",
    "FailureStrategy",
    "Message",
    "Outgoing",
    "PublishError",
    "Retry",
    "SQSConsumer",
    "SQSMessage",
    "SQSPublisher",
    "per_message",
]
