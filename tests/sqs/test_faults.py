"""The SQS consumer when the endpoint, the queue or the configuration is wrong."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from patron import EXIT_FAILURE, Service
from patron.messaging import ConnectionRetry, PermanentError, TransportError
from patron.sqs import SQSConsumer, SQSPublisher
from patron.sqs import consumer as sqs_consumer
from patron.testing.sqs import check_credentials
from tests.conftest import wait_for
from tests.messaging.proxy import Proxy
from tests.sqs.conftest import (
    ENV_ENDPOINT,
    MotoServer,
    QueueFactory,
    client_kwargs,
    counts,
    session,
)
from tests.support.components import Recorder, Runner
from tests.support.metrics import await_sample, sample

Run = Callable[[Any], Runner]

pytestmark = pytest.mark.sqs

CONNECTED = "component_consumer_connected"


@pytest.fixture
def private_moto() -> Iterator[MotoServer]:
    """A moto server of the test's own, to take away and bring back (moto's queues live in
    the process, so they survive a restart)."""
    server = MotoServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_queue(private_moto: MotoServer) -> Iterator[tuple[Any, str]]:
    """``(client, url)``: a client of ``private_moto`` and a new queue there; deleted after the
    test (with the server running again)."""
    sqs = boto3.client("sqs", **client_kwargs(private_moto.endpoint_url))
    url = sqs.create_queue(QueueName=f"patron-outage-{time.monotonic_ns()}")["QueueUrl"]
    yield sqs, url
    if not private_moto.running:
        private_moto.start()
    with contextlib.suppress(Exception):
        sqs.delete_queue(QueueUrl=url)


def _count_warnings(caplog: pytest.LogCaptureFixture, text: str) -> int:
    return sum(1 for r in caplog.records if text in r.getMessage())


def test_receive_retries_carry_the_consumer_over_an_endpoint_outage(
    private_moto: MotoServer, private_queue: tuple[Any, str], run: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs, url = private_queue
    recorder = Recorder()
    component = SQSConsumer(
        url, recorder, endpoint_url=private_moto.endpoint_url, session=session(),
        wait_time=1, max_messages=10, name="sqs-outage",
        connection_retry=ConnectionRetry(count=100, wait=0.2, backoff=1.0, jitter=0),
    )
    publisher = SQSPublisher(url, client=sqs)
    publisher.publish_batch(["before 1", "before 2"])
    with caplog.at_level(logging.WARNING, logger="patron.sqs"):
        runner = run(component)
        recorder.wait_for(2, timeout=10)
        assert component.ready()

        private_moto.stop()
        # The consumer notices (its connection gauge drops) and retries ...
        await_sample(CONNECTED, 0, timeout=10, name="sqs-outage")
        wait_for(lambda: _count_warnings(caplog, "connection failed") >= 2, timeout=10)
        private_moto.start()  # same port, same queues

        publisher.publish_batch(["after 1", "after 2"])
        recorder.wait_for(4, timeout=15)  # ... and consumes again once it is back
        await_sample(CONNECTED, 1, timeout=10, name="sqs-outage")
        assert runner.finish() is None
    assert sorted(recorder.bodies) == [b"after 1", b"after 2", b"before 1", b"before 2"]


def test_readiness_holds_while_retrying_and_drops_once_the_consumer_gave_up(
    private_moto: MotoServer, private_queue: tuple[Any, str], run: Run,
    caplog: pytest.LogCaptureFixture,
) -> None:
    sqs, url = private_queue
    recorder = Recorder()
    # 3 retries 1 s apart: seconds of slack to bring the endpoint back within them.
    component = SQSConsumer(
        url, recorder, endpoint_url=private_moto.endpoint_url, session=session(),
        wait_time=1, name="sqs-readiness",
        connection_retry=ConnectionRetry(count=3, wait=1.0, backoff=1.0, jitter=0),
    )
    publisher = SQSPublisher(url, client=sqs)
    publisher.publish("before")
    with caplog.at_level(logging.WARNING, logger="patron.sqs"):
        runner = run(component)
        recorder.wait_for(1, timeout=10)
        assert component.ready()

        private_moto.stop()
        wait_for(lambda: _count_warnings(caplog, "connection failed") >= 1, timeout=10)
        assert component.ready()  # retrying: a hiccup does not take the service out
        assert runner.thread.is_alive()
        private_moto.start()
        publisher.publish("after")
        recorder.wait_for(2, timeout=15)  # consuming again
        assert component.ready()

        private_moto.stop()  # for good this time: past the retries, it gives up
        error = runner.ended(timeout=30)
    assert isinstance(error, TransportError)
    assert not component.ready()
    assert recorder.bodies == [b"before", b"after"]


def test_past_the_retries_the_service_fails_with_a_clear_error(
    private_moto: MotoServer, private_queue: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    _sqs, url = private_queue
    component = SQSConsumer(url, lambda batch: None, endpoint_url=private_moto.endpoint_url,
                            session=session(), wait_time=1,
                            connection_retry=ConnectionRetry(count=2, wait=0.1, jitter=0))
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
    assert not component.ready()


def _fails_at_start(component: SQSConsumer, run: Run) -> BaseException:
    started = time.monotonic()
    error = run(component).ended(timeout=10)
    assert time.monotonic() - started < 5  # not retried (a retry would wait 5 s)
    assert isinstance(error, PermanentError)
    assert not component.ready()
    return error


#: connection retries a permanent failure must not use: the first one would wait 5 s
SLOW_RETRIES = ConnectionRetry(count=5, wait=5, jitter=0)


@pytest.mark.parametrize("by", ["name", "url"])
def test_a_queue_that_does_not_exist_fails_the_start(
    by: str, sqs_endpoint: str, connection: dict[str, Any], run: Run
) -> None:
    queue = "patron-no-such-queue"
    if by == "url":  # not resolved: the first receive finds out
        queue = f"{sqs_endpoint}/123456789012/{queue}"
    component = SQSConsumer(queue, lambda batch: None, **connection, wait_time=1,
                            connection_retry=SLOW_RETRIES)
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
                            connection_retry=SLOW_RETRIES)
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
                            session=session(), connection_retry=SLOW_RETRIES)
    error = _fails_at_start(component, run)
    assert f"invalid SQS endpoint {endpoint!r}" in str(error)


def test_a_queue_deleted_while_consuming_fails_the_component(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any], run: Run
) -> None:
    name, url = make_queue()
    component = SQSConsumer(name, lambda batch: None, **connection, wait_time=1,
                            connection_retry=SLOW_RETRIES)
    runner = run(component)
    wait_for(component.ready, timeout=10)
    sqs.delete_queue(QueueUrl=url)
    error = runner.ended(timeout=15)
    assert isinstance(error, PermanentError)
    assert "does not exist" in str(error)


def test_a_failed_delete_is_retried_not_dropped(
    make_queue: QueueFactory, sqs: Any, run: Run, caplog: pytest.LogCaptureFixture
) -> None:
    name, url = make_queue(VisibilityTimeout=60)
    SQSPublisher(url, client=sqs).publish_batch(["one", "two"])
    failures = [1]

    class FlakyDeletes:
        def __getattr__(self, attr: str) -> Any:
            return getattr(sqs, attr)

        def delete_message_batch(self, **kwargs: Any) -> Any:
            if failures:
                failures.pop()
                raise ConnectionError("connection reset while deleting")
            return sqs.delete_message_batch(**kwargs)

    recorder = Recorder()
    component = SQSConsumer(url, recorder, client=FlakyDeletes(), wait_time=1, max_messages=10,
                            connection_retry=ConnectionRetry(count=3, wait=0.1, jitter=0))
    with caplog.at_level(logging.WARNING, logger="patron.sqs"):
        runner = run(component)
        recorder.wait_for(2, timeout=10)
        wait_for(lambda: sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"],
        )["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "0", timeout=10)
        assert runner.finish() is None
    assert sorted(recorder.bodies) == [b"one", b"two"]  # processed once: the delete was retried
    assert not failures  # the failing delete did happen
    assert "connection failed" in caplog.text  # a failed delete is logged ...
    # ... not counted as a message error (the stop handed every count over)
    assert sample("component_sqs_message_counter_total", queue=name, state="ACK",
                  hasError="true") == 0
    assert sqs.receive_message(QueueUrl=url, WaitTimeSeconds=0).get("Messages") is None


class FailingDeletes:
    """``sqs`` with deletes that fail entry by entry while ``failing`` is set, the way SQS
    answers when it cannot serve them (``Failed`` entries without ``SenderFault``): moto cannot
    be told to fail deletes. Every other call goes to ``sqs``."""

    def __init__(self, sqs: Any) -> None:
        self._sqs = sqs
        self.failing = threading.Event()
        self.failing.set()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._sqs, attr)

    def delete_message_batch(self, **kwargs: Any) -> Any:
        if not self.failing.is_set():
            return self._sqs.delete_message_batch(**kwargs)
        return {"Successful": [], "Failed": [
            {"Id": entry["Id"], "SenderFault": False, "Code": "InternalError",
             "Message": "We encountered an internal error. Please try again."}
            for entry in kwargs["Entries"]
        ]}


def test_pending_deletes_are_bounded_and_the_consumer_gives_up_when_they_keep_failing(
    make_queue: QueueFactory, sqs: Any, run: Run, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqs_consumer, "DELETE_BACKLOG", 5)  # a shallow queue suffices
    name, url = make_queue(VisibilityTimeout=120)
    SQSPublisher(url, client=sqs).publish_batch([f"m{i}" for i in range(15)])
    recorder = Recorder()
    component = SQSConsumer(url, recorder, client=FailingDeletes(sqs), wait_time=1,
                            max_messages=1,
                            connection_retry=ConnectionRetry(count=2, wait=0.1, jitter=0))
    with caplog.at_level(logging.INFO, logger="patron.sqs"):
        error = run(component).ended(timeout=30)
    assert isinstance(error, TransportError), error
    assert "5 processed message(s) wait for their delete" in str(error), error
    assert "InternalError" in str(error)
    # It stopped receiving at the bound: five processed, the rest never received ...
    assert len(recorder.bodies) == 5
    # ... and nothing processed is lost: the five are still in the queue, to come back once
    # their visibility timeout ends.
    assert counts(sqs, url) == {"available": 10, "invisible": 5, "delayed": 0}
    messages = [r.getMessage() for r in caplog.records]
    assert sum("deleting" in m and "failed" in m for m in messages) == 1, messages  # not per batch
    assert sum("could not be deleted" in m for m in messages) == 1, messages
    assert sum("retry" in m and "wait for their delete" in m for m in messages) == 2, messages
    assert sample("component_sqs_message_counter_total", queue=name, state="ACK",
                  hasError="false") == 5


def test_receiving_resumes_once_deletes_go_through_again_and_nothing_runs_twice(
    make_queue: QueueFactory, sqs: Any, run: Run, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sqs_consumer, "DELETE_BACKLOG", 5)
    _name, url = make_queue(VisibilityTimeout=120)
    sent = [f"m{i}" for i in range(12)]
    SQSPublisher(url, client=sqs).publish_batch(sent[:10])
    SQSPublisher(url, client=sqs).publish_batch(sent[10:])
    client = FailingDeletes(sqs)
    recorder = Recorder()
    component = SQSConsumer(
        url, recorder, client=client, wait_time=1, max_messages=1,
        connection_retry=ConnectionRetry(count=100, wait=0.1, backoff=1.0, jitter=0),
    )
    with caplog.at_level(logging.INFO, logger="patron.sqs"):
        runner = run(component)
        wait_for(lambda: _count_warnings(caplog, "wait for their delete") >= 1, timeout=15)
        assert len(recorder.bodies) == 5
        client.failing.clear()
        recorder.wait_for(len(sent), timeout=20)
        wait_for(lambda: counts(sqs, url) == {"available": 0, "invisible": 0, "delayed": 0},
                 timeout=10)
        assert runner.finish() is None
    assert sorted(recorder.bodies) == sorted(s.encode() for s in sent)  # each once
    assert _count_warnings(caplog, "deletes go through again") == 1


def test_a_receive_on_a_silent_connection_is_cut_off_soon_after_its_wait(
    make_queue: QueueFactory, sqs_endpoint: str, run: Run, caplog: pytest.LogCaptureFixture,
) -> None:
    if os.environ.get(ENV_ENDPOINT):
        pytest.skip("puts a proxy in front of the endpoint: runs against moto only")
    name, _url = make_queue()
    endpoint = urllib.parse.urlsplit(sqs_endpoint)
    with Proxy((endpoint.hostname or "127.0.0.1", endpoint.port or 80)) as proxy:
        boto = session()
        sent: list[float] = []  # when each call to SQS was sent
        boto.events.register("before-send.sqs", lambda **kwargs: sent.append(time.monotonic()))
        # Quick reconnections: after the freeze a call is always under way or about to be.
        component = SQSConsumer(
            name, Recorder(), endpoint_url=f"http://127.0.0.1:{proxy.port}", session=boto,
            wait_time=1,
            connection_retry=ConnectionRetry(count=100, wait=0.1, backoff=1.0, jitter=0),
        )
        runner = run(component)
        wait_for(component.ready, timeout=10)
        proxy.freeze()  # the endpoint goes silent, connections stay open
        frozen = time.monotonic()
        # A call sent into the silence: the one before it was cut off in time.
        wait_for(lambda: sent[-1] > frozen, timeout=10)
        # The stop waits for that call: cut off 3 s after a receive's 1 s wait, not after 30 s.
        started = time.monotonic()
        assert runner.finish(timeout=15) is None
    assert time.monotonic() - started < 15
    assert any("Read timeout" in r.getMessage() for r in caplog.records)
