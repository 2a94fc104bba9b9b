"""Fixtures for the SQS tests: an endpoint (moto's server, or ``PATRON_TEST_SQS_ENDPOINT``),
a boto3 client, unique queues deleted after the test, and queue helpers.

Components run with the shared ``run`` fixture (``tests/conftest.py``); processors that record
what they got are :class:`tests.support.components.Recorder`.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import pytest

from patron.testing.sqs import ENV_ENDPOINT, MotoServer, client_kwargs, sqs_endpoint

__all__ = [
    "ENV_ENDPOINT",
    "MotoServer",
    "QueueFactory",
    "client_kwargs",
    "counts",
    "drain",
    "session",
    "sqs_endpoint",
]


def session() -> Any:
    """A boto3 session with the environment's region and credentials, or moto's dummy ones."""
    kwargs = client_kwargs()
    return boto3.session.Session(
        region_name=kwargs["region_name"],
        aws_access_key_id=kwargs.get("aws_access_key_id"),
        aws_secret_access_key=kwargs.get("aws_secret_access_key"),
    )


@pytest.fixture
def connection(sqs_endpoint: str) -> dict[str, Any]:
    """``endpoint_url`` and ``session`` for a consumer or publisher that makes its own client."""
    return {"endpoint_url": sqs_endpoint, "session": session()}


@pytest.fixture(scope="session")
def serial_sqs_endpoint(sqs_endpoint: str) -> Iterator[str]:
    """An endpoint for tests with several pollers that count deliveries exactly: a second moto
    server that handles one request at a time (``MotoServer(serial=True)``: moto's SQS is not
    thread-safe), or the real endpoint, when one is set. moto keeps its queues in
    process-global state, so queues made through ``sqs_endpoint`` are reachable here by name.
    """
    if os.environ.get(ENV_ENDPOINT, "").strip():
        yield sqs_endpoint
        return
    with MotoServer(serial=True) as server:
        yield server.endpoint_url


@pytest.fixture
def sqs(sqs_endpoint: str) -> Any:
    """A boto3 SQS client for the endpoint (default retries; for the test's own calls)."""
    return boto3.client("sqs", **client_kwargs(sqs_endpoint))


QueueFactory = Callable[..., tuple[str, str]]


@pytest.fixture
def make_queue(sqs: Any) -> Iterator[QueueFactory]:
    """``make_queue(**attributes) -> (name, url)``: a queue with a unique name; deleted at the
    end of the test. Attribute values may be ints (turned into text)."""
    urls: list[str] = []

    def make(prefix: str = "t", **attributes: Any) -> tuple[str, str]:
        name = f"patron-{prefix}-{uuid.uuid4().hex[:12]}"
        fifo = attributes.get("FifoQueue") in (True, "true")
        if fifo:
            name += ".fifo"
        url = sqs.create_queue(
            QueueName=name, Attributes={k: str(v).lower() if isinstance(v, bool) else str(v)
                                        for k, v in attributes.items()},
        )["QueueUrl"]
        urls.append(url)
        return name, url

    yield make
    for url in urls:
        with contextlib.suppress(sqs.exceptions.QueueDoesNotExist):
            sqs.delete_queue(QueueUrl=url)


def counts(sqs: Any, url: str) -> dict[str, int]:
    """The queue's approximate numbers of available, invisible and delayed messages."""
    attributes = sqs.get_queue_attributes(
        QueueUrl=url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible",
                        "ApproximateNumberOfMessagesDelayed"],
    )["Attributes"]
    return {
        "available": int(attributes["ApproximateNumberOfMessages"]),
        "invisible": int(attributes["ApproximateNumberOfMessagesNotVisible"]),
        "delayed": int(attributes["ApproximateNumberOfMessagesDelayed"]),
    }


def drain(sqs: Any, url: str) -> list[dict[str, Any]]:
    """Receive (and delete) every message available right now."""
    got: list[dict[str, Any]] = []
    while True:
        items = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=0,
            MessageAttributeNames=["All"], AttributeNames=["All"],
        ).get("Messages", [])
        if not items:
            return got
        got.extend(items)
        sqs.delete_message_batch(QueueUrl=url, Entries=[
            {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(items)
        ])
