"""Management routes of the default HTTP component: health, metrics, thread dump, profiling."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from types import FrameType

import pytest
from prometheus_client.parser import text_string_to_metric_families

from patron.http import Request, Route
from tests.conftest import wait_for
from tests.http.conftest import Reply, Serve, sample


def test_alive_ready_and_metrics_answer(serve: Serve) -> None:
    running = serve(routes=[Route("GET", "/user", lambda request: "user")])
    assert running.get("/user").status == 200  # so a user metric exists

    alive, ready = running.get("/alive"), running.get("/ready")
    assert (alive.status, alive.text) == (200, "alive")
    assert (ready.status, ready.text) == (200, "ready")

    scrape = running.get("/metrics")
    assert scrape.status == 200
    assert scrape.headers["Content-Type"].startswith("text/plain; version=")
    names = {family.name for family in text_string_to_metric_families(scrape.text)}
    assert {"component_http_handled", "component_http_handled_seconds"} <= names


def test_management_requests_are_not_counted_in_http_metrics(serve: Serve) -> None:
    running = serve()
    management = ["/alive", "/ready", "/metrics", "/debug/threads"]
    for path in management:
        assert running.get(path).status == 200, path
    scrape = running.get("/metrics").text
    paths = {
        s.labels["path"]
        for family in text_string_to_metric_families(scrape)
        for s in family.samples
        if s.name.startswith("component_http_handled")
    }
    assert not set(management) & paths
    assert all(
        sample("component_http_handled_total", method="GET", path=p, status_code="200") == 0
        for p in management
    )


def test_ready_answers_503_during_the_drain_delay_while_alive_stays_200(serve: Serve) -> None:
    running = serve(drain_delay=1.0)
    assert running.get("/ready").status == 200
    running.service.stop()
    wait_for(lambda: running.get("/ready").status == 503, timeout=1.0)
    assert running.get("/alive").status == 200
    assert running.service.wait(5) == 0


def test_ready_is_503_while_a_component_is_not_ready(serve: Serve) -> None:
    class Warming:
        name = "warming"

        def __init__(self) -> None:
            self.warm = threading.Event()

        def ready(self) -> bool:
            return self.warm.is_set()

        def run(self, stop: threading.Event) -> None:
            stop.wait()

    warming = Warming()
    running = serve(components=[warming])
    assert running.get("/ready").status == 503
    warming.warm.set()
    assert running.get("/ready").status == 200


def test_thread_dump_lists_every_thread_with_its_stack(serve: Serve) -> None:
    running = serve()
    release = threading.Event()
    marker = threading.Thread(target=release.wait, name="test-marker-thread")
    marker.start()
    try:
        reply = running.get("/debug/threads")
    finally:
        release.set()
        marker.join()
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    sections = {
        part.split('"', 1)[0]: part for part in reply.text.split('Thread "')[1:]
    }
    assert {"test-marker-thread", "patron-http", "patron-supervisor", "MainThread"} <= set(
        sections
    ), sorted(sections)
    # Stacks, not only names: the marker thread is waiting on its event.
    assert "in wait" in sections["test-marker-thread"]
    assert "threading.py" in sections["test-marker-thread"]


@pytest.mark.parametrize(("fmt", "content_type"), [("text", "text/plain"), ("html", "text/html")])
def test_profile_samples_for_the_requested_time(serve: Serve, fmt: str, content_type: str) -> None:
    running = serve()
    reply = running.get(f"/debug/profile?seconds=0.2&format={fmt}")
    assert reply.status == 200, reply.text[:500]
    assert reply.headers["Content-Type"].startswith(content_type)
    if fmt == "text":
        assert "all threads for 0.2s" in reply.text
        assert "thread patron-http" in reply.text


def test_profile_rejects_bad_parameters(serve: Serve) -> None:
    running = serve()
    for query in ("seconds=abc", "seconds=0", "seconds=-1", "seconds=31", "seconds=nan",
                  "seconds=inf", "seconds=1e400", "seconds=0.2&format=pdf"):
        reply = running.get(f"/debug/profile?{query}")
        assert reply.status == 400, query
        assert b"Traceback" not in reply.body, query


def _profiling_now() -> bool:
    """Whether some thread of this process is inside the profiler's sampling loop."""
    return any(
        frame.f_code.co_name == "_sample_all_threads"
        for frame in _all_frames()
    )


def _all_frames() -> list[FrameType]:
    frames: list[FrameType] = []
    for top in sys._current_frames().values():
        frame: FrameType | None = top
        while frame is not None:
            frames.append(frame)
            frame = frame.f_back
    return frames


def test_a_second_profile_while_one_runs_gets_409(serve: Serve) -> None:
    running = serve()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(running.get, "/debug/profile?seconds=1&format=text")
        wait_for(_profiling_now, timeout=5)
        second = running.get("/debug/profile?seconds=0.1&format=text")
        first_reply: Reply = first.result(10)
    assert second.status == 409
    assert first_reply.status == 200
    # Once the first is done, profiling is available again.
    assert running.get("/debug/profile?seconds=0.1&format=text").status == 200


def test_profiling_switched_off_hides_debug_routes(serve: Serve) -> None:
    running = serve(profiling=False)
    assert running.get("/debug/threads").status == 404
    assert running.get("/debug/profile?seconds=0.1").status == 404
    assert running.get("/alive").status == 200


def test_management_routes_answer_alongside_user_routes_that_fail(serve: Serve) -> None:
    def broken(request: Request) -> str:
        raise RuntimeError("user bug")

    running = serve(routes=[Route("GET", "/broken", broken)])
    assert running.get("/broken").status == 500
    assert running.get("/alive").status == 200
    assert running.get("/ready").status == 200
