"""Handler timeouts (patron.http.timeout) over real HTTP."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from opentracing.mocktracer import MockTracer

from patron import correlation, tracing
from patron.http import Request, Route, RouteOptions
from patron.http.timeout import Timeout
from tests.http.conftest import Reply, Running, Serve

WAIT = 10.0  # how long a blocked handler waits for the test at most: never reached


class Blocked:
    """A handler that blocks until the test releases it, telling what it went through."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None

    def __call__(self, request: Request) -> str:
        self.thread = threading.current_thread()
        self.entered.set()
        released = self.release.wait(WAIT)
        self.finished.set()
        return "late answer" if released else "never released"

    def join(self) -> None:
        """Release the handler and wait until its thread has ended."""
        self.release.set()
        assert self.finished.wait(WAIT)
        assert self.thread is not None
        self.thread.join(WAIT)
        assert not self.thread.is_alive()


@pytest.fixture
def blocked() -> Iterator[Blocked]:
    handler = Blocked()
    yield handler
    handler.release.set()  # never leave a handler thread behind, even when a test fails


def served(serve: Serve, handler: Any, timeout: Timeout, pattern: str = "/slow") -> Running:
    return serve(routes=[Route("GET", pattern, handler, options=RouteOptions(timeout=timeout))])


def in_background(running: Running, path: str) -> tuple[threading.Thread, list[Reply]]:
    replies: list[Reply] = []
    thread = threading.Thread(target=lambda: replies.append(running.get(path)))
    thread.start()
    return thread, replies


def test_a_handler_past_its_timeout_is_answered_503_at_once(
    serve: Serve, blocked: Blocked, caplog: pytest.LogCaptureFixture
) -> None:
    running = served(serve, blocked, Timeout(0.2))

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="patron.http"):
        reply = running.get("/slow")
    elapsed = time.monotonic() - started

    assert reply.status == 503
    assert b"did not answer in time" in reply.body
    assert elapsed < 0.2 + 3.0
    assert blocked.entered.is_set()
    assert not blocked.finished.is_set()  # the handler is still blocked
    assert blocked.thread is not None and blocked.thread.is_alive()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("/slow" in r.getMessage() and "0.2s" in r.getMessage() for r in warnings)

    blocked.join()


def test_the_late_handler_ends_its_answer_is_discarded_and_its_slot_is_freed(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    first = Blocked()
    calls: list[str] = []

    def handler(request: Request) -> str:
        calls.append(threading.current_thread().name)
        if len(calls) == 1:
            return first(request)
        return "second answer"

    running = served(serve, handler, Timeout(0.2, max_threads=1))
    try:
        with caplog.at_level(logging.DEBUG, logger="patron.http"):
            assert running.get("/slow").status == 503
            first.join()  # the thread ends once the handler returns
        discarded = [r for r in caplog.records if "answer discarded" in r.getMessage()]
        assert len(discarded) == 1
        # The only slot is free again: the next request is served, with its own answer.
        reply = running.get("/slow")
        assert (reply.status, reply.text) == (200, "second answer")
    finally:
        first.release.set()
    assert len(calls) == 2


def test_a_fast_handler_is_unaffected(serve: Serve) -> None:
    def fast(request: Request) -> tuple[str, int, dict[str, str]]:
        return f"ran in {threading.current_thread().name}", 201, {"X-Extra": "yes"}

    running = served(serve, fast, Timeout(5.0))
    for _ in range(3):
        reply = running.get("/slow")
        assert reply.status == 201
        assert reply.headers["X-Extra"] == "yes"
        assert reply.text.startswith("ran in patron-timeout-")


def test_an_exception_in_time_is_answered_as_without_a_timeout(serve: Serve) -> None:
    def failing(request: Request) -> str:
        raise RuntimeError("boom")

    running = served(serve, failing, Timeout(5.0))
    reply = running.get("/slow")
    assert reply.status == 500
    assert b"boom" not in reply.body


def test_the_correlation_id_and_span_are_visible_in_the_handler_thread(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def handler(request: Request) -> str:
        seen["thread"] = threading.current_thread().name
        seen["correlation"] = correlation.current()
        seen["span"] = tracing.tracer().active_span
        return "ok"

    running = served(serve, handler, Timeout(5.0))
    # Installed once the Service has set up its own tracer: OpenTracing's mock tracer keeps the
    # active span per thread, not in the context, and samples every span.
    monkeypatch.setattr(tracing._state, "tracer", MockTracer())
    monkeypatch.setattr(tracing._state, "never_samples", False)
    reply = running.get("/slow", headers={correlation.HEADER: "cid-in-the-pool"})

    assert reply.status == 200
    assert seen["thread"].startswith("patron-timeout-")
    assert seen["correlation"] == "cid-in-the-pool"
    assert seen["span"] is not None
    assert seen["span"].operation_name == "GET /slow"


def test_an_exhausted_pool_answers_503_at_once(serve: Serve, blocked: Blocked) -> None:
    running = served(serve, blocked, Timeout(60.0, max_threads=1))
    background, replies = in_background(running, "/slow")
    assert blocked.entered.wait(WAIT)

    started = time.monotonic()
    reply = running.get("/slow")
    elapsed = time.monotonic() - started
    assert reply.status == 503
    assert b"too many handlers" in reply.body
    assert elapsed < 3.0  # far from the 60 s timeout: not queued behind the blocked handler

    blocked.join()
    background.join(WAIT)
    assert [r.status for r in replies] == [200]  # the first one, in time, got its answer


def test_bad_configurations_are_refused() -> None:
    for seconds in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            Timeout(seconds)
    with pytest.raises(ValueError):
        Timeout(1.0, max_threads=0)
