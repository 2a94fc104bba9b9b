"""The curated public surface: every name in __all__ exists, and the transports do not drift
apart: same modules, same public names, same shared options with the same defaults."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from types import ModuleType

import pytest

from patron import messaging
from patron.messaging._consumer import Consumer
from patron.messaging._publisher import Publisher

PACKAGES = [
    "patron", "patron.http", "patron.grpc", "patron.messaging", "patron.kafka", "patron.amqp",
    "patron.sqs", "patron.testing", "patron.correlation", "patron.tracing", "patron.metrics",
    "patron.component",
]

#: transport package -> (class prefix, its own public names beyond the shared ones)
TRANSPORTS = {
    "kafka": ("Kafka", {"DeliveryCallback", "DeliveryReport"}),
    "amqp": ("AMQP", {"QueueDeclaration"}),
    "sqs": ("SQS", {"MAX_ATTRIBUTES", "Outgoing"}),
}
#: keyword options every consumer takes, with one meaning and one default
SHARED_CONSUMER_OPTIONS = (
    "batch_size", "batch_timeout", "failure", "processing_retry", "connection_retry",
    "concurrency", "stats_interval", "connect_timeout", "name",
)
SHARED_PUBLISHER_OPTIONS = ("publish_timeout", "connect_timeout")


def transport(package: str) -> ModuleType:
    return importlib.import_module(f"patron.{package}")


def classes(package: str) -> tuple[type, type, type]:
    prefix, _ = TRANSPORTS[package]
    module = transport(package)
    return (getattr(module, f"{prefix}Consumer"), getattr(module, f"{prefix}Publisher"),
            getattr(module, f"{prefix}Message"))


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_exists(name: str) -> None:
    module = importlib.import_module(name)
    missing = [n for n in getattr(module, "__all__", ()) if not hasattr(module, n)]
    assert missing == []


@pytest.mark.parametrize("package", TRANSPORTS)
def test_every_transport_package_has_the_same_modules(package: str) -> None:
    folder = Path(transport(package).__file__ or "").parent
    assert {path.name for path in folder.glob("*.py")} == {
        "__init__.py", "consumer.py", "publisher.py", "_client.py",
    }


@pytest.mark.parametrize("package", TRANSPORTS)
def test_every_transport_exports_the_same_names_plus_its_own(package: str) -> None:
    prefix, extras = TRANSPORTS[package]
    shared = {f"{prefix}Consumer", f"{prefix}Publisher", f"{prefix}Message", "PublishError"}
    assert set(transport(package).__all__) == shared | extras


@pytest.mark.parametrize("package", TRANSPORTS)
def test_every_transport_builds_on_the_shared_classes(package: str) -> None:
    consumer, publisher, message = classes(package)
    assert issubclass(consumer, Consumer)
    assert issubclass(publisher, Publisher)
    assert issubclass(message, messaging.Message)
    assert issubclass(transport(package).PublishError, messaging.PublishError)


def keyword_defaults(function: object, names: tuple[str, ...]) -> dict[str, object]:
    parameters = inspect.signature(function).parameters  # type: ignore[arg-type]
    missing = [n for n in names if n not in parameters]
    assert missing == [], f"{function} lacks {missing}"
    assert all(parameters[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)
    return {n: parameters[n].default for n in names}


def test_consumers_share_their_options_with_the_same_defaults() -> None:
    defaults = {package: keyword_defaults(classes(package)[0], SHARED_CONSUMER_OPTIONS)
                for package in TRANSPORTS}
    assert defaults["kafka"] == defaults["amqp"] == defaults["sqs"]
    for package in TRANSPORTS:
        parameters = inspect.signature(classes(package)[0]).parameters
        assert parameters["processor"].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        assert not {"retries", "retry_wait", "pollers"} & set(parameters)


def test_publishers_share_their_options_and_methods() -> None:
    defaults = {package: keyword_defaults(classes(package)[1], SHARED_PUBLISHER_OPTIONS)
                for package in TRANSPORTS}
    assert defaults["kafka"] == defaults["amqp"] == defaults["sqs"]
    for package in TRANSPORTS:
        publisher = classes(package)[1]
        for method in ("publish", "close", "__enter__", "__exit__"):
            assert callable(getattr(publisher, method, None)), f"{publisher.__name__}.{method}"
        parameters = inspect.signature(publisher.publish).parameters
        assert "body" in parameters
        assert parameters["headers"].kind is inspect.Parameter.KEYWORD_ONLY
        assert parameters["headers"].default is None
    assert callable(classes("kafka")[1].publish_async)
    assert callable(classes("sqs")[1].publish_batch)
