"""patron.grpc.channel: correlation id, trace context and duration metric on every call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest

from patron import correlation
from patron.grpc import channel
from samples.greeter_pb2 import HelloRequest
from tests.conftest import free_port, wait_for
from tests.grpc.helpers import Running, metric
from tests.grpc.servers import Echo, EchoStub
from tests.support.jaeger import span_tags

Serve = Callable[..., Running]


def client_calls(target: str, method: str, code: str, kind: str = "unary") -> float:
    return metric("client_grpc_rpc_duration_seconds_count", grpc_type=kind, grpc_target=target,
                  grpc_method=f"/patron.test.Echo/{method}", grpc_code=code)


def test_calls_carry_the_current_correlation_id_or_a_new_one(serve: Serve, echo: Echo) -> None:
    running = serve()
    with channel(running.address) as ch:
        stub = EchoStub(ch)
        with correlation.correlation_id("corr-client"):
            stub.Say(HelloRequest(name="scoped"), timeout=5)
            list(stub.Count(HelloRequest(name="1"), timeout=5))
        stub.Say(HelloRequest(name="unscoped"), timeout=5)
        stub.Say(HelloRequest(name="explicit"), metadata=(("x-correlation-id", "mine"),),
                 timeout=5)

    by_request = {seen.request: seen.correlation_id for seen in echo.seen}
    assert by_request["scoped"] == "corr-client"
    assert by_request["1"] == "corr-client"
    assert by_request["explicit"] == "mine"
    fresh = by_request["unscoped"]
    assert fresh is not None and len(fresh) == 36 and fresh != "corr-client"


def test_duration_metric_counts_every_kind_and_outcome(serve: Serve) -> None:
    running = serve()
    target = running.address
    expected = [("Say", "OK", "unary"), ("Fail", "Internal", "unary"),
                ("Count", "OK", "stream"), ("Collect", "OK", "stream"), ("Chat", "OK", "stream")]
    before = {key: client_calls(target, *key) for key in expected}

    with channel(target) as ch:
        stub = EchoStub(ch)
        assert stub.Say.future(HelloRequest(name="f"), timeout=5).result().message == "echo f"
        with pytest.raises(grpc.RpcError):
            stub.Fail(HelloRequest(name="x"), timeout=5)
        assert len(list(stub.Count(HelloRequest(name="2"), timeout=5))) == 2
        stub.Collect(iter([HelloRequest(name="a")]), timeout=5)
        assert len(list(stub.Chat(iter([HelloRequest(name="b")]), timeout=5))) == 1

        # Futures and streams are timed when grpcio reports their end, in its own thread.
        wait_for(lambda: all(client_calls(target, *k) == v + 1 for k, v in before.items()),
                 timeout=5)


def test_unreachable_target_is_counted_unavailable() -> None:
    target = f"127.0.0.1:{free_port()}"
    before = client_calls(target, "Say", "Unavailable")
    with channel(target) as ch, pytest.raises(grpc.RpcError) as info:
        EchoStub(ch).Say(HelloRequest(name="x"), timeout=5)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    assert client_calls(target, "Say", "Unavailable") == before + 1


def test_client_span_is_a_child_of_the_active_span_and_marks_failures(
    serve: Serve, tracer: Any
) -> None:
    running = serve()
    with channel(running.address) as ch, tracer.start_active_span("caller") as scope:
        stub = EchoStub(ch)
        stub.Say(HelloRequest(name="ok"), timeout=5)
        with pytest.raises(grpc.RpcError):
            stub.Fail(HelloRequest(name="x"), timeout=5)

    spans = {s.operation_name: s for s in tracer.reporter.get_spans()}
    ok, failed = spans["gRPC-client /patron.test.Echo/Say"], spans[
        "gRPC-client /patron.test.Echo/Fail"]
    assert ok.context.parent_id == failed.context.parent_id == scope.span.context.span_id
    assert span_tags(ok)["span.kind"] == "client"
    assert "error" not in span_tags(ok)
    assert span_tags(failed)["error"] is True
    assert span_tags(failed)["grpc.code"] == "Internal"


def test_user_interceptors_see_patrons_metadata(serve: Serve, tracer: Any) -> None:
    seen: list[dict[str, str]] = []

    class Recording(grpc.UnaryUnaryClientInterceptor):
        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            seen.append(dict(details.metadata))
            return continuation(details, request)

    running = serve()
    with channel(running.address, interceptors=[Recording()]) as ch:
        EchoStub(ch).Say(HelloRequest(name="x"), timeout=5)

    (metadata,) = seen
    assert "x-correlation-id" in metadata
    assert "uber-trace-id" in metadata


def test_wait_for_ready_survives_patrons_rewrite_of_the_call(serve: Serve) -> None:
    port = free_port()
    with channel(f"127.0.0.1:{port}") as ch:
        stub = EchoStub(ch)
        with pytest.raises(grpc.RpcError) as info:  # nothing listens yet: fails at once
            stub.Say(HelloRequest(name="early"), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        waiting = stub.Say.future(HelloRequest(name="w"), timeout=20, wait_for_ready=True)
        assert not waiting.done()
        serve(port=port)
        assert waiting.result(20).message == "echo w"
