"""AWS SQS for patron, on boto3: a consumer component and a publisher.

:class:`SQSConsumer` is a component built on the consumer loop every patron consumer shares
(see :mod:`patron.messaging`); :class:`SQSPublisher` publishes with the correlation id and
trace context in message attributes. Importing this package imports boto3 (the
``patron[sqs]`` extra).
"""

from patron.sqs.consumer import SQSConsumer, SQSMessage
from patron.sqs.publisher import MAX_ATTRIBUTES, Outgoing, PublishError, SQSPublisher

__all__ = [
    "MAX_ATTRIBUTES",
    "Outgoing",
    "PublishError",
    "SQSConsumer",
    "SQSMessage",
    "SQSPublisher",
]
