"""SIGTERM with RPCs in flight, against a service process in its own session."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from samples.greeter_pb2 import HelloReply, HelloRequest
from tests.conftest import ServiceProcess, wait_for
from tests.grpc.drain_app import HOLD

pytestmark = pytest.mark.slow

LISTENING = re.compile(r"gRPC component grpc listening on 127\.0\.0\.1:(\d+)")


def _port(process: ServiceProcess) -> int | None:
    match = LISTENING.search(process.output())
    return int(match.group(1)) if match else None


def _status(ch: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(ch)
    return int(stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status)


def test_sigterm_lets_in_flight_rpcs_finish_reports_not_serving_and_exits_0(
    service_process: Callable[..., ServiceProcess],
) -> None:
    process = service_process(
        "tests.grpc.drain_app", PATRON_DRAIN_DELAY="1s", PATRON_LOG_LEVEL="INFO"
    )
    port = wait_for(lambda: _port(process), timeout=20)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        wait_for(lambda: _status(ch) == health_pb2.HealthCheckResponse.SERVING, timeout=10)
        hold = ch.unary_stream(HOLD, HelloRequest.SerializeToString, HelloReply.FromString)
        in_flight = [hold(HelloRequest(name=str(n)), timeout=30) for n in range(3)]
        for n, call in enumerate(in_flight):
            assert next(call).message == f"holding {n}"  # the handler is running

        process.signal(signal.SIGTERM)
        try:
            wait_for(lambda: _status(ch) == health_pb2.HealthCheckResponse.NOT_SERVING,
                     timeout=5)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; service output:\n{process.output()}") from None
        assert process.proc.poll() is None, "the process left before draining"
        assert all(call.is_active() for call in in_flight)

        replies = [[reply.message for reply in call] for call in in_flight]
        codes = [call.code() for call in in_flight]

    assert replies == [[f"held {n} until stop"] for n in range(3)]
    assert codes == [grpc.StatusCode.OK] * 3
    assert process.wait(20) == 0
    output = process.output()
    assert "gRPC component grpc stopped" in output
    assert "stopped cleanly" in output
