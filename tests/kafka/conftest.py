"""Kafka test fixtures: one broker for the whole run, unique topics and groups, service processes.

The broker comes from the ``kafka_brokers`` fixture patron ships (:mod:`patron.testing.kafka`):
librdkafka's mock cluster in a helper process (so a test may kill a service and the broker
lives on), or the real broker named by ``PATRON_TEST_KAFKA_BROKERS``. When it cannot be had the
tests fail under ``CI`` and are skipped locally.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from patron.testing.kafka import ENV_BROKERS
from patron.testing.kafka import kafka_brokers as kafka_brokers  # the shipped fixture
from tests.conftest import ServiceProcess

#: Short sessions so a killed member's partitions move within seconds. The mock cluster takes
#: any value; a real broker refuses less than group.min.session.timeout.ms (6 s by default).
SESSION_TIMEOUT = 6.0 if os.environ.get(ENV_BROKERS) else 3.0


class Kafka:
    """Topic and group helpers bound to the test broker; deletes its topics on a real broker."""

    def __init__(self, brokers: str) -> None:
        from confluent_kafka import Producer

        self.brokers = brokers
        self.real = bool(os.environ.get(ENV_BROKERS))
        self.created: list[str] = []
        self._producer: Any = Producer({"bootstrap.servers": brokers, "linger.ms": 1})

    @staticmethod
    def name(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    def topic(self, partitions: int = 4) -> str:
        """A new topic with ``partitions`` partitions (4 on the mock cluster, its default)."""
        name = self.name("t")
        if self.real:
            from confluent_kafka.admin import AdminClient, NewTopic

            admin = AdminClient({"bootstrap.servers": self.brokers})
            admin.create_topics([NewTopic(name, partitions, 1)])[name].result(30)
        else:
            # The mock cluster creates a topic when a producer first asks for its metadata.
            self._producer.list_topics(name, timeout=10)
        self.created.append(name)
        return name

    def produce(
        self,
        topic: str,
        values: Iterable[bytes | str | None],
        *,
        keys: Iterable[bytes | str | None] | None = None,
        headers: list[tuple[str, bytes | str | None]] | None = None,
        partition: int | None = None,
    ) -> None:
        key_list = list(keys) if keys is not None else None
        for index, value in enumerate(values):
            extra: dict[str, Any] = {} if partition is None else {"partition": partition}
            self._producer.produce(
                topic, value=value, key=key_list[index] if key_list else None,
                headers=headers, **extra,
            )
            self._producer.poll(0)
        assert self._producer.flush(30) == 0, "not every test message was delivered"

    def committed(self, group: str, topic: str, partitions: int = 4) -> dict[int, int]:
        """The group's committed offset of every partition that has one."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.brokers, "group.id": group})
        try:
            result = consumer.committed(
                [TopicPartition(topic, p) for p in range(partitions)], timeout=10
            )
        finally:
            consumer.close()
        return {tp.partition: tp.offset for tp in result if tp.offset >= 0}

    def read(self, topic: str, count: int, partitions: int = 4, timeout: float = 20.0
             ) -> list[Any]:
        """``count`` messages read from the start of every partition, without a group."""
        import time

        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self.brokers, "group.id": self.name("r"),
                             "enable.auto.commit": False})
        consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
        got: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while len(got) < count and time.monotonic() < deadline:
                got.extend(m for m in consumer.consume(count - len(got), 0.2)
                           if m.error() is None)
        finally:
            consumer.close()
        return got

    def cleanup(self) -> None:
        self._producer.flush(10)
        if self.real and self.created:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": self.brokers})
            for future in admin.delete_topics(self.created).values():
                with contextlib.suppress(Exception):  # best effort: the run is over
                    future.result(30)


@pytest.fixture
def kafka(kafka_brokers: str) -> Iterator[Kafka]:
    helper = Kafka(kafka_brokers)
    yield helper
    helper.cleanup()


def start_sample(brokers: str, tmp: Path, *, topic: str, group: str, output: Path,
                 **env: str) -> ServiceProcess:
    """Run the Kafka sample service in its own process (the one place that knows how)."""
    return ServiceProcess(
        "samples.kafka_consumer",
        {
            "KAFKA_BROKERS": brokers,
            "KAFKA_TOPIC": topic,
            "KAFKA_GROUP": group,
            "SAMPLE_OUTPUT": str(output),
            "KAFKA_SESSION_TIMEOUT": str(SESSION_TIMEOUT),
            "PATRON_HTTP_DEFAULT_PORT": "0",
            **env,
        },
        tmp,
    )
