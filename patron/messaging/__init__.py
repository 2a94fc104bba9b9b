"""Messaging: what the Kafka, AMQP and SQS consumers and publishers share.

This package is the user's side: the :class:`Message` and :class:`Batch` a processor receives,
the options every consumer takes alike and the errors every transport raises. The transport
packages (:mod:`patron.kafka`, :mod:`patron.amqp`, :mod:`patron.sqs`) each offer a consumer
component, a publisher, a message class and a ``PublishError``, with the same shape.

Consumers
    Every consumer runs the same loop: it fetches messages, groups them into batches
    (``batch_size``, ``batch_timeout``; never an empty batch), calls the processor with a
    :class:`Batch`, then settles the batch with the broker, all in one thread per connection
    (``concurrency`` connections, each in a thread of its own).

    * **At least once.** A message is acknowledged (Kafka offset stored for commit, AMQP ack,
      SQS delete) only after the processor returned for it. Returning acknowledges every
      message it did not decide on; :meth:`Message.ack` and :meth:`Message.nack` record a
      decision the consumer carries out after the call.
    * **Failures.** When the processor raises, the undecided messages are retried
      ``processing_retry`` times, then ``failure`` applies: ``exit`` (nothing acknowledged, the
      component fails and the service exits 1), ``skip`` (acknowledged, logged, counted as
      failed) or ``nack`` (AMQP and SQS: given back for redelivery, then a growing pause).
    * **Connections.** A broker failure closes and reopens the client ``connection_retry``
      times, with exponentially growing, jittered waits; then the component fails with one
      line saying why. A missing topic or queue fails at once (:class:`PermanentError`).
    * **Readiness**, the same rule for every consumer: ``ready()`` turns true once every
      connection of the consumer was established (subscribed; Kafka: partitions assigned) and
      stays true through rebalances and reconnects while retries last, so a short broker
      hiccup does not take the service's HTTP routes out of load balancing. It turns false
      when the consumer gives up or stops. Whether the connections work right now is the
      ``component_consumer_connected{name}`` gauge.
    * **Stop.** The batch in hand is finished and acknowledged; whatever was fetched but not
      processed goes back at once; the consumer leaves cleanly.

Publishers
    ``publish(...)`` returns once the broker accepted the message, or raises the package's
    ``PublishError`` (a :class:`PublishError`) for every failure, within ``publish_timeout``.
    Publishers are thread-safe, have ``close()`` and work as context managers; each publish
    runs in a span ``"{destination} publish"`` and sends ``X-Correlation-Id`` and the trace
    context in the message's headers.
"""

from patron.messaging._errors import (
    ConsumerError,
    PermanentError,
    ProcessingError,
    PublishError,
    TransportError,
)
from patron.messaging._message import (
    Batch,
    Message,
    MessageState,
    Processor,
    dedupe_by_key,
    per_message,
)
from patron.messaging._options import ConnectionRetry, FailureStrategy, Retry

__all__ = [
    "Batch",
    "ConnectionRetry",
    "ConsumerError",
    "FailureStrategy",
    "Message",
    "MessageState",
    "PermanentError",
    "ProcessingError",
    "Processor",
    "PublishError",
    "Retry",
    "TransportError",
    "dedupe_by_key",
    "per_message",
]
