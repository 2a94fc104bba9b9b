"""Helpers shared by every test package: free ports, waiting on conditions, service processes."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from tests.support.components import Runner

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(port: int, path: str, timeout: float = 2.0) -> int:
    """The status of ``GET path`` on 127.0.0.1:``port``, on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def start_ready(
    start: Callable[..., ServiceProcess], target: str, timeout: float = 20.0, **env: str
) -> tuple[ServiceProcess, int]:
    """``start(target)`` (the ``service_process`` fixture) on a free port; returns the process
    and the port once ``/ready`` answers 200, or fails with the process's output."""
    port = free_port()
    process = start(target, PATRON_HTTP_DEFAULT_PORT=str(port), **env)
    try:
        wait_for(lambda: http_status(port, "/ready") == 200, timeout=timeout)
    except AssertionError:
        output = process.stdout_path.read_text(errors="replace")
        raise AssertionError(f"{target} never got ready; output:\n{output}") from None
    return process, port


def wait_for(
    predicate: Callable[[], object], timeout: float = 10.0, interval: float = 0.02
) -> object:
    """Poll ``predicate`` until it returns something truthy; fail the test at ``timeout``.

    For facts outside the test's control (a process's port, a broker's state); prefer events
    for anything in-process.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = predicate()
        except Exception as exc:  # the condition may not be checkable yet
            last_error = exc
        else:
            if result:
                return result
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s (last error: {last_error!r})")


class ServiceProcess:
    """``python -m patron TARGET`` in its own session, with output captured to files."""

    def __init__(self, target: str, env: Mapping[str, str], tmp: Path) -> None:
        self.stdout_path = tmp / f"{target.replace(':', '_')}-{time.monotonic_ns()}.out"
        self._out = self.stdout_path.open("wb")
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patron", target],
            cwd=ROOT,
            env=full_env,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        code = self.proc.wait(timeout)
        self._out.close()
        return code

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()
        return self.stdout_path.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._out.close()


@pytest.fixture
def service_process(tmp_path: Path) -> Iterator[Callable[..., ServiceProcess]]:
    """Start ``python -m patron TARGET`` processes; every one is killed at the end of the test."""
    started: list[ServiceProcess] = []

    def start(target: str, **env: str) -> ServiceProcess:
        process = ServiceProcess(target, env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.kill()


@pytest.fixture
def run() -> Iterator[Callable[[Any], Runner]]:
    """``run(component) -> Runner``: the component runs in a thread (see
    :class:`tests.support.components.Runner`); every runner is stopped after the test."""
    from tests.support.components import Runner

    runners: list[Runner] = []

    def start(component: Any) -> Runner:
        runner = Runner(component)
        runners.append(runner)
        return runner

    yield start
    for runner in runners:
        runner.stop.set()
    for runner in runners:
        runner.thread.join(30)


@pytest.fixture
def tracer() -> Iterator[Any]:
    """A real Jaeger tracer, set as the global one for the test, that samples everything and
    keeps finished spans in memory (``tracer.reporter.get_spans()``)."""
    import opentracing
    from jaeger_client import ConstSampler, Tracer
    from jaeger_client.reporter import InMemoryReporter
    from opentracing.scope_managers.contextvars import ContextVarsScopeManager

    previous = opentracing.global_tracer()
    jaeger = Tracer(
        service_name="patron-tests",
        reporter=InMemoryReporter(),
        sampler=ConstSampler(True),
        scope_manager=ContextVarsScopeManager(),
    )
    opentracing.set_global_tracer(jaeger)
    yield jaeger
    opentracing.set_global_tracer(previous)
