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
