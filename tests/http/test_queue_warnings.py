from __future__ import annotations

import logging

import pytest

import patron.http.server  # noqa: F401 - installs the filter


def test_waitress_queue_depth_warnings_are_rate_limited(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="waitress.queue")
    queue_logger = logging.getLogger("waitress.queue")
    for depth in range(50):
        queue_logger.warning("Task queue depth is %d", depth)
    assert [r.getMessage() for r in caplog.records] in ([], ["Task queue depth is 0"])
    assert len(caplog.records) <= 1
