"""The SQS publisher: publishes, batches, headers within SQS's limits, metrics, errors."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.exceptions
import pytest

from patron import Service, correlation, tracing
from patron.messaging import Batch
from patron.sqs import MAX_ATTRIBUTES, Outgoing, PublishError, SQSConsumer, SQSPublisher
from patron.testing.sqs import check_credentials
from tests.conftest import free_port
from tests.sqs.conftest import (
    ENV_ENDPOINT,
    MotoServer,
    QueueFactory,
    client_kwargs,
    drain,
    session,
)
from tests.support.jaeger import SpanCapture
from tests.support.metrics import sample

pytestmark = pytest.mark.sqs


def _attributes(item: dict[str, Any]) -> dict[str, Any]:
    return item.get("MessageAttributes", {})


def test_publish_returns_the_message_id_and_carries_the_correlation_id(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any]
) -> None:
    name, url = make_queue()
    publisher = SQSPublisher(name, **connection)  # by name, resolved on first use
    with correlation.correlation_id("corr-pub-1"):
        message_id = publisher.publish("hello", headers={"kind": "greeting"})
    assert publisher.queue_url == url
    [item] = drain(sqs, url)
    assert item["MessageId"] == message_id
    assert item["Body"] == "hello"
    attributes = _attributes(item)
    assert attributes["X-Correlation-Id"] == {"DataType": "String",
                                              "StringValue": "corr-pub-1"}
    assert attributes["kind"]["StringValue"] == "greeting"


def test_without_a_correlation_id_each_message_gets_a_new_one(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue()
    SQSPublisher(url, client=sqs).publish_batch(["a", "b"])
    ids = {_attributes(m)["X-Correlation-Id"]["StringValue"] for m in drain(sqs, url)}
    assert len(ids) == 2 and all(len(i) == 36 for i in ids)


def test_publish_batch_chunks_and_returns_the_ids_in_order(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue()
    bodies = [f"message {i}" for i in range(25)]  # three SendMessageBatch calls
    ids = SQSPublisher(url, client=sqs).publish_batch(
        [bodies[0].encode(), *bodies[1:5], *(Outgoing(b) for b in bodies[5:])]
    )
    assert len(ids) == 25
    by_id = {m["MessageId"]: m["Body"] for m in drain(sqs, url)}
    assert [by_id[i] for i in ids] == bodies


def test_publish_batch_names_the_entries_sqs_refused(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue()
    with pytest.raises(PublishError) as caught:
        SQSPublisher(url, client=sqs).publish_batch(
            ["ok 0", Outgoing("too late", delay=901), "ok 2"]
        )
    error = caught.value
    assert [f[0] for f in error.failures] == [1]
    assert "DelaySeconds" in error.failures[0][2]
    assert error.message_ids[1] is None and all(error.message_ids[i] for i in (0, 2))
    assert sorted(m["Body"] for m in drain(sqs, url)) == ["ok 0", "ok 2"]  # the others went


def test_a_batch_call_failing_after_others_went_says_which_went(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue()
    calls = [0]

    class SecondCallFails:
        def __getattr__(self, attr: str) -> Any:
            return getattr(sqs, attr)

        def send_message_batch(self, **kwargs: Any) -> Any:
            calls[0] += 1
            if calls[0] == 2:
                raise ConnectionError("connection reset")
            return sqs.send_message_batch(**kwargs)

    with pytest.raises(PublishError) as caught:
        SQSPublisher(url, client=SecondCallFails()).publish_batch([f"m{i}" for i in range(25)])
    error = caught.value
    assert [f[0] for f in error.failures] == list(range(10, 25))  # the second call and after
    assert all(error.message_ids[:10]) and not any(error.message_ids[10:])
    # the batch's error wraps the failed call's PublishError, which wraps the client's error
    assert isinstance(error.__cause__, PublishError)
    assert isinstance(error.__cause__.__cause__, ConnectionError)
    assert len(drain(sqs, url)) == 10


def test_the_callers_attributes_come_first_within_the_limit_of_ten(
    make_queue: QueueFactory, sqs: Any, caplog: pytest.LogCaptureFixture
) -> None:
    _name, url = make_queue()
    publisher = SQSPublisher(url, client=sqs)
    nine = {f"a{i}": str(i) for i in range(MAX_ATTRIBUTES - 1)}
    ten = {f"a{i}": str(i) for i in range(MAX_ATTRIBUTES)}
    own = {"x-correlation-id": "mine"}
    with caplog.at_level(logging.WARNING, logger="patron.sqs"), \
            correlation.correlation_id("corr-limit"):
        publisher.publish("nine", headers=nine)
        publisher.publish("ten", headers=ten)
        publisher.publish("ten again", headers=ten)
        publisher.publish("own", headers=own)
    got = {m["Body"]: _attributes(m) for m in drain(sqs, url)}
    assert got["nine"]["X-Correlation-Id"]["StringValue"] == "corr-limit"
    assert len(got["nine"]) == 10
    assert set(got["ten"]) == set(ten)
    assert got["own"] == {"x-correlation-id": {"DataType": "String", "StringValue": "mine"}}
    warnings = [r for r in caplog.records if "left out X-Correlation-Id" in r.getMessage()]
    assert len(warnings) == 1  # once per publisher


def test_injected_attributes_never_push_a_message_over_256_kib(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue(MaximumMessageSize=256 * 1024)
    publisher = SQSPublisher(url, client=sqs)
    near = "n" * (256 * 1024 - 10)  # fits alone, not with a correlation id
    publisher.publish(near)
    publisher.publish("small")
    got = {m["Body"][:5]: _attributes(m) for m in drain(sqs, url)}
    assert got["nnnnn"] == {}
    assert "X-Correlation-Id" in got["small"]


def test_a_body_over_the_queues_limit_is_refused_with_the_reason(
    make_queue: QueueFactory, sqs: Any
) -> None:
    _name, url = make_queue(MaximumMessageSize=1024)
    with pytest.raises(PublishError, match="shorter than 1024 bytes") as caught:
        SQSPublisher(url, client=sqs).publish("x" * 1025)
    [(index, _code, _text, sender_fault)] = caught.value.failures
    assert index == 0 and sender_fault  # SQS blamed the message: sending it again cannot help
    assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)


def test_publish_duration_metric_by_success(
    make_queue: QueueFactory, sqs: Any
) -> None:
    name, url = make_queue()
    publisher = SQSPublisher(url, client=sqs)
    publisher.publish("one")
    publisher.publish_batch(["two", "three"])
    # a publisher observes each call as it returns: nothing to wait for
    assert sample("client_sqs_publish_duration_seconds_count", queue=name,
                  success="true") == 2
    sqs.delete_queue(QueueUrl=url)
    with pytest.raises(PublishError):
        publisher.publish("into the void")
    assert sample("client_sqs_publish_duration_seconds_count", queue=name,
                  success="false") == 1


def test_a_queue_that_does_not_exist_is_reported(connection: dict[str, Any]) -> None:
    publisher = SQSPublisher("patron-no-such-queue", **connection)
    with pytest.raises(PublishError, match="does not exist") as caught:
        publisher.publish("lost?")
    assert caught.value.message_ids == []  # nothing went
    assert isinstance(caught.value.__cause__, botocore.exceptions.ClientError)


@pytest.mark.parametrize(("body", "attributes", "error"), [
    ("", None, ValueError),
    (b"\xff\xfe", None, ValueError),
    (12, None, TypeError),
    ("x", {"flag": True}, TypeError),
    ("x", {"n": float("nan")}, ValueError),
    ("x", {"d": {"StringValue": "no type"}}, ValueError),
    ("x", {"o": object()}, TypeError),
])
def test_bad_input_is_refused_before_sending(
    body: Any, attributes: Any, error: type[Exception], sqs: Any
) -> None:
    publisher = SQSPublisher("http://127.0.0.1:1/123456789012/never-contacted", client=sqs)
    with pytest.raises(error):
        publisher.publish(body, headers=attributes)


def test_trace_context_flows_from_publisher_to_consumer(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any]
) -> None:
    name, url = make_queue()
    processed = threading.Event()

    def process(batch: Batch) -> None:
        processed.set()

    consumer = SQSConsumer(name, process, **connection, wait_time=1)
    with SpanCapture() as capture:
        service = Service("sqs-trace", components=[consumer], default_http=False,
                          config=capture.config())
        service.start()
        try:
            with tracing.start_span("test root"):
                SQSPublisher(url, client=sqs).publish("traced")
            assert processed.wait(10)
        finally:
            service.stop()
            assert service.wait(20) == 0
        spans = {s.operation: s for s in capture.spans(count=3)}
    root, publish = spans["test root"], spans[f"{name} publish"]
    process_span = spans[f"{name} process"]
    assert publish.trace_id_low == root.trace_id_low == process_span.trace_id_low
    assert publish.parent_span_id == root.span_id
    assert publish.tags.get("message_bus.destination") == name
    assert process_span.parent_span_id == publish.span_id
    assert process_span.tags.get("component") == "sqs"


def test_a_publisher_is_shared_by_threads(make_queue: QueueFactory, sqs: Any) -> None:
    _name, url = make_queue()
    publisher = SQSPublisher(url, client=sqs)
    errors: list[BaseException] = []

    def publish(n: int) -> None:
        try:
            for i in range(5):
                publisher.publish(f"t{n}-{i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert sorted(m["Body"] for m in drain(sqs, url)) == sorted(
        f"t{n}-{i}" for n in range(4) for i in range(5))


def test_refused_credentials_raise_publish_error(
    make_queue: QueueFactory, sqs_endpoint: str
) -> None:
    name, _url = make_queue()
    bad = boto3.session.Session(region_name=client_kwargs()["region_name"],
                                aws_access_key_id="AKIAWRONGWRONGWRONG0",
                                aws_secret_access_key="wrong")
    publisher = SQSPublisher(name, endpoint_url=sqs_endpoint, session=bad, publish_timeout=5)
    if os.environ.get(ENV_ENDPOINT):
        checking: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    else:  # moto accepts any key unless told to check them (global to this process)
        checking = check_credentials(sqs_endpoint)
    with checking, pytest.raises(PublishError) as caught:
        publisher.publish("who goes there?")
    [(_index, code, _text, sender_fault)] = caught.value.failures
    assert code in {"InvalidClientTokenId", "SignatureDoesNotMatch"}
    assert sender_fault


@pytest.fixture
def stopped_moto() -> Iterator[str]:
    """The endpoint of a moto server that was started, then stopped: nothing listens there."""
    server = MotoServer().start()
    server.stop()
    yield server.endpoint_url


@pytest.mark.parametrize("endpoint", ["stopped moto", "free port"])
def test_an_unreachable_endpoint_raises_publish_error_within_the_timeout(
    endpoint: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    if endpoint == "stopped moto":
        url: str = request.getfixturevalue("stopped_moto")
    else:
        url = f"http://127.0.0.1:{free_port()}"
    closed: list[bool] = []
    queue_url = f"{url}/123456789012/patron-unreachable"
    with SQSPublisher(queue_url, endpoint_url=url, session=session(),
                      publish_timeout=1) as publisher:
        close = publisher.client.close

        def recording_close() -> None:
            closed.append(True)
            close()

        monkeypatch.setattr(publisher.client, "close", recording_close)
        # Connection refused is transient: retried until publish_timeout, then PublishError.
        # The bound is generous: the machine may be busy; without the deadline this would
        # retry for ever (or raise botocore's error at once).
        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            publisher.publish("anyone there?")
        assert time.monotonic() - started < 10
        assert isinstance(caught.value.__cause__, botocore.exceptions.EndpointConnectionError)
        [(index, code, _text, sender_fault)] = caught.value.failures
        assert (index, code, sender_fault) == (0, "EndpointConnectionError", False)

        started = time.monotonic()
        with pytest.raises(PublishError) as caught:
            publisher.publish_batch(["a", "b"])
        assert time.monotonic() - started < 10
        assert [f[0] for f in caught.value.failures] == [0, 1]  # says none went
        assert caught.value.message_ids == [None, None]
        assert not closed
    assert closed == [True]  # leaving the block closed the client it made

    # By name: resolving the queue's URL fails the same way.
    with SQSPublisher("patron-unreachable", endpoint_url=url, session=session(),
                      publish_timeout=1) as by_name:
        started = time.monotonic()
        with pytest.raises(PublishError, match="get_queue_url"):
            by_name.publish("anyone there?")
        assert time.monotonic() - started < 10


def test_a_publisher_leaves_an_injected_client_open(
    make_queue: QueueFactory, sqs: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    _name, url = make_queue()
    closed: list[bool] = []
    monkeypatch.setattr(sqs, "close", lambda: closed.append(True))
    with SQSPublisher(url, client=sqs) as publisher:
        publisher.publish("one")
    assert not closed  # the caller's client: the caller closes it
    assert [m["Body"] for m in drain(sqs, url)] == ["one"]
