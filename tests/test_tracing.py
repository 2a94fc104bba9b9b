from __future__ import annotations

import threading

import opentracing
import pytest

from patron import Config, ConfigError, Service, tracing


def test_helpers_work_with_the_noop_tracer() -> None:
    carrier: dict[str, str] = {}
    with tracing.start_span("op", carrier={"uber-trace-id": "garbage"}):
        tracing.inject(carrier)
    assert carrier == {}  # the no-op tracer writes nothing and raises nothing


def test_context_is_continued_through_a_carrier() -> None:
    tracing.setup("svc", Config(jaeger_sampler_type="const", jaeger_sampler_param=1))
    try:
        carrier: dict[str, str] = {}
        with tracing.start_span("caller") as caller:
            tracing.inject(carrier)
        assert "uber-trace-id" in carrier
        with tracing.start_span("callee", carrier=carrier) as callee:
            assert callee.span.context.trace_id == caller.span.context.trace_id
            assert callee.span.parent_id == caller.span.context.span_id
        with tracing.start_span("fresh", carrier={"uber-trace-id": "not:a:trace"}) as fresh:
            assert fresh.span.context.trace_id != caller.span.context.trace_id
    finally:
        assert tracing.close(5.0)
    assert isinstance(opentracing.global_tracer(), opentracing.Tracer)


def test_a_stopped_service_leaves_no_thread_behind() -> None:
    before = set(threading.enumerate())
    service = Service("svc", config=Config(), default_http=False).start()
    service.stop()
    assert service.wait(10) == 0
    assert set(threading.enumerate()) - before == set()


def test_a_sampler_that_never_samples_skips_spans_without_a_parent() -> None:
    caller = tracing.setup("caller", Config(jaeger_sampler_type="const", jaeger_sampler_param=1))
    carrier: dict[str, str] = {}
    with caller.start_active_span("upstream") as upstream:
        caller.inject(upstream.span.context, opentracing.Format.TEXT_MAP, carrier)
    tracing.close(5.0)

    tracing.setup("svc", Config())  # probabilistic 0.0, the default
    try:
        with tracing.start_span("orphan") as orphan:
            assert not hasattr(orphan.span, "is_sampled")  # OpenTracing's no-op span
            written: dict[str, str] = {}
            tracing.inject(written)
            assert written == {}
        with tracing.start_span("continued", carrier=carrier) as continued:
            assert continued.span.context.trace_id == upstream.span.context.trace_id
            assert tracing.is_sampled(continued.span)  # the caller's decision holds
    finally:
        tracing.close(5.0)


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_jaeger_backend_continues_a_traceparent_and_injects_both_formats() -> None:
    tracing.setup("svc", Config(jaeger_sampler_type="const", jaeger_sampler_param=1))
    try:
        with tracing.start_span("callee", carrier={"traceparent": TRACEPARENT}) as scope:
            assert tracing.current_ids() == (
                "0af7651916cd43dd8448eb211c80319c", f"{scope.span.context.span_id:016x}"
            )
            assert scope.span.parent_id == 0xB7AD6B7169203331
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
        span_hex = f"{scope.span.context.span_id:016x}"
        assert carrier["traceparent"] == f"00-0af7651916cd43dd8448eb211c80319c-{span_hex}-01"
        assert carrier["uber-trace-id"].startswith(f"af7651916cd43dd8448eb211c80319c:{span_hex}:")
        for malformed in ("garbage", "00-xyz-b7ad6b7169203331-01",
                          "00-00000000000000000000000000000000-b7ad6b7169203331-01"):
            with tracing.start_span("fresh", carrier={"traceparent": malformed}) as fresh:
                assert fresh.span.parent_id is None, malformed
    finally:
        tracing.close(5.0)


def test_services_in_one_process_share_the_tracer_until_the_last_stops() -> None:
    first = tracing.setup("first", Config(jaeger_sampler_type="const", jaeger_sampler_param=1))
    second = tracing.setup("second", Config(tracing="off"))
    try:
        assert second is first  # the second shares it, whatever its own settings
        assert tracing.close(5.0)
        assert tracing.tracer() is first  # still up for the other
        with tracing.start_span("op") as scope:
            assert tracing.is_sampled(scope.span)
    finally:
        assert tracing.close(5.0)
    assert tracing.tracer() is opentracing.global_tracer()


def test_a_given_tracer_is_used_and_a_hosts_global_tracer_is_never_replaced() -> None:
    from opentracing.mocktracer import MockTracer

    host, given = MockTracer(), MockTracer()
    previous = opentracing.global_tracer()
    opentracing.set_global_tracer(host)
    try:
        tracing.setup("embedded", Config(), tracer=given)
        with tracing.start_span("op"):
            pass
        assert tracing.close(5.0)
        tracing.setup("own", Config(jaeger_sampler_type="const", jaeger_sampler_param=1))
        own = tracing.tracer()
        assert tracing.close(5.0)
    finally:
        opentracing.set_global_tracer(previous)
    assert [span.operation_name for span in given.finished_spans()] == ["op"]
    assert host.finished_spans() == []
    assert own is not host  # patron made its own, and left the host's global alone


def test_off_makes_no_spans_and_passes_nothing_on() -> None:
    tracing.setup("svc", Config(tracing="off"))
    try:
        with tracing.start_span("op", carrier={"traceparent": TRACEPARENT}) as scope:
            carrier: dict[str, str] = {}
            tracing.inject(carrier)
            assert tracing.current_ids() is None
        assert carrier == {}
        assert not hasattr(scope.span, "is_sampled")
    finally:
        tracing.close(5.0)


def test_otel_without_a_known_protocol_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigError) as caught:
        Service("svc", config=Config(tracing="otel"), default_http=False)
    assert str(caught.value) == (
        "OTEL_EXPORTER_OTLP_PROTOCOL='http/json' is invalid: expected http/protobuf or grpc"
    )


def test_a_bad_tracing_backend_is_refused() -> None:
    with pytest.raises(ConfigError, match="PATRON_TRACING='zipkin' is invalid: expected one of "
                       "jaeger, otel, off"):
        Config.from_env({"PATRON_TRACING": "zipkin"})
