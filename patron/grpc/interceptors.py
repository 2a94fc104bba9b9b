"""The server interceptor: recovery, correlation id, tracing, logging and metrics in one pass.

One interceptor does all five so that an RPC pays for one wrapper, one metadata scan and one
clock read instead of five. Per RPC, in the grpcio worker thread that runs the handler:

1. **Correlation id**: read from the ``x-correlation-id`` metadata key, or a new UUID4 when it
   is missing or not a sane id; current (:func:`patron.correlation.current`) while user code runs.
2. **Tracing**: a server span named ``gRPC-server /pkg.Service/Method`` continuing the caller's
   trace from the metadata (W3C ``traceparent`` or Jaeger's ``uber-trace-id``), active while
   user code runs, finished when the RPC ends and tagged ``error`` unless it ended ``OK``.
3. **Recovery**: an exception escaping the handler becomes status ``INTERNAL`` with the details
   ``internal error``; its text and traceback go to the log, never to the caller. A status the
   handler chose (``context.abort()``, or ``context.set_code()`` before raising) is kept, with the
   details the handler set (none otherwise).
4. **Metrics**: ``component_grpc_handled_total`` and ``component_grpc_handled_seconds`` with the
   labels ``grpc_type`` (``unary``, or ``stream`` for all three streaming kinds, as Patron's Go
   interceptors), ``grpc_service``, ``grpc_method`` and ``grpc_code`` (Go's spelling of the status
   code: ``OK``, ``Canceled``, ``InvalidArgument``, ``DeadlineExceeded``, ``Internal`` ...).
   An RPC the client cancelled or let time out is counted as ``Canceled`` / ``DeadlineExceeded``.
5. **Logging** on the ``patron.grpc`` logger: an unhandled exception at ERROR with its
   traceback; an RPC ending with a code in ``error_codes`` at ERROR; every other RPC at DEBUG.

For response-streaming methods the correlation id and span are made current around each step of
the handler's iterator (so they never leak into the worker thread between steps), and the RPC is
counted when the iterator ends, raises, or is dropped by grpcio because the client went away.

The health and reflection services are passed through untouched: their handlers are grpcio's own
(the health ``Watch`` is non-blocking and must stay so), and probes should not flood the logs.
Unknown methods never reach an interceptor's wrapper: grpcio answers them ``UNIMPLEMENTED``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, NoReturn

import grpc
from opentracing.ext import tags

from patron import correlation, metrics, tracing
from patron.grpc._codes import STREAM, UNARY, code_name, split_method

__all__ = [
    "CORRELATION_KEY",
    "DEFAULT_ERROR_CODES",
    "EXCLUDED_SERVICES",
    "INTERNAL_DETAILS",
    "ObservabilityInterceptor",
]

logger = logging.getLogger("patron.grpc")

CORRELATION_KEY = "x-correlation-id"
INTERNAL_DETAILS = "internal error"
SPAN_COMPONENT = "gRPC-server"
EXCLUDED_SERVICES = frozenset({
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
})
DEFAULT_ERROR_CODES = frozenset({
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
})

_LABELS = ("grpc_type", "grpc_service", "grpc_method", "grpc_code")
_handled = metrics.counter(
    "component_grpc_handled_total", "Total number of RPCs completed on the server.", _LABELS
)
_latency = metrics.histogram(
    "component_grpc_handled_seconds", "Latency of RPCs completed on the server.", _LABELS
)

_OK = grpc.StatusCode.OK
_DEADLINE_SLACK = 0.05  # seconds
_Behavior = Callable[[Any, Any], Any]
_FACTORIES = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


class _Method:
    """What one registered method shares across its RPCs: names and metric children by code."""

    __slots__ = ("_children", "error_codes", "full", "kind", "method", "operation", "service")

    def __init__(self, kind: str, full: str, error_codes: frozenset[grpc.StatusCode]) -> None:
        self.kind = kind
        self.full = full
        self.service, self.method = split_method(full)
        self.operation = f"{SPAN_COMPONENT} {full}"
        self.error_codes = error_codes
        self._children: dict[grpc.StatusCode, tuple[Any, Any]] = {}

    def observe(self, code: grpc.StatusCode, seconds: float, span: Any = None) -> None:
        """Count the RPC; a sampled ``span`` gives the latency sample its trace as exemplar."""
        children = self._children.get(code)
        if children is None:  # label lookups take a lock; do them once per (method, code)
            labels = (self.kind, self.service, self.method, code_name(code))
            children = (_handled.labels(*labels), _latency.labels(*labels))
            self._children[code] = children
        children[0].inc()
        found = tracing.ids(span) if span is not None and tracing.is_sampled(span) else None
        children[1].observe(seconds, {"trace_id": found[0]} if found else None)


def _server_span(operation: str, carrier: dict[str, Any], cid: str) -> Any:
    return tracing.new_span(
        operation, carrier, component=SPAN_COMPONENT, tags={"correlationID": cid}
    )


def _completion_code(context: grpc.ServicerContext) -> grpc.StatusCode:
    """The status an RPC ended with once its handler returned (or its client went away)."""
    code = context.code()
    if code is not None:
        return code
    if context.is_active():
        return _OK
    remaining = context.time_remaining()
    # The client's cancel-on-deadline can arrive just before the server's own copy of the
    # deadline passes; count an RPC that ended that close to its deadline as having missed it.
    if remaining is not None and remaining <= _DEADLINE_SLACK:
        return grpc.StatusCode.DEADLINE_EXCEEDED
    return grpc.StatusCode.CANCELLED


class _Call:
    """One RPC in progress. ``with call:`` makes its correlation id and span current."""

    __slots__ = ("_cid_scope", "_done", "_scope", "cid", "context", "method", "span", "started")

    def __init__(self, method: _Method, context: grpc.ServicerContext) -> None:
        self.started = time.perf_counter()
        self.method = method
        self.context = context
        self._done = False
        # The metadata as a dict is the trace carrier too (the last value of a key wins).
        carrier = dict(context.invocation_metadata() or ())
        raw_cid = carrier.get(CORRELATION_KEY)
        self.cid = correlation.ensure(raw_cid if isinstance(raw_cid, (str, bytes)) else None)
        self.span = _server_span(method.operation, carrier, self.cid)

    def __enter__(self) -> None:
        self._cid_scope = correlation.correlation_id(self.cid)
        self._cid_scope.__enter__()
        self._scope = self.span.tracer.scope_manager.activate(self.span, False)

    def __exit__(self, *exc_info: object) -> None:
        self._scope.close()
        self._cid_scope.__exit__(None, None, None)

    def finish(self, code: grpc.StatusCode, error: BaseException | None = None) -> None:
        """Count, log and close the span, once."""
        if self._done:
            return
        self._done = True
        seconds = time.perf_counter() - self.started
        method = self.method
        method.observe(code, seconds, self.span)
        if code is not _OK:
            self.span.set_tag(tags.ERROR, True)
            if error is not None:
                self.span.log_kv({"event": "error", "error.kind": type(error).__name__,
                                  "message": str(error)})
        self.span.finish()
        if error is None and code not in method.error_codes:
            if not logger.isEnabledFor(logging.DEBUG):
                return
            level = logging.DEBUG
        else:
            level = logging.ERROR
        extra = {"grpc_service": method.service, "grpc_method": method.method,
                 "grpc_code": code_name(code), "duration": round(seconds, 6)}
        # The span again, finished but current, so the line carries its trace id.
        with correlation.correlation_id(self.cid), \
                self.span.tracer.scope_manager.activate(self.span, False):
            if error is not None:
                logger.error("grpc: %s raised %s; answered INTERNAL", method.full,
                             type(error).__name__, exc_info=error, extra=extra)
            else:
                logger.log(level, "grpc: %s answered %s", method.full, code_name(code),
                           extra=extra)

    def fail(self, error: Exception) -> NoReturn:
        """Finish the RPC after its handler raised ``error``; always raises."""
        context = self.context
        if not context.is_active():  # the client is gone: there is no one to answer
            self.finish(_completion_code(context))
            raise error
        code = context.code()
        if code is not None and code is not _OK:
            # The handler chose the status (abort, or set_code then raise): keep it, but send
            # only the details it set, never the exception text grpcio would put there.
            details = context.details()
            self.finish(code)
            text = details.decode("utf-8", "replace") if isinstance(details, bytes) else details
            context.abort(code, text or "")
        self.finish(grpc.StatusCode.INTERNAL, error)
        context.abort(grpc.StatusCode.INTERNAL, INTERNAL_DETAILS)
        raise error  # not reached: abort() raises; keeps the NoReturn promise honest


class ObservabilityInterceptor(grpc.ServerInterceptor):
    """Recovery, correlation id, tracing, logging and metrics for every RPC of the user's services.

    ``intercept_service`` runs in grpcio's server threads for each incoming call; it wraps a
    method's handler once and reuses the wrapper. The wrapper runs in the worker thread that
    runs the handler. ``error_codes`` are the status codes logged at ERROR (default
    :data:`DEFAULT_ERROR_CODES`); services in ``excluded_services`` (default: health and
    reflection) are not intercepted.
    """

    def __init__(
        self,
        *,
        error_codes: Iterable[grpc.StatusCode] = DEFAULT_ERROR_CODES,
        excluded_services: Iterable[str] = EXCLUDED_SERVICES,
    ) -> None:
        self._error_codes = frozenset(error_codes)
        self._excluded = frozenset(excluded_services)
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # unknown method: grpcio answers UNIMPLEMENTED
        full = handler_call_details.method
        cached = self._wrapped.get(full)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(full, handler)
        self._wrapped[full] = (handler, wrapped)
        return wrapped

    def _wrap(self, full: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        if split_method(full)[0] in self._excluded:
            return handler
        streaming = (bool(handler.request_streaming), bool(handler.response_streaming))
        behavior = {
            (False, False): handler.unary_unary,
            (False, True): handler.unary_stream,
            (True, False): handler.stream_unary,
            (True, True): handler.stream_stream,
        }[streaming]
        if behavior is None or getattr(behavior, "experimental_non_blocking", False):
            return handler  # a callback-style handler has another signature; leave it alone
        method = _Method(STREAM if any(streaming) else UNARY, full, self._error_codes)
        if streaming[1]:
            wrapper = _stream_response(method, behavior)
        else:
            wrapper = _single_response(method, behavior)
        pool = getattr(behavior, "experimental_thread_pool", None)
        if pool is not None:
            wrapper.experimental_thread_pool = pool  # type: ignore[attr-defined]
        return _FACTORIES[streaming](
            wrapper,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _single_response(method: _Method, behavior: _Behavior) -> _Behavior:
    """Wrap a unary-response handler (unary-unary or stream-unary)."""

    def handle(request: Any, context: grpc.ServicerContext) -> Any:
        call = _Call(method, context)
        try:
            with call:
                response = behavior(request, context)
        except Exception as error:
            call.fail(error)
        call.finish(_completion_code(context))
        return response

    return handle


def _stream_response(method: _Method, behavior: _Behavior) -> _Behavior:
    """Wrap a response-streaming handler (unary-stream or stream-stream)."""

    def handle(request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        call = _Call(method, context)
        try:
            with call:
                responses = behavior(request, context)
        except Exception as error:
            call.fail(error)
        return _responses(call, responses)

    return handle


def _responses(call: _Call, responses: Iterable[Any]) -> Iterator[Any]:
    iterator: Iterator[Any] | None = None
    dropped = False
    try:
        with call:
            iterator = iter(responses)
        while True:
            with call:
                try:
                    item = next(iterator)
                except StopIteration:
                    break
            yield item
    except GeneratorExit:
        dropped = True  # grpcio dropped the stream (client gone); ``finally`` counts it
        raise
    except Exception as error:
        call.fail(error)
    finally:
        # grpcio may drop us while the client is gone; close the handler's generator so its own
        # cleanup runs now, not whenever the garbage collector gets to it.
        try:
            close = getattr(iterator, "close", None)
            if close is not None:
                with call:
                    close()
        finally:
            code = _completion_code(call.context)
            if dropped and code is _OK:
                # The context may still look active for a moment after the client cancelled;
                # a stream grpcio abandoned before its end did not complete.
                code = grpc.StatusCode.CANCELLED
            call.finish(code)
