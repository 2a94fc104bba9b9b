"""RabbitMQ (AMQP 0-9-1) for patron, on pika: a consumer component and a publisher.

:class:`AMQPConsumer` is a component built on the consumer loop every patron consumer shares
(see :mod:`patron.messaging`); :class:`AMQPPublisher` publishes with confirms, correlation id
and trace context. Importing this package imports pika (the ``patron[amqp]`` extra).
"""

from patron.amqp.consumer import AMQPConsumer, AMQPMessage, QueueDeclaration
from patron.amqp.publisher import AMQPPublisher, PublishError

__all__ = ["AMQPConsumer", "AMQPMessage", "AMQPPublisher", "PublishError", "QueueDeclaration"]
