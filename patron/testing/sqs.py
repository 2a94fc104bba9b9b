"""An SQS endpoint for tests: moto's server on a loopback port, in this process or another.

:class:`MotoServer` runs moto's server (``moto.server.ThreadedMotoServer``) in a thread of the
calling process and hands out its ``endpoint_url``; boto3 talks to it like to AWS, with any
credentials (moto does not check them unless :meth:`MotoServer.check_credentials` says so).
moto keeps its queues in process-global state, so they survive :meth:`MotoServer.stop` and a
later :meth:`MotoServer.start` on the same port: that is how a test takes the endpoint away and
brings it back. ``stop`` also cuts the keep-alive connections clients hold, so the endpoint is
really gone; :func:`check_credentials` makes moto refuse unknown access keys for a while.
moto's cost per call grows with the depth of the queue: keep test queues shallow.

As a pytest plugin (``pytest_plugins = ["patron.testing.sqs"]``) this module offers the session
fixture ``sqs_endpoint``: the value of ``PATRON_TEST_SQS_ENDPOINT`` when that is set (a real
endpoint; credentials and region then come from the usual ``AWS_*`` variables), else the URL of
a moto server started for the session. :func:`client_kwargs` gives boto3 the region and the
dummy credentials moto needs when the environment has none.

Run as a program it prints the endpoint URL on one line of stdout and serves until stdin
closes, or SIGTERM / SIGINT arrives (for benchmarks that keep moto's CPU out of the measured
process)::

    python -m patron.testing.sqs [--port N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any

from patron.testing._process import run_until_told

__all__ = [
    "ENV_ENDPOINT",
    "MotoServer",
    "check_credentials",
    "client_kwargs",
    "main",
    "sqs_endpoint",
]

#: names a real SQS endpoint that tests use instead of a moto server
ENV_ENDPOINT = "PATRON_TEST_SQS_ENDPOINT"
#: how long stop() waits for requests in progress (SQS long polls last 20 s at most)
_HANDLER_JOIN_TIMEOUT = 25.0


def client_kwargs(endpoint_url: str | None = None) -> dict[str, Any]:
    """Keyword arguments for ``boto3.client("sqs", **kwargs)``: the endpoint, and the region and
    credentials of the environment, or moto's dummy ones (``us-east-1``, ``testing``)."""
    env = os.environ
    kwargs: dict[str, Any] = {
        "region_name": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    }
    if endpoint_url:
        kwargs["endpoint_url"] = endpoint_url
    if not env.get("AWS_ACCESS_KEY_ID") and not env.get("AWS_PROFILE"):
        kwargs["aws_access_key_id"] = "testing"
        kwargs["aws_secret_access_key"] = "testing"
    return kwargs


class MotoServer:
    """moto's server on ``host:port`` (port 0: a free one, kept for later restarts).

    :meth:`start` returns once it accepts connections; :meth:`stop` shuts it down, closes its
    listening socket and every open client connection, and waits for the requests in progress
    to end (a long poll may take up to its wait time). Both run in the calling thread; the
    server itself runs in threads of its own (daemon threads of werkzeug's server, ended by
    ``stop``). Usable as a context manager.

    ``serial`` makes it handle one request at a time. moto's SQS is not thread-safe: two
    receives at once can hand out the same message, two deletes at once can undo one another,
    so a test that counts deliveries exactly with several consumers or pollers needs it. A long
    poll then holds every other client for its wait: keep ``wait_time`` short with it.
    """

    def __init__(self, port: int = 0, host: str = "127.0.0.1", *, serial: bool = False) -> None:
        self.host = host
        self.port = port
        self.serial = serial
        self._moto: Any = None
        self._inner: Any = None
        self._connections: dict[socket.socket, threading.Thread] = {}
        self._lock = threading.Lock()

    @property
    def endpoint_url(self) -> str:
        if not self.port:
            raise RuntimeError("the moto server was never started")
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._moto is not None

    def start(self) -> MotoServer:
        from moto.server import ThreadedMotoServer

        if self._moto is not None:
            raise RuntimeError("the moto server is already running")
        port = self.port or _free_port(self.host)
        # ThreadedMotoServer.start() waits forever when its thread cannot bind: check first.
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((self.host, port))
            except OSError as exc:
                raise RuntimeError(f"cannot start moto on {self.host}:{port}: {exc}") from None
        moto = ThreadedMotoServer(ip_address=self.host, port=port, verbose=False)
        moto.start()
        # The werkzeug server it made: serve our handler subclass, which keeps moto's request
        # log quiet and records connections so stop() can cut them.
        inner: Any = moto._server
        inner.RequestHandlerClass = _handler_class(inner.RequestHandlerClass, self)
        if self.serial:
            inner.app = _one_at_a_time(inner.app)
        self._moto, self._inner = moto, inner
        self.port = port
        return self

    def stop(self) -> None:
        moto, self._moto = self._moto, None
        if moto is None:
            return
        moto.stop()  # ends the accept loop
        self._inner.server_close()  # frees the port for a restart
        self._inner = None
        with self._lock:
            connections = dict(self._connections)
            self._connections.clear()
        for conn in connections:  # keep-alive connections would keep being served otherwise
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        # A request in progress (a long poll) could still take messages and answer into the
        # void: the endpoint is gone only once its handlers have finished.
        deadline = time.monotonic() + _HANDLER_JOIN_TIMEOUT
        for thread in connections.values():
            thread.join(max(0.0, deadline - time.monotonic()))

    def check_credentials(self) -> contextlib.AbstractContextManager[None]:
        """:func:`check_credentials` for this server."""
        return check_credentials(self.endpoint_url)

    def _track(self, conn: socket.socket, add: bool) -> None:
        with self._lock:
            if add:
                self._connections[conn] = threading.current_thread()
            else:
                self._connections.pop(conn, None)

    def __enter__(self) -> MotoServer:
        return self.start() if self._moto is None else self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@contextlib.contextmanager
def check_credentials(endpoint_url: str) -> Iterator[None]:
    """While the block runs, the moto server at ``endpoint_url`` rejects requests whose access
    key it does not know (every key, unless the test created IAM users): a stand-in for wrong
    credentials. The switch is global to moto in the server's process."""
    previous = _reset_auth(endpoint_url, "0")
    try:
        yield
    finally:
        _reset_auth(endpoint_url, previous)


def _reset_auth(endpoint_url: str, value: str) -> str:
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/reset-auth", data=value.encode(), method="POST",
        headers={"Content-Type": "text/plain"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(json.loads(response.read())["PREVIOUS_INITIAL_NO_AUTH_ACTION_COUNT"])


def _handler_class(base: type[Any], server: MotoServer) -> type[Any]:
    class Handler(base):
        def setup(self) -> None:
            super().setup()
            server._track(self.connection, True)

        def finish(self) -> None:
            server._track(self.connection, False)
            with contextlib.suppress(OSError):
                super().finish()

        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            pass  # one line per request drowns the test output

    return Handler


def _one_at_a_time(app: Any) -> Any:
    """``app`` (WSGI) serving one request at a time, each response produced under the lock."""
    lock = threading.Lock()

    def serve(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        with lock:
            response = app(environ, start_response)
            try:
                return list(response)
            finally:
                close = getattr(response, "close", None)
                if close is not None:
                    close()

    return serve


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


try:
    import pytest
except ImportError:  # pragma: no cover - the fixture is only offered under pytest
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture(scope="session")
    def sqs_endpoint() -> Iterator[str]:
        """``PATRON_TEST_SQS_ENDPOINT``, or the URL of a moto server started for the session."""
        real = os.environ.get(ENV_ENDPOINT, "").strip()
        if real:
            yield real
            return
        with MotoServer() as server:
            yield server.endpoint_url


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m patron.testing.sqs",
        description="Run moto's server on 127.0.0.1; print its endpoint URL; live until stdin "
        "closes or a signal arrives.",
    )
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    with MotoServer(args.port) as server:
        run_until_told(server.endpoint_url)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
