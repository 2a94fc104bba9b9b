"""Management routes of the default HTTP component: health, metrics, thread dump, profiling."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from types import FrameType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder

from patron.http import HTTPComponent, Request, Route, management
from patron.http.management import management_routes
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
    running = serve(profiling="off")
    assert running.get("/debug/threads").status == 404  # from loopback too: no route at all
    assert running.get("/debug/profile?seconds=0.1").status == 404
    assert running.get("/alive").status == 200
    assert all(not route.pattern.startswith("/debug/")
               for route in management_routes(lambda: True, lambda: True, "off"))


def test_management_routes_answer_alongside_user_routes_that_fail(serve: Serve) -> None:
    def broken(request: Request) -> str:
        raise RuntimeError("user bug")

    running = serve(routes=[Route("GET", "/broken", broken)])
    assert running.get("/broken").status == 500
    assert running.get("/alive").status == 200
    assert running.get("/ready").status == 200


# -- who may reach /debug/ ---------------------------------------------------------------------


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine, not loopback, that a socket here can bind and reach."""
    candidates: list[str] = []
    with contextlib.suppress(OSError):
        candidates += socket.gethostbyname_ex(socket.gethostname())[2]
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("198.51.100.1", 9))  # UDP: sends nothing, picks the default route's source
        candidates.append(probe.getsockname()[0])
    for address in candidates:
        if ipaddress.ip_address(address).is_loopback or address == "0.0.0.0":
            continue
        with contextlib.suppress(OSError), socket.socket() as sock:
            sock.bind((address, 0))
            return address
    return None


@pytest.fixture(scope="module")
def remote_address() -> str:
    address = _non_loopback_address()
    if address is None:
        pytest.skip("this machine has no non-loopback IPv4 address to connect from")
    return address


def _get_from(address: str, port: int, path: str) -> Reply:
    """GET from ``address`` to the service listening on every interface at ``port``."""
    conn = http.client.HTTPConnection(address, port, timeout=10, source_address=(address, 0))
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        conn.close()


def test_debug_routes_are_hidden_from_a_non_loopback_client_by_default(
    serve: Serve, remote_address: str
) -> None:
    running = serve()  # PATRON_PROFILING's default: loopback
    unknown = _get_from(remote_address, running.port, "/no-such-route")
    assert unknown.status == 404
    for path in ("/debug/threads", "/debug/profile?seconds=0.1&format=text"):
        reply = _get_from(remote_address, running.port, path)
        # The very answer of a path that does not exist: nothing tells the route is there.
        assert (reply.status, reply.body) == (404, unknown.body), path
        assert reply.headers["Content-Type"] == unknown.headers["Content-Type"], path
    for path in ("/alive", "/ready", "/metrics"):
        assert _get_from(remote_address, running.port, path).status == 200, path
    # The same service serves /debug/ to a client on loopback.
    assert running.get("/debug/threads").status == 200
    assert running.get("/debug/profile?seconds=0.1&format=text").status == 200


def test_profiling_on_serves_a_non_loopback_client(serve: Serve, remote_address: str) -> None:
    running = serve(profiling="on")
    threads = _get_from(remote_address, running.port, "/debug/threads")
    assert threads.status == 200
    assert 'Thread "patron-http"' in threads.text
    profile = _get_from(remote_address, running.port, "/debug/profile?seconds=0.1&format=text")
    assert profile.status == 200
    assert "all threads for 0.1s" in profile.text


def _status_from(component: HTTPComponent, path: str, remote_addr: str) -> int:
    environ = EnvironBuilder(path=path, environ_overrides={"REMOTE_ADDR": remote_addr})
    statuses: list[str] = []

    def start_response(status: str, headers: Any, exc_info: Any = None) -> None:
        statuses.append(status)

    body = component(environ.get_environ(), start_response)
    b"".join(body)
    return int(statuses[0].split()[0])


@pytest.mark.parametrize(
    ("remote_addr", "served"),
    [
        ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("::ffff:127.0.0.1", True),
        ("192.0.2.2", False), ("10.0.0.1", False), ("::ffff:10.0.0.1", False),
        ("fd00::2", False), ("fe80::1%eth0", False), ("0.0.0.0", False), ("::", False),
        ("", False), ("not-an-address", False),
    ],
)
def test_loopback_mode_serves_debug_only_to_loopback_addresses(
    remote_addr: str, served: bool
) -> None:
    # WSGI level, for the IPv6 and IPv4-mapped peers the IPv4 test server cannot have.
    component = HTTPComponent(
        0, management=management_routes(lambda: True, lambda: True, "loopback")
    )
    assert _status_from(component, "/debug/threads", remote_addr) == (200 if served else 404)
    assert _status_from(component, "/alive", remote_addr) == 200


def test_management_routes_refuse_an_unknown_profiling_mode() -> None:
    with pytest.raises(ValueError, match="profiling"):
        management_routes(lambda: True, lambda: True, "true")


# -- a profile's memory and answer are bounded -------------------------------------------------


@contextlib.contextmanager
def _threads(target: Any, count: int) -> Iterator[None]:
    stop = threading.Event()
    threads = [
        threading.Thread(target=target, args=(stop,), name=f"test-profiled-{i}")
        for i in range(count)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)


def _idle(stop: threading.Event) -> None:
    stop.wait()


def test_profile_keeps_each_distinct_stack_once() -> None:
    with _threads(_idle, 3):
        session = management._sample_all_threads(0.3)
    stacks = [tuple(stack) for stack, _ in session.frame_records]
    assert len(stacks) == len(set(stacks))
    idle = [stack for stack in stacks if stack[0].startswith("thread test-profiled-")]
    # One record per idle thread however many samples were taken (the old sampler kept one
    # per thread per sample).
    assert session.sample_count > 5
    assert len(idle) == 3, idle


def test_profile_tree_has_one_node_per_call_path() -> None:
    with _threads(_idle, 3):
        session = management._sample_all_threads(0.3)
    root = session.root_frame()
    assert root is not None
    pending, nodes = [root], 0
    while pending:
        frame = pending.pop()
        nodes += 1
        identifiers = [child.identifier for child in frame.children]
        assert len(identifiers) == len(set(identifiers)), frame.identifier
        pending.extend(frame.children)
    assert nodes < 1000  # the old records gave a branch per sample per thread


def _recurse(stop: threading.Event) -> None:
    """Sleeps at a depth that changes all the time: new distinct stacks keep appearing."""
    depth = 0

    def down(level: int) -> None:
        if level:
            down(level - 1)
        else:
            time.sleep(0.001)

    while not stop.is_set():
        depth = (depth + 7) % 60
        down(depth)


def test_profile_keeps_at_most_the_frame_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(management, "PROFILE_MAX_FRAMES", 300)
    with _threads(_recurse, 4):
        session = management._sample_all_threads(0.5)
    *kept, (overflow_stack, overflow_time) = session.frame_records
    assert sum(len(stack) for stack, _ in kept) <= 300
    assert overflow_stack[0].startswith("[stacks beyond the limit]")
    assert overflow_time > 0
    # The overflow still counts: every thread's time is there, none lost.
    recurse_time = sum(t for stack, t in kept if stack[0].startswith("thread test-profiled-"))
    assert recurse_time + overflow_time >= 4 * 0.5 * 0.5


def test_an_html_profile_over_the_answer_limit_is_answered_as_text(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 20_000  # pyinstrument's page alone (its script) is larger
    monkeypatch.setattr(management, "PROFILE_MAX_BYTES", limit)
    running = serve()
    reply = running.get("/debug/profile?seconds=0.2&format=html")
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/plain")
    assert reply.text.startswith("[The HTML rendering of this profile is ")
    assert f"over the {limit}-byte limit of /debug/profile: this is the text rendering.]" in (
        reply.text
    )
    assert "all threads for 0.2s" in reply.text
    assert len(reply.body) <= limit


def test_a_text_profile_over_the_answer_limit_is_cut_at_a_line(
    serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    limit = 600
    monkeypatch.setattr(management, "PROFILE_MAX_BYTES", limit)
    running = serve()
    reply = running.get("/debug/profile?seconds=0.2&format=text")
    assert reply.status == 200
    assert len(reply.body) <= limit
    text, tail = reply.text.rsplit("[Truncated: the text rendering is ", 1)
    assert tail.endswith(f"bytes, over the {limit}-byte limit.]\n")
    assert text.endswith("\n")  # whole lines only
    assert "Recorded:" in text  # the start of pyinstrument's rendering is kept


def test_metrics_is_prometheus_clients_own_app(serve: Serve) -> None:
    import gzip

    running = serve()
    plain = running.get("/metrics")
    assert plain.status == 200
    assert plain.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    names = {family.name for family in text_string_to_metric_families(plain.text)}
    assert "process_cpu_seconds" in names

    zipped = running.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert b"process_cpu_seconds_total" in gzip.decompress(zipped.body)

    open_metrics = running.get(
        "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert open_metrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")

    selected = running.get("/metrics?name[]=process_cpu_seconds_total")
    families = {family.name for family in text_string_to_metric_families(selected.text)}
    assert families == {"process_cpu_seconds"}


@pytest.fixture
def root_level() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


def test_debug_log_reads_and_changes_the_log_level_at_run_time(
    serve: Serve, root_level: None, caplog: pytest.LogCaptureFixture
) -> None:
    running = serve()
    logging.getLogger().setLevel(logging.INFO)
    assert running.get("/debug/log").text == "INFO\n"

    with caplog.at_level(logging.WARNING, logger="patron.http"):
        changed = running.request("POST", "/debug/log/debug", body=b"")
    assert (changed.status, changed.text) == (200, "DEBUG\n")
    assert logging.getLogger().level == logging.DEBUG
    assert "log level changed from INFO to DEBUG by 127.0.0.1" in caplog.text
    assert running.get("/debug/log").text == "DEBUG\n"

    refused = running.request("POST", "/debug/log/verbose", body=b"")
    assert refused.status == 400
    assert logging.getLogger().level == logging.DEBUG


def test_debug_log_is_hidden_from_a_non_loopback_client_by_default(
    serve: Serve, remote_address: str, root_level: None
) -> None:
    running = serve()
    level = logging.getLogger().level
    conn = http.client.HTTPConnection(remote_address, running.port, timeout=10,
                                      source_address=(remote_address, 0))
    try:
        conn.request("POST", "/debug/log/critical", body=b"")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.status == 404
    assert logging.getLogger().level == level
    assert _get_from(remote_address, running.port, "/debug/log").status == 404
