"""A traced HTTP client with timeouts, retries and a circuit breaker per host.

Usage::

    from patron.http.client import HTTPClient

    client = HTTPClient()                      # share one client between all threads
    response = client.get("http://users/42", deadline=2.0)
    if response.status == 200:
        user = response.json()

What a call does, in the calling thread (the client starts no thread of its own):

* one client span ``HTTP <METHOD>`` (kind ``client``, component ``http-client``), child of the
  active span, tagged ``http.method``, ``http.url`` (without its query), ``http.status_code``
  and ``error`` on a 5xx or an exception; its context is injected into the request headers
  (Jaeger's ``uber-trace-id``), and ``X-Correlation-Id`` carries :func:`patron.correlation.outgoing`
  unless the caller set one;
* attempts through a connection pool per host (urllib3's ``PoolManager``, at most
  ``max_connections_per_host`` connections; a call waits for a free one no longer than its
  connect timeout). Every attempt has a connect and a read timeout (:class:`Timeout`);
* retries (:class:`Retries`) of idempotent methods only (GET, HEAD, OPTIONS, PUT, DELETE,
  TRACE) after a connection failure (refused, reset, connect timeout) or a 502/503/504, with
  exponential backoff and full jitter. Read timeouts are not retried. With a ``deadline`` (seconds
  for the whole call, backoff included) a retry is not started when less than
  ``Retries.min_time_left`` would be left for it, and each attempt's timeouts are cut to what is
  left, so the call ends by the deadline (a server trickling its body byte by byte can still
  hold each read for the read timeout);
* each attempt asks the host's circuit breaker (:class:`BreakerSettings`) first. 5xx responses,
  connection failures and timeouts are failures, anything else (4xx included) a success;
* ``Accept-Encoding: gzip, deflate`` is sent unless set, and gzip/deflate bodies are decoded
  (the ``Content-Encoding`` header of the :class:`Response` is left as the server sent it).
  Redirects are not followed: a 3xx is returned like any other status.

Metrics: ``client_http_request_duration_seconds`` (histogram per attempt, labels ``method``,
``host`` as ``host:port``, ``status_code``: the status, or ``"error"`` for a connection failure,
``"timeout"`` for a timeout) and ``client_http_circuit_state`` (gauge per ``host``: 0 closed,
1 half-open, 2 open; updated when the state changes, so an open circuit whose cool-down has
passed reads 2 until the next call probes it).

What raises what: HTTP error statuses are not exceptions, the :class:`Response` is returned.
Everything else is a :class:`ClientError`, its cause chained: :class:`OpenCircuit` (the host's
circuit is open, nothing was sent), :class:`ConnectError` (refused, reset, name resolution,
protocol errors), :class:`RequestTimeout` (connect or read timeout, no pooled connection in time,
deadline already spent), and :class:`ClientError` itself for anything else (a bad URL, an
undecodable body, a closed client). When a retry is refused by the breaker or the deadline, the
last attempt's outcome (its response or its error) is what the call returns or raises.

The circuit breaker is hand-written rather than pybreaker's (1.4): pybreaker holds one lock for
the whole duration of a guarded call, which would serialise every concurrent request to a host;
it trips on consecutive failures only (no failure ratio over a window); and in half-open it lets
every caller through instead of a single probe. This one keeps a lock for bookkeeping only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json as jsonlib
import random
import threading
import time
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import urllib3
from opentracing.ext import tags
from urllib3 import exceptions as u3
from urllib3.util import parse_url

from patron import correlation, metrics, tracing

__all__ = [
    "IDEMPOTENT_METHODS",
    "BreakerSettings",
    "CircuitState",
    "ClientError",
    "ConnectError",
    "HTTPClient",
    "OpenCircuit",
    "RequestTimeout",
    "Response",
    "Retries",
    "Timeout",
]

SPAN_COMPONENT = "http-client"
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"))
_KNOWN_METHODS = IDEMPOTENT_METHODS | {"POST", "PATCH", "CONNECT"}

_duration = metrics.histogram(
    "client_http_request_duration_seconds",
    "Duration of HTTP requests sent by the client (each attempt), by method, host and status "
    "code (error: no response, timeout: timed out)",
    ("method", "host", "status_code"),
)
_circuit_state = metrics.gauge(
    "client_http_circuit_state",
    "State of the HTTP client's circuit breaker per host: 0 closed, 1 half-open, 2 open",
    ("host",),
)

# Histogram children per (method, host, status code): labels() validates and locks on every
# call, a dict lookup does not. Bounded, in case hosts come from data.
_children: dict[tuple[str, str, str], Any] = {}
_CHILDREN_CACHE_SIZE = 1024


class CircuitState:
    """The values of ``client_http_circuit_state``."""

    CLOSED = 0
    HALF_OPEN = 1
    OPEN = 2


# -- errors -----------------------------------------------------------------------------------


class ClientError(Exception):
    """Every failure of a call that did not end with an HTTP response."""

    def __init__(self, message: str, method: str = "", url: str = "") -> None:
        super().__init__(message)
        self.method = method
        self.url = url


class OpenCircuit(ClientError):
    """The host's circuit is open (or half-open with its probe in flight): nothing was sent."""

    def __init__(self, host: str, method: str = "", url: str = "") -> None:
        super().__init__(f"circuit open for {host}", method, url)
        self.host = host


class ConnectError(ClientError):
    """The connection failed: refused, reset, name not resolved, broken HTTP exchange."""


class RequestTimeout(ClientError):
    """A connect or read timeout, no pooled connection in time, or the deadline spent."""


# -- settings ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Timeout:
    """Seconds to connect, and to wait for each read of the response, per attempt."""

    connect: float = 5.0
    read: float = 30.0

    def __post_init__(self) -> None:
        if not (self.connect > 0 and self.read > 0):
            raise ValueError("timeouts must be positive")


@dataclasses.dataclass(frozen=True)
class Retries:
    """Retries of idempotent methods after a connection failure or one of ``statuses``.

    ``attempts`` counts the first one (1 disables retries). The n-th retry waits a random time
    between 0 and ``min(max_backoff, backoff * 2 ** (n - 1))``. A retry is not started when,
    after its wait, less than ``min_time_left`` seconds would be left before the deadline.
    """

    attempts: int = 3
    backoff: float = 0.05
    max_backoff: float = 2.0
    statuses: frozenset[int] = frozenset((502, 503, 504))
    min_time_left: float = 0.01

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("attempts must be at least 1")
        if self.backoff < 0 or self.max_backoff < 0 or self.min_time_left < 0:
            raise ValueError("backoff and min_time_left must not be negative")

    def delay(self, retry: int) -> float:
        return random.uniform(0.0, min(self.max_backoff, self.backoff * 2 ** (retry - 1)))


NO_RETRIES = Retries(attempts=1)


@dataclasses.dataclass(frozen=True)
class BreakerSettings:
    """When a host's circuit opens, and for how long.

    Closed → open after ``consecutive_failures`` failures in a row, or when at least
    ``failure_ratio`` of the calls that completed in the last ``window`` seconds failed, once
    there were ``minimum_calls`` of them. Open → half-open ``cool_down`` seconds later, on the
    next call, which is the probe (other calls get :class:`OpenCircuit` while it runs). Its
    success closes the circuit, its failure opens it for another ``cool_down``.
    """

    consecutive_failures: int = 5
    failure_ratio: float = 0.5
    minimum_calls: int = 20
    window: float = 10.0
    cool_down: float = 5.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1 or self.minimum_calls < 1:
            raise ValueError("consecutive_failures and minimum_calls must be at least 1")
        if not 0 < self.failure_ratio <= 1:
            raise ValueError("failure_ratio must be in (0, 1]")
        if self.window <= 0 or self.cool_down < 0:
            raise ValueError("window must be positive and cool_down not negative")


# -- the response -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Response:
    """A complete response; ``headers`` is case-insensitive, ``body`` decoded from gzip/deflate."""

    status: int
    headers: Mapping[str, str]
    body: bytes
    url: str = ""

    @property
    def ok(self) -> bool:
        """True for a status below 400."""
        return self.status < 400

    @property
    def text(self) -> str:
        """The body decoded with the charset of ``Content-Type`` (UTF-8 without one)."""
        charset = "utf-8"
        for param in self.headers.get("Content-Type", "").split(";")[1:]:
            name, _, value = param.strip().partition("=")
            if name.lower() == "charset" and value:
                charset = value.strip('"')
        try:
            return self.body.decode(charset, "replace")
        except LookupError:
            return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        """The body parsed as JSON; raises ``ValueError`` when it is not."""
        return jsonlib.loads(self.body)


# -- the circuit breaker ----------------------------------------------------------------------

_BUCKETS = 10


class _Breaker:
    """One host's circuit: thread-safe, its lock held for bookkeeping only."""

    def __init__(self, host: str, settings: BreakerSettings) -> None:
        self.host = host
        self._settings = settings
        self._lock = threading.Lock()
        self.state = CircuitState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._probing = False
        self._width = settings.window / _BUCKETS
        # [bucket index, calls, failures] in a ring covering the window
        self._buckets = [[-1, 0, 0] for _ in range(_BUCKETS)]
        self._gauge = _circuit_state.labels(host)
        self._gauge.set(CircuitState.CLOSED)

    def acquire(self) -> bool:
        """Whether the call is the half-open probe; raises OpenCircuit when it may not go."""
        if self.state == CircuitState.CLOSED:  # a racy read is fine: record() rechecks
            return False
        with self._lock:
            if self.state == CircuitState.CLOSED:
                return False
            if self.state == CircuitState.OPEN:
                if time.monotonic() - self._opened_at < self._settings.cool_down:
                    raise OpenCircuit(self.host)
                self._set(CircuitState.HALF_OPEN)
            if self._probing:
                raise OpenCircuit(self.host)
            self._probing = True
            return True

    def record(self, probe: bool, failed: bool) -> None:
        with self._lock:
            if probe:
                self._probing = False
                if failed:
                    self._open()
                else:
                    self._reset()
                    self._set(CircuitState.CLOSED)
                return
            if self.state != CircuitState.CLOSED:
                return  # started before the circuit opened: already accounted for
            index = int(time.monotonic() / self._width)
            bucket = self._buckets[index % _BUCKETS]
            if bucket[0] != index:
                bucket[0], bucket[1], bucket[2] = index, 0, 0
            bucket[1] += 1
            if failed:
                bucket[2] += 1
                self._consecutive += 1
            else:
                self._consecutive = 0
                return
            settings = self._settings
            if self._consecutive >= settings.consecutive_failures:
                self._open()
                return
            calls = failures = 0
            for start, n, f in self._buckets:
                if index - start < _BUCKETS:
                    calls += n
                    failures += f
            if calls >= settings.minimum_calls and failures >= settings.failure_ratio * calls:
                self._open()

    def _open(self) -> None:
        self._opened_at = time.monotonic()
        self._reset()
        self._set(CircuitState.OPEN)

    def _reset(self) -> None:
        self._consecutive = 0
        for bucket in self._buckets:
            bucket[0], bucket[1], bucket[2] = -1, 0, 0

    def _set(self, state: int) -> None:
        self.state = state
        self._gauge.set(state)


# -- the client -------------------------------------------------------------------------------


class _Failed(Exception):
    """An attempt's error and whether a retry may follow it (internal)."""

    def __init__(self, error: ClientError, retryable: bool, host_failure: bool) -> None:
        self.error = error
        self.retryable = retryable
        self.host_failure = host_failure  # counts against the host's circuit


def _observe(method: str, host: str, code: str, elapsed: float) -> None:
    labels = (method, host, code)
    child = _children.get(labels)
    if child is None:
        child = _duration.labels(*labels)
        if len(_children) < _CHILDREN_CACHE_SIZE:
            _children[labels] = child
    child.observe(elapsed)


class HTTPClient:
    """A thread-safe HTTP client; share one per process (or per group of hosts).

    ``breaker=None`` disables the circuit breaker, ``retries=None`` retries; ``deadline`` is a
    default for :meth:`request`'s (seconds for a whole call, None for no limit beyond the
    timeouts of each attempt).
    """

    def __init__(
        self,
        timeout: Timeout = Timeout(),
        retries: Retries | None = Retries(),
        breaker: BreakerSettings | None = BreakerSettings(),
        max_connections_per_host: int = 16,
        deadline: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_connections_per_host < 1:
            raise ValueError("max_connections_per_host must be at least 1")
        self._timeout = timeout
        self._retries = retries or NO_RETRIES
        self._breaker_settings = breaker
        self._deadline = deadline
        self._headers = dict(headers or {})
        self._pool = urllib3.PoolManager(
            num_pools=64,
            maxsize=max_connections_per_host,
            block=True,
            retries=False,
        )
        self._breakers: dict[str, _Breaker] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()

    # -- shortcuts

    def get(self, url: str, **kw: Any) -> Response:
        return self.request("GET", url, **kw)

    def head(self, url: str, **kw: Any) -> Response:
        return self.request("HEAD", url, **kw)

    def post(self, url: str, **kw: Any) -> Response:
        return self.request("POST", url, **kw)

    def put(self, url: str, **kw: Any) -> Response:
        return self.request("PUT", url, **kw)

    def patch(self, url: str, **kw: Any) -> Response:
        return self.request("PATCH", url, **kw)

    def delete(self, url: str, **kw: Any) -> Response:
        return self.request("DELETE", url, **kw)

    # -- lifecycle

    def close(self) -> None:
        """Close pooled connections; calls after this (or backing off now) raise ClientError."""
        self._closed.set()
        self._pool.clear()

    def __enter__(self) -> HTTPClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def circuit_state(self, url: str) -> int:
        """The :class:`CircuitState` of ``url``'s host (CLOSED for a host not called yet)."""
        parsed = parse_url(url)
        breaker = self._breakers.get(f"{parsed.host}:{parsed.port or _default_port(parsed)}")
        return CircuitState.CLOSED if breaker is None else breaker.state

    # -- the call

    def request(
        self,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        json: Any = None,
        timeout: Timeout | None = None,
        deadline: float | None = None,
    ) -> Response:
        """Send a request and return its response, whatever its status.

        ``json`` (not with ``body``) is serialised and sent as ``application/json``.
        ``timeout`` overrides the client's per-attempt timeouts; ``deadline`` is the seconds
        the whole call, retries included, may take (the client's default when None).
        """
        started = time.monotonic()
        method = method.upper()
        if deadline is None:
            deadline = self._deadline
        end = None if deadline is None else started + deadline
        if self._closed.is_set():
            raise ClientError("client closed", method, url)
        try:
            parsed = parse_url(url)
        except u3.LocationParseError as exc:
            raise ClientError(f"invalid URL: {exc}", method, url) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ClientError(f"not an http(s) URL: {url!r}", method, url)
        host = f"{parsed.host}:{parsed.port or _default_port(parsed)}"

        send: dict[str, str] = dict(self._headers)
        if headers:
            send.update(headers)
        payload: bytes | str | None = body
        if json is not None:
            if body is not None:
                raise ClientError("pass body or json, not both", method, url)
            payload = jsonlib.dumps(json, separators=(",", ":")).encode()
            if not _has(send, "Content-Type"):
                send["Content-Type"] = "application/json"
        if not _has(send, "Accept-Encoding"):
            send["Accept-Encoding"] = "gzip, deflate"
        if not _has(send, correlation.HEADER):
            send[correlation.HEADER] = correlation.outgoing()

        span = tracing.new_span(
            f"HTTP {method}", kind=tags.SPAN_KIND_RPC_CLIENT, component=SPAN_COMPONENT
        )
        sampled = tracing.is_sampled(span)
        if sampled:
            span.set_tag(tags.HTTP_METHOD, method)
            span.set_tag(tags.HTTP_URL, url.split("?", 1)[0])
        with contextlib.suppress(Exception):  # tracing must never fail the call
            tracing.inject(send, span)

        label = method if method in _KNOWN_METHODS else "OTHER"
        try:
            response, attempts = self._attempts(
                method, url, host, label, send, payload, timeout or self._timeout, end
            )
        except ClientError as exc:
            exc.method, exc.url = method, url
            if sampled:
                span.set_tag(tags.ERROR, True)
                span.log_kv({"event": "error", "error.kind": type(exc).__name__,
                             "message": str(exc)})
            span.finish()
            raise
        except BaseException:
            span.set_tag(tags.ERROR, True)
            span.finish()
            raise
        if sampled:
            span.set_tag(tags.HTTP_STATUS_CODE, response.status)
            if attempts > 1:
                span.set_tag("http.attempts", attempts)
            if response.status >= 500:
                span.set_tag(tags.ERROR, True)
        span.finish()
        return response

    def _breaker(self, host: str) -> _Breaker | None:
        settings = self._breaker_settings
        if settings is None:
            return None
        breaker = self._breakers.get(host)
        if breaker is None:
            with self._lock:
                breaker = self._breakers.get(host)
                if breaker is None:
                    breaker = self._breakers[host] = _Breaker(host, settings)
        return breaker

    def _attempts(
        self,
        method: str,
        url: str,
        host: str,
        label: str,
        headers: dict[str, str],
        body: bytes | str | None,
        timeout: Timeout,
        end: float | None,
    ) -> tuple[Response, int]:
        retries = self._retries
        may_retry = method in IDEMPOTENT_METHODS
        breaker = self._breaker(host)
        outcome: Response | _Failed | None = None
        attempt = 0
        while True:
            attempt += 1
            if attempt > 1:
                wait = retries.delay(attempt - 1)
                if end is not None and time.monotonic() + wait + retries.min_time_left >= end:
                    break
                if self._closed.wait(wait):
                    raise ClientError("client closed")
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                if outcome is None:
                    raise RequestTimeout("deadline spent before the request was sent")
                break
            try:
                probe = breaker.acquire() if breaker is not None else False
            except OpenCircuit:
                if outcome is None:
                    raise
                break  # the last attempt's outcome stands
            outcome = self._attempt(
                method, url, host, label, headers, body, timeout, left, breaker, probe
            )
            if attempt >= retries.attempts or not may_retry:
                break
            if isinstance(outcome, Response):
                if outcome.status not in retries.statuses:
                    break
            elif not outcome.retryable:
                break
        if isinstance(outcome, _Failed):
            raise outcome.error from outcome.error.__cause__
        assert outcome is not None
        return outcome, attempt

    def _attempt(
        self,
        method: str,
        url: str,
        host: str,
        label: str,
        headers: dict[str, str],
        body: bytes | str | None,
        timeout: Timeout,
        left: float | None,
        breaker: _Breaker | None,
        probe: bool,
    ) -> Response | _Failed:
        if left is None:
            u3_timeout = urllib3.Timeout(connect=timeout.connect, read=timeout.read)
            pool_timeout = timeout.connect
        else:
            u3_timeout = urllib3.Timeout(
                total=left, connect=min(timeout.connect, left), read=min(timeout.read, left)
            )
            pool_timeout = min(timeout.connect, left)
        started = time.perf_counter()
        try:
            raw = self._pool.request(
                method,
                url,
                body=body,
                headers=headers,
                timeout=u3_timeout,
                retries=False,
                redirect=False,
                preload_content=True,
                decode_content=True,
                pool_timeout=pool_timeout,
            )
        except u3.HTTPError as exc:
            result = _failure(exc)
            code = "timeout" if isinstance(result.error, RequestTimeout) else "error"
            _observe(label, host, code, time.perf_counter() - started)
            if breaker is not None:
                breaker.record(probe, result.host_failure)
            return result
        except BaseException:
            if breaker is not None and probe:
                breaker.record(probe, True)  # never leave the probe slot taken
            raise
        elapsed = time.perf_counter() - started
        status = raw.status
        _observe(label, host, str(status), elapsed)
        if breaker is not None:
            breaker.record(probe, status >= 500)
        return Response(status, raw.headers, raw.data, url)


def _failure(exc: u3.HTTPError) -> _Failed:
    reason: BaseException | None = exc
    if isinstance(exc, u3.MaxRetryError) and exc.reason is not None:
        reason = exc.reason
    error: ClientError
    retryable = False
    host_failure = True
    if isinstance(reason, u3.NewConnectionError):  # before ConnectTimeoutError: a subclass
        error, retryable = ConnectError(f"cannot connect: {reason}"), True
    elif isinstance(reason, u3.ConnectTimeoutError):
        error, retryable = RequestTimeout(f"connect timeout: {reason}"), True
    elif isinstance(reason, u3.EmptyPoolError):  # our pool is busy, not the host at fault
        error, host_failure = RequestTimeout(f"no free connection: {reason}"), False
    elif isinstance(reason, u3.TimeoutError):
        error = RequestTimeout(f"timeout: {reason}")
    elif isinstance(reason, u3.ProtocolError):
        error, retryable = ConnectError(f"connection failed: {reason}"), True
    else:
        error, host_failure = ClientError(f"request failed: {reason}"), False
    error.__cause__ = reason
    return _Failed(error, retryable, host_failure)


def _has(headers: Mapping[str, str], name: str) -> bool:
    lower = name.lower()
    return any(key.lower() == lower for key in headers)


def _default_port(parsed: Any) -> int:
    return 443 if parsed.scheme == "https" else 80
