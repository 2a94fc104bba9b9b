"""The curated public surface: every name in __all__ exists, and the transports agree."""

from __future__ import annotations

import importlib

import pytest

from patron import messaging

PACKAGES = [
    "patron", "patron.http", "patron.grpc", "patron.messaging", "patron.kafka", "patron.amqp",
    "patron.sqs", "patron.testing", "patron.correlation", "patron.tracing", "patron.metrics",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("name", ["patron.kafka", "patron.amqp", "patron.sqs"])
def test_every_publisher_raises_the_shared_publish_error(name: str) -> None:
    module = importlib.import_module(name)
    assert issubclass(module.PublishError, messaging.PublishError)
