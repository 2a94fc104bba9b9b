from __future__ import annotations

import pytest

from patron import metrics


def test_declaring_again_returns_the_same_collector() -> None:
    first = metrics.counter("test_metrics_again_total", "doc", ("a",))
    assert metrics.counter("test_metrics_again_total", "doc", ("a",)) is first


def test_declaring_again_with_other_labels_or_kind_is_refused() -> None:
    metrics.counter("test_metrics_clash_total", "doc", ("a",))
    with pytest.raises(ValueError, match="labels"):
        metrics.counter("test_metrics_clash_total", "doc", ("a", "b"))
    with pytest.raises(TypeError, match="Counter"):
        metrics.gauge("test_metrics_clash_total", "doc", ("a",))
