"""The SQS consumer when the endpoint, the queue or the configuration is wrong."""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from patron import EXIT_FAILURE, Service
from patron.messaging import Batch, PermanentError
from patron.sqs import SQSConsumer, SQSPublisher
from patron.testing.sqs import check_credentials
from tests.conftest import wait_for
from tests.sqs.conftest import (
    ENV_ENDPOINT,
    MotoServer,
    QueueFactory,
    Runner,
    client_kwargs,
    session,
)

Run = Callable[[Any], Runner]

pytestmark = pytest.mark.sqs


@pytest.fixture
def private_moto() -> Iterator[MotoServer]:
    """A moto server of the test's own, to take away and bring back (moto's queues live in
    the process, so they survive a restart)."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


def _count_warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage())


def test_receive_retries_carry_the_consumer_over_an_endpoint_outage(
    private_moto: MotoServer, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = boto3.client("sqs", **client_kwargs(private_moto.endpoint_url))
    url = sqs.create_queue(QueueName=f"patron-outage-{time.monotonic_ns()}")["QueueUrl"]
    try:
        bodies: list[str] = []
        component = SQSConsumer(
            url, lambda batch: bodies.extend(m.text for m in batch),
            endpoint_url=private_moto.endpoint_url, session=session(),
            wait_time=1, max_messages=10, retries=100, retry_wait=0.2,
        )
        publisher = SQSPublisher(url, client=sqs)
        publisher.send_batch(["before 1", "before 2"])
        with caplog.at_level(logging.WARNING, logger="patron.sqs"):
            runner = run(component)
            wait_for(lambda: len(bodies) >= 2, timeout=10)
            assert component.ready()

            private_moto.stop()
            wait_for(lambda: not component.ready(), timeout=10)
            wait_for(lambda: _count_warnings(caplog, "connection failed") >= 2, timeout=10)
            private_moto.start()  # same port, same queues

            publisher.send_batch(["after 1", "after 2"])
            wait_for(lambda: len(bodies) >= 4, timeout=15)
            wait_for(component.ready, timeout=5)
            assert runner.finish() is None
        assert sorted(bodies) == ["after 1", "after 2", "before 1", "before 2"]
    finally:
        with contextlib.suppress(Exception):
            sqs.delete_queue(QueueUrl=url)


def test_past_the_retries_the_service_fails_with_a_clear_error(
    private_moto: MotoServer, caplog: pytest.LogCaptureFixture
) -> None:
    sqs = boto3.client("sqs", **client_kwargs(private_moto.endpoint_url))
    url = sqs.create_queue(QueueName=f"patron-gone-{time.monotonic_ns()}")["QueueUrl"]
    component = SQSConsumer(url, lambda batch: None, endpoint_url=private_moto.endpoint_url,
                            session=session(), wait_time=1, retries=2, retry_wait=0.1)
    service = Service("sqs-gone", components=[component], default_http=False)
    with caplog.at_level(logging.WARNING):
        service.start()
        try:
            wait_for(component.ready, timeout=10)
            private_moto.stop()
            assert service.wait(20) == EXIT_FAILURE
        finally:
            service.stop()
            service.wait(20)
    assert "giving up after 3 failed connection attempt(s)" in caplog.text
    assert private_moto.endpoint_url in caplog.text  # says which endpoint it could not reach
    private_moto.start()
    sqs.delete_queue(QueueUrl=url)


def _fails_at_start(component: SQSConsumer, run: Run) -> BaseException:
    started = time.monotonic()
    error = run(component).ended(timeout=10)
    assert time.monotonic() - started < 5  # not retried
    assert isinstance(error, PermanentError)
    assert not component.ready()
    return error


@pytest.mark.parametrize("by", ["name", "url"])
def test_a_queue_that_does_not_exist_fails_the_start(
    by: str, sqs_endpoint: str, connection: dict[str, Any], run: Run
) -> None:
    queue = "patron-no-such-queue"
    if by == "url":  # not resolved: the first receive finds out
        queue = f"{sqs_endpoint}/123456789012/{queue}"
    component = SQSConsumer(queue, lambda batch: None, **connection, wait_time=1,
                            retries=5, retry_wait=5)
    error = _fails_at_start(component, run)
    assert f"SQS queue {queue!r} does not exist" in str(error)


def test_wrong_credentials_fail_the_start(
    make_queue: QueueFactory, sqs_endpoint: str, run: Run
) -> None:
    name, _url = make_queue()
    bad = boto3.session.Session(region_name=client_kwargs()["region_name"],
                                aws_access_key_id="AKIAWRONGWRONGWRONG0",
                                aws_secret_access_key="wrong")
    component = SQSConsumer(name, lambda batch: None, endpoint_url=sqs_endpoint, session=bad,
                            retries=5, retry_wait=5)
    if os.environ.get(ENV_ENDPOINT):
        checking: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:  # moto accepts any key unless told to check them (global to this process)
        checking = check_credentials(sqs_endpoint)
    with checking:
        error = _fails_at_start(component, run)
    assert "refused the credentials" in str(error)
    assert "InvalidClientTokenId" in str(error) or "SignatureDoesNotMatch" in str(error)


@pytest.mark.parametrize("endpoint", ["not a url", "localhost:4566", "ftp://127.0.0.1:1"])
def test_a_malformed_endpoint_fails_the_start(endpoint: str, run: Run) -> None:
    component = SQSConsumer("queue", lambda batch: None, endpoint_url=endpoint,
                            session=session(), retries=5, retry_wait=5)
    error = _fails_at_start(component, run)
    assert f"invalid SQS endpoint {endpoint!r}" in str(error)


def test_a_queue_deleted_while_consuming_fails_the_component(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    component = SQSConsumer(name, lambda batch: None, **connection, wait_time=1,
                            retries=5, retry_wait=5)
    runner = run(component)
    wait_for(component.ready, timeout=10)
    sqs.delete_queue(QueueUrl=url)
    error = runner.ended(timeout=15)
    assert isinstance(error, PermanentError)
    assert "does not exist" in str(error)


def test_a_failed_delete_is_retried_not_dropped(
    make_queue: QueueFactory, sqs: Any, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    _name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).send_batch(["one", "two"])
    failures = [1]

    class FlakyDeletes:
        def __getattr__(self, attr: str) -> Any:
            return getattr(sqs, attr)

        def delete_message_batch(self, **kwargs: Any) -> Any:
            if failures:
                failures.pop()
                raise ConnectionError("connection reset while deleting")
            return sqs.delete_message_batch(**kwargs)

    processed: list[bytes] = []

    def process(batch: Batch) -> None:
        processed.extend(m.body for m in batch)

    component = SQSConsumer(url, process, client=FlakyDeletes(), wait_time=1, max_messages=10,
                            retries=3, retry_wait=0.1)
    with caplog.at_level(logging.WARNING, logger="patron.sqs"):
        runner = run(component)
        wait_for(lambda: sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0" and len(processed) >= 2,
            timeout=10)
        assert runner.finish() is None
    assert sorted(processed) == [b"one", b"two"]  # processed once: the delete was retried
    assert "connection failed" in caplog.text
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages") is None
