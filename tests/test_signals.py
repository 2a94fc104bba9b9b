"""Signals and shutdown faults of a Service run as ``python -m patron`` in its own process.

Each test starts a service from ``tests/support/services.py`` on a free port, sends signals,
and asserts on the exit status, the time the shutdown took and the log lines.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.conftest import ROOT, ServiceProcess, free_port, http_status, start_ready, wait_for

pytestmark = pytest.mark.slow

Start = Callable[..., ServiceProcess]


@pytest.fixture
def start(service_process: Start) -> Start:
    """``start(TARGET, **env)``: ``python -m patron TARGET``, killed at the end of the test."""
    return service_process



def _output(process: ServiceProcess) -> str:
    # Read the file directly: ServiceProcess.output() fails once wait() has closed it.
    return process.stdout_path.read_text(errors="replace")



def _wait_log(process: ServiceProcess, text: str, timeout: float = 5.0) -> None:
    try:
        wait_for(lambda: text in _output(process), timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{text!r} not logged; output:\n{_output(process)}") from None


# -- SIGTERM under load ----------------------------------------------------------------------

# A request refused or dropped before the server read it fails with one of these; it must then
# be one the server never started.
_NOT_STARTED_ERRORS = (ConnectionRefusedError, ConnectionResetError, BrokenPipeError)
_CLIENTS = 32


class _Load:
    """32 keep-alive clients sending ``GET /work/<id>`` until the server refuses them."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.lock = threading.Lock()
        self.completed: dict[int, tuple[int, bytes]] = {}
        self.failed: dict[int, BaseException] = {}
        self.completed_after_sigterm = 0
        self.sigterm_sent = threading.Event()
        self.quit = threading.Event()
        self.warm = [threading.Event() for _ in range(_CLIENTS)]
        self.threads = [
            threading.Thread(target=self._client, args=(i,), name=f"load-{i}")
            for i in range(_CLIENTS)
        ]

    def _client(self, index: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            for n in range(1_000_000):
                if self.quit.is_set():
                    return
                request_id = index * 1_000_000 + n
                try:
                    conn.request("GET", f"/work/{request_id}")
                    response = conn.getresponse()
                    body = response.read()
                except Exception as exc:
                    with self.lock:
                        self.failed[request_id] = exc
                    conn.close()
                    if isinstance(exc, ConnectionRefusedError):
                        return  # the listener is gone for good
                    continue
                with self.lock:
                    self.completed[request_id] = (response.status, body)
                    if self.sigterm_sent.is_set():
                        self.completed_after_sigterm += 1
                self.warm[index].set()
        finally:
            conn.close()

    def __enter__(self) -> _Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.quit.set()
        for thread in self.threads:
            thread.join(15)
        assert not any(t.is_alive() for t in self.threads), "a load client hung"


def test_sigterm_under_load_finishes_every_started_request_and_exits_0(start: Start) -> None:
    drain, shutdown_timeout = 1.0, 5.0
    process, port = start_ready(
        start,
        "tests.support.services:busy",
        PATRON_DRAIN_DELAY=f"{drain}s",
        PATRON_SHUTDOWN_TIMEOUT=f"{shutdown_timeout}s",
    )
    with _Load(port) as load:
        for index, warm in enumerate(load.warm):
            assert warm.wait(15), f"client {index} never got a response"

        load.sigterm_sent.set()
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        # Readiness goes 503 at once, while the listener still serves during the drain delay.
        wait_for(lambda: http_status(port, "/ready") == 503, timeout=drain)
        code = process.wait(drain + shutdown_timeout + 5)
        took = time.monotonic() - signalled
    output = _output(process)

    assert code == 0, output[-3000:]
    assert took <= drain + shutdown_timeout, took
    assert "stopped cleanly" in output

    started = {int(n) for n in re.findall(r"started request (\d+)", output)}
    assert started, output[-3000:]
    not_answered = started - load.completed.keys()
    assert not not_answered, (
        f"{len(not_answered)} started request(s) got no full response: "
        f"{[(i, repr(load.failed.get(i))) for i in sorted(not_answered)[:10]]}"
    )
    wrong = {
        i: reply for i, reply in load.completed.items() if reply != (200, f"done {i}".encode())
    }
    assert not wrong, list(wrong.items())[:10]
    unexpected = {
        i: exc for i, exc in load.failed.items() if not isinstance(exc, _NOT_STARTED_ERRORS)
    }
    assert not unexpected, list(unexpected.items())[:10]
    assert load.completed_after_sigterm > 0, "nothing was served during the drain delay"


# -- component faults ------------------------------------------------------------------------


def test_a_failing_component_stops_the_others_and_exits_1(start: Start) -> None:
    process = start("tests.support.services:failing", PATRON_HTTP_DEFAULT_PORT=str(free_port()))
    code = process.wait(15)
    output = _output(process)
    assert code == 1, output
    assert "component failing failed: RuntimeError: disk on fire" in output
    # One line for the operator: the traceback only at DEBUG.
    assert "Traceback (most recent call last)" not in output
    assert "bystander stopped" in output  # the other components were stopped, not abandoned
    assert re.search(r"stopped with status 1 .*; responsible: failing srv=", output), output


@pytest.fixture(scope="module")
def stubborn_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, float, str]]:
    """Run the stubborn service once: SIGTERM it, return (exit status, seconds, output)."""
    shutdown_timeout = 2.0
    port = free_port()
    process = ServiceProcess(
        "tests.support.services:stubborn",
        {"PATRON_HTTP_DEFAULT_PORT": str(port), "PATRON_SHUTDOWN_TIMEOUT": f"{shutdown_timeout}s"},
        tmp_path_factory.mktemp("stubborn"),
    )
    try:
        wait_for(lambda: http_status(port, "/ready") == 200, timeout=15)
        signalled = time.monotonic()
        process.signal(signal.SIGTERM)
        code = process.wait(shutdown_timeout + 10)
        yield code, time.monotonic() - signalled, _output(process)
    finally:
        process.kill()


def test_a_component_ignoring_stop_ends_shutdown_at_the_timeout_with_status_3(
    stubborn_run: tuple[int, float, str],
) -> None:
    code, took, output = stubborn_run
    assert code == 3, output
    assert 2.0 <= took <= 2.0 + 2.0, took
    assert "component stubborn did not stop within 2.0s; abandoning its thread" in output
    assert re.search(r"stopped with status 3 .*responsible: .*stubborn", output), output


def test_a_component_ignoring_stop_is_the_only_one_blamed(
    stubborn_run: tuple[int, float, str],
) -> None:
    """The HTTP component would stop at once; it must not be reported as timed out."""
    _, _, output = stubborn_run
    assert "component http did not stop" not in output, output
    assert re.search(r"responsible: stubborn srv=", output), output


# -- SIGHUP and SIGINT -----------------------------------------------------------------------


def test_sighup_runs_the_hook_and_the_service_keeps_running(start: Start) -> None:
    process, port = start_ready(start, "tests.support.services:hup_hook")
    for times in (1, 2):
        process.signal(signal.SIGHUP)
        wait_for(lambda n=times: _output(process).count("sighup hook ran") == n, timeout=5)  # type: ignore[misc]
        assert process.proc.poll() is None
        assert http_status(port, "/ready") == 200
    process.signal(signal.SIGTERM)
    code = process.wait(10)
    assert code == 0, _output(process)  # SIGHUPs are not counted as a first SIGTERM


def test_sighup_without_a_hook_shuts_down_gracefully(start: Start) -> None:
    process, _ = start_ready(start, "tests.support.services:hello")
    process.signal(signal.SIGHUP)
    code = process.wait(10)
    output = _output(process)
    assert code == 0, output
    assert "received SIGHUP: shutting down" in output
    assert "stopped cleanly" in output


def test_a_sighup_during_the_shutdown_does_not_hurry_it(start: Start) -> None:
    process, _ = start_ready(start, "tests.support.services:hello", PATRON_DRAIN_DELAY="2s")
    process.signal(signal.SIGTERM)
    _wait_log(process, "received SIGTERM: shutting down")
    process.signal(signal.SIGHUP)  # a terminal closing while the service drains
    code = process.wait(20)
    output = _output(process)
    assert code == 0, output  # not 128 + SIGHUP: it was no second SIGTERM
    assert "stopped cleanly" in output


def test_a_second_sigint_exits_at_once_with_130(start: Start) -> None:
    drain = 10.0
    process, port = start_ready(start, "tests.support.services:hello", PATRON_DRAIN_DELAY="10s")
    process.signal(signal.SIGINT)
    _wait_log(process, "received SIGINT: shutting down")
    assert http_status(port, "/ready") == 503  # draining, not yet stopping
    signalled = time.monotonic()
    process.signal(signal.SIGINT)
    code = process.wait(drain)
    took = time.monotonic() - signalled
    assert code == 128 + signal.SIGINT, _output(process)
    assert took < drain / 2, took
    assert "second SIGINT: exiting at once" in _output(process)


# -- embedding and imports -------------------------------------------------------------------


def _run_host(*args: str, env: dict[str, str] | None = None) -> dict[str, object]:
    """Run ``python -m tests.support.services ARGS``; its last stdout line, parsed as JSON."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.services", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = done.stdout.strip().splitlines()
    assert done.returncode == 0 and lines, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    result = json.loads(lines[-1])
    assert isinstance(result, dict)
    return result


def test_a_service_embedded_in_a_worker_thread_leaves_the_hosts_signals_alone() -> None:
    seen = _run_host("embedded")
    assert seen["thread"] == "host-worker"
    assert seen["ready"] == 200
    assert seen["exit_status"] == 0
    assert seen["handlers_kept_while_running"] is True
    assert seen["handlers_kept_after"] is True
    assert seen["sigterm_is_host"] is True
    assert seen["joined"] is True


def test_an_http_only_service_imports_no_heavy_transport() -> None:
    env = {**os.environ, "PATRON_HTTP_DEFAULT_PORT": "0"}
    seen = _run_host("modules", "samples.hello:service", env=env)
    assert seen["status"] == 200
    assert seen["heavy"] == []
