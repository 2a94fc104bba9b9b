"""Kafka for patron: the consumer group component and the producer client (confluent-kafka).

``KafkaConsumer`` is a component built on :mod:`patron.messaging`, so it batches, retries,
fails and traces like the AMQP and SQS consumers; ``KafkaProducer`` is a thread-safe client.
Importing this package imports confluent-kafka (the ``patron[kafka]`` extra).
"""

from patron.kafka.consumer import KafkaConsumer, KafkaMessage
from patron.kafka.producer import DeliveryReport, KafkaProducer, PublishError
from patron.messaging import Batch, FailureStrategy, Message, Retry

__all__ = [
    "Batch",
    "DeliveryReport",
    "FailureStrategy",
    "KafkaConsumer",
    "KafkaMessage",
    "KafkaProducer",
    "Message",
    "PublishError",
    "Retry",
]
