"""patron.http.client against real HTTP servers on 127.0.0.1 (werkzeug's threaded server)."""

from __future__ import annotations

import contextlib
import dataclasses
import email.message
import gzip
import http.server
import socket
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from patron import correlation
from patron.http.client import (
    BreakerSettings,
    CircuitState,
    ClientError,
    ConnectError,
    HTTPClient,
    OpenCircuit,
    RequestTimeout,
    Retries,
    Timeout,
)
from tests.conftest import free_port, wait_for
from tests.support.jaeger import span_tags
from tests.support.metrics import sample


@dataclasses.dataclass
class Req:
    method: str
    path: str
    headers: email.message.Message
    body: bytes


@dataclasses.dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"hello": "world"}'
    headers: dict[str, str] = dataclasses.field(
        default_factory=lambda: {"Content-Type": "application/json; charset=utf-8"}
    )


Handler = Callable[[Req], Reply]
FAST_RETRIES = Retries(attempts=3, backoff=0.01, max_backoff=0.02)
DURATION_COUNT = "client_http_request_duration_seconds_count"


class _Server:
    """An HTTP/1.1 keep-alive server (http.server, a thread per connection) that records
    requests and counts accepted connections.

    ``stop()`` closes the listening socket and drops its keep-alive connections, so clients
    see it gone; ``start()`` listens again on the same port.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.port = 0
        self.accepted = 0
        self.requests: list[Req] = []
        self._server: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()
        self.start()

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        owner = self

        class RequestHandler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                req = Req(self.command, self.path, self.headers, self.rfile.read(length))
                with owner._lock:
                    owner.requests.append(req)
                reply = owner.handler(req)
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply.body)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), RequestHandler)
        server.block_on_close = False
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]
        accept = server.get_request

        def counting_accept() -> tuple[socket.socket, Any]:
            sock, addr = accept()
            with self._lock:
                self.accepted += 1
                self._conns.append(sock)
            return sock, addr

        server.get_request = counting_accept  # type: ignore[method-assign]
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        assert self._server is not None and self._thread is not None
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            conns, self._conns = self._conns, []
        for sock in conns:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(5)
        self._server = None


@pytest.fixture
def server() -> Iterator[Callable[[Handler], _Server]]:
    started: list[_Server] = []

    def start(handler: Handler) -> _Server:
        s = _Server(handler)
        started.append(s)
        return s

    yield start
    for s in started:
        if s._server is not None:
            s.stop()


@pytest.fixture
def client() -> Iterator[HTTPClient]:
    with HTTPClient(timeout=Timeout(connect=2, read=5), retries=FAST_RETRIES) as c:
        yield c



def _ok(request: Req) -> Reply:
    return Reply()


def _status(code: int) -> Handler:
    return lambda request: Reply(code, f"status {code}".encode(), {})



# -- basics -----------------------------------------------------------------------------------


def test_responses_are_returned_and_connections_are_pooled(server: Any, client: HTTPClient) -> None:
    s = server(_ok)
    responses = [client.get(s.url("/a")) for _ in range(5)]
    assert [r.status for r in responses] == [200] * 5
    assert responses[0].json() == {"hello": "world"}
    assert responses[0].text == '{"hello": "world"}'
    assert responses[0].headers["content-type"].startswith("application/json")
    assert s.accepted == 1  # one keep-alive connection for all five


def test_error_statuses_are_responses_not_exceptions(server: Any, client: HTTPClient) -> None:
    assert client.get(server(_status(404)).url()).status == 404
    failing = server(_status(500))
    assert client.get(failing.url()).status == 500
    assert len(failing.requests) == 1  # 500 is not one of the retried statuses


def test_json_and_body_are_sent(server: Any, client: HTTPClient) -> None:
    s = server(lambda r: Reply(200, r.body, {"Content-Type": r.headers["Content-Type"] or ""}))
    echoed = client.post(s.url(), json={"a": [1, 2]})
    assert echoed.json() == {"a": [1, 2]}
    assert echoed.headers["Content-Type"] == "application/json"
    assert client.put(s.url(), body=b"raw").body == b"raw"


def test_gzip_and_deflate_bodies_are_decoded(server: Any, client: HTTPClient) -> None:
    text = b"compressed " * 100

    def compressed(request: Req) -> Reply:
        if request.path == "/gzip":
            return Reply(200, gzip.compress(text), {"Content-Encoding": "gzip"})
        return Reply(200, zlib.compress(text), {"Content-Encoding": "deflate"})

    s = server(compressed)
    assert client.get(s.url("/gzip")).body == text
    assert client.get(s.url("/deflate")).body == text
    assert "gzip" in s.requests[0].headers["Accept-Encoding"]


# -- correlation, tracing, metrics ------------------------------------------------------------


def test_correlation_id_and_trace_context_are_injected(
    server: Any, client: HTTPClient, tracer: Any
) -> None:
    s = server(_ok)
    token = correlation.bind("cid-123")
    try:
        with tracer.start_active_span("handler") as scope:
            parent = scope.span
            assert client.get(s.url("/x?secret=1")).status == 200
    finally:
        correlation.unbind(token)
    assert client.get(s.url("/y")).status == 200  # outside any request: a fresh id

    first, second = s.requests
    assert first.headers["X-Correlation-Id"] == "cid-123"
    fresh = second.headers["X-Correlation-Id"]
    assert fresh and fresh != "cid-123"

    spans = [sp for sp in tracer.reporter.get_spans() if sp.operation_name == "HTTP GET"]
    assert len(spans) == 2
    child = next(sp for sp in spans if sp.parent_id == parent.span_id)
    assert child.trace_id == parent.trace_id
    trace_header = first.headers["uber-trace-id"]
    assert trace_header.split(":")[:2] == [f"{child.trace_id:x}", f"{child.span_id:x}"]
    assert span_tags(child)["span.kind"] == "client"
    assert span_tags(child)["http.method"] == "GET"
    assert span_tags(child)["http.url"] == s.url("/x")  # no query string
    assert span_tags(child)["http.status_code"] == 200
    assert "error" not in span_tags(child)


def test_spans_of_5xx_and_failures_are_errors(server: Any, tracer: Any) -> None:
    s = server(_status(500))
    with HTTPClient(retries=None) as c:
        c.get(s.url())
        with pytest.raises(ConnectError):
            c.get(f"http://127.0.0.1:{free_port()}/")
    spans = tracer.reporter.get_spans()
    assert len(spans) == 2 and all(span_tags(sp).get("error") is True for sp in spans)


def test_a_duration_sample_is_recorded_per_attempt(server: Any, client: HTTPClient) -> None:
    s = server(_status(404))
    before = sample(DURATION_COUNT, method="GET", host=s.host, status_code="404")
    client.get(s.url())
    assert sample(DURATION_COUNT, method="GET", host=s.host, status_code="404") == before + 1

    host = f"127.0.0.1:{free_port()}"
    before = sample(DURATION_COUNT, method="POST", host=host, status_code="error")
    with pytest.raises(ConnectError):
        client.post(f"http://{host}/")
    assert sample(DURATION_COUNT, method="POST", host=host, status_code="error") == before + 1


# -- retries ----------------------------------------------------------------------------------


def test_get_is_retried_on_503_until_it_succeeds(server: Any, client: HTTPClient) -> None:
    def flaky(request: Req) -> Reply:
        return Reply(503, b"busy", {}) if len(s.requests) < 3 else _ok(request)

    s = server(flaky)
    assert client.get(s.url()).status == 200
    assert len(s.requests) == 3


def test_the_last_503_is_returned_when_attempts_run_out(server: Any, client: HTTPClient) -> None:
    s = server(_status(503))
    assert client.get(s.url()).status == 503
    assert len(s.requests) == FAST_RETRIES.attempts


def test_post_is_not_retried(server: Any, client: HTTPClient) -> None:
    s = server(_status(503))
    assert client.post(s.url(), body=b"x").status == 503
    assert len(s.requests) == 1


def test_get_is_retried_when_the_connection_is_refused_post_is_not(client: HTTPClient) -> None:
    host = f"127.0.0.1:{free_port()}"
    count = lambda method: sample(DURATION_COUNT, method=method, host=host, status_code="error")  # noqa: E731
    with pytest.raises(ConnectError) as refused:
        client.get(f"http://{host}/")
    assert isinstance(refused.value, ClientError)
    assert refused.value.__cause__ is not None  # urllib3's error, chained
    assert refused.value.method == "GET" and refused.value.url == f"http://{host}/"
    assert count("GET") == FAST_RETRIES.attempts
    with pytest.raises(ConnectError):
        client.post(f"http://{host}/")
    assert count("POST") == 1


def test_a_read_timeout_is_a_request_timeout(server: Any) -> None:
    release = threading.Event()

    def stuck(request: Req) -> Reply:
        release.wait(10)
        return _ok(request)

    s = server(stuck)
    try:
        client = HTTPClient(timeout=Timeout(connect=2, read=0.2), retries=FAST_RETRIES)
        with client, pytest.raises(RequestTimeout):
            client.get(s.url())
        assert len(s.requests) == 1  # read timeouts are not retried
    finally:
        release.set()


# -- the deadline -----------------------------------------------------------------------------


def test_the_deadline_cuts_the_read_timeout(server: Any) -> None:
    release = threading.Event()

    def stuck(request: Req) -> Reply:
        release.wait(10)
        return _ok(request)

    s = server(stuck)
    try:
        with HTTPClient(timeout=Timeout(connect=2, read=8), retries=FAST_RETRIES) as c:
            started = time.monotonic()
            with pytest.raises(RequestTimeout):
                c.get(s.url(), deadline=0.3)
            assert time.monotonic() - started < 0.3 + 2.0  # far below the 8 s read timeout
    finally:
        release.set()


class _SlowBackoff(Retries):
    def delay(self, retry: int) -> float:
        return 1.0


def test_a_retry_that_cannot_end_before_the_deadline_is_not_started(server: Any) -> None:
    s = server(_status(503))
    with HTTPClient(retries=_SlowBackoff(attempts=3)) as c:
        started = time.monotonic()
        assert c.get(s.url(), deadline=0.5).status == 503
        elapsed = time.monotonic() - started
    assert len(s.requests) == 1
    assert elapsed < 1.0  # the 1 s backoff was not even waited


def test_retries_go_on_while_the_deadline_allows(server: Any) -> None:
    s = server(_status(503))
    with HTTPClient(retries=Retries(attempts=3, backoff=0.01, max_backoff=0.01)) as c:
        assert c.get(s.url(), deadline=30).status == 503
    assert len(s.requests) == 3


def test_a_spent_deadline_sends_nothing(server: Any, client: HTTPClient) -> None:
    s = server(_ok)
    with pytest.raises(RequestTimeout):
        client.get(s.url(), deadline=0)
    assert s.requests == []


# -- the circuit breaker ----------------------------------------------------------------------


def _state(host: str) -> float:
    return sample("client_http_circuit_state", host=host)


def test_consecutive_5xx_open_the_circuit_and_open_circuit_sends_nothing(server: Any) -> None:
    s = server(_status(500))
    settings = BreakerSettings(consecutive_failures=3, cool_down=60)
    with HTTPClient(retries=None, breaker=settings) as c:
        for _ in range(3):
            assert c.get(s.url()).status == 500
        assert c.circuit_state(s.url()) == CircuitState.OPEN
        assert _state(s.host) == 2
        connections, requests = s.accepted, len(s.requests)
        with pytest.raises(OpenCircuit) as rejected:
            c.get(s.url())
        assert isinstance(rejected.value, ClientError) and rejected.value.host == s.host
        c._pool.clear()  # even without a pooled connection to reuse, none is opened
        with pytest.raises(OpenCircuit):
            c.post(s.url())
        assert (s.accepted, len(s.requests)) == (connections, requests)


def test_4xx_do_not_count_as_failures(server: Any) -> None:
    s = server(_status(404))
    with HTTPClient(retries=None, breaker=BreakerSettings(consecutive_failures=2)) as c:
        for _ in range(4):
            assert c.get(s.url()).status == 404
        assert c.circuit_state(s.url()) == CircuitState.CLOSED


def test_a_failure_ratio_over_the_window_opens_the_circuit(server: Any) -> None:
    s = server(lambda request: _status(500 if len(s.requests) % 2 == 0 else 200)(request))
    settings = BreakerSettings(
        consecutive_failures=100, failure_ratio=0.5, minimum_calls=6, window=60, cool_down=60
    )
    with HTTPClient(retries=None, breaker=settings) as c:
        statuses = [c.get(s.url()).status for _ in range(5)]
        assert statuses == [200, 500, 200, 500, 200]
        assert c.circuit_state(s.url()) == CircuitState.CLOSED  # 2 of 5: not yet 6 calls
        assert c.get(s.url()).status == 500  # 3 failures of 6
        assert c.circuit_state(s.url()) == CircuitState.OPEN
        with pytest.raises(OpenCircuit):
            c.get(s.url())
    assert len(s.requests) == 6


def _until_admitted(c: HTTPClient, url: str) -> Any:
    """Call until the circuit lets the call through; its response or its ClientError."""

    def attempt() -> Any:
        try:
            return c.get(url)
        except OpenCircuit:
            return None
        except ClientError as exc:
            return exc

    return wait_for(attempt, timeout=10, interval=0.02)


def test_the_circuit_opens_half_opens_closes_and_reopens_with_a_real_server(server: Any) -> None:
    release = threading.Event()
    entered = threading.Event()

    def handler(request: Req) -> Reply:
        if request.path == "/probe":
            entered.set()
            release.wait(10)
        return _ok(request)

    s = server(handler)
    url = s.url("/probe")
    settings = BreakerSettings(consecutive_failures=2, cool_down=0.2)
    with HTTPClient(timeout=Timeout(connect=2, read=5), retries=None, breaker=settings) as c:
        assert c.get(s.url("/")).status == 200
        assert _state(s.host) == 0

        # closed → open: the server goes away
        s.stop()
        for _ in range(2):
            with pytest.raises(ConnectError):
                c.get(url)
        assert c.circuit_state(url) == CircuitState.OPEN and _state(s.host) == 2

        # it comes back on the same port; after the cool-down one probe goes through
        s.start()
        requests = len(s.requests)
        outcome: list[Any] = []
        prober = threading.Thread(target=lambda: outcome.append(_until_admitted(c, url)))
        prober.start()
        try:
            assert entered.wait(10)
            assert c.circuit_state(url) == CircuitState.HALF_OPEN and _state(s.host) == 1
            with pytest.raises(OpenCircuit):  # only the probe while half-open
                c.get(s.url("/"))
        finally:
            release.set()
            prober.join(10)
        assert outcome[0].status == 200
        assert len(s.requests) == requests + 1
        assert c.circuit_state(url) == CircuitState.CLOSED and _state(s.host) == 0  # closed
        assert c.get(s.url("/")).status == 200

        # a failed probe opens it again
        s.stop()
        for _ in range(2):
            with pytest.raises(ConnectError):
                c.get(url)
        assert c.circuit_state(url) == CircuitState.OPEN
        assert isinstance(_until_admitted(c, url), ConnectError)  # the probe, refused
        assert c.circuit_state(url) == CircuitState.OPEN and _state(s.host) == 2


def test_breaker_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        BreakerSettings(failure_ratio=0)
    with pytest.raises(ValueError):
        Retries(attempts=0)
    with pytest.raises(ValueError):
        Timeout(read=0)


def test_a_closed_client_refuses_calls(server: Any) -> None:
    s = server(_ok)
    c = HTTPClient()
    c.close()
    with pytest.raises(ClientError):
        c.get(s.url())
    assert s.requests == []


def test_one_client_is_shared_by_many_threads(server: Any, client: HTTPClient) -> None:
    s = server(_ok)
    statuses: list[int] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(10):
            status = client.get(s.url()).status
            with lock:
                statuses.append(status)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 80
    assert s.accepted <= 16  # the pool's size per host
