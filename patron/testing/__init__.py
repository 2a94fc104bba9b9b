"""Test helpers shipped with patron, for patron's own tests and for its users' tests.

Each transport's helper lives in its own module and imports its client library only there:
``patron.testing.kafka`` (librdkafka's mock cluster, in-process or in a helper process, and a
``kafka_brokers`` pytest fixture) and ``patron.testing.sqs`` (moto's server as an SQS endpoint).
"""

__all__: list[str] = []
