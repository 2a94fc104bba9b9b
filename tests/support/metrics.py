"""Reading the default Prometheus registry in tests."""

from __future__ import annotations

import prometheus_client

from tests.conftest import wait_for

__all__ = ["await_sample", "sample"]


def sample(metric: str, /, **labels: str) -> float:
    """The current value of one sample of the default registry (0 when absent)."""
    value = prometheus_client.REGISTRY.get_sample_value(metric, labels)
    return 0.0 if value is None else value


def await_sample(metric: str, expected: float, /, timeout: float = 5.0, **labels: str) -> None:
    """Wait until a sample equals ``expected`` (metrics may be handed over just after the fact
    a test waited for: a response closed, a batch of counts recorded)."""
    try:
        wait_for(lambda: sample(metric, **labels) == expected, timeout=timeout)
    except AssertionError:
        actual = sample(metric, **labels)
        raise AssertionError(f"{metric}{labels} = {actual}, expected {expected}") from None
