"""Helpers of the gRPC tests: metric samples, span tags, a component running in a thread."""

from __future__ import annotations

from typing import Any

import grpc

from patron.grpc import GRPCComponent
from tests.support.components import Runner
from tests.support.metrics import sample as metric


def handled(
    code: str, method: str, service: str = "patron.test.Echo", kind: str = "unary"
) -> float:
    """``component_grpc_handled_total`` for one label set."""
    return metric("component_grpc_handled_total", grpc_type=kind, grpc_service=service,
                  grpc_method=method, grpc_code=code)


class Running(Runner):
    """A GRPCComponent running in a thread of its own, as a Service would run it."""

    component: GRPCComponent

    def __init__(self, component: GRPCComponent) -> None:
        super().__init__(component, name="test-grpc-component")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.component.port}"

    def channel(self, **kwargs: Any) -> grpc.Channel:
        return grpc.insecure_channel(self.address, **kwargs)

    def shutdown(self, timeout: float = 15.0) -> None:
        """Set the stop event and wait for ``run`` to return; fail if it does not."""
        self.finish(timeout)

