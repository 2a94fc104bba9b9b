"""Tracing, the one place that knows which backend runs.

Everything else in patron traces through the OpenTracing API and the helpers here
(:func:`start_span`, :func:`new_span`, :func:`inject`, :func:`tracer`), so components, the
messaging core and the public types (``Message.span``, ``message.activate()``) are the same
whichever backend runs. ``PATRON_TRACING`` (:attr:`patron.Config.tracing`) chooses it:

``jaeger`` (the default)
    jaeger-client, configured by ``PATRON_JAEGER_*``, reporting to an agent over UDP.
``otel``
    the OpenTelemetry SDK (the ``otel`` extra) behind the OpenTelemetry OpenTracing shim, so
    every span patron starts is an OpenTelemetry span. The SDK reads the standard ``OTEL_*``
    variables as it defines them: the OTLP exporter (``OTEL_EXPORTER_OTLP_PROTOCOL``
    ``http/protobuf``, the default, or ``grpc``; ``OTEL_EXPORTER_OTLP_ENDPOINT``,
    ``_HEADERS``, ...), the sampler (``OTEL_TRACES_SAMPLER``, ``_ARG``; the SDK's default,
    ``parentbased_always_on``, when unset) and the resource (``OTEL_SERVICE_NAME``, by default
    the Service's name, ``OTEL_RESOURCE_ATTRIBUTES``; ``service.version`` is the Service's
    version). Spans are exported in batches and flushed within the shutdown budget.
``off``
    no spans and no tracer threads (a trace that arrives ends here).

Why the shim rather than an interface of our own: patron's call sites, and users' code, already
speak OpenTracing (``span.set_tag``, ``tracer.active_span``, ``scope_manager.activate``); the
shim maps each of those onto the SDK, so switching the backend changes this module only. It
costs a wrapper object per span (measured in ``benchmarks/http.py``).

Propagation is the same with every backend: extraction accepts W3C ``traceparent``
(with ``tracestate``) and Jaeger's ``uber-trace-id``, whichever arrives (W3C wins when both
do), and injection writes both, so a mixed fleet (Go Patron, old Jaeger and new OpenTelemetry
services) keeps one trace. The OpenTelemetry backend carries W3C ``baggage`` too; Jaeger's
carries its ``uberctx-`` baggage.

One tracer per process: the first Service to start sets it up and the last to stop closes it
(a Service started meanwhile shares it, whatever its own settings; its name is the first's).
``setup(tracer=...)`` (``Service(tracer=...)``) uses a tracer the host already has, an
OpenTracing tracer or an OpenTelemetry ``TracerProvider``, and never closes it. The OpenTracing
global tracer (and OpenTelemetry's global provider) is set only while it is still the no-op
default: a host's own is never replaced.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, MutableMapping
from typing import Any

import opentracing
from opentracing.ext import tags
from opentracing.ext import tags as ot_tags  # the parameter of start_span shadows the module
from opentracing.scope_managers.contextvars import ContextVarsScopeManager

from patron.config import Config, ConfigError

__all__ = [
    "OTLP_PROTOCOLS", "check", "close", "current_ids", "ids", "inject", "is_sampled", "new_span",
    "setup", "start_span", "tags", "tracer",
]

logger = logging.getLogger(__name__)

#: what ``OTEL_EXPORTER_OTLP_PROTOCOL`` may name for traces
OTLP_PROTOCOLS = ("http/protobuf", "grpc")
_NOOP = opentracing.Tracer()
_lock = threading.Lock()


class _State:
    """What :func:`setup` installed, for the helpers and :func:`close`."""

    def __init__(self) -> None:
        self.tracer: Any = _NOOP
        self.backend = "off"
        self.users = 0
        self.owned = False  # made here, so closed here
        self.provider: Any = None  # the OpenTelemetry provider made here
        self.jaeger: Any = None  # the jaeger-client tracer made here
        self.installed_global = False
        # True while the sampler can never sample a trace that starts here: such work gets a
        # no-op span (a trace that arrives keeps its caller's decision).
        self.never_samples = False


_state = _State()


# -- setting up and closing ---------------------------------------------------------------------


def setup(
    service_name: str, config: Config, version: str = "", tracer: Any = None
) -> opentracing.Tracer:
    """Set up the backend ``config.tracing`` names for ``service_name`` (see the module
    docstring), or use ``tracer`` (an OpenTracing tracer or an OpenTelemetry
    ``TracerProvider``); shared with the Services already started in this process. Call
    :func:`check` first: ``otel`` without the SDK raises ``ImportError`` here."""
    with _lock:
        if _state.users:
            _state.users += 1
            logger.debug("tracing: %s shares the tracer already set up", service_name)
            return _state.tracer
        new = _State()
        if tracer is not None:
            new.tracer, new.backend = _adopt(tracer)
        elif config.tracing == "jaeger":
            new.jaeger = new.tracer = _jaeger(service_name, config)
            new.backend, new.owned = "jaeger", True
            new.never_samples = config.jaeger_sampler_param == 0
        elif config.tracing == "otel":
            new.provider = _otel_provider(service_name, version)
            new.tracer = _shim(new.provider)
            new.backend, new.owned = "otel", True
            new.never_samples = _never_samples(new.provider.sampler)
        else:
            new.never_samples = True
        new.users = 1
        if new.backend != "off" and type(opentracing.global_tracer()) is opentracing.Tracer:
            opentracing.set_global_tracer(new.tracer)
            new.installed_global = True
        _state.__dict__.update(new.__dict__)
        return _state.tracer


def close(timeout: float = 5.0) -> bool:
    """Flush buffered spans and stop the tracer's threads, waiting at most ``timeout`` seconds,
    once the last Service that uses it stops. False when the flush did not finish in time.
    Any thread; a no-op when nothing was set up."""
    with _lock:
        if _state.users == 0:
            return True
        _state.users -= 1
        if _state.users:
            return True
        closing = _State()
        closing.__dict__.update(_state.__dict__)
        _state.__dict__.update(_State().__dict__)
        if closing.installed_global and opentracing.global_tracer() is closing.tracer:
            opentracing.set_global_tracer(_NOOP)
    if not closing.owned:
        return True
    if closing.provider is not None:
        return _close_otel(closing.provider, timeout)
    return _close_jaeger(closing.jaeger, timeout)


def _adopt(tracer: Any) -> tuple[Any, str]:
    if isinstance(tracer, opentracing.Tracer):
        # A jaeger-client tracer gets the Jaeger backend's W3C extraction.
        return tracer, "jaeger" if type(tracer).__module__.startswith("jaeger_client") else "given"
    if hasattr(tracer, "get_tracer"):  # an OpenTelemetry TracerProvider
        return _shim(tracer), "otel"
    raise TypeError(f"tracer must be an OpenTracing Tracer or an OpenTelemetry TracerProvider, "
                    f"not {type(tracer).__name__}")


def _jaeger(service_name: str, config: Config) -> Any:
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
    return jaeger.new_tracer()


def _close_jaeger(jaeger: Any, timeout: float) -> bool:
    flushed = threading.Event()

    def close_on_loop() -> None:
        # jaeger-client's reporter lives on its own tornado loop; its futures belong there.
        jaeger.close().add_done_callback(lambda _future: flushed.set())

    io_loop = jaeger.reporter.io_loop
    io_loop.add_callback(close_on_loop)
    if not flushed.wait(timeout):
        logger.warning("tracing: spans not flushed within %.1fs", timeout)
        return False
    # jaeger-client never stops the thread it started for its loop; stop it so that a process
    # that runs several services (tests, embedding hosts) does not collect idle threads.
    thread_loop = getattr(getattr(jaeger.reporter, "_channel", None), "_thread_loop", None)
    thread = getattr(thread_loop, "_thread", None)
    if thread is not None:
        io_loop.add_callback(io_loop.stop)
        thread.join(timeout)
    return True


def check(config: Config) -> None:
    """Raise :class:`~patron.config.ConfigError` (one line) when the backend ``config`` names
    cannot be set up here: ``otel`` without the SDK, or an OTLP protocol it does not know."""
    if config.tracing != "otel":
        return
    try:
        import opentelemetry.exporter.otlp.proto.http
        import opentelemetry.sdk.trace
        import opentelemetry.shim.opentracing_shim  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"PATRON_TRACING=otel needs the OpenTelemetry SDK: pip install "
                          f"'patron[otel]' ({exc})") from None
    protocol = _otlp_protocol()
    if protocol not in OTLP_PROTOCOLS:
        name = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
                if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                else "OTEL_EXPORTER_OTLP_PROTOCOL")
        raise ConfigError(f"{name}={protocol!r} is invalid: expected "
                          f"{' or '.join(OTLP_PROTOCOLS)}")


def _otlp_protocol() -> str:
    return (os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")


def _otel_provider(service_name: str, version: str) -> Any:
    from opentelemetry import trace as otel_trace
    from opentelemetry.sdk.resources import OTELResourceDetector, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # The SDK's own order: OTEL_SERVICE_NAME, then OTEL_RESOURCE_ATTRIBUTES, over our defaults.
    defaults = {"service.name": service_name}
    if version:
        defaults["service.version"] = version
    resource = Resource.create(defaults).merge(OTELResourceDetector().detect())
    provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_SAMPLER
    provider.add_span_processor(BatchSpanProcessor(_otlp_exporter()))
    if type(otel_trace.get_tracer_provider()).__name__ == "ProxyTracerProvider":
        otel_trace.set_tracer_provider(provider)  # only while nobody else set one
    return provider


def _otlp_exporter() -> Any:
    """The OTLP exporter of the protocol the environment names; it reads its endpoint, headers,
    timeout and compression from the environment itself."""
    if _otlp_protocol() == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HTTPSpanExporter,
    )

    return HTTPSpanExporter()


def _close_otel(provider: Any, timeout: float) -> bool:
    flushed = bool(provider.force_flush(int(timeout * 1000)))
    if not flushed:
        logger.warning("tracing: spans not exported within %.1fs", timeout)
    provider.shutdown()
    return flushed


def _never_samples(sampler: Any) -> bool:
    """Whether ``sampler`` never samples a trace that starts here (a parent's decision aside)."""
    from opentelemetry.sdk.trace import sampling

    root = getattr(sampler, "_root", sampler)  # ParentBased: the decision for new traces
    if isinstance(root, sampling.StaticSampler):
        return root is sampling.ALWAYS_OFF or root.get_description() == "AlwaysOffSampler"
    if isinstance(root, sampling.TraceIdRatioBased):
        return root.rate == 0
    return False


# -- the OpenTelemetry shim, propagating both formats ---------------------------------------------


def _shim(provider: Any) -> Any:
    """An OpenTracing tracer over ``provider``'s spans (the class is made here: the SDK is an
    optional extra)."""
    from opentelemetry.shim.opentracing_shim import TracerShim

    class Shim(TracerShim):
        """The OpenTelemetry OpenTracing shim, propagating through patron's own propagator
        rather than OpenTelemetry's global one (a host's choice, not ours)."""

        def inject(self, span_context: Any, format: object, carrier: Any) -> None:
            from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, set_span_in_context

            context = span_context.unwrap() if span_context else None  # an OTel SpanContext
            span = NonRecordingSpan(context) if context is not None else INVALID_SPAN
            _otel_propagator().inject(carrier, context=set_span_in_context(span))

        def extract(self, format: object, carrier: Any) -> Any:
            from opentelemetry.shim.opentracing_shim import SpanContextShim
            from opentelemetry.trace import INVALID_SPAN_CONTEXT, get_current_span

            context = _otel_propagator().extract(carrier)
            span = get_current_span(context)
            found = span.get_span_context() if span is not None else INVALID_SPAN_CONTEXT
            if not found.is_valid:
                raise opentracing.SpanContextCorruptedException("no span context")
            return SpanContextShim(found)

    return Shim(provider.get_tracer("patron"))


_propagator: Any = None


def _otel_propagator() -> Any:
    global _propagator
    if _propagator is None:
        from opentelemetry.baggage.propagation import W3CBaggagePropagator
        from opentelemetry.propagators.composite import CompositePropagator
        from opentelemetry.propagators.jaeger import JaegerPropagator
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        # Jaeger first, so that W3C wins when a carrier holds both.
        _propagator = CompositePropagator([
            JaegerPropagator(), TraceContextTextMapPropagator(), W3CBaggagePropagator(),
        ])
    return _propagator


# -- W3C trace context for the Jaeger backend -----------------------------------------------------

_TRACEPARENT = "traceparent"
_UBER = "uber-trace-id"


def _from_traceparent(value: str) -> Any:
    """A jaeger-client span context for a W3C ``traceparent``, or None when it is malformed."""
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or parts[0] == "ff":
        return None
    trace_hex, span_hex, flags_hex = parts[1], parts[2], parts[3]
    if len(trace_hex) != 32 or len(span_hex) != 16 or len(flags_hex) != 2:
        return None
    try:
        trace_id, span_id, flags = int(trace_hex, 16), int(span_hex, 16), int(flags_hex, 16)
    except ValueError:
        return None
    if not trace_id or not span_id:
        return None
    from jaeger_client import SpanContext

    return SpanContext(trace_id=trace_id, span_id=span_id, parent_id=None, flags=flags & 1)


def _traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-{'01' if sampled else '00'}"


def _extract(active: Any, carrier: Mapping[str, str]) -> Any:
    """The span context in ``carrier`` (None when there is none or it is malformed)."""
    try:
        if _state.backend == "jaeger" and _TRACEPARENT in carrier:
            parent = _from_traceparent(carrier[_TRACEPARENT])
            if parent is not None:
                return parent
        return active.extract(opentracing.Format.TEXT_MAP, carrier)
    except (opentracing.SpanContextCorruptedException, opentracing.InvalidCarrierException):
        return None
    except Exception:  # a malformed header must never fail the request
        logger.debug("tracing: could not extract span context", exc_info=True)
        return None


# -- spans ----------------------------------------------------------------------------------------


def tracer() -> opentracing.Tracer:
    """The tracer patron's spans come from: the one :func:`setup` installed, else OpenTracing's
    global one (a no-op unless a host or a test set one)."""
    active: opentracing.Tracer = _state.tracer if _state.users else opentracing.global_tracer()
    return active


def is_sampled(span: opentracing.Span) -> bool:
    """Whether ``span`` will be reported; tags on an unsampled span are wasted work."""
    sampled = getattr(span, "is_sampled", None)
    if sampled is not None:
        return bool(sampled())
    unwrap = getattr(span, "unwrap", None)  # the OpenTelemetry shim
    return True if unwrap is None else bool(unwrap().is_recording())


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
    active = tracer()
    parent = _extract(active, carrier) if carrier else None
    if _state.never_samples and parent is None and active.active_span is None:
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


def inject(carrier: MutableMapping[str, str], span: opentracing.Span | None = None) -> None:
    """Write the context of ``span`` (default: the active span) into ``carrier``, as W3C
    ``traceparent`` and as Jaeger's ``uber-trace-id``; a no-op without a span."""
    active = tracer()
    if span is None:
        span = active.active_span
        if span is None:
            return
    (span.tracer or active).inject(span.context, opentracing.Format.TEXT_MAP, carrier)
    context = span.context
    flags = getattr(context, "flags", None)  # jaeger-client's, which wrote uber-trace-id only
    if flags is not None and context.trace_id and _TRACEPARENT not in carrier:
        carrier[_TRACEPARENT] = _traceparent(context.trace_id, context.span_id, bool(flags & 1))


def current_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of the active span (see :func:`ids`), or None outside a span:
    what the log records carry. Any thread; cheap."""
    span = tracer().active_span
    return None if span is None else ids(span)


def ids(span: opentracing.Span) -> tuple[str, str] | None:
    """``(trace_id, span_id)`` of ``span`` as lower-case hex (32 and 16 digits), or None for a
    no-op span."""
    context = span.context
    trace_id = getattr(context, "trace_id", None)
    if trace_id is not None:  # jaeger-client
        return f"{trace_id:032x}", f"{context.span_id:016x}"
    unwrap = getattr(context, "unwrap", None)  # the OpenTelemetry shim
    if unwrap is not None:
        otel = unwrap()
        if otel.is_valid:
            return f"{otel.trace_id:032x}", f"{otel.span_id:016x}"
    return None
