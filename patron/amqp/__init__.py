"""RabbitMQ (AMQP 0-9-1) on pika: the consumer component and the publisher client.

``AMQPConsumer`` is a component (run it in a :class:`patron.Service`) built on the shared
:mod:`patron.messaging` loop; ``AMQPPublisher`` publishes with confirms, correlation id and
trace context. pika is imported only when this package is.
"""

from patron.amqp.consumer import AMQPConsumer, Delivery, QueueDeclaration
from patron.amqp.publisher import AMQPPublisher, PublishError

__all__ = ["AMQPConsumer", "AMQPPublisher", "Delivery", "PublishError", "QueueDeclaration"]
