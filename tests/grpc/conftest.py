"""Fixtures of the gRPC tests: real servers on ephemeral loopback ports, real clients."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from patron.grpc import GRPCComponent
from tests.grpc.helpers import Running
from tests.grpc.servers import Echo


@pytest.fixture
def echo() -> Echo:
    return Echo()


@pytest.fixture
def serve(echo: Echo) -> Iterator[Callable[..., Running]]:
    """Start GRPCComponents serving ``echo`` (plus whatever is passed); stop them all after."""
    started: list[Running] = []

    def start(**kwargs: Any) -> Running:
        kwargs.setdefault("port", 0)
        kwargs.setdefault("host", "127.0.0.1")
        kwargs.setdefault("handlers", [echo.handler()])
        running = Running(GRPCComponent(**kwargs))
        started.append(running)
        if not running.component.wait_started(10):
            running.shutdown()
            raise AssertionError(f"the component did not start: {running.error!r}")
        return running

    yield start
    echo.release.set()
    for running in started:
        running.shutdown()

