"""``python -m patron samples.sqs_consumer`` killed and stopped in the middle of a stream, with
one poller and with two."""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
import pytest

from patron.sqs import SQSPublisher
from patron.testing.sqs import ENV_ENDPOINT, MotoServer, client_kwargs
from tests.conftest import ServiceProcess, wait_for
from tests.sqs.conftest import QueueFactory, counts

pytestmark = [pytest.mark.sqs, pytest.mark.slow]

StartService = Callable[..., ServiceProcess]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _env(endpoint: str, queue: str, output: Path, **extra: str) -> dict[str, str]:
    kwargs = client_kwargs(endpoint)
    env = {
        "SQS_ENDPOINT_URL": endpoint,
        "SQS_QUEUE": queue,
        "AWS_DEFAULT_REGION": kwargs["region_name"],
        "SAMPLE_OUTPUT": str(output),
        "PATRON_HTTP_DEFAULT_PORT": "0",
        **extra,
    }
    if "aws_access_key_id" in kwargs:
        env["AWS_ACCESS_KEY_ID"] = kwargs["aws_access_key_id"]
        env["AWS_SECRET_ACCESS_KEY"] = kwargs["aws_secret_access_key"]
    return env


def test_sigkill_mid_stream_then_restart_loses_nothing(
    make_queue: QueueFactory, sqs: Any, sqs_endpoint: str, service_process: StartService,
    tmp_path: Path,
) -> None:
    # A short visibility timeout: what the killed process held comes back within 2 s.
    name, url = make_queue(VisibilityTimeout=2)
    sent = [f"kill-{i}" for i in range(30)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    output = tmp_path / "out.txt"

    first = service_process("samples.sqs_consumer",
                            **_env(sqs_endpoint, name, output, SAMPLE_DELAY="0.05"))
    wait_for(lambda: len(_lines(output)) >= 5, timeout=30)
    first.signal(signal.SIGKILL)
    assert first.wait(10) == -signal.SIGKILL
    assert len(set(_lines(output))) < len(sent)  # killed in the middle

    second = service_process("samples.sqs_consumer", **_env(sqs_endpoint, name, output))
    wait_for(lambda: set(_lines(output)) >= set(sent), timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert set(_lines(output)) == set(sent)  # every message at least once, nothing foreign
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}


def test_sigterm_mid_stream_gives_back_at_once_and_restart_processes_each_once(
    make_queue: QueueFactory, sqs: Any, sqs_endpoint: str, service_process: StartService,
    tmp_path: Path,
) -> None:
    # A long visibility timeout: a message not given back would stay hidden past the test.
    name, url = make_queue(VisibilityTimeout=120)
    sent = [f"term-{i}" for i in range(20)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    output = tmp_path / "out.txt"

    first = service_process("samples.sqs_consumer",
                            **_env(sqs_endpoint, name, output, SAMPLE_DELAY="0.2"))
    wait_for(lambda: len(_lines(output)) >= 3, timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0
    done = _lines(output)
    assert 3 <= len(done) < len(sent)
    # (read the file: ServiceProcess.output() flushes a handle wait() closed)
    assert "gave back" in first.stdout_path.read_text()  # it held unprocessed messages
    # Given back at once: nothing is left invisible, nothing processed is left in the queue.
    assert counts(sqs, url) == {"available": len(sent) - len(done), "invisible": 0,
                                "delayed": 0}

    second = service_process("samples.sqs_consumer", **_env(sqs_endpoint, name, output))
    wait_for(lambda: len(_lines(output)) >= len(sent), timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0
    lines = _lines(output)
    assert sorted(lines) == sorted(sent)  # nothing lost, nothing processed twice
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}


def test_sigterm_with_two_pollers_gives_back_at_once_and_restart_processes_each_once(
    make_queue: QueueFactory, sqs: Any, serial_sqs_endpoint: str,
    service_process: StartService, tmp_path: Path,
) -> None:
    # A long visibility timeout: a message not given back (or not deleted) would stay hidden
    # past the test. The endpoint serves one request at a time (see serial_sqs_endpoint), so
    # the two pollers' receives and deletes cannot trip over moto's own races.
    name, url = make_queue(VisibilityTimeout=120)
    sent = [f"pair-{i}" for i in range(24)]
    SQSPublisher(url, client=sqs).publish_batch(sent)
    output = tmp_path / "out.txt"

    first = service_process("samples.sqs_consumer", **_env(
        serial_sqs_endpoint, name, output, SAMPLE_DELAY="0.2", SAMPLE_CONCURRENCY="2"))
    wait_for(lambda: len(_lines(output)) >= 4, timeout=30)
    first.signal(signal.SIGTERM)
    assert first.wait(20) == 0
    done = _lines(output)
    assert 4 <= len(done) < len(sent)  # stopped in the middle
    assert len(set(done)) == len(done)  # nothing processed twice so far
    log = first.stdout_path.read_text()
    assert "(concurrency 2)" in log
    assert "gave back" in log  # it held unprocessed messages
    # Each poller deleted what it processed and gave back the rest at once.
    assert counts(sqs, url) == {"available": len(sent) - len(done), "invisible": 0,
                                "delayed": 0}

    second = service_process("samples.sqs_consumer", **_env(
        serial_sqs_endpoint, name, output, SAMPLE_CONCURRENCY="2"))
    wait_for(lambda: len(_lines(output)) >= len(sent), timeout=30)
    second.signal(signal.SIGTERM)
    assert second.wait(20) == 0
    assert sorted(_lines(output)) == sorted(sent)  # nothing lost, nothing processed twice
    assert counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0}


#: every line a service prints is one log record, starting with its timestamp
_RECORD = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d")


def test_a_consumer_giving_up_mid_stream_prints_one_line_per_event_and_no_traceback(
    service_process: StartService, tmp_path: Path,
) -> None:
    if os.environ.get(ENV_ENDPOINT):
        pytest.skip("takes its endpoint away: runs against a moto server of its own")
    with MotoServer() as moto:
        sqs = boto3.client("sqs", **client_kwargs(moto.endpoint_url))
        url = sqs.create_queue(QueueName=f"patron-giving-up-{tmp_path.name}")["QueueUrl"]
        SQSPublisher(url, client=sqs).publish_batch([f"m{i}" for i in range(10)])
        env = _env(moto.endpoint_url, url, tmp_path / "unused.txt")
        release = tmp_path / "release"
        process = service_process("tests.sqs.giving_up", RELEASE=str(release), **env)
        wait_for(lambda: "processing 10 message(s)" in process.output(), timeout=30)
        moto.stop()  # gone for good: the batch's deletes fail, and past its retries it gives up
        release.touch()
        assert process.wait(30) == 1
        moto.start()  # to delete the queue
        sqs.delete_queue(QueueUrl=url)
    lines = process.stdout_path.read_text().splitlines()
    assert all(_RECORD.match(line) for line in lines), lines  # no traceback, no wrapping
    own = [line for line in lines if " patron.sqs " in line
           and (" WARNING " in line or " ERROR " in line)]
    # One line per failed attempt, one for the deletes that never went through: not one per
    # attempt to delete them again.
    assert len(own) == 3, own
    assert sum("connection failed" in line for line in own) == 2, own
    assert sum("10 processed message(s) could not be deleted" in line for line in own) == 1, own
    assert sum("component sqs-" in line and "giving up after 3" in line
               for line in lines) == 1, lines
