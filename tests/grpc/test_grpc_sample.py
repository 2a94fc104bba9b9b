"""samples/grpc_greeter.py answers a real client, in-process and as ``python -m patron``."""

from __future__ import annotations

import re
import signal
from collections.abc import Callable

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from patron.grpc import GRPCComponent, channel
from samples import grpc_greeter
from samples.greeter_pb2 import HelloRequest
from samples.greeter_pb2_grpc import GreeterStub
from tests.conftest import ServiceProcess, wait_for

LISTENING = re.compile(r"gRPC component grpc listening on 0\.0\.0\.0:(\d+)")


def test_sample_greets_by_name_in_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATRON_GRPC_PORT", "0")
    service = grpc_greeter.service(default_http=False)
    component = service.components["grpc"]
    assert isinstance(component, GRPCComponent)
    service.start()
    try:
        assert component.wait_started(10)
        with channel(f"127.0.0.1:{component.port}") as ch:
            reply = GreeterStub(ch).SayHello(HelloRequest(name="Ada"), timeout=5)
            health = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service="helloworld.Greeter"), timeout=5
            )
    finally:
        service.stop()
        assert service.wait(15) == 0
    assert reply.message == "Hello, Ada!"
    assert health.status == health_pb2.HealthCheckResponse.SERVING


@pytest.mark.slow
def test_sample_runs_with_python_m_patron_and_stops_on_sigterm(
    service_process: Callable[..., ServiceProcess],
) -> None:
    process = service_process(
        "samples.grpc_greeter", PATRON_GRPC_PORT="0", PATRON_HTTP_DEFAULT_PORT="0",
        PATRON_LOG_LEVEL="INFO",
    )
    port = wait_for(lambda: (m := LISTENING.search(process.output())) and int(m.group(1)),
                    timeout=20)
    with channel(f"127.0.0.1:{port}") as ch:
        reply = GreeterStub(ch).SayHello(HelloRequest(name="world"), timeout=5)
    assert reply.message == "Hello, world!"
    process.signal(signal.SIGTERM)
    assert process.wait(20) == 0


@pytest.mark.slow
def test_sample_refuses_a_bad_grpc_port_with_one_line(
    service_process: Callable[..., ServiceProcess],
) -> None:
    process = service_process("samples.grpc_greeter", PATRON_GRPC_PORT="fifty")
    assert process.wait(20) == 2
    assert process.output().strip().splitlines()[-1] == (
        "patron: PATRON_GRPC_PORT='fifty' is invalid: expected a port number from 0 to 65535"
    )

