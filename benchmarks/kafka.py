"""Kafka consumer throughput: the patron component against a hand-written confluent-kafka loop.

The same N messages are produced once to a topic of librdkafka's mock cluster (4 partitions,
in this process). Each round then consumes all of them with a fresh consumer group:

(a) patron: a :class:`patron.kafka.KafkaConsumer` inside a Service (tracing set up as in
    production, sampling nothing), with a processor that only counts;
(b) raw: a ``consume()`` loop over the same client settings that counts and stores the offsets
    of each batch for librdkafka's background commit, the policy the component follows.

Each run is timed from the first message handed over to the N-th one processed, so the group
join (about 3 s on the mock cluster) is left out. Batch sizes 1 and 100; patron and raw
alternate within a round; medians over the rounds. The last two lines are
``RATIO kafka_batch1 <patron/raw>`` and ``RATIO kafka_batch100 <patron/raw>``.

    python -m benchmarks.kafka            # about a minute
    python -m benchmarks.kafka --long     # more messages and rounds
"""

from __future__ import annotations

import argparse
import logging
import statistics
import threading
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from patron import Service
from patron.config import Config
from patron.kafka import KafkaConsumer
from patron.messaging import Batch
from patron.testing.kafka import MockCluster

SETTINGS = {  # the component's own policy: store after processing, commit in the background
    "enable.auto.commit": True,
    "auto.commit.interval.ms": 1000,
    "enable.auto.offset.store": False,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": 6000,
    "heartbeat.interval.ms": 2000,
}


def produce(brokers: str, topic: str, count: int) -> None:
    producer = Producer({"bootstrap.servers": brokers, "linger.ms": 5})
    payload = b"x" * 100
    for i in range(count):
        while True:
            try:
                producer.produce(topic, payload, key=str(i % 64).encode(),
                                 headers=[("X-Correlation-Id", f"cid-{i}".encode())])
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(60)


def run_patron(brokers: str, topic: str, count: int, batch: int) -> tuple[float, float]:
    seen = 0
    first = last = first_cpu = last_cpu = 0.0
    done = threading.Event()

    def process(messages: Batch) -> None:
        nonlocal seen, first, last, first_cpu, last_cpu
        if not seen:
            first, first_cpu = time.perf_counter(), time.thread_time()
        seen += len(messages)
        if seen >= count:
            last, last_cpu = time.perf_counter(), time.thread_time()
            done.set()

    consumer = KafkaConsumer(brokers, f"bench-{uuid.uuid4().hex}", topic, process,
                             batch_size=batch, session_timeout=6.0)
    service = Service("kafka-bench", components=[consumer], default_http=False,
                      config=Config(log_level="WARNING"))
    service.start()
    if not done.wait(300):
        raise RuntimeError("patron consumer did not finish")
    service.stop()
    service.wait(60)
    return last - first, last_cpu - first_cpu


def run_raw(brokers: str, topic: str, count: int, batch: int) -> tuple[float, float]:
    consumer: Any = Consumer({"bootstrap.servers": brokers,
                              "group.id": f"bench-{uuid.uuid4().hex}", **SETTINGS})
    consumer.subscribe([topic])
    seen = 0
    first = last = first_cpu = last_cpu = 0.0
    while seen < count:
        messages = consumer.consume(batch, 0.25)
        if not messages:
            continue
        if not seen:
            first, first_cpu = time.perf_counter(), time.thread_time()
        offsets: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is not None:
                continue
            seen += 1
            offsets[(message.topic(), message.partition())] = message.offset() + 1
        if seen >= count:
            last, last_cpu = time.perf_counter(), time.thread_time()
        consumer.store_offsets(offsets=[TopicPartition(t, p, o) for (t, p), o in offsets.items()])
    consumer.close()
    return last - first, last_cpu - first_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--long", action="store_true", help="more messages and rounds")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (5 if args.long else 3)
    sizes = {1: 20_000 if args.long else 8_000, 100: 400_000 if args.long else 100_000}
    logging.basicConfig(level=logging.WARNING)

    ratios: dict[int, float] = {}
    with MockCluster() as cluster:
        for batch, count in sizes.items():
            topic = f"bench-{batch}-{uuid.uuid4().hex[:8]}"
            produce(cluster.bootstrap, topic, count)
            times: dict[str, list[float]] = {"patron": [], "raw": []}
            cpu: dict[str, list[float]] = {"patron": [], "raw": []}
            for round_ in range(rounds):
                order = ("patron", "raw") if round_ % 2 == 0 else ("raw", "patron")
                for name in order:
                    runner = run_patron if name == "patron" else run_raw
                    took, used = runner(cluster.bootstrap, topic, count, batch)
                    times[name].append(took)
                    cpu[name].append(used)
                    print(f"batch {batch:>3} round {round_ + 1} {name:>6}: "
                          f"{count / took:>10,.0f} msg/s, consumer thread "
                          f"{used / count * 1e6:6.2f} us CPU/msg", flush=True)
            patron, raw = (statistics.median(times[n]) for n in ("patron", "raw"))
            patron_cpu, raw_cpu = (statistics.median(cpu[n]) / count * 1e6
                                   for n in ("patron", "raw"))
            ratios[batch] = raw / patron
            print(f"batch {batch:>3} median: patron {count / patron:,.0f} msg/s, "
                  f"raw {count / raw:,.0f} msg/s ({count} messages, {rounds} rounds); "
                  f"consumer thread CPU/msg: patron {patron_cpu:.2f} us, raw {raw_cpu:.2f} us",
                  flush=True)
    for batch in sizes:
        print(f"RATIO kafka_batch{batch} {ratios[batch]:.3f}")


if __name__ == "__main__":
    main()
