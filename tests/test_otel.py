"""The OpenTelemetry backend (``Config(tracing="otel")``) and W3C / Jaeger propagation.

Spans go out over real OTLP (HTTP or gRPC) to the receivers of :mod:`tests.support.otlp` and are
asserted on as decoded there. Every incoming context is a fresh random trace, so a test never
matches another's spans. The SDK reads the ``OTEL_*`` variables when a Service sets it up; the
``otel`` fixture points them at the test's receiver, with a short batch delay.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import http.server
import json
import logging
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GRPCSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HTTPSpanExporter,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind

from patron import Config, Service, log, tracing
from patron.amqp import AMQPConsumer, AMQPPublisher
from patron.grpc import GRPCComponent, channel
from patron.http import Request, Route
from patron.http.client import HTTPClient
from patron.kafka import KafkaConsumer, KafkaPublisher
from patron.messaging import Batch, Message, per_message
from patron.sqs import SQSConsumer, SQSPublisher
from samples.greeter_pb2 import HelloReply, HelloRequest
from tests.amqp.conftest import Broker
from tests.amqp.conftest import amqp_url as amqp_url  # fixtures, registered by import
from tests.amqp.conftest import broker as broker
from tests.conftest import ServiceProcess, free_port, http_status, wait_for
from tests.http.conftest import Serve
from tests.http.conftest import serve as serve
from tests.kafka.conftest import SESSION_TIMEOUT, Kafka
from tests.kafka.conftest import kafka as kafka
from tests.kafka.conftest import kafka_brokers as kafka_brokers
from tests.sqs.conftest import QueueFactory
from tests.sqs.conftest import connection as connection
from tests.sqs.conftest import make_queue as make_queue
from tests.sqs.conftest import sqs as sqs
from tests.sqs.conftest import sqs_endpoint as sqs_endpoint
from tests.support.components import Recorder, running
from tests.support.jaeger import SpanCapture
from tests.support.otlp import OTLPGRPCReceiver, OTLPHTTPReceiver, ReceivedSpan
from tests.support.otlp import otlp_grpc as otlp_grpc
from tests.support.otlp import otlp_http as otlp_http

WAIT = 15.0  # one-sided bound for a batch to arrive on a loaded machine
BROKER_WAIT = 30.0  # a Kafka group join plus consumption on a loaded machine
HEADERS = ("traceparent", "uber-trace-id")


# -- helpers ----------------------------------------------------------------------------------


def new_ids() -> tuple[str, str]:
    """A random caller context: (trace id, 32 hex; span id, 16 hex)."""
    return secrets.token_hex(16), secrets.token_hex(8)


def incoming(header: str, trace_id: str, span_id: str) -> dict[str, str]:
    """The carrier a sampled caller in trace ``trace_id``, span ``span_id`` would send."""
    if header == "traceparent":
        return {"traceparent": f"00-{trace_id}-{span_id}-01"}
    # Jaeger writes its ids without leading zeros: the receiver must pad them back.
    return {"uber-trace-id": f"{int(trace_id, 16):x}:{int(span_id, 16):x}:0:1"}


def assert_continues(span: ReceivedSpan, trace_id: str, parent_id: str, service: str,
                     version: str) -> None:
    assert (span.trace_id, span.parent_span_id) == (trace_id, parent_id), span
    assert span.resource.get("service.name") == service, span.resource
    assert span.resource.get("service.version") == version, span.resource


def assert_carries(carrier: dict[str, str], span: ReceivedSpan) -> None:
    """``carrier`` holds both a ``traceparent`` and an ``uber-trace-id`` naming ``span``."""
    lower = {key.lower(): value for key, value in carrier.items()}
    assert "traceparent" in lower and "uber-trace-id" in lower, carrier
    version, trace_id, span_id, flags = lower["traceparent"].split("-")
    assert (version, trace_id, span_id) == ("00", span.trace_id, span.span_id), carrier
    assert int(flags, 16) & 1, carrier  # sampled
    jaeger_trace, jaeger_span, _parent, jaeger_flags = lower["uber-trace-id"].split(":")
    assert int(jaeger_trace, 16) == int(span.trace_id, 16), carrier
    assert int(jaeger_span, 16) == int(span.span_id, 16), carrier
    assert int(jaeger_flags, 16) & 1, carrier


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def otel_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, protocol: str,
                     delay_ms: int = 100) -> None:
    for name in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES", "OTEL_SDK_DISABLED",
                 "OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                 "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_HEADERS",
                 "OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_PROPAGATORS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_always_on")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", str(delay_ms))


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch, otlp_http: OTLPHTTPReceiver) -> OTLPHTTPReceiver:
    """The OTLP/HTTP receiver, with the ``OTEL_*`` environment pointing at it."""
    otel_environment(monkeypatch, otlp_http.endpoint, "http/protobuf")
    return otlp_http


def otel_config(**settings: Any) -> Config:
    return Config(**{"tracing": "otel", "shutdown_timeout": 15.0, "drain_delay": 0.0,
                     **settings})


def thread_names() -> set[str]:
    return {t.name for t in threading.enumerate()}


class HeaderRecorder:
    """A tiny HTTP server on loopback that answers 200 and records every request's headers."""

    def __init__(self) -> None:
        self.seen: list[dict[str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                recorder.seen.append(dict(self.headers.items()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


@pytest.fixture
def downstream() -> Iterator[HeaderRecorder]:
    recorder = HeaderRecorder()
    yield recorder
    recorder.close()


@pytest.fixture
def grpc_downstream() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """A bare grpc server (no patron) answering ``patron.test.Echo/Say`` and recording the
    invocation metadata: ``(address, seen)``."""
    seen: list[dict[str, str]] = []

    def say(request: HelloRequest, context: Any) -> HelloReply:
        seen.append({key: text(value) for key, value in context.invocation_metadata()})
        return HelloReply(message=f"echo {request.name}")

    handler = grpc.method_handlers_generic_handler("patron.test.Echo", {
        "Say": grpc.unary_unary_rpc_method_handler(
            say, HelloRequest.FromString, HelloReply.SerializeToString),
    })
    with concurrent.futures.ThreadPoolExecutor(2) as executor:
        server = grpc.server(executor, handlers=[handler])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        yield f"127.0.0.1:{port}", seen
        server.stop(None).wait(10)


def say_stub(ch: grpc.Channel) -> Callable[..., HelloReply]:
    return ch.unary_unary("/patron.test.Echo/Say", HelloRequest.SerializeToString,
                          HelloReply.FromString)


# -- the receivers, checked with the OpenTelemetry SDK alone -----------------------------------


def _export_with_sdk(exporter: Any) -> tuple[str, str, str]:
    """Export a parent and a child span through ``exporter``; (trace id, parent id, child id)."""
    provider = TracerProvider(resource=Resource.create(
        {"service.name": "receiver-self-test", "service.version": "9.9"}))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=50))
    otel_tracer = provider.get_tracer("tests.otel")
    try:
        with otel_tracer.start_as_current_span("parent", kind=SpanKind.SERVER) as parent, \
                otel_tracer.start_as_current_span(
                    "child", kind=SpanKind.CLIENT,
                    attributes={"a.str": "x", "a.int": 7, "a.bool": True, "a.list": ["p", "q"]},
                ) as child:
            pass
        assert provider.force_flush(10_000)
    finally:
        provider.shutdown()
    p, c = parent.get_span_context(), child.get_span_context()
    return f"{p.trace_id:032x}", f"{p.span_id:016x}", f"{c.span_id:016x}"


def _check_received(receiver: Any, trace_id: str, parent_id: str, child_id: str) -> None:
    child = receiver.wait_for_name("child", trace_id, timeout=WAIT)
    parent = receiver.wait_for_name("parent", trace_id, timeout=WAIT)
    assert (parent.span_id, parent.parent_span_id, parent.kind) == (parent_id, "", "server")
    assert (child.span_id, child.parent_span_id, child.kind) == (child_id, parent_id, "client")
    assert child.attributes == {"a.str": "x", "a.int": 7, "a.bool": True, "a.list": ["p", "q"]}
    assert child.resource["service.name"] == "receiver-self-test"
    assert child.resource["service.version"] == "9.9"
    assert child.scope == "tests.otel"
    assert not receiver.errors


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_the_http_receiver_decodes_what_the_sdk_exports(
    otlp_http: OTLPHTTPReceiver, compression: Compression
) -> None:
    exporter = HTTPSpanExporter(endpoint=f"{otlp_http.endpoint}/v1/traces",
                                compression=compression, timeout=10)
    _check_received(otlp_http, *_export_with_sdk(exporter))
    expected = "gzip" if compression is Compression.Gzip else "identity"
    assert set(otlp_http.http_encodings) == {expected}


def test_the_grpc_receiver_decodes_what_the_sdk_exports(otlp_grpc: OTLPGRPCReceiver) -> None:
    exporter = GRPCSpanExporter(endpoint=otlp_grpc.endpoint, insecure=True, timeout=10)
    _check_received(otlp_grpc, *_export_with_sdk(exporter))


def test_wait_for_span_names_what_arrived_when_nothing_matches(
    otlp_http: OTLPHTTPReceiver,
) -> None:
    with pytest.raises(AssertionError, match=r"no matching span within 0\.05s"):
        otlp_http.wait_for_span(lambda span: False, timeout=0.05)


# -- HTTP server ------------------------------------------------------------------------------


def _ok(request: Request, name: str) -> str:
    return "ok"


@pytest.mark.parametrize("header", HEADERS)
def test_http_server_span_continues_the_incoming_context(
    serve: Serve, otel: OTLPHTTPReceiver, header: str
) -> None:
    running = serve(routes=[Route("GET", "/items/<name>", _ok)], tracing="otel")
    trace_id, parent_id = new_ids()
    assert running.get("/items/x", headers=incoming(header, trace_id, parent_id)).status == 200
    span = otel.wait_for_name("GET /items/<name>", trace_id, timeout=WAIT)
    assert_continues(span, trace_id, parent_id, "http-test", "1.0")
    assert span.attributes.get("http.method") == "GET"
    assert span.attributes.get("http.status_code") == 200


def test_the_resource_takes_otel_service_name_and_resource_attributes(
    serve: Serve, otel: OTLPHTTPReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "renamed")
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=otel-test")
    running = serve(routes=[Route("GET", "/items/<name>", _ok)], tracing="otel")
    trace_id, parent_id = new_ids()
    assert running.get("/items/x", headers=incoming("traceparent", trace_id, parent_id)
                       ).status == 200
    span = otel.wait_for_name("GET /items/<name>", trace_id, timeout=WAIT)
    assert_continues(span, trace_id, parent_id, "renamed", "1.0")
    assert span.resource.get("deployment.environment") == "otel-test"


@pytest.mark.parametrize("header", HEADERS)
def test_the_grpc_protocol_exports_to_an_otlp_grpc_receiver(
    serve: Serve, otlp_grpc: OTLPGRPCReceiver, monkeypatch: pytest.MonkeyPatch,
    header: str,
) -> None:
    otel_environment(monkeypatch, otlp_grpc.endpoint, "grpc")
    running = serve(routes=[Route("GET", "/items/<name>", _ok)], tracing="otel")
    trace_id, parent_id = new_ids()
    assert running.get("/items/y", headers=incoming(header, trace_id, parent_id)).status == 200
    span = otlp_grpc.wait_for_name("GET /items/<name>", trace_id, timeout=WAIT)
    assert_continues(span, trace_id, parent_id, "http-test", "1.0")
    assert span.attributes.get("http.method") == "GET"


# -- HTTP client ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", HEADERS)
def test_http_client_span_is_a_child_and_injects_both_headers(
    serve: Serve, otel: OTLPHTTPReceiver, downstream: HeaderRecorder, header: str
) -> None:
    def call(request: Request, name: str) -> str:
        with HTTPClient(retries=None) as client:
            return client.get(f"{downstream.url}/down/{name}").text

    running = serve(routes=[Route("GET", "/call/<name>", call)], tracing="otel")
    trace_id, parent_id = new_ids()
    reply = running.get("/call/x", headers=incoming(header, trace_id, parent_id))
    assert (reply.status, reply.text) == (200, "ok")
    server = otel.wait_for_name("GET /call/<name>", trace_id, timeout=WAIT)
    client = otel.wait_for_name("HTTP GET", trace_id, timeout=WAIT)
    assert_continues(server, trace_id, parent_id, "http-test", "1.0")
    assert client.parent_span_id == server.span_id
    assert client.attributes.get("http.method") == "GET"
    assert client.attributes.get("http.url") == f"{downstream.url}/down/x"
    [sent] = downstream.seen
    assert_carries(sent, client)


# -- gRPC server and client -------------------------------------------------------------------


@pytest.fixture
def grpc_service(otel: OTLPHTTPReceiver) -> Iterator[GRPCComponent]:
    from tests.grpc.servers import Echo

    component = GRPCComponent(port=0, host="127.0.0.1", handlers=[Echo().handler()])
    service = Service("grpc-test", "2.0", components=[component], config=otel_config(),
                      default_http=False).start()
    try:
        assert component.wait_started(10)
        yield component
    finally:
        service.stop()
        assert service.wait(30) is not None


@pytest.mark.parametrize("header", HEADERS)
def test_grpc_server_span_continues_the_incoming_context(
    grpc_service: GRPCComponent, otel: OTLPHTTPReceiver, header: str
) -> None:
    trace_id, parent_id = new_ids()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_service.port}") as ch:
        reply = say_stub(ch)(HelloRequest(name="traced"), timeout=5,
                             metadata=tuple(incoming(header, trace_id, parent_id).items()))
    assert reply.message == "echo traced"
    span = otel.wait_for_name("gRPC-server /patron.test.Echo/Say", trace_id, timeout=WAIT)
    assert_continues(span, trace_id, parent_id, "grpc-test", "2.0")
    assert span.attributes.get("component") == "gRPC-server"


@pytest.mark.parametrize("header", HEADERS)
def test_grpc_client_span_is_a_child_and_injects_both_headers(
    serve: Serve, otel: OTLPHTTPReceiver,
    grpc_downstream: tuple[str, list[dict[str, str]]], header: str,
) -> None:
    address, seen = grpc_downstream

    def call(request: Request, name: str) -> str:
        with channel(address) as ch:
            return say_stub(ch)(HelloRequest(name=name), timeout=5).message

    running = serve(routes=[Route("GET", "/grpc/<name>", call)], tracing="otel")
    trace_id, parent_id = new_ids()
    reply = running.get("/grpc/x", headers=incoming(header, trace_id, parent_id))
    assert (reply.status, reply.text) == (200, "echo x")
    server = otel.wait_for_name("GET /grpc/<name>", trace_id, timeout=WAIT)
    client = otel.wait_for_name("gRPC-client /patron.test.Echo/Say", trace_id, timeout=WAIT)
    assert_continues(server, trace_id, parent_id, "http-test", "1.0")
    assert client.parent_span_id == server.span_id
    assert client.attributes.get("component") == "gRPC-client"
    [metadata] = seen
    assert_carries(metadata, client)


# -- messaging --------------------------------------------------------------------------------


class Traced:
    """Two incoming contexts (one per header kind) and the checks on a consumer's spans."""

    def __init__(self) -> None:
        self.contexts = {header: new_ids() for header in HEADERS}

    def headers(self, header: str) -> dict[str, str]:
        return incoming(header, *self.contexts[header])

    def check(self, receiver: OTLPHTTPReceiver, source: str, transport: str) -> None:
        for trace_id, parent_id in self.contexts.values():
            span = receiver.wait_for_name(f"{source} process", trace_id, timeout=BROKER_WAIT)
            assert_continues(span, trace_id, parent_id, "test", "1")
            assert span.attributes.get("component") == transport


def _publish_in_root(receiver: OTLPHTTPReceiver, destination: str,
                     publish: Callable[[], object]) -> tuple[ReceivedSpan, ReceivedSpan]:
    """Publish inside a root span; (root span, publish span) as exported."""
    with tracing.start_span("otel test root"):
        publish()
    root = receiver.wait_for_name("otel test root", timeout=WAIT)
    published = receiver.wait_for_name(f"{destination} publish", root.trace_id, timeout=WAIT)
    assert published.parent_span_id == root.span_id
    assert published.attributes.get("message_bus.destination") == destination
    return root, published


def _recorded(recorder: Recorder, body: bytes) -> Message:
    return next(m for m in recorder.messages if m.body == body)


def _processor(recorder: Recorder) -> Any:
    return per_message(lambda message: recorder(Batch([message])))


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_process_spans_continue_incoming_contexts_and_the_publisher_injects_both(
    kafka: Kafka, otel: OTLPHTTPReceiver
) -> None:
    topic = kafka.topic()
    traced = Traced()
    for header in HEADERS:
        kafka.produce(topic, [header.encode()], headers=list(traced.headers(header).items()))
    recorder = Recorder()
    consumer = KafkaConsumer(kafka.brokers, Kafka.name("g"), topic, _processor(recorder),
                             session_timeout=SESSION_TIMEOUT)
    with running(consumer, config=otel_config()):
        recorder.wait_for(2, timeout=BROKER_WAIT)
        traced.check(otel, topic, "kafka")
        with KafkaPublisher(kafka.brokers, publish_timeout=10) as publisher:
            _root, published = _publish_in_root(
                otel, topic, lambda: publisher.publish(topic, b"patron"))
        recorder.wait_for(3, timeout=BROKER_WAIT)
        message = _recorded(recorder, b"patron")
        assert_carries({k: text(v) for k, v in message.headers.items()}, published)
        processed = otel.wait_for_name(f"{topic} process", published.trace_id, timeout=WAIT)
        assert processed.parent_span_id == published.span_id


@pytest.mark.amqp
def test_amqp_process_spans_continue_incoming_contexts_and_the_publisher_injects_both(
    broker: Broker, amqp_url: str, otel: OTLPHTTPReceiver
) -> None:
    queue = broker.queue()  # deleted by the broker fixture
    traced = Traced()
    for header in HEADERS:
        broker.publish(queue, [header.encode()], headers=traced.headers(header))
    recorder = Recorder()
    consumer = AMQPConsumer(amqp_url, queue, _processor(recorder))
    with running(consumer, config=otel_config()):
        recorder.wait_for(2, timeout=BROKER_WAIT)
        traced.check(otel, queue, "amqp")
        with AMQPPublisher(amqp_url) as publisher:
            _root, published = _publish_in_root(
                otel, queue, lambda: publisher.publish("", queue, b"patron"))
        recorder.wait_for(3, timeout=BROKER_WAIT)
        message = _recorded(recorder, b"patron")
        assert_carries({k: text(v) for k, v in message.headers.items()}, published)
        processed = otel.wait_for_name(f"{queue} process", published.trace_id, timeout=WAIT)
        assert processed.parent_span_id == published.span_id


@pytest.mark.sqs
def test_sqs_process_spans_continue_incoming_contexts_and_the_publisher_injects_both(
    make_queue: QueueFactory, sqs: Any, connection: dict[str, Any],
    otel: OTLPHTTPReceiver,
) -> None:
    name, url = make_queue()
    traced = Traced()
    for header in HEADERS:
        sqs.send_message(QueueUrl=url, MessageBody=header, MessageAttributes={
            key: {"DataType": "String", "StringValue": value}
            for key, value in traced.headers(header).items()
        })
    recorder = Recorder()
    consumer = SQSConsumer(name, _processor(recorder), **connection, wait_time=1)
    with running(consumer, config=otel_config()):
        recorder.wait_for(2, timeout=BROKER_WAIT)
        traced.check(otel, name, "sqs")
        _root, published = _publish_in_root(
            otel, name, lambda: SQSPublisher(url, client=sqs).publish("patron"))
        recorder.wait_for(3, timeout=BROKER_WAIT)
        message = _recorded(recorder, b"patron")
        assert_carries({k: text(v) for k, v in message.headers.items()}, published)
        processed = otel.wait_for_name(f"{name} process", published.trace_id, timeout=WAIT)
        assert processed.parent_span_id == published.span_id


# -- the jaeger backend and no backend ---------------------------------------------------------


def test_the_jaeger_backend_continues_an_incoming_traceparent(serve: Serve) -> None:
    trace_id, parent_id = new_ids()
    with SpanCapture() as capture:
        running = serve(routes=[Route("GET", "/items/<name>", _ok)],
                        config=capture.config(http_default_port=0, tracing="jaeger"))
        assert running.get("/items/j", headers=incoming("traceparent", trace_id, parent_id)
                           ).status == 200
        running.service.stop()  # the Service flushes its spans as it stops
        assert running.service.wait(10) is not None
        spans = [s for s in capture.spans(count=1, timeout=WAIT)
                 if s.operation == "GET /items/<name>"]
    [span] = spans
    assert f"{span.trace_id_high:016x}{span.trace_id_low:016x}" == trace_id
    assert span.parent_span_id == int(parent_id, 16)
    assert span.service == "http-test"


@pytest.mark.parametrize("header", HEADERS)
def test_tracing_off_exports_nothing_and_starts_no_tracer_threads(
    serve: Serve, otel: OTLPHTTPReceiver, header: str
) -> None:
    before = thread_names()
    running = serve(routes=[Route("GET", "/items/<name>", _ok)], tracing="off")
    trace_id, parent_id = new_ids()
    assert running.get("/items/x", headers=incoming(header, trace_id, parent_id)).status == 200
    # Only the Service's own threads are new: no batch processor, exporter or reporter loop.
    started = thread_names() - before
    assert all(name.startswith(("patron-", "waitress-")) for name in started), started
    running.service.stop()  # a backend, had one been set up, would flush now
    assert running.service.wait(10) is not None
    assert otel.requests == 0 and otel.spans == []


# -- logs -------------------------------------------------------------------------------------


def test_log_records_in_a_span_carry_its_trace_and_span_ids(
    serve: Serve, otel: OTLPHTTPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    def noisy(request: Request, name: str) -> str:
        logging.getLogger("tests.otel").warning("inside the handler %s", name)
        return "ok"

    running = serve(routes=[Route("GET", "/noisy/<name>", noisy)], tracing="otel")
    trace_id, parent_id = new_ids()
    with caplog.at_level(logging.WARNING, logger="tests.otel"):
        assert running.get("/noisy/n", headers=incoming("traceparent", trace_id, parent_id)
                           ).status == 200
    span = otel.wait_for_name("GET /noisy/<name>", trace_id, timeout=WAIT)
    [record] = [r for r in caplog.records if r.getMessage() == "inside the handler n"]
    assert getattr(record, "trace_id", None) == span.trace_id
    assert getattr(record, "span_id", None) == span.span_id
    payload = json.loads(log.JSONFormatter().format(record))
    assert (payload.get("trace_id"), payload.get("span_id")) == (span.trace_id, span.span_id)
    line = log.TextFormatter().format(record)
    assert f"trace_id={span.trace_id}" in line and f"span_id={span.span_id}" in line


def test_log_records_outside_a_span_carry_no_trace_ids(
    serve: Serve, otel: OTLPHTTPReceiver, caplog: pytest.LogCaptureFixture
) -> None:
    serve(tracing="otel")
    with caplog.at_level(logging.WARNING, logger="tests.otel"):
        logging.getLogger("tests.otel").warning("outside any span")
    [record] = [r for r in caplog.records if r.getMessage() == "outside any span"]
    assert not getattr(record, "trace_id", "") and not getattr(record, "span_id", "")
    assert "trace_id" not in json.loads(log.JSONFormatter().format(record))


# -- SIGTERM flushes --------------------------------------------------------------------------


@pytest.mark.slow
def test_sigterm_flushes_the_request_span_and_the_json_log_carries_its_trace_id(
    service_process: Callable[..., ServiceProcess], otlp_http: OTLPHTTPReceiver,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in [k for k in os.environ if k.startswith("OTEL_")]:
        monkeypatch.delenv(name)  # the test's own OTEL_* must not leak into the service
    port = free_port()
    env = {
        "PATRON_HTTP_DEFAULT_PORT": str(port),
        "PATRON_TRACING": "otel",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_http.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # only the shutdown flush can send the span
        "PATRON_LOG_FORMAT": "json",
        "PATRON_LOG_LEVEL": "DEBUG",
    }
    process = service_process("samples.hello", **env)
    wait_for(lambda: http_status(port, "/ready") == 200, timeout=30)
    trace_id, parent_id = new_ids()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/hello/otel", headers=incoming("traceparent", trace_id, parent_id))
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"Hello, otel!\n")
    finally:
        conn.close()
    assert otlp_http.spans == []  # the batch delay holds it back
    process.signal(signal.SIGTERM)
    assert process.wait(30) == 0, process.output()
    span = otlp_http.wait_for_name("GET /hello/<name>", trace_id, timeout=WAIT)
    assert_continues(span, trace_id, parent_id, "hello", "1.0.0")
    lines = [json.loads(line) for line in process.output().splitlines()
             if line.startswith("{")]
    request_lines = [line for line in lines if line.get("logger") == "patron.http"
                     and line.get("path") == "/hello/<name>"]
    assert request_lines, process.output()
    assert request_lines[0].get("trace_id") == trace_id, request_lines
    assert request_lines[0].get("span_id") == span.span_id, request_lines
