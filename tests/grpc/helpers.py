"""Helpers of the gRPC tests: metric samples, span tags, a component running in a thread."""

from __future__ import annotations

import threading
from typing import Any

import grpc
from prometheus_client import REGISTRY

from patron.grpc import GRPCComponent


def metric(name: str, **labels: str) -> float:
    """The current value of one sample of the default registry (0 when absent)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0


def handled(
    code: str, method: str, service: str = "patron.test.Echo", kind: str = "unary"
) -> float:
    """``component_grpc_handled_total`` for one label set."""
    return metric("component_grpc_handled_total", grpc_type=kind, grpc_service=service,
                  grpc_method=method, grpc_code=code)


class Running:
    """A GRPCComponent running in a thread of its own, as a Service would run it."""

    def __init__(self, component: GRPCComponent) -> None:
        self.component = component
        self.stop_event = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-grpc-component")
        self.thread.start()

    def _run(self) -> None:
        try:
            self.component.run(self.stop_event)
        except BaseException as exc:
            self.error = exc

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.component.port}"

    def channel(self, **kwargs: Any) -> grpc.Channel:
        return grpc.insecure_channel(self.address, **kwargs)

    def stop(self, timeout: float = 15.0) -> None:
        """Set the stop event and wait for ``run`` to return; fail if it does not."""
        self.stop_event.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the component did not stop"


def span_tags(span: Any) -> dict[str, object]:
    """A Jaeger span's tags as a plain dict."""
    values: dict[str, object] = {}
    for tag in span.tags:
        for value in (tag.vStr, tag.vBool, tag.vLong, tag.vDouble):
            if value is not None:
                values[tag.key] = value
                break
    return values
