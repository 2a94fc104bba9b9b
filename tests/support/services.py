"""Small services that tests run with ``python -m patron tests.support.services:NAME``.

Every ``NAME`` here is a zero-argument function returning a fresh :class:`patron.Service`, so
importing this module builds nothing and reads no environment: the configuration comes from the
``PATRON_*`` variables of the process that calls the function. What a test asserts on is written
to the log (stderr of the service process), one recognisable line per fact.

Run as a script (``python -m tests.support.services COMMAND``), the module also offers host
programs that tests start in a fresh interpreter:

* ``embedded``: a host that starts and stops a Service from a worker thread (see
  :func:`embedded_host`);
* ``modules MODULE:ATTR``: start that Service in-process, serve one request, and print which
  heavy transport modules are loaded (see :func:`loaded_modules`).
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from types import FrameType

from patron import Service
from patron.config import Config
from patron.http import HTTPComponent, Request, Route

__all__ = [
    "HEAVY_MODULES",
    "busy",
    "embedded_host",
    "failing",
    "hello",
    "hup_hook",
    "loaded_modules",
    "stubborn",
]

logger = logging.getLogger("tests.services")

HEAVY_MODULES = ("grpc", "confluent_kafka", "pika", "boto3", "botocore")
WORK_SECONDS = 0.02  # how long a /work request keeps a worker thread busy


def _hello(request: Request, name: str) -> str:
    return f"Hello, {name}!"


def hello() -> Service:
    """An HTTP-only service with ``GET /hello/<name>`` and no SIGHUP hook."""
    return Service("hello", "1.0", routes=[Route("GET", "/hello/<name>", _hello)])


def _work(request: Request, request_id: int) -> str:
    # The log line is the server's own record that it started this request: the test checks
    # that every request named here got its full response.
    logger.info("started request %d", request_id)
    time.sleep(WORK_SECONDS)  # stands for the work a real handler does
    return f"done {request_id}"


def busy() -> Service:
    """``GET /work/<int:request_id>``: logs ``started request N``, works, answers ``done N``."""
    return Service("busy", "1.0", routes=[Route("GET", "/work/<int:request_id>", _work)])


class _Failing:
    """Raises at once from its thread, as a component whose broker is unreachable would."""

    name = "failing"

    def run(self, stop: threading.Event) -> None:
        raise RuntimeError("disk on fire")


class _Bystander:
    """A well-behaved component: logs when it was stopped, so a test sees that it was."""

    name = "bystander"

    def run(self, stop: threading.Event) -> None:
        stop.wait()
        logger.info("bystander stopped")


def failing() -> Service:
    """A service whose ``failing`` component raises while ``bystander`` and HTTP run."""
    return Service("failing", "1.0", components=[_Bystander(), _Failing()])


class _Stubborn:
    """Ignores its stop event: blocks on an event nobody sets."""

    name = "stubborn"

    def __init__(self) -> None:
        self._never = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self._never.wait()


def stubborn() -> Service:
    """A service with a component that never stops; shutdown must end at the timeout."""
    return Service("stubborn", "1.0", components=[_Stubborn()])


def _on_sighup() -> None:
    logger.info("sighup hook ran")


def hup_hook() -> Service:
    """An HTTP-only service whose SIGHUP hook logs ``sighup hook ran``."""
    return Service(
        "hup", "1.0", routes=[Route("GET", "/hello/<name>", _hello)], sighup=_on_sighup
    )


# -- host programs run in a fresh interpreter --------------------------------------------------


def _host_sigterm(signum: int, frame: FrameType | None) -> None:
    """The host program's own SIGTERM handler, which a Service must leave in place."""


def _get_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def embedded_host() -> int:
    """A host program: its main thread owns the signals; a worker thread runs a Service.

    The worker starts the Service, checks ``GET /ready`` answers 200 and that the host's signal
    handlers are still installed while it runs, stops it and waits. Prints one JSON line with
    what it saw; exits 0 when everything held.
    """
    signal.signal(signal.SIGTERM, _host_sigterm)
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    seen: dict[str, object] = {}

    def worker() -> None:
        service = Service("embedded", "1.0", config=Config(http_default_port=0))
        service.start()
        try:
            http = service.components["http"]
            assert isinstance(http, HTTPComponent)
            assert http.wait_started(5)
            port = http.port
            seen["ready"] = _get_status(f"http://127.0.0.1:{port}/ready")
            seen["handlers_kept_while_running"] = all(
                signal.getsignal(s) is h for s, h in before.items()
            )
        finally:
            service.stop()
            seen["exit_status"] = service.wait(10)
        seen["thread"] = threading.current_thread().name

    thread = threading.Thread(target=worker, name="host-worker")
    thread.start()
    thread.join(20)
    seen["joined"] = not thread.is_alive()
    seen["handlers_kept_after"] = all(signal.getsignal(s) is h for s, h in before.items())
    seen["sigterm_is_host"] = signal.getsignal(signal.SIGTERM) is _host_sigterm
    print(json.dumps(seen), flush=True)
    ok = (
        seen.get("ready") == 200
        and seen.get("exit_status") == 0
        and seen["joined"]
        and seen.get("handlers_kept_while_running")
        and seen["handlers_kept_after"]
        and seen["sigterm_is_host"]
    )
    return 0 if ok else 1


def loaded_modules(target: str) -> int:
    """Start the Service at ``MODULE:ATTR``, serve one request, print the heavy modules loaded.

    The port comes from ``PATRON_HTTP_DEFAULT_PORT`` (use 0). Prints one JSON object:
    ``{"status": <status of GET /hello/x>, "heavy": [...loaded heavy modules...]}``.
    """
    from patron.__main__ import load

    service = load(target)
    service.start()
    try:
        http = service.components["http"]
        assert isinstance(http, HTTPComponent)
        assert http.wait_started(5)
        port = http.port
        status = _get_status(f"http://127.0.0.1:{port}/hello/x")
        heavy = sorted(
            name for name in sys.modules if name.split(".")[0] in HEAVY_MODULES
        )
    finally:
        service.stop()
        service.wait(10)
    print(json.dumps({"status": status, "heavy": heavy}), flush=True)
    return 0


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "embedded":
        sys.exit(embedded_host())
    if command == "modules" and len(sys.argv) == 3:
        sys.exit(loaded_modules(sys.argv[2]))
    usage = "python -m tests.support.services embedded | modules MODULE:ATTR"
    sys.exit(f"usage: {usage}; got {command!r}")
