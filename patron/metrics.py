"""Prometheus metrics on prometheus-client's default registry.

Transports declare their collectors through :func:`counter`, :func:`histogram` and
:func:`gauge`, which return the already registered collector when the same name is declared
again, so components can be built many times in one process (tests, several consumers).
``GET /metrics`` of the default HTTP component serves the registry with prometheus_client's own
WSGI app.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TypeVar

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.metrics import MetricWrapperBase

__all__ = ["counter", "gauge", "histogram"]

M = TypeVar("M", bound=MetricWrapperBase)

_lock = threading.Lock()
_declared: dict[str, MetricWrapperBase] = {}


def _declare(
    kind: type[M], name: str, documentation: str, labels: Sequence[str], **kw: object
) -> M:
    with _lock:
        existing = _declared.get(name)
        if existing is None:
            existing = kind(name, documentation, labelnames=tuple(labels), **kw)  # type: ignore[arg-type]
            _declared[name] = existing
        if not isinstance(existing, kind):
            raise TypeError(f"metric {name!r} is already declared as {type(existing).__name__}")
        if tuple(existing._labelnames) != tuple(labels):
            raise ValueError(
                f"metric {name!r} is already declared with labels {existing._labelnames}, "
                f"not {tuple(labels)}"
            )
        return existing


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    return _declare(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return _declare(Gauge, name, documentation, labels)


def histogram(
    name: str,
    documentation: str,
    labels: Sequence[str] = (),
    buckets: Sequence[float] = Histogram.DEFAULT_BUCKETS,
) -> Histogram:
    return _declare(Histogram, name, documentation, labels, buckets=tuple(buckets))

