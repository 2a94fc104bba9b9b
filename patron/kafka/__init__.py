"""Kafka for patron, on confluent-kafka: a consumer group component and a publisher.

:class:`KafkaConsumer` is a component built on the consumer loop every patron consumer shares
(see :mod:`patron.messaging`); :class:`KafkaPublisher` publishes with correlation id and trace
context. Importing this package imports confluent-kafka (the ``patron[kafka]`` extra).
"""

from patron.kafka.consumer import KafkaConsumer, KafkaMessage
from patron.kafka.publisher import DeliveryCallback, DeliveryReport, KafkaPublisher, PublishError

__all__ = [
    "DeliveryCallback",
    "DeliveryReport",
    "KafkaConsumer",
    "KafkaMessage",
    "KafkaPublisher",
    "PublishError",
]
