"""gRPC client helpers: a channel factory and the interceptor it installs.

Every call made through :func:`channel` (unary and the three streaming kinds, blocking,
``with_call`` or ``future``):

* carries the current correlation id (:func:`patron.correlation.current`, or a new UUID4 when
  none is in scope) in the ``x-correlation-id`` metadata key, unless the caller set one;
* runs in a client span ``gRPC-client /pkg.Service/Method``, child of the active span, whose
  context is injected into the metadata (Jaeger's ``uber-trace-id``); the span is finished when
  the call completes and tagged ``error`` unless it ended ``OK``;
* is timed into ``client_grpc_rpc_duration_seconds`` with the labels ``grpc_type`` (``unary`` or
  ``stream``), ``grpc_target`` (the target given to :func:`channel`), ``grpc_method`` (the full
  method name) and ``grpc_code`` (Go's spelling: ``OK``, ``Unavailable``, ...).

The interceptor runs in the calling thread; completion (span finish, metric) runs in the calling
thread for blocking unary calls and in a grpcio thread for futures and streams.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc
from opentracing.ext import tags

from patron import correlation, metrics, tracing
from patron.grpc._codes import STREAM, UNARY, code_name
from patron.grpc.interceptors import CORRELATION_KEY

__all__ = ["SPAN_COMPONENT", "ClientInterceptor", "channel"]

SPAN_COMPONENT = "gRPC-client"

_duration = metrics.histogram(
    "client_grpc_rpc_duration_seconds",
    "Duration of RPCs completed by the client.",
    ("grpc_type", "grpc_target", "grpc_method", "grpc_code"),
)


class _CallDetails(
    collections.namedtuple(
        "_CallDetails",
        ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression"),
    ),
    grpc.ClientCallDetails,
):
    pass


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Correlation id, trace context and duration metric for every call on a channel.

    ``target`` is the ``grpc_target`` label. Thread-safe: one instance serves every thread
    using the channel. It never raises for its own work; the call's own errors reach the caller
    unchanged.
    """

    def __init__(self, target: str) -> None:
        self._target = target

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(UNARY, continuation, client_call_details, request)

    def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return self._intercept(STREAM, continuation, client_call_details, request)

    def intercept_stream_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(STREAM, continuation, client_call_details, request_iterator)

    def intercept_stream_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request_iterator: Any
    ) -> Any:
        return self._intercept(STREAM, continuation, client_call_details, request_iterator)

    def _intercept(
        self, kind: str, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method
        if isinstance(method, bytes):
            method = method.decode("utf-8", "replace")
        span = tracing.new_span(
            f"{SPAN_COMPONENT} {method}",
            kind=tags.SPAN_KIND_RPC_CLIENT,
            component=SPAN_COMPONENT,
        )
        metadata = list(details.metadata or ())
        carrier: dict[str, str] = {}
        try:
            tracing.inject(carrier, span)
        except Exception:  # tracing must never fail the call
            carrier = {}
        metadata.extend(carrier.items())
        if not any(key == CORRELATION_KEY for key, _ in metadata):
            metadata.append((CORRELATION_KEY, correlation.outgoing()))
        new_details = _CallDetails(
            details.method, details.timeout, metadata, details.credentials,
            getattr(details, "wait_for_ready", None), getattr(details, "compression", None),
        )
        started = time.perf_counter()
        labels = (kind, self._target, method)

        def done(call: Any) -> None:
            try:
                code = call.code()
            except Exception:  # a call that failed before it had a status
                code = grpc.StatusCode.UNKNOWN
            _duration.labels(*labels, code_name(code)).observe(time.perf_counter() - started)
            if code is not grpc.StatusCode.OK:
                span.set_tag(tags.ERROR, True)
            span.set_tag("grpc.code", code_name(code))
            span.finish()

        try:
            outcome = continuation(new_details, request)
        except BaseException:  # grpcio reports failures as outcomes; this is belt and braces
            span.set_tag(tags.ERROR, True)
            span.finish()
            raise
        outcome.add_done_callback(done)
        return outcome


def channel(
    target: str,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
    compression: grpc.Compression | None = None,
) -> grpc.Channel:
    """A channel to ``target`` (``host:port``) with patron's :class:`ClientInterceptor` first.

    ``credentials`` (``grpc.ssl_channel_credentials(...)``) make it a TLS channel; ``options``
    are grpcio channel arguments (message size limits, keepalive); ``interceptors`` run after
    patron's. Close it with ``close()`` or use it as a context manager.
    """
    if credentials is None:
        raw = grpc.insecure_channel(target, options=options, compression=compression)
    else:
        raw = grpc.secure_channel(target, credentials, options=options, compression=compression)
    return grpc.intercept_channel(raw, ClientInterceptor(target), *interceptors)
