"""The consumer component every transport builds on: concurrency, readiness, failure of one
loop, and the connected gauge, against in-memory transports."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import pytest

from patron.messaging import Batch, ConnectionRetry, ProcessingError, Retry, TransportError
from patron.messaging._consumer import Consumer
from tests.conftest import wait_for
from tests.messaging.fakes import FakeTransport
from tests.support.components import Recorder, Runner
from tests.support.metrics import sample

FAST = Retry(count=0, wait=0.01, backoff=1.0)


class FakeConsumer(Consumer):
    """A consumer component over :class:`FakeTransport` objects, one per loop."""

    def __init__(self, processor: Callable[[Batch], None], *, concurrency: int = 1,
                 name: str = "fake", transport: type[FakeTransport] = FakeTransport,
                 connection_retry: ConnectionRetry | None = None,
                 stats_interval: float = 0.0) -> None:
        self.transports: list[FakeTransport] = []
        self._kind = transport
        super().__init__(
            name=name, processor=processor, batch_size=1, batch_timeout=0.0,
            failure="exit", processing_retry=FAST,
            connection_retry=connection_retry or ConnectionRetry(count=0, wait=0.0),
            concurrency=concurrency, stats_interval=stats_interval, connect_timeout=1.0,
            poll_timeout=0.02,
            log=logging.getLogger("tests.fake"),
        )

    def _transport(self, index: int) -> FakeTransport:
        transport = self._kind()
        self.transports.append(transport)
        return transport

    def _describe(self) -> str:
        return "fake queues"


def test_each_loop_runs_in_a_thread_of_its_own_with_its_own_transport(run) -> None:
    recorder = Recorder()
    consumer = FakeConsumer(recorder, concurrency=2, name="pair")
    runner = run(consumer)
    for index, transport in enumerate(consumer.transports):
        transport.push(f"m{index}")
    assert sorted(recorder.wait_for(2)) == [b"m0", b"m1"]
    assert recorder.threads == {"patron-pair-0", "patron-pair-1"}
    assert runner.finish() is None
    assert [t.closes for t in consumer.transports] == [1, 1]


def test_one_failing_loop_stops_the_others_and_fails_the_component(run) -> None:
    def process(batch: Batch) -> None:
        if batch[0].body == b"poison":
            raise ValueError("bad payload")

    consumer = FakeConsumer(process, concurrency=3)
    runner = run(consumer)
    consumer.transports[1].push("poison")
    error = runner.ended(10)
    assert isinstance(error, ProcessingError)
    assert [t.closes for t in consumer.transports] == [1, 1, 1]
    assert consumer.transports[1].given_back == [b"poison"]
    assert not consumer.ready()


def test_a_loop_returning_before_stop_fails_the_component(run) -> None:
    consumer = FakeConsumer(lambda batch: None, concurrency=2)
    runner = Runner(consumer)
    wait_for(consumer.ready)
    consumer._loops[0].run = lambda stop: None  # type: ignore[method-assign]
    runner.stop.set()  # both loops return; only one was asked to by the component
    assert runner.ended(10) is None  # stop was set: a clean stop
    other = FakeConsumer(lambda batch: None, concurrency=2)
    other._loops[1].run = lambda stop: None  # type: ignore[method-assign]
    error = run(other).ended(10)
    assert isinstance(error, RuntimeError)
    assert "ended before the component was stopped" in str(error)


class Gated(FakeTransport):
    """Connects at once but can deliver only once the test says so (a group join)."""

    def subscribed(self) -> None:
        pass


def test_ready_once_every_loop_connected_and_through_reconnects_until_it_gives_up(run) -> None:
    consumer = FakeConsumer(lambda batch: None, concurrency=2, transport=Gated,
                            connection_retry=ConnectionRetry(count=1, wait=0.001))
    assert not consumer.ready()  # not started
    runner = run(consumer)
    first, second = consumer.transports
    wait_for(lambda: first.connects and second.connects)
    first.connected = True
    assert not consumer.ready()  # one loop has not joined yet
    second.connected = True
    assert consumer.ready()
    assert sample("component_consumer_connected", name="fake") == 2
    first.connected = False  # a rebalance, a reconnect: still in load balancing
    assert consumer.ready()
    assert sample("component_consumer_connected", name="fake") == 1
    first.fetch_errors = [ConnectionError("down"), ConnectionError("still down")]
    first.connect_errors = [ConnectionError("refused")]
    assert isinstance(runner.ended(10), TransportError)  # gave up
    assert not consumer.ready()


def test_concurrency_must_be_positive() -> None:
    with pytest.raises(ValueError, match="concurrency"):
        FakeConsumer(lambda batch: None, concurrency=0)


def test_stop_stops_every_loop_and_returns_cleanly(run) -> None:
    started = threading.Barrier(3, timeout=5)

    def process(batch: Batch) -> None:
        started.wait()

    consumer = FakeConsumer(process, concurrency=2)
    runner = run(consumer)
    for transport in consumer.transports:
        transport.push("a")
    started.wait()  # both loops are inside the processor
    assert runner.finish() is None
    assert [t.acked for t in consumer.transports] == [[b"a"], [b"a"]]


def test_readiness_turns_false_as_soon_as_one_loop_gives_up(run) -> None:
    busy, release = threading.Event(), threading.Event()

    def process(batch: Batch) -> None:
        if batch[0].body == b"poison":
            raise ValueError("bad payload")
        busy.set()
        assert release.wait(10)  # the other loop is busy: the component cannot return yet

    consumer = FakeConsumer(process, concurrency=2)
    runner = run(consumer)
    wait_for(consumer.ready)
    consumer.transports[0].push("slow")
    assert busy.wait(5)
    consumer.transports[1].push("poison")
    wait_for(lambda: not consumer.ready())
    assert runner.thread.is_alive()  # still waiting for the busy loop
    release.set()
    assert isinstance(runner.ended(10), ProcessingError)


def test_statistics_are_read_by_the_first_loop_only(run) -> None:
    consumer = FakeConsumer(lambda batch: None, concurrency=2, stats_interval=0.02)
    runner = run(consumer)
    wait_for(lambda: consumer.transports[0].probes >= 3)
    assert runner.finish() is None
    assert consumer.transports[1].probes == 0


def test_stop_by_reaches_the_transport_of_every_loop() -> None:
    consumer = FakeConsumer(lambda batch: None, concurrency=3)
    deadline = time.monotonic() + 5.0
    consumer.stop_by(deadline)
    assert [t.stop_deadline for t in consumer.transports] == [deadline] * 3
