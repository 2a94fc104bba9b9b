"""SQS benchmark: patron's SQS consumer against a hand-written boto3 receive-and-delete loop.

Run from the repository root::

    python -m benchmarks.sqs [--messages 100] [--rounds 5] [--long]

moto's server runs in a child process (``python -m patron.testing.sqs``). Each round, for each
variant, a fresh queue is filled with the same ``--messages`` messages (setup, not measured),
then consumed until every message was deleted. The CPU time measured is that of the consumer's
own threads (``pthread_getcpuclockid``: the raw loop's thread, or the component's thread and its
poller threads), read at the moment the last delete was confirmed:

* ``raw``: ``receive_message(MaxNumberOfMessages=10, WaitTimeSeconds=1, MessageAttributeNames
  =["All"], AttributeNames=["All"])``, a no-op per message, one ``delete_message_batch`` per
  receive, in one thread;
* ``patron``: an :class:`patron.sqs.SQSConsumer` in a Service (tracing with the default sampler,
  metrics, correlation ids, a span per message) with ``max_messages=10``, ``wait_time=1``,
  batch size 1 and a no-op processor;
* ``patron x4``: the same with ``concurrency=4`` (four pollers).

moto's cost per call grows with the depth of the queue, so wall-clock throughput measures moto
more than the consumer: the figure compared is the consumer threads' CPU time per message at
the same queue depth (DESIGN.md §7). Messages/s are printed too. Medians over the rounds; the
variants are interleaved, in an order that rotates from round to round, each run starting after
a full garbage collection. The last line is ``RATIO sqs <value>``: raw CPU
per message / patron CPU per message (1.0: patron costs nothing; the target is >= 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import logging
import platform
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from benchmarks._util import median

__all__ = ["main"]

VARIANTS = ("raw", "patron", "patron x4")
WAIT = 1
MAX_MESSAGES = 10
TIMEOUT = 120.0


@dataclasses.dataclass(frozen=True)
class Run:
    wall: float
    cpu: float
    messages: int

    @property
    def per_s(self) -> float:
        return self.messages / self.wall

    @property
    def cpu_us(self) -> float:
        return self.cpu / self.messages * 1e6


class Moto:
    """moto's server in a child process; ``endpoint`` is its URL."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patron.testing.sqs"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.close()
            raise RuntimeError(f"moto did not start: {line!r}")
        self.endpoint = line

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(15)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    from patron.testing.sqs import client_kwargs

    # The configuration patron's consumer gives its own client, for both variants.
    return boto3.client("sqs", **client_kwargs(endpoint), config=Config(
        connect_timeout=5, read_timeout=30, retries={"mode": "standard", "total_max_attempts": 1},
    ))


def _fill(client: Any, url: str, n: int) -> None:
    for start in range(0, n, 10):
        client.send_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "MessageBody": f"message {start + i} " + "x" * 100,
             "MessageAttributes": {"X-Correlation-Id": {"DataType": "String",
                                                        "StringValue": str(uuid.uuid4())}}}
            for i in range(min(10, n - start))
        ])


class _Counting:
    """The client, counting confirmed deletes (both variants use it). When the count reaches
    ``n`` it takes the end figures at once, in the consumer thread that confirmed the last
    delete: wall clock and the CPU clocks of ``threads()``; then ``done`` is set."""

    def __init__(self, client: Any, n: int, threads: Callable[[], list[threading.Thread]]
                 ) -> None:
        self._client = client
        self._n = n
        self._threads = threads
        self._deleted = 0
        self._lock = threading.Lock()
        self.end_wall = 0.0
        self.end_cpu = 0.0
        self.done = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        response = self._client.delete_message_batch(**kwargs)
        with self._lock:
            self._deleted += len(response.get("Successful", ()))
            if self._deleted >= self._n and not self.done.is_set():
                self.end_wall = time.perf_counter()
                self.end_cpu = _thread_cpu(self._threads())
                self.done.set()
        return response

    @property
    def deleted(self) -> int:
        return self._deleted


def _thread_cpu(threads: list[threading.Thread]) -> float:
    """CPU seconds the threads used since they started (their clocks start at zero)."""
    total = 0.0
    for thread in threads:
        if thread.ident is not None and thread.is_alive():
            total += time.clock_gettime(time.pthread_getcpuclockid(thread.ident))
    return total


def _raw(client: Any, url: str, n: int) -> Run:
    thread: list[threading.Thread] = []
    counting = _Counting(client, n, lambda: thread)

    def consume() -> None:
        deadline = time.monotonic() + TIMEOUT
        while not counting.done.is_set() and time.monotonic() < deadline:
            items = counting.receive_message(
                QueueUrl=url, MaxNumberOfMessages=MAX_MESSAGES, WaitTimeSeconds=WAIT,
                MessageAttributeNames=["All"], AttributeNames=["All"],
            ).get("Messages", [])
            for _item in items:
                pass  # the no-op processor
            if items:
                counting.delete_message_batch(QueueUrl=url, Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(items)
                ])

    thread.append(threading.Thread(target=consume, name="raw-consumer"))
    wall = time.perf_counter()
    thread[0].start()
    thread[0].join()
    return Run(counting.end_wall - wall, counting.end_cpu, counting.deleted)


def _patron(client: Any, url: str, n: int, concurrency: int) -> Run:
    from patron import Config, Service
    from patron.messaging import Batch
    from patron.sqs import SQSConsumer

    def threads() -> list[threading.Thread]:
        # The consumer's own: the component thread (patron-bench-sqs) and, with concurrency
        # above 1, its pollers (patron-bench-sqs-<i>). Tracing and the supervisor are set up
        # in this thread, or wait, and are not counted.
        return [t for t in threading.enumerate() if t.name.startswith("patron-bench-sqs")]

    counting = _Counting(client, n, threads)

    def process(batch: Batch) -> None:
        pass  # the no-op processor

    consumer = SQSConsumer(url, process, client=counting, max_messages=MAX_MESSAGES,
                           wait_time=WAIT, concurrency=concurrency, name="bench-sqs")
    service = Service("bench-sqs", components=[consumer], default_http=False,
                      config=Config(shutdown_timeout=30.0))
    wall = time.perf_counter()
    service.start()
    try:
        counting.done.wait(TIMEOUT)
        return Run(counting.end_wall - wall, counting.end_cpu, counting.deleted)
    finally:
        service.stop()
        service.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.sqs", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--messages", type=int, default=100, help="messages per run (100)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (5)")
    parser.add_argument("--long", action="store_true", help="500 messages, 7 rounds")
    args = parser.parse_args(argv)
    if args.long:
        args.messages, args.rounds = 500, 7
    logging.basicConfig(level=logging.WARNING)  # the component's INFO lines are not figures

    moto = Moto()
    try:
        client = _client(moto.endpoint)
        print(f"SQS benchmark: {args.messages} messages x {args.rounds} round(s), max messages "
              f"{MAX_MESSAGES}, wait {WAIT} s, moto in a child process; python "
              f"{platform.python_version()}")
        results: dict[str, list[Run]] = {v: [] for v in VARIANTS}
        for round_no in range(args.rounds):
            shift = round_no % len(VARIANTS)  # rotate the order: no variant always goes first
            for variant in VARIANTS[shift:] + VARIANTS[:shift]:
                url = client.create_queue(QueueName=f"bench-{uuid.uuid4().hex[:12]}")["QueueUrl"]
                try:
                    _fill(client, url, args.messages)
                    gc.collect()  # every run starts from the same collector state
                    if variant == "raw":
                        run = _raw(client, url, args.messages)
                    else:
                        concurrency = 4 if variant.endswith("x4") else 1
                        run = _patron(client, url, args.messages, concurrency)
                finally:
                    client.delete_queue(QueueUrl=url)
                # moto (like SQS, at least once) may hand concurrent pollers the same message
                if run.messages < args.messages:
                    raise RuntimeError(f"{variant}: consumed {run.messages} of {args.messages}")
                results[variant].append(run)
                print(f"  round {round_no + 1} {variant:<10} {run.per_s:8.1f} msg/s "
                      f"{run.cpu_us:8.1f} cpu us/msg", flush=True)
    finally:
        moto.close()

    print()
    print(f"medians over {args.rounds} round(s):")
    print(f"{'variant':<10} {'msg/s':>8} {'cpu us/msg':>11}")
    medians = {}
    for variant in VARIANTS:
        per_s = median([r.per_s for r in results[variant]])
        cpu_us = median([r.cpu_us for r in results[variant]])
        medians[variant] = (per_s, cpu_us)
        print(f"{variant:<10} {per_s:8.1f} {cpu_us:11.1f}")
    raw_cpu = medians["raw"][1]
    print()
    print(f"msg/s ratio patron/raw: {medians['patron'][0] / medians['raw'][0]:.2f} (wall clock: "
          "mostly moto's time)")
    print(f"msg/s ratio patron x4/raw: {medians['patron x4'][0] / medians['raw'][0]:.2f}")
    print(f"cpu ratio raw/patron x4: {raw_cpu / medians['patron x4'][1]:.2f}")
    ratio = raw_cpu / medians["patron"][1]
    print(f"target cpu raw/patron >= 0.9: {ratio:.3f}: {'met' if ratio >= 0.9 else 'MISSED'}")
    print(f"RATIO sqs {ratio:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
