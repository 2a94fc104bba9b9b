"""Faults with real processes: the sample service is killed or stopped in the middle of a
stream and restarted (also with two group members in the process), or one of two instances of
a group is killed.

The scenarios take seconds each (group joins, session timeouts), so a module fixture runs them
at the same time, each on its own topic and group, while a steady stream is produced; every
test then checks the outcome of its own scenario.
"""

from __future__ import annotations

import collections
import concurrent.futures
import re
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServiceProcess, wait_for
from tests.kafka.conftest import Kafka, start_sample

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

WAIT = 45.0


class Stream:
    """Produces ``tag-00000``, ``tag-00001``, ... (with a correlation id each) from a thread,
    about ``rate`` a second, until stopped; ``produced`` holds what the broker acknowledged."""

    def __init__(self, brokers: str, topic: str, tag: str, rate: float = 80.0) -> None:
        from confluent_kafka import Producer

        self._producer: Any = Producer({"bootstrap.servers": brokers, "linger.ms": 1})
        self._topic, self._tag, self._period = topic, tag, 1.0 / rate
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.produced: list[str] = []
        self._thread = threading.Thread(target=self._run, name=f"stream-{tag}")
        self._thread.start()

    def _delivered(self, error: Any, message: Any) -> None:
        if error is None:
            with self._lock:
                self.produced.append(message.value().decode())

    def _run(self) -> None:
        index = 0
        while not self._stop.wait(self._period):
            value = f"{self._tag}-{index:05d}"
            self._producer.produce(self._topic, value=value, on_delivery=self._delivered,
                                   headers=[("X-Correlation-Id", f"cid-{value}")])
            self._producer.poll(0)
            index += 1
        self._producer.flush(30)

    def count(self) -> int:
        with self._lock:
            return len(self.produced)

    def since(self, mark: int) -> list[str]:
        with self._lock:
            return self.produced[mark:]

    def stop(self) -> list[str]:
        self._stop.set()
        self._thread.join(60)
        return list(self.produced)


def lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def log_of(process: ServiceProcess) -> str:
    return process.stdout_path.read_text(errors="replace")


def members_assigned(process: ServiceProcess, group: str, topic: str) -> int:
    """How many group members of ``process`` logged an assignment of partitions of ``topic``
    (members are named ``kafka-<group>``, or ``kafka-<group>-<i>`` with a concurrency)."""
    pattern = rf"kafka-{re.escape(group)}(?:-\d+)?: assigned {re.escape(topic)}\["
    return len(set(re.findall(pattern, log_of(process))))


def restart_scenario(kafka: Kafka, tmp: Path, start: Callable[..., ServiceProcess],
                     signum: int, tag: str, members: int = 1) -> dict[str, Any]:
    """The sample gets ``signum`` in the middle of a stream once it processed some, then runs
    again (one group member) until everything produced was processed.

    With ``members`` above 1 the first instance runs that many members (SAMPLE_CONCURRENCY),
    and the stream starts only once each of them holds partitions: librdkafka's mock cluster
    refuses every commit while a group rebalances (a real broker accepts them), so messages
    processed while the group forms may be processed again, which is not what this scenario
    is about. The second instance, a single member, forms its group without a rebalance.
    """
    topic, group = kafka.topic(), kafka.name("g")
    output = tmp / f"{tag}.txt"
    stream = Stream(kafka.brokers, topic, tag) if members == 1 else None
    try:
        first = start(topic=topic, group=group, output=output,
                      SAMPLE_CONCURRENCY=str(members))
        if stream is None:
            wait_for(lambda: members_assigned(first, group, topic) == members, WAIT, 0.05)
            stream = Stream(kafka.brokers, topic, tag)
        wait_for(lambda: len(lines(output)) >= 20, WAIT, 0.05)
        first.signal(signum)
        first_code = first.proc.wait(30)
        at_stop = len(lines(output))
        second = start(topic=topic, group=group, output=output)
        wait_for(lambda: len(lines(output)) >= at_stop + 20, WAIT, 0.05)  # the stream goes on
    finally:
        produced = stream.stop() if stream is not None else []
    wait_for(lambda: set(produced) <= set(lines(output)), WAIT, 0.05)
    second.signal(signal.SIGTERM)
    second_code = second.proc.wait(30)
    return {"codes": (first_code, second_code), "produced": produced,
            "lines": lines(output), "logs": log_of(first) + log_of(second),
            "first_members": members_assigned(first, group, topic)}


def failover_scenario(kafka: Kafka, tmp: Path, start: Callable[..., ServiceProcess]
                      ) -> dict[str, Any]:
    topic, group = kafka.topic(), kafka.name("g")
    out_a, out_b = tmp / "a.txt", tmp / "b.txt"
    stream = Stream(kafka.brokers, topic, "failover")
    try:
        a = start(topic=topic, group=group, output=out_a)
        b = start(topic=topic, group=group, output=out_b)
        # Both instances process: the four partitions are shared between them.
        wait_for(lambda: len(lines(out_a)) >= 5 and len(lines(out_b)) >= 5, WAIT, 0.05)
        b.proc.kill()
        b.proc.wait(30)
        mark = stream.count()
        wait_for(lambda: len(set(stream.since(mark)) & set(lines(out_a))) >= 40, WAIT, 0.05)
    finally:
        produced = stream.stop()
    wait_for(lambda: set(produced) <= set(lines(out_a)) | set(lines(out_b)), WAIT, 0.05)
    a.signal(signal.SIGTERM)
    code = a.proc.wait(30)
    return {"code": code, "topic": topic, "produced": produced, "after_kill": produced[mark:],
            "a": lines(out_a), "b": lines(out_b), "log_a": log_of(a)}


@pytest.fixture(scope="module")
def scenarios(kafka_brokers: str, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[dict[str, concurrent.futures.Future[dict[str, Any]]]]:
    kafka = Kafka(kafka_brokers)
    started: list[ServiceProcess] = []
    lock = threading.Lock()

    def starter(tmp: Path) -> Callable[..., ServiceProcess]:
        def start(**kw: Any) -> ServiceProcess:
            process = start_sample(kafka_brokers, tmp, **kw)
            with lock:
                started.append(process)
            return process
        return start

    dirs = {name: tmp_path_factory.mktemp(name)
            for name in ("kill", "term", "term2", "failover")}
    pool = concurrent.futures.ThreadPoolExecutor(len(dirs), thread_name_prefix="scenario")
    futures = {
        "kill": pool.submit(restart_scenario, kafka, dirs["kill"], starter(dirs["kill"]),
                            signal.SIGKILL, "kill"),
        "term": pool.submit(restart_scenario, kafka, dirs["term"], starter(dirs["term"]),
                            signal.SIGTERM, "term"),
        "term2": pool.submit(restart_scenario, kafka, dirs["term2"], starter(dirs["term2"]),
                             signal.SIGTERM, "term2", members=2),
        "failover": pool.submit(failover_scenario, kafka, dirs["failover"],
                                starter(dirs["failover"])),
    }
    yield futures
    concurrent.futures.wait(futures.values())
    pool.shutdown()
    for process in started:
        process.kill()
    kafka.cleanup()


def test_sigkill_mid_stream_then_restart_processes_every_message_at_least_once(scenarios
                                                                               ) -> None:
    result = scenarios["kill"].result()
    assert result["codes"] == (-signal.SIGKILL, 0)
    assert set(result["produced"]) <= set(result["lines"])
    assert len(result["produced"]) > 40


def test_sigterm_mid_stream_then_restart_loses_nothing_and_repeats_nothing(scenarios) -> None:
    result = scenarios["term"].result()
    assert result["codes"] == (0, 0)
    counts = collections.Counter(result["lines"])
    assert set(counts) == set(result["produced"])
    assert [value for value, n in counts.items() if n > 1] == []


def test_sigterm_with_concurrency_2_then_restart_loses_nothing_and_repeats_nothing(scenarios
                                                                                 ) -> None:
    result = scenarios["term2"].result()
    assert "(concurrency 2)" in result["logs"]
    assert result["first_members"] == 2  # both members held partitions when it was stopped
    assert result["codes"] == (0, 0)
    counts = collections.Counter(result["lines"])
    assert set(counts) == set(result["produced"])
    # Both members committed what they processed before either of them left the group.
    assert [value for value, n in counts.items() if n > 1] == []


def test_a_killed_instance_partitions_move_to_the_other_and_nothing_is_lost(scenarios) -> None:
    result = scenarios["failover"].result()
    assert result["code"] == 0
    assert result["a"] and result["b"]  # shared while both lived
    assert set(result["produced"]) <= set(result["a"]) | set(result["b"])
    # Everything produced after the kill, on all four partitions, reached the survivor.
    assert set(result["after_kill"]) <= set(result["a"])
    topic = result["topic"]
    log = result["log_a"]
    assert any("assigned" in line and all(f"{topic}[{p}]" in line for p in range(4))
               for line in log.splitlines())
    # The rebalance moved partitions without restarting the survivor's component.
    assert "revoked" in log and log.count(": consuming ") == 1
    assert "connection failed" not in log


def test_the_sample_logs_each_message_with_its_correlation_id(scenarios) -> None:
    result = scenarios["term"].result()
    value = result["produced"][0]
    logged = [line for line in result["logs"].splitlines() if f": {value}" in line]
    assert logged and f"correlationID=cid-{value}" in logged[0]
