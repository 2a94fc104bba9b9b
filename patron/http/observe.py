"""The observability chain every user route and mount runs in.

Order, outermost first: recovery (an exception becomes a bare 500, its text never sent) →
correlation id (from ``X-Correlation-Id`` or new; set for the request's context and echoed on the
response) → tracing span ``"<METHOD> <pattern>"`` continuing an incoming trace (W3C
``traceparent`` or Jaeger's ``uber-trace-id``), and the
request log line (ERROR for the configured statuses, DEBUG otherwise) → metrics
``component_http_handled_total`` / ``component_http_handled_seconds`` → the application.

Span, log and metrics are completed when the server closes the response iterable, so a streamed
body is measured to its end. Everything here runs in the server's worker thread.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from patron import correlation, metrics, tracing
from patron.config import StatusCodes

__all__ = ["Observer"]

logger = logging.getLogger("patron.http")

_handled_total = metrics.counter(
    "component_http_handled_total",
    "HTTP requests handled, by method, route pattern and status code",
    ("method", "path", "status_code"),
)
_handled_seconds = metrics.histogram(
    "component_http_handled_seconds",
    "Time to handle HTTP requests, by method, route pattern and status code",
    ("method", "path", "status_code"),
)

# The children of both metrics per (method, pattern, status code): labels() validates and
# locks on every call, a dict lookup does not. Bounded, as methods come from clients.
_children: dict[tuple[str, str, str], tuple[Any, Any]] = {}
_CHILDREN_CACHE_SIZE = 1024

_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
)
_INTERNAL_ERROR = b"Internal Server Error"
_CORRELATION_ENVIRON = "HTTP_X_CORRELATION_ID"
# The headers a trace context arrives in: W3C trace context and baggage, and Jaeger's.
_TRACE_ENVIRON_PREFIXES = (
    "HTTP_TRACEPARENT", "HTTP_TRACESTATE", "HTTP_BAGGAGE", "HTTP_UBER_TRACE_ID", "HTTP_UBERCTX_",
)
StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def _trace_carrier(environ: dict[str, Any]) -> dict[str, str] | None:
    if "HTTP_TRACEPARENT" not in environ and "HTTP_UBER_TRACE_ID" not in environ:
        return None
    return {
        key[5:].replace("_", "-").lower(): value
        for key, value in environ.items()
        if key.startswith(_TRACE_ENVIRON_PREFIXES)
    }


class Observer:
    """Wraps a WSGI app call in recovery, correlation, tracing, logging and metrics."""

    def __init__(self, error_statuses: StatusCodes) -> None:
        self._error_statuses = error_statuses

    def __call__(
        self, pattern: str, app: WSGIApp, environ: dict[str, Any], start_response: StartResponse
    ) -> Iterable[bytes]:
        started = time.perf_counter()
        method = environ.get("REQUEST_METHOD", "")
        if method not in _METHODS:
            method = "OTHER"  # clients choose the method: keep metric labels bounded
        cid = correlation.ensure(environ.get(_CORRELATION_ENVIRON))
        exchange = _Exchange(self, pattern, method, cid, started, start_response)
        exchange.enter(_trace_carrier(environ))
        try:
            body = app(environ, exchange.start_response)
        except Exception:
            logger.exception("%s %s: unhandled exception", method, pattern)
            body = exchange.internal_error()
        return _ClosingBody(body, exchange)


class _Exchange:
    """The state of one request while it passes through the chain."""

    __slots__ = (
        "_cid_token", "_observer", "_span_scope", "_start_response", "cid", "method",
        "pattern", "started", "status",
    )

    def __init__(
        self,
        observer: Observer,
        pattern: str,
        method: str,
        cid: str,
        started: float,
        start_response: StartResponse,
    ) -> None:
        self._observer = observer
        self.pattern = pattern
        self.method = method
        self.cid = cid
        self.started = started
        self._start_response = start_response
        self.status = 500
        self._cid_token: Any = None
        self._span_scope: Any = None

    def enter(self, carrier: dict[str, str] | None) -> None:
        self._cid_token = correlation.bind(self.cid)
        self._span_scope = tracing.start_span(
            f"{self.method} {self.pattern}",
            carrier=carrier,
            component="http",
            tags={"http.method": self.method, "correlationID": self.cid},
        )

    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], Any]:
        self.status = int(status[:3])
        headers.append((correlation.HEADER, self.cid))
        return self._start_response(status, headers, exc_info)

    def internal_error(self) -> list[bytes]:
        self.start_response(
            "500 Internal Server Error",
            [("Content-Type", "text/plain"), ("Content-Length", str(len(_INTERNAL_ERROR)))],
            sys.exc_info(),
        )
        return [_INTERNAL_ERROR]

    def finish(self, failed: bool) -> None:
        elapsed = time.perf_counter() - self.started
        status = 500 if failed else self.status
        code = str(status)
        labels = (self.method, self.pattern, code)
        children = _children.get(labels)
        if children is None:
            children = (_handled_total.labels(*labels), _handled_seconds.labels(*labels))
            if len(_children) < _CHILDREN_CACHE_SIZE:
                _children[labels] = children
        children[0].inc()
        span = self._span_scope.span
        if tracing.is_sampled(span):
            span.set_tag("http.status_code", status)
            if status >= 500:
                span.set_tag("error", True)
            # The trace behind this sample, shown to a scraper that asks for OpenMetrics.
            found = tracing.ids(span)
            children[1].observe(elapsed, {"trace_id": found[0]} if found else None)
        else:
            children[1].observe(elapsed)
        level = logging.ERROR if status in self._observer._error_statuses else logging.DEBUG
        if logger.isEnabledFor(level):  # inside the span: the line carries its trace id
            logger.log(
                level,
                "%s %s %d %.1fms", self.method, self.pattern, status, elapsed * 1000,
                extra={"method": self.method, "path": self.pattern, "status": status},
            )
        self._span_scope.close()
        correlation.unbind(self._cid_token)


class _ClosingBody:
    """Iterates the application's body and completes the exchange when the server closes it."""

    __slots__ = ("_body", "_exchange", "_failed")

    def __init__(self, body: Iterable[bytes], exchange: _Exchange) -> None:
        self._body = body
        self._exchange = exchange
        self._failed = False

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._body
        except Exception:
            # Headers are gone already: all that is left is to log and let the server drop
            # the connection.
            self._failed = True
            logger.exception("%s %s: body failed", self._exchange.method, self._exchange.pattern)
            raise

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.finish(self._failed)
