"""Jaeger tracing through the OpenTracing API.

:func:`setup` builds a jaeger-client tracer from the ``PATRON_JAEGER_*`` settings and makes it the
OpenTracing global tracer, with a scope manager backed by ``contextvars`` so the active span
follows the request or message a thread is working on. Until then (for example in a unit test)
the global tracer is OpenTracing's no-op tracer and every helper here still works.

Span context travels in text-map carriers: HTTP headers, gRPC metadata, Kafka and AMQP headers,
SQS message attributes. :func:`inject` and :func:`start_span` are the only places that touch a
carrier, so every transport propagates in the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

import opentracing
from opentracing.ext import tags
from opentracing.ext import tags as ot_tags  # the parameter of start_span shadows the module
from opentracing.scope_managers.contextvars import ContextVarsScopeManager

from patron.config import Config

__all__ = ["close", "inject", "is_sampled", "new_span", "setup", "start_span", "tags"]

logger = logging.getLogger(__name__)

_tracer: Any = None
# True while the installed sampler can never sample: a span that has no parent then carries
# nothing worth its cost, so start_span hands out a no-op one.
_never_samples = False
_NOOP = opentracing.Tracer()


def setup(service_name: str, config: Config) -> opentracing.Tracer:
    """Create the Jaeger tracer for ``service_name`` and install it as the global tracer.

    With the default sampler (probabilistic, 0.0) no trace is ever sampled, so nothing is sent,
    and work that arrives without a trace context gets no span at all (it would be dropped);
    work that arrives inside a trace continues it, so the caller's sampling decision holds.
    """
    global _tracer, _never_samples
    from jaeger_client import Config as JaegerConfig  # deferred: it pulls in tornado

    param: float | int = config.jaeger_sampler_param
    if config.jaeger_sampler_type == "const":
        param = int(param)  # jaeger-client reads the const decision 1.0 as false, 1 as true
    jaeger = JaegerConfig(
        config={
            "sampler": {"type": config.jaeger_sampler_type, "param": param},
            "local_agent": {
                "reporting_host": config.jaeger_agent_host,
                "reporting_port": config.jaeger_agent_port,
            },
            "logging": False,
        },
        service_name=service_name,
        scope_manager=ContextVarsScopeManager(),
        validate=True,
    )
    _tracer = jaeger.new_tracer()
    _never_samples = config.jaeger_sampler_param == 0
    opentracing.set_global_tracer(_tracer)
    return _tracer


def close(timeout: float = 5.0) -> bool:
    """Flush buffered spans to the agent, waiting at most ``timeout`` seconds.

    Returns False when the flush did not finish in time. Safe to call from any thread, and a
    no-op when :func:`setup` was not called.
    """
    global _tracer, _never_samples
    tracer, _tracer = _tracer, None
    _never_samples = False
    if tracer is None:
        return True
    opentracing.set_global_tracer(opentracing.Tracer())
    flushed = threading.Event()

    def close_on_loop() -> None:
        # jaeger-client's reporter lives on its own tornado loop; its futures belong there.
        tracer.close().add_done_callback(lambda _future: flushed.set())

    io_loop = tracer.reporter.io_loop
    io_loop.add_callback(close_on_loop)
    if not flushed.wait(timeout):
        logger.warning("tracing: spans not flushed within %.1fs", timeout)
        return False
    # jaeger-client never stops the thread it started for its loop; stop it so that a process
    # that runs several services (tests, embedding hosts) does not collect idle threads.
    thread_loop = getattr(getattr(tracer.reporter, "_channel", None), "_thread_loop", None)
    thread = getattr(thread_loop, "_thread", None)
    if thread is not None:
        io_loop.add_callback(io_loop.stop)
        thread.join(timeout)
    return True


def tracer() -> opentracing.Tracer:
    return opentracing.global_tracer()


def is_sampled(span: opentracing.Span) -> bool:
    """Whether ``span`` will be reported; tags on an unsampled span are wasted work."""
    sampled = getattr(span, "is_sampled", None)
    return True if sampled is None else bool(sampled())


def new_span(
    operation: str,
    carrier: Mapping[str, str] | None = None,
    kind: str = ot_tags.SPAN_KIND_RPC_SERVER,
    component: str = "",
    tags: Mapping[str, object] | None = None,
) -> opentracing.Span:
    """A started span, not made active: for work whose span outlives one ``with`` block.

    It continues the trace found in ``carrier``, or else the active span. ``tags`` are set only
    when the span is sampled. The caller finishes it.
    """
    active = opentracing.global_tracer()
    parent = None
    if carrier:
        try:
            parent = active.extract(opentracing.Format.TEXT_MAP, carrier)
        except (opentracing.SpanContextCorruptedException, opentracing.InvalidCarrierException):
            parent = None
        except Exception:  # a malformed header must never fail the request
            logger.debug("tracing: could not extract span context", exc_info=True)
    if _never_samples and parent is None and active.active_span is None:
        return _NOOP.start_span(operation)
    span = active.start_span(operation, child_of=parent)
    if is_sampled(span):
        span.set_tag(ot_tags.SPAN_KIND, kind)
        if component:
            span.set_tag(ot_tags.COMPONENT, component)
        for key, value in (tags or {}).items():
            span.set_tag(key, value)
    return span


def start_span(
    operation: str,
    carrier: Mapping[str, str] | None = None,
    kind: str = ot_tags.SPAN_KIND_RPC_SERVER,
    component: str = "",
    tags: Mapping[str, object] | None = None,
) -> opentracing.Scope:
    """Start an active span, continuing the trace found in ``carrier`` when there is one.

    ``tags`` are set only when the span is sampled. Use the result as a context manager: the
    span is finished when the block ends, and an exception leaving the block marks the span as
    an error.
    """
    span = new_span(operation, carrier, kind, component, tags)
    return span.tracer.scope_manager.activate(span, finish_on_close=True)


def inject(carrier: MutableMapping[str, str]) -> None:
    """Write the active span's context into ``carrier`` (no-op when no span is active)."""
    active = opentracing.global_tracer()
    span = active.active_span
    if span is not None:
        active.inject(span.context, opentracing.Format.TEXT_MAP, carrier)
