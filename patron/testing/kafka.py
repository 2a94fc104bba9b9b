"""A Kafka broker for tests: librdkafka's mock cluster, in this process or in a helper process.

The mock cluster (confluent-kafka's ``test.mock.num.brokers``) speaks the Kafka protocol on
loopback ports, so any client connects to it with an ordinary ``bootstrap.servers``. Consumer
groups and offset commits work (the first join of a group takes about 3 s); topics are created
on first use with 4 partitions (or up front, see ``topics`` and ``--topic``). The cluster lives
in the process that created it:

* :class:`MockCluster` (or the ``kafka_brokers`` pytest fixture) runs it in the test process;
* :class:`MockClusterProcess` runs ``python -m patron.testing.kafka`` and reads the address it
  prints, for tests that kill the process under test and need the broker to survive.

As a pytest plugin (``pytest_plugins = ["patron.testing.kafka"]``) this module offers the
session fixture ``kafka_brokers``: the bootstrap address of ``PATRON_TEST_KAFKA_BROKERS`` when
that is set (a real broker), else of a mock cluster started for the session in a helper
process. When neither can be had the tests are skipped, or fail when ``CI`` is set.

Run as a program it prints the bootstrap address on one line of stdout and keeps the cluster up
until stdin closes, or SIGTERM / SIGINT arrives::

    python -m patron.testing.kafka [--brokers N] [--topic NAME ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from patron.testing._process import run_until_told
from patron.testing._pytest import unavailable

__all__ = ["ENV_BROKERS", "MockCluster", "MockClusterProcess", "kafka_brokers", "main"]

#: names a real broker (``host:port[,host:port]``) that tests use instead of the mock cluster
ENV_BROKERS = "PATRON_TEST_KAFKA_BROKERS"


class MockCluster:
    """A librdkafka mock cluster with ``brokers`` brokers, living as long as this object.

    ``bootstrap`` is its ``host:port,...`` address. :meth:`close` (or leaving the ``with``
    block) shuts it down. Thread-safe to read; create and close it from one thread.
    """

    def __init__(self, brokers: int = 1, topics: Sequence[str] = ()) -> None:
        from confluent_kafka import Producer

        if brokers < 1:
            raise ValueError("a mock cluster needs at least one broker")
        # The cluster belongs to this (otherwise idle) handle; its metadata names the brokers.
        self._handle: Any = Producer({"test.mock.num.brokers": brokers, "log_level": 3})
        for topic in topics:
            self.create_topic(topic)
        metadata = self._handle.list_topics(timeout=10)
        self.bootstrap = ",".join(
            f"{broker.host}:{broker.port}"
            for broker in sorted(metadata.brokers.values(), key=lambda b: b.id)
        )

    def create_topic(self, name: str) -> None:
        """Create topic ``name`` (4 partitions) unless it exists."""
        # The mock cluster creates a topic when a producer first asks for its metadata.
        self._handle.list_topics(name, timeout=10)

    def close(self) -> None:
        self._handle = None  # dropping the last reference destroys the cluster

    def __enter__(self) -> MockCluster:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class MockClusterProcess:
    """A mock cluster in a child process (``python -m patron.testing.kafka``).

    The constructor returns once the child printed its address (``bootstrap``); :meth:`close`
    closes its stdin and waits for it to exit, :meth:`kill` ends it at once. Killing the process
    under test leaves it alive.
    """

    def __init__(self, brokers: int = 1, topics: Sequence[str] = (), timeout: float = 30.0
                 ) -> None:
        command = [sys.executable, "-m", "patron.testing.kafka", "--brokers", str(brokers)]
        for topic in topics:
            command += ["--topic", topic]
        self._proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        line = _read_line(self._proc, timeout)
        if not line:
            self.close()
            raise RuntimeError("the mock Kafka cluster process did not report its address")
        self.bootstrap = line.strip()

    def close(self, timeout: float = 10.0) -> None:
        proc = self._proc
        if proc.poll() is None:
            try:
                assert proc.stdin is not None
                proc.stdin.close()
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait(timeout)
        if proc.stdout is not None:
            proc.stdout.close()

    def kill(self) -> None:
        """Kill the cluster at once (SIGKILL): its clients see every broker vanish."""
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        self.close()

    def __enter__(self) -> MockClusterProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    result: list[str] = []
    reader = threading.Thread(
        target=lambda: result.append(proc.stdout.readline() if proc.stdout else ""),
        name="patron-mock-kafka-reader",
        daemon=True,  # joined below; daemon only so a wedged child cannot hang the interpreter
    )
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        proc.kill()
        reader.join()
    return result[0] if result else ""


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is only offered under pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def kafka_brokers() -> Iterator[str]:
        """Bootstrap address of ``PATRON_TEST_KAFKA_BROKERS`` or of a mock cluster started in a
        helper process for the session (so that a test may kill a process under test and the
        broker lives on). Skips when neither can be had, or fails when ``CI`` is set."""
        try:
            from confluent_kafka import Producer
        except ImportError as exc:
            unavailable(f"confluent-kafka is not installed: {exc}")
        real = os.environ.get(ENV_BROKERS, "").strip()
        if real:
            try:
                Producer({"bootstrap.servers": real}).list_topics(timeout=10)
            except Exception as exc:
                unavailable(f"{ENV_BROKERS}={real} is unreachable: {exc}")
            yield real
            return
        with MockClusterProcess() as cluster:
            yield cluster.bootstrap


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m patron.testing.kafka",
        description="Run a librdkafka mock cluster; print its bootstrap address; live until "
        "stdin closes or a signal arrives.",
    )
    parser.add_argument("--brokers", type=int, default=1, help="number of brokers (default 1)")
    parser.add_argument("--topic", action="append", default=[], metavar="NAME",
                        help="create this topic (4 partitions) at start; may be repeated")
    args = parser.parse_args(argv)
    with MockCluster(args.brokers, args.topic) as cluster:
        run_until_told(cluster.bootstrap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
