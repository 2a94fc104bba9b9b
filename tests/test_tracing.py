from __future__ import annotations

import threading

import opentracing

from patron import Config, Service, tracing


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
