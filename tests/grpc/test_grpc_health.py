"""The grpc.health.v1 service: tied to readiness, NOT_SERVING during drain and shutdown."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from patron import Config, Service
from patron.grpc import GRPCComponent
from samples.greeter_pb2 import HelloRequest
from tests.conftest import wait_for
from tests.grpc.helpers import Running
from tests.grpc.servers import Echo, EchoStub

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
Serve = Callable[..., Running]


def check(ch: grpc.Channel, service: str = "") -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return int(stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status)


def test_check_follows_readiness_for_the_server_and_each_service(serve: Serve) -> None:
    ready = threading.Event()
    ready.set()
    running = serve(readiness=ready.is_set)
    with running.channel() as ch:
        assert check(ch) == SERVING
        assert check(ch, "patron.test.Echo") == SERVING
        ready.clear()
        assert check(ch) == NOT_SERVING  # Check refreshes: no waiting for the next poll
        assert check(ch, "patron.test.Echo") == NOT_SERVING
        ready.set()
        assert check(ch) == SERVING
        with pytest.raises(grpc.RpcError) as info:
            check(ch, "no.such.Service")
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert running.component.ready()


def test_without_readiness_the_server_is_serving_while_it_runs(serve: Serve) -> None:
    running = serve()
    with running.channel() as ch:
        assert check(ch) == SERVING


def test_watch_sees_readiness_changes(serve: Serve) -> None:
    ready = threading.Event()
    ready.set()
    running = serve(readiness=ready.is_set, health_interval=0.05)
    with running.channel() as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        watch = stub.Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert next(watch).status == SERVING
        ready.clear()
        assert next(watch).status == NOT_SERVING
        ready.set()
        assert next(watch).status == SERVING
        watch.cancel()


def test_readiness_that_raises_means_not_serving_and_is_logged_once(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="patron.grpc")

    def broken() -> bool:
        raise OSError("probe broke")

    running = serve(readiness=broken)
    with running.channel() as ch:
        assert [check(ch) for _ in range(3)] == [NOT_SERVING] * 3
    warnings = [r for r in caplog.records if "readiness callable raised" in r.getMessage()]
    assert len(warnings) == 1


def test_stop_ends_watch_streams_instead_of_waiting_out_the_grace(serve: Serve) -> None:
    running = serve(grace=60)
    with running.channel() as ch:
        watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(), timeout=30)
        assert next(watch).status == SERVING
        running.shutdown(timeout=10)  # fails if the open Watch held the stop for the 60 s grace
        rest = [reply.status for reply in watch]  # ends without error
    assert rest == [NOT_SERVING]


def test_health_is_not_serving_during_the_services_drain(echo: Echo) -> None:
    service = Service("grpc-drain", "1", default_http=False, handle_signals=False,
                      config=Config(drain_delay=1.0, log_level="WARNING"))
    component = GRPCComponent(0, host="127.0.0.1", handlers=[echo.handler()],
                              readiness=service.ready)
    service.add_component(component)
    service.start()
    try:
        assert component.wait_started(10)
        with grpc.insecure_channel(f"127.0.0.1:{component.port}") as ch:
            wait_for(lambda: check(ch) == SERVING, timeout=5)
            service.stop()
            wait_for(lambda: check(ch) == NOT_SERVING, timeout=5)
            # Still draining: the server answers RPCs while probes steer traffic away.
            assert EchoStub(ch).Say(HelloRequest(name="drain"), timeout=5).message == "echo drain"
            assert service.wait(0) is None
    finally:
        service.stop()
        assert service.wait(15) == 0


def test_component_is_not_ready_before_it_runs_nor_after_it_stopped(serve: Serve) -> None:
    component = GRPCComponent(0, host="127.0.0.1")
    assert not component.ready()
    running = serve()
    assert running.component.ready()
    running.shutdown()
    assert not running.component.ready()

