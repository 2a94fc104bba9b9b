"""A gRPC service for the SIGTERM test: ``python -m patron tests.grpc.drain_app``.

Its server-streaming ``Hold`` RPC (``/patron.test.Drain/Hold``) answers ``holding NAME`` at
once, so a client knows it is in flight, then holds until the component is told to stop (or
10 s pass), answers ``held NAME until stop`` (or ``until timeout``) and ends. So the RPCs a
test starts are certainly in flight when the server begins its graceful stop.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc

from patron import Service
from patron.grpc import GRPCComponent
from samples.greeter_pb2 import HelloReply, HelloRequest

HOLD = "/patron.test.Drain/Hold"


class _Component(GRPCComponent):
    """A GRPCComponent that tells its handlers when its stop event was set."""

    def __init__(self, stopping: threading.Event, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._stopping = stopping

    def run(self, stop: threading.Event) -> None:
        def watch() -> None:
            stop.wait()
            self._stopping.set()

        threading.Thread(target=watch, name="drain-app-watch", daemon=True).start()
        super().run(stop)


def service() -> Service:
    stopping = threading.Event()

    def hold(request: HelloRequest, context: Any) -> Iterator[HelloReply]:
        yield HelloReply(message=f"holding {request.name}")
        until = "stop" if stopping.wait(10) else "timeout"
        yield HelloReply(message=f"held {request.name} until {until}")

    handler = grpc.method_handlers_generic_handler("patron.test.Drain", {
        "Hold": grpc.unary_stream_rpc_method_handler(
            hold, HelloRequest.FromString, HelloReply.SerializeToString
        ),
    })
    drain = Service("grpc-drain-app", "1.0", default_http=False)
    drain.add_component(_Component(
        stopping, port=0, host="127.0.0.1", handlers=[handler], readiness=drain.ready, grace=10,
    ))
    return drain
