"""``python -m patron samples.amqp_consumer`` killed and stopped by signals mid-stream."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.amqp.conftest import Broker
from tests.conftest import ServiceProcess, free_port, wait_for

pytestmark = [pytest.mark.amqp, pytest.mark.slow]

TOTAL = 300


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _start(
    service_process: Callable[..., ServiceProcess], amqp_url: str, queue: str, out: Path,
    concurrency: int = 1,
) -> ServiceProcess:
    return service_process(
        "samples.amqp_consumer",
        AMQP_URL=amqp_url,
        AMQP_QUEUE=queue,
        SAMPLE_OUTPUT=str(out),
        # About 200 messages/s in all: a stream long enough to interrupt.
        SAMPLE_DELAY=str(0.005 * concurrency),
        SAMPLE_CONCURRENCY=str(concurrency),
        PATRON_HTTP_DEFAULT_PORT="0",
    )


def _output(process: ServiceProcess) -> str:
    # What the process wrote; also after wait() (which closes the capture file).
    return process.stdout_path.read_text(errors="replace")


def _stream(broker: Broker, queue: str) -> list[str]:
    expected = [f"m{i:03d}" for i in range(TOTAL)]
    broker.publish(queue, [line.encode() for line in expected])
    return expected


def test_sigkill_mid_stream_then_restart_processes_every_message_at_least_once(
    broker: Broker, amqp_url: str, service_process: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    queue = broker.queue()
    expected = _stream(broker, queue)
    out = tmp_path / "out.txt"
    first = _start(service_process, amqp_url, queue, out)
    wait_for(lambda: len(_lines(out)) >= 50, timeout=20)
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert len(_lines(out)) < TOTAL, "the stream ended before the kill"

    second = _start(service_process, amqp_url, queue, out)
    wait_for(lambda: set(_lines(out)) >= set(expected), timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0, _output(second)
    assert set(_lines(out)) == set(expected)  # nothing lost; a few may have come twice
    assert broker.ready(queue) == 0


def test_sigterm_mid_stream_requeues_the_prefetched_at_once_and_nothing_runs_twice(
    broker: Broker, amqp_url: str, service_process: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    # An existing durable queue with arguments of its own: the sample uses it as it is.
    queue = broker.queue(arguments={"x-max-length": 100_000})
    expected = _stream(broker, queue)
    out = tmp_path / "out.txt"
    first = _start(service_process, amqp_url, queue, out)
    wait_for(lambda: len(_lines(out)) >= 50, timeout=20)
    signalled = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0, _output(first)
    stopped_in = time.monotonic() - signalled
    done = _lines(out)
    assert len(done) < TOTAL, "the stream ended before SIGTERM"
    # Everything not processed is back in the queue as soon as the process is gone.
    assert broker.ready(queue) == TOTAL - len(done)
    assert broker.consumers(queue) == 0
    assert stopped_in < 10

    second = _start(service_process, amqp_url, queue, out)
    wait_for(lambda: len(_lines(out)) >= TOTAL, timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0, _output(second)
    assert sorted(_lines(out)) == expected  # nothing lost, nothing processed twice
    assert broker.ready(queue) == 0


def test_sigterm_with_two_connections_requeues_the_unprocessed_and_nothing_runs_twice(
    broker: Broker, amqp_url: str, service_process: Callable[..., ServiceProcess],
    tmp_path: Path,
) -> None:
    queue = broker.queue()
    expected = _stream(broker, queue)
    out = tmp_path / "out.txt"
    first = _start(service_process, amqp_url, queue, out, concurrency=2)
    wait_for(lambda: len(_lines(out)) >= 50, timeout=20)
    first.signal(signal.SIGTERM)
    assert first.wait(15) == 0, _output(first)
    log = _output(first)
    # Two connections, each in a thread of its own, did consume.
    assert "(concurrency 2)" in log, log
    assert f"amqp-{queue}-0: subscribed" in log and f"amqp-{queue}-1: subscribed" in log, log
    done = _lines(out)
    assert len(done) < TOTAL, "the stream ended before SIGTERM"
    assert len(set(done)) == len(done)  # whole lines, none twice: the writes did not mix
    # Both connections acked what they processed and gave back the rest before closing:
    # nothing processed is still in the queue, nothing unprocessed is missing from it.
    assert broker.ready(queue) == TOTAL - len(done)
    assert broker.consumers(queue) == 0

    second = _start(service_process, amqp_url, queue, out, concurrency=2)
    wait_for(lambda: len(_lines(out)) >= TOTAL, timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(15) == 0, _output(second)
    assert sorted(_lines(out)) == expected  # every message processed exactly once
    assert broker.ready(queue) == 0


#: every line a service prints is one log record, starting with its timestamp
_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def test_a_consumer_giving_up_prints_one_line_per_event_and_no_traceback(
    broker: Broker, amqp_url: str, service_process: Callable[..., ServiceProcess],
) -> None:
    for url in (f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # retried, then given up
                amqp_url.replace("guest:guest", "guest:wrong-secret")):  # permanent
        process = service_process("tests.amqp.giving_up", AMQP_URL=url,
                                  AMQP_QUEUE=broker.queue(), PATRON_HTTP_DEFAULT_PORT="0")
        assert process.wait(30) == 1
        lines = _output(process).splitlines()
        assert all(_RECORD.match(line) for line in lines), lines  # no traceback, no wrapping
        failed = [line for line in lines if "component amqp-" in line and "failed" in line]
        assert len(failed) == 1, lines
        retries = [line for line in lines if "connection failed" in line]
        if "wrong-secret" in url:
            assert not retries and "authentication refused" in failed[0], lines
            assert "wrong-secret" not in _output(process)
        else:
            assert len(retries) == 2 and "giving up after 3" in failed[0], lines
