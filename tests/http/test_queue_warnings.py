"""waitress warns about its task queue on every request while all workers are busy: the HTTP
server lets one such warning through per interval."""

from __future__ import annotations

import logging

import pytest
from waitress.task import ThreadedTaskDispatcher

from patron.http import server


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _installed_filter() -> server._EveryInterval:
    (installed,) = [  # exactly one, however often the module was imported
        f for f in logging.getLogger("waitress.queue").filters
        if isinstance(f, server._EveryInterval)
    ]
    return installed


def test_waitress_queue_warnings_are_let_through_once_per_interval(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    installed = _installed_filter()
    # The installed filter, with a fresh window and a clock the test moves.
    monkeypatch.setattr(installed, "_clock", clock)
    monkeypatch.setattr(installed, "_next", -float("inf"))
    caplog.set_level(logging.WARNING, logger="waitress.queue")
    dispatcher = ThreadedTaskDispatcher()  # no worker threads: every task queued warns

    for _ in range(50):
        dispatcher.add_task(object())
    assert [r.getMessage() for r in caplog.records] == ["Task queue depth is 1"]

    clock.now += server.QUEUE_WARNING_INTERVAL - 0.001
    dispatcher.add_task(object())
    assert len(caplog.records) == 1  # still inside the interval

    clock.now += 0.001
    dispatcher.add_task(object())
    assert [r.getMessage() for r in caplog.records] == [
        "Task queue depth is 1", "Task queue depth is 52",
    ]

