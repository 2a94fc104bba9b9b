"""Capture the spans jaeger-client sends, on a UDP socket standing in for the Jaeger agent.

Usage in a test::

    with SpanCapture() as capture:
        service = Service("svc", config=capture.config(http_default_port=0))
        ... start, send requests, stop and wait (the Service flushes spans at shutdown) ...
        spans = capture.spans(count=2)

jaeger-client's reporter emits ``Agent.emitBatch`` calls, thrift compact protocol, one UDP
datagram each; :meth:`SpanCapture.spans` decodes them into :class:`CapturedSpan` values. Every
method runs in the calling thread; the kernel buffers the datagrams until they are read.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from types import TracebackType
from typing import Any

from jaeger_client.thrift_gen.agent import Agent
from thrift.protocol.TCompactProtocol import TCompactProtocol
from thrift.transport.TTransport import TMemoryBuffer

from patron.config import Config

__all__ = ["CapturedSpan", "SpanCapture", "decode_batch", "trace_header"]

_U64 = (1 << 64) - 1
_MAX_DATAGRAM = 65535


def _unsigned(value: int | None) -> int:
    # Jaeger's thrift ids are signed i64; headers and APIs use the unsigned value.
    return (value or 0) & _U64


def _tag_value(tag: Any) -> object:
    for attr in ("vStr", "vBool", "vLong", "vDouble", "vBinary"):
        value = getattr(tag, attr)
        if value is not None:
            return value
    return None


def span_tags(span: Any) -> dict[str, object]:
    """The tags of a span a Jaeger tracer finished (an ``InMemoryReporter``'s) as a dict."""
    return {tag.key: _tag_value(tag) for tag in span.tags}


@dataclasses.dataclass(frozen=True)
class CapturedSpan:
    """One span as the agent received it. Ids are unsigned integers."""

    service: str
    operation: str
    trace_id_low: int
    trace_id_high: int
    span_id: int
    parent_span_id: int
    flags: int
    tags: dict[str, object]


def decode_batch(datagram: bytes) -> list[CapturedSpan]:
    """The spans of one ``emitBatch`` datagram."""
    protocol = TCompactProtocol(TMemoryBuffer(datagram))
    protocol.readMessageBegin()
    args = Agent.emitBatch_args()
    args.read(protocol)
    batch = args.batch
    service = batch.process.serviceName if batch.process is not None else ""
    return [
        CapturedSpan(
            service=service,
            operation=span.operationName,
            trace_id_low=_unsigned(span.traceIdLow),
            trace_id_high=_unsigned(span.traceIdHigh),
            span_id=_unsigned(span.spanId),
            parent_span_id=_unsigned(span.parentSpanId),
            flags=span.flags or 0,
            tags={tag.key: _tag_value(tag) for tag in span.tags or ()},
        )
        for span in batch.spans or ()
    ]


def trace_header(trace_id: int, span_id: int, parent_id: int = 0, flags: int = 1) -> str:
    """An ``uber-trace-id`` header value for a caller's span (flags 1 = sampled)."""
    return f"{trace_id:x}:{span_id:x}:{parent_id:x}:{flags:x}"


class SpanCapture:
    """A UDP socket on 127.0.0.1 receiving jaeger-client batches; close it when done."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self._received: list[CapturedSpan] = []

    def config(self, **overrides: Any) -> Config:
        """A Config whose tracer samples every trace and reports to this socket."""
        settings: dict[str, Any] = {
            "jaeger_sampler_type": "const",
            # An int on purpose: jaeger-client reads a const sampler's param as text and takes
            # "1.0" for false (see test_a_const_sampler_from_the_environment_samples).
            "jaeger_sampler_param": 1,
            "jaeger_agent_host": "127.0.0.1",
            "jaeger_agent_port": self.port,
        }
        settings.update(overrides)
        return Config(**settings)

    def env(self) -> dict[str, str]:
        """The same settings as ``PATRON_*`` variables, for a service in a subprocess."""
        return {
            "PATRON_JAEGER_SAMPLER_TYPE": "const",
            "PATRON_JAEGER_SAMPLER_PARAM": "1",
            "PATRON_JAEGER_AGENT_HOST": "127.0.0.1",
            "PATRON_JAEGER_AGENT_PORT": str(self.port),
        }

    def spans(self, count: int, timeout: float = 5.0) -> list[CapturedSpan]:
        """Every span received so far, once at least ``count`` have arrived.

        Raises ``AssertionError`` naming what did arrive when ``count`` is not reached within
        ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while len(self._received) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"expected {count} span(s) within {timeout}s, got {len(self._received)}: "
                    f"{[s.operation for s in self._received]}"
                )
            self._sock.settimeout(left)
            try:
                datagram = self._sock.recv(_MAX_DATAGRAM)
            except TimeoutError:
                continue
            self._received.extend(decode_batch(datagram))
        return list(self._received)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> SpanCapture:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
