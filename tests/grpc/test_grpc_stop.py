"""Stopping a GRPCComponent: in-flight RPCs finish within the grace period, then are cancelled."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc

from samples.greeter_pb2 import HelloRequest
from tests.conftest import wait_for
from tests.grpc.helpers import Running
from tests.grpc.servers import Echo, EchoStub

Serve = Callable[..., Running]


def _refused(stub: EchoStub) -> bool:
    try:
        stub.Say(HelloRequest(name="new"), timeout=1)
    except grpc.RpcError as error:
        return bool(error.code() == grpc.StatusCode.UNAVAILABLE)
    return False


def test_in_flight_rpcs_finish_after_stop_while_new_ones_are_refused(
    serve: Serve, echo: Echo
) -> None:
    running = serve(grace=10)
    with running.channel() as ch:
        stub = EchoStub(ch)
        in_flight = [stub.Block.future(HelloRequest(name=str(n)), timeout=20) for n in range(3)]
        for _ in in_flight:
            assert echo.started.acquire(timeout=5)
        stopper = threading.Thread(target=running.shutdown)
        stopper.start()

        wait_for(lambda: _refused(stub), timeout=5)
        assert not any(f.done() for f in in_flight)
        assert running.thread.is_alive()  # run() waits for them
        echo.release.set()

        assert sorted(f.result(5).message for f in in_flight) == [
            "released 0", "released 1", "released 2"
        ]
        stopper.join(10)
    assert not running.thread.is_alive()
    assert running.error is None
    assert not echo.ended.is_set()


def test_rpcs_still_running_at_the_end_of_the_grace_are_cancelled(
    serve: Serve, echo: Echo
) -> None:
    running = serve(grace=0.3)
    with running.channel() as ch:
        call = EchoStub(ch).Block.future(HelloRequest(name="late"), timeout=20)
        assert echo.started.acquire(timeout=5)
        running.shutdown(timeout=10)  # returns once the cancelled handler returned

        assert echo.ended.is_set(), "the handler was not told that its RPC ended"
        error = call.exception(5)
    assert isinstance(error, grpc.RpcError)
    assert error.code() == grpc.StatusCode.UNAVAILABLE  # what grpcio sends when it cancels all
    assert running.error is None


def test_the_service_deadline_cuts_the_grace_short(serve: Serve, echo: Echo) -> None:
    running = serve(grace=60)  # far beyond the shutdown budget
    with running.channel() as ch:
        call = EchoStub(ch).Block.future(HelloRequest(name="late"), timeout=30)
        assert echo.started.acquire(timeout=5)
        running.component.stop_by(time.monotonic() + 1.0)  # what the Service does first
        running.shutdown(timeout=10)  # fails if the 60 s grace were waited out
        assert echo.ended.is_set()
        assert isinstance(call.exception(5), grpc.RpcError)
    assert running.error is None
