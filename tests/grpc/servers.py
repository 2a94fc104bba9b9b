"""What the gRPC tests serve: an Echo service of every RPC kind that records what it saw."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import grpc
import opentracing

from patron import correlation
from samples.greeter_pb2 import HelloReply, HelloRequest

SERVICE = "patron.test.Echo"
SECRET = "secret-detail-4711"


def method(name: str) -> str:
    return f"/{SERVICE}/{name}"


class Seen:
    """One handler invocation, as the handler saw it."""

    def __init__(self, name: str, request: str) -> None:
        self.name = name
        self.request = request
        self.correlation_id = correlation.current()
        self.span = opentracing.global_tracer().active_span


class Echo:
    """Handlers for every RPC kind; runs in grpcio worker threads, so everything is locked.

    ``release`` ends the blocking handlers (``Block``); ``ended`` is set when a handler notices
    its RPC terminated; ``closed`` is set when a streaming handler's generator was closed.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[Seen] = []
        self.started = threading.Semaphore(0)
        self.release = threading.Event()
        self.ended = threading.Event()
        self.closed = threading.Event()

    def _record(self, name: str, request: str) -> None:
        with self.lock:
            self.seen.append(Seen(name, request))

    def calls(self, name: str) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.name == name]

    # unary --------------------------------------------------------------------------------

    def say(self, request: HelloRequest, context: Any) -> HelloReply:
        self._record("Say", request.name)
        return HelloReply(message=f"echo {request.name}")

    def fail(self, request: HelloRequest, context: Any) -> HelloReply:
        self._record("Fail", request.name)
        raise ValueError(f"boom {SECRET}")

    def abort(self, request: HelloRequest, context: Any) -> HelloReply:
        self._record("Abort", request.name)
        context.abort(grpc.StatusCode.NOT_FOUND, f"no {request.name}")
        raise AssertionError("abort() returned")

    def set_code_and_raise(self, request: HelloRequest, context: Any) -> HelloReply:
        self._record("SetCodeRaise", request.name)
        context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
        raise RuntimeError(f"bad {SECRET}")

    def slow(self, request: HelloRequest, context: Any) -> HelloReply:
        """Waits until the RPC terminates (deadline, cancel) or 10 s pass."""
        self._record("Slow", request.name)
        terminated = threading.Event()
        context.add_callback(terminated.set)
        if terminated.wait(10):
            self.ended.set()
        return HelloReply(message="late")

    def block(self, request: HelloRequest, context: Any) -> HelloReply:
        """Waits for ``release`` (or the RPC's end); says which came first."""
        self._record("Block", request.name)
        terminated = threading.Event()
        context.add_callback(terminated.set)
        context.send_initial_metadata((("started", "1"),))
        self.started.release()
        while not self.release.wait(0.02):
            if terminated.is_set():
                self.ended.set()
                return HelloReply(message="terminated")
        return HelloReply(message=f"released {request.name}")

    def big(self, request: HelloRequest, context: Any) -> HelloReply:
        self._record("Big", request.name)
        return HelloReply(message="x" * int(request.name))

    # streaming ----------------------------------------------------------------------------

    def count(self, request: HelloRequest, context: Any) -> Iterator[HelloReply]:
        """unary-stream: ``name`` replies, or endless when ``name`` is ``forever``."""
        self._record("Count", request.name)
        n = 0
        try:
            while request.name == "forever" or n < int(request.name):
                n += 1
                yield HelloReply(message=str(n))
        finally:
            self.closed.set()

    def count_then_fail(self, request: HelloRequest, context: Any) -> Iterator[HelloReply]:
        self._record("CountThenFail", request.name)
        yield HelloReply(message="1")
        raise KeyError(SECRET)

    def collect(self, requests: Iterator[HelloRequest], context: Any) -> HelloReply:
        """stream-unary: the names joined by commas."""
        names = [r.name for r in requests]
        self._record("Collect", ",".join(names))
        return HelloReply(message=",".join(names))

    def chat(self, requests: Iterator[HelloRequest], context: Any) -> Iterator[HelloReply]:
        """stream-stream: one reply per request, as they come."""
        self._record("Chat", "")
        try:
            for request in requests:
                yield HelloReply(message=f"echo {request.name}")
        finally:
            self.closed.set()

    def handler(self) -> grpc.GenericRpcHandler:
        req, rep = HelloRequest.FromString, HelloReply.SerializeToString
        unary = {
            "Say": self.say, "Fail": self.fail, "Abort": self.abort,
            "SetCodeRaise": self.set_code_and_raise, "Slow": self.slow, "Block": self.block,
            "Big": self.big,
        }
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(fn, req, rep) for name, fn in unary.items()
        }
        handlers["Count"] = grpc.unary_stream_rpc_method_handler(self.count, req, rep)
        handlers["CountThenFail"] = grpc.unary_stream_rpc_method_handler(
            self.count_then_fail, req, rep
        )
        handlers["Collect"] = grpc.stream_unary_rpc_method_handler(self.collect, req, rep)
        handlers["Chat"] = grpc.stream_stream_rpc_method_handler(self.chat, req, rep)
        return grpc.method_handlers_generic_handler(SERVICE, handlers)


class EchoStub:
    """Client callables for :class:`Echo` on ``channel``."""

    def __init__(self, channel: grpc.Channel) -> None:
        ser, des = HelloRequest.SerializeToString, HelloReply.FromString
        for name in ("Say", "Fail", "Abort", "SetCodeRaise", "Slow", "Block", "Big"):
            setattr(self, name, channel.unary_unary(method(name), ser, des))
        self.Count = channel.unary_stream(method("Count"), ser, des)
        self.CountThenFail = channel.unary_stream(method("CountThenFail"), ser, des)
        self.Collect = channel.stream_unary(method("Collect"), ser, des)
        self.Chat = channel.stream_stream(method("Chat"), ser, des)

    def __getattr__(self, name: str) -> Any:  # for mypy: the callables are set above
        raise AttributeError(name)
