"""AMQP consumer throughput: the patron component against a hand-written pika loop.

Run from the repository root: ``python -m benchmarks.amqp [--messages N] [--repeats R]``.

For each batch size (1 and 50) and each repeat, the same N messages are published to a fresh
queue on RabbitMQ (``--url``, default the local broker), then consumed

(a) by :class:`patron.amqp.AMQPConsumer` inside a :class:`patron.Service` (as users run it:
    logging and the Jaeger tracer set up, a span and correlation id per message for batches of
    one) with a no-op processor, and
(b) by a raw pika ``basic_consume`` loop with the same prefetch (patron's default for the
    batch size: 10 and 100), acking each message (batch 1) or every 50th with
    ``multiple=True`` (batch 50). patron coalesces the acks of a fast stream further (see
    :mod:`patron.amqp.consumer`), which is part of what is measured.

Throughput is measured from the first message handed over to the last one, so connection
set-up is left out of both; the consuming thread's CPU time over the same span is measured
too (it is far less sensitive to other load on a shared machine than wall-clock time). Each
repeat runs (a) and (b) back to back, in alternating order, and the ratio patron / raw of
that pair is taken, so a drift of the machine's load cancels out; the figures printed are
medians over the repeats. The last two lines are ``RATIO amqp_batch1 <value>`` and
``RATIO amqp_batch50 <value>``: the median pairwise ratio of messages/s. The default run
(5 repeats of 2000 messages) takes 20-50 s depending on the machine's load; ``--repeats``
and ``--messages`` make it longer and steadier.
"""

from __future__ import annotations

import argparse
import logging
import threading
import time
import uuid
from collections.abc import Callable

import pika

from benchmarks._util import median
from patron import Config, Service
from patron.amqp import AMQPConsumer
from patron.messaging import Batch

__all__ = ["main"]

URL = "amqp://guest:guest@127.0.0.1:5672/"
BODY = b"x" * 100


def _publish(channel: pika.adapters.blocking_connection.BlockingChannel, queue: str,
             count: int) -> None:
    for i in range(count):
        channel.basic_publish("", queue, BODY + str(i).encode())
    deadline = time.monotonic() + 60
    while channel.queue_declare(queue, passive=True).method.message_count < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the broker did not take {count} messages within 60 s")
        time.sleep(0.05)


Result = tuple[float, float]  # (messages/s, CPU seconds of the consuming thread per message)


def _raw(url: str, queue: str, count: int, batch: int, prefetch: int) -> Result:
    """A plain pika consume-and-ack loop."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    seen = 0
    first = last = cpu_first = cpu_last = 0.0

    def on_message(ch: object, method: pika.spec.Basic.Deliver, props: object,
                   body: bytes) -> None:
        nonlocal seen, first, last, cpu_first, cpu_last
        seen += 1
        if seen == 1:
            first, cpu_first = time.perf_counter(), time.thread_time()
        if seen == count:
            last, cpu_last = time.perf_counter(), time.thread_time()
        if batch == 1:
            channel.basic_ack(method.delivery_tag)
        elif seen % batch == 0 or seen == count:
            channel.basic_ack(method.delivery_tag, multiple=True)
        if seen == count:
            channel.stop_consuming()

    channel.basic_consume(queue, on_message)
    channel.start_consuming()
    connection.close()
    return (count - 1) / (last - first), (cpu_last - cpu_first) / (count - 1)


def _patron(url: str, queue: str, count: int, batch: int, prefetch: int) -> Result:
    """The patron component with a no-op processor, in a Service."""
    done = threading.Event()
    seen = 0
    first = last = cpu_first = cpu_last = 0.0

    def noop(messages: Batch) -> None:  # runs in the component's thread
        nonlocal seen, first, last, cpu_first, cpu_last
        if seen == 0:
            first, cpu_first = time.perf_counter(), time.thread_time()
        seen += len(messages)
        if seen >= count:
            last, cpu_last = time.perf_counter(), time.thread_time()
            done.set()

    consumer = AMQPConsumer(url, queue, noop, batch_size=batch, prefetch=prefetch,
                            batch_timeout=0.1)
    service = Service("amqp-bench", "1", components=[consumer], default_http=False,
                      config=Config(shutdown_timeout=30.0))
    service.start()
    try:
        if not done.wait(300):
            raise RuntimeError(f"patron consumed {seen} of {count} messages in 300 s")
    finally:
        service.stop()
        service.wait(60)
    return (count - 1) / (last - first), (cpu_last - cpu_first) / (count - 1)


def _run(url: str, count: int, batch: int, prefetch: int,
         consume: Callable[[str, str, int, int, int], Result]) -> Result:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    queue = f"patron-bench-{uuid.uuid4().hex[:10]}"
    channel.queue_declare(queue, durable=False)
    try:
        _publish(channel, queue, count)
        return consume(url, queue, count, batch, prefetch)
    finally:
        channel.queue_delete(queue)
        connection.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=2000, help="messages per run")
    parser.add_argument("--repeats", type=int, default=5, help="runs per variant")
    parser.add_argument("--url", default=URL, help="the broker")
    args = parser.parse_args(argv)
    logging.getLogger().addHandler(logging.NullHandler())  # the Service logs nowhere
    logging.getLogger().setLevel(logging.WARNING)

    ratios: dict[int, float] = {}
    for batch in (1, 50):
        prefetch = max(10, 2 * batch)
        results: dict[str, list[Result]] = {"patron": [], "raw": []}
        pair_ratios: list[float] = []
        for repeat in range(args.repeats):
            order = [("raw", _raw), ("patron", _patron)]
            if repeat % 2:
                order.reverse()
            for label, consume in order:
                results[label].append(_run(args.url, args.messages, batch, prefetch, consume))
            pair_ratios.append(results["patron"][-1][0] / results["raw"][-1][0])
        ratios[batch] = median(pair_ratios)
        rate = {k: median([r[0] for r in v]) for k, v in results.items()}
        cpu = {k: median([r[1] for r in v]) * 1e6 for k, v in results.items()}
        print(f"batch {batch:>2} prefetch {prefetch:>3} ({args.messages} messages x "
              f"{args.repeats}): patron {rate['patron']:7.0f} msg/s, "
              f"{cpu['patron']:5.1f} us CPU/msg | raw pika {rate['raw']:7.0f} msg/s, "
              f"{cpu['raw']:5.1f} us CPU/msg | msg/s ratio {ratios[batch]:.3f} "
              f"(pairs {[round(r, 2) for r in pair_ratios]}), "
              f"CPU/msg ratio raw/patron {cpu['raw'] / cpu['patron']:.3f}",
              flush=True)
    for batch, ratio in ratios.items():
        print(f"RATIO amqp_batch{batch} {ratio:.3f}")


if __name__ == "__main__":
    main()
