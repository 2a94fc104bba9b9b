"""Real OTLP trace receivers on loopback that decode what they receive into plain records.

* :class:`OTLPHTTPReceiver`: OTLP/HTTP (``POST /v1/traces``, ``application/x-protobuf``, gzip
  or not), a ``ThreadingHTTPServer`` in a thread of its own;
* :class:`OTLPGRPCReceiver`: OTLP/gRPC (``TraceService/Export``) on a ``grpc.server``.

Both answer every export with an empty ``ExportTraceServiceResponse`` and keep what arrived as
:class:`ReceivedSpan` values; tests wait for a span with :meth:`Receiver.wait_for_span` (a
condition variable, no polling). Use them as context managers, or through the pytest fixtures
``otlp_http`` and ``otlp_grpc`` (import them into a test module to register them)::

    from tests.support.otlp import otlp_grpc, otlp_http  # noqa: F401  (fixtures)

``endpoint`` is ``http://127.0.0.1:PORT``: the value of ``OTEL_EXPORTER_OTLP_ENDPOINT`` for
either protocol (the HTTP exporter appends ``/v1/traces`` to it).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import gzip
import http.server
import threading
import zlib
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

__all__ = [
    "OTLPGRPCReceiver",
    "OTLPHTTPReceiver",
    "ReceivedSpan",
    "Receiver",
    "decode_request",
    "otlp_grpc",
    "otlp_http",
]

#: ``Span.SpanKind`` numbers of the OTLP protocol, by name
SPAN_KINDS = {
    0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer",
}


@dataclasses.dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it. Ids are lowercase hex, ``parent_span_id`` is ""
    for a root span; ``kind`` is a name of :data:`SPAN_KINDS` (``"server"``, ``"consumer"``...)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str = ""


def _any_value(value: common_pb2.AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_any_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {pair.key: _any_value(pair.value) for pair in pairs}


def decode_request(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    """The spans of one export request, flattened with their resource attributes."""
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(ReceivedSpan(
                    name=span.name,
                    trace_id=span.trace_id.hex(),
                    span_id=span.span_id.hex(),
                    parent_span_id=span.parent_span_id.hex(),
                    kind=SPAN_KINDS.get(span.kind, str(span.kind)),
                    attributes=_attributes(span.attributes),
                    resource=resource,
                    scope=scope_spans.scope.name,
                ))
    return spans


class Receiver:
    """What both receivers share: the spans received, and waiting for one.

    Thread-safe: exports arrive on server threads while the test reads.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._spans: list[ReceivedSpan] = []
        #: export requests received (a batch each), and the ones that could not be decoded
        self.requests = 0
        self.errors: list[str] = []
        #: the ``Content-Encoding`` of every OTLP/HTTP export (``identity`` when none)
        self.http_encodings: list[str] = []

    @property
    def endpoint(self) -> str:
        raise NotImplementedError

    def _add(self, spans: list[ReceivedSpan], encoding: str | None = None) -> None:
        with self._cond:
            if encoding is not None:
                self.http_encodings.append(encoding)
            self.requests += 1
            self._spans.extend(spans)
            self._cond.notify_all()

    def _error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)
            self._cond.notify_all()

    @property
    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._cond:
            return list(self._spans)

    def wait_for_span(
        self, predicate: Callable[[ReceivedSpan], bool], timeout: float = 10.0
    ) -> ReceivedSpan:
        """The first span received for which ``predicate`` holds, once one arrived.

        Raises ``AssertionError`` naming the spans that did arrive when none matches within
        ``timeout`` seconds.
        """

        def found() -> ReceivedSpan | None:
            return next((span for span in self._spans if predicate(span)), None)

        with self._cond:
            span = self._cond.wait_for(found, timeout)
            if span is None:
                raise AssertionError(
                    f"no matching span within {timeout}s; received "
                    f"{[(s.name, s.trace_id, s.parent_span_id) for s in self._spans]}"
                    f"{f', errors {self.errors}' if self.errors else ''}"
                )
            return span

    def wait_for_name(self, name: str, trace_id: str | None = None,
                      timeout: float = 10.0) -> ReceivedSpan:
        """The first span called ``name`` (in trace ``trace_id`` when given)."""
        return self.wait_for_span(
            lambda s: s.name == name and (trace_id is None or s.trace_id == trace_id), timeout
        )

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # the exporter keeps its connection alive
    server: _HTTPServer

    def do_POST(self) -> None:
        receiver = self.server.receiver
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        path = self.path.split("?", 1)[0]
        if path != "/v1/traces":
            receiver._error(f"POST {self.path}")
            self._reply(404, b"", "text/plain")
            return
        content_type = (self.headers.get("Content-Type") or "").split(";", 1)[0].strip()
        if content_type != "application/x-protobuf":
            receiver._error(f"Content-Type {content_type!r}")
            self._reply(415, b"", "text/plain")
            return
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        try:
            if encoding == "gzip":
                body = gzip.decompress(body)
            elif encoding == "deflate":
                body = zlib.decompress(body)
            elif encoding != "identity":
                raise ValueError(f"unknown Content-Encoding {encoding!r}")
            request = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
            spans = decode_request(request)
        except Exception as exc:
            receiver._error(f"undecodable export: {exc!r}")
            self._reply(400, b"", "text/plain")
            return
        receiver._add(spans, encoding)
        response = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
        self._reply(200, response, "application/x-protobuf")

    def _reply(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


class _HTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: OTLPHTTPReceiver


class OTLPHTTPReceiver(Receiver):
    """An OTLP/HTTP trace receiver on 127.0.0.1 (an ephemeral port unless ``port`` is given)."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self._port = port
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not started"
        return int(self._server.server_address[1])

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        server = _HTTPServer(("127.0.0.1", self._port), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05},
            name="otlp-http-receiver", daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(10)

    def __enter__(self) -> OTLPHTTPReceiver:
        self.start()
        return self


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OTLPGRPCReceiver) -> None:
        self._receiver = receiver

    def Export(
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        self._receiver._add(decode_request(request))
        return trace_service_pb2.ExportTraceServiceResponse()


class OTLPGRPCReceiver(Receiver):
    """An OTLP/gRPC trace receiver on 127.0.0.1 (an ephemeral port unless ``port`` is given)."""

    def __init__(self, port: int = 0) -> None:
        super().__init__()
        self._requested_port = port
        self._port = 0
        self._server: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "the receiver is not started"
        return self._port

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(
            4, thread_name_prefix="otlp-grpc-receiver"
        )
        server = grpc.server(self._executor)
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceService(self), server)
        self._port = server.add_insecure_port(f"127.0.0.1:{self._requested_port}")
        assert self._port, "the gRPC receiver could not bind"
        server.start()
        self._server = server

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.stop(grace=None).wait(10)
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None

    def __enter__(self) -> OTLPGRPCReceiver:
        self.start()
        return self


@pytest.fixture
def otlp_http() -> Iterator[OTLPHTTPReceiver]:
    """An OTLP/HTTP receiver for the test, stopped after it."""
    with OTLPHTTPReceiver() as receiver:
        yield receiver


@pytest.fixture
def otlp_grpc() -> Iterator[OTLPGRPCReceiver]:
    """An OTLP/gRPC receiver for the test, stopped after it."""
    with OTLPGRPCReceiver() as receiver:
        yield receiver
