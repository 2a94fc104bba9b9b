"""The Service in-process: lifecycle, failures, timeouts, readiness and embedding."""

from __future__ import annotations

import ast
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from patron import EXIT_FAILURE, EXIT_OK, EXIT_TIMEOUT, Config, Service, tracing

FAST = Config(shutdown_timeout=2.0, drain_delay=0.0)


class Blocking:
    """Runs until stopped; records that it was stopped."""

    def __init__(self, name: str = "blocking") -> None:
        self.name = name
        self.started = threading.Event()
        self.stopped = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self.started.set()
        stop.wait()
        self.stopped.set()


class Failing:
    name = "failing"

    def __init__(self, after: threading.Event) -> None:
        self.after = after

    def run(self, stop: threading.Event) -> None:
        self.after.wait()
        raise RuntimeError("disk on fire")


class Stubborn:
    """Ignores its stop event until the test releases it."""

    name = "stubborn"

    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self.release.wait()


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO, logger="patron")
    yield caplog


def make(*components: object, config: Config = FAST) -> Service:
    return Service("test", "1", components=components, config=config, default_http=False)  # type: ignore[arg-type]


def test_clean_stop_returns_zero_and_stops_every_component() -> None:
    a, b = Blocking("a"), Blocking("b")
    service = make(a, b).start()
    assert a.started.wait(5) and b.started.wait(5)
    service.stop()
    assert service.wait(10) == EXIT_OK
    assert a.stopped.is_set() and b.stopped.is_set()


def test_failure_stops_the_others_and_names_the_component(
    records: pytest.LogCaptureFixture,
) -> None:
    go = threading.Event()
    survivor = Blocking("survivor")
    service = make(survivor, Failing(go)).start()
    assert survivor.started.wait(5)
    go.set()
    assert service.wait(10) == EXIT_FAILURE
    assert survivor.stopped.is_set()
    failure = [r for r in records.records if "component failing failed" in r.getMessage()]
    assert failure and "RuntimeError: disk on fire" in failure[0].getMessage()
    assert any("responsible: failing" in r.getMessage() for r in records.records)


def test_returning_early_is_an_unexpected_exit(records: pytest.LogCaptureFixture) -> None:
    class Quitter:
        name = "quitter"

        def run(self, stop: threading.Event) -> None:
            return None

    service = make(Blocking(), Quitter()).start()
    assert service.wait(10) == EXIT_FAILURE
    assert any("quitter returned before" in r.getMessage() for r in records.records)


def test_component_ignoring_stop_times_out_and_is_named(records: pytest.LogCaptureFixture) -> None:
    stubborn, polite = Stubborn(), Blocking("polite")
    service = make(stubborn, polite, config=Config(shutdown_timeout=0.3)).start()
    assert polite.started.wait(5)
    service.stop()
    try:
        assert service.wait(10) == EXIT_TIMEOUT
        assert polite.stopped.is_set()
        messages = [r.getMessage() for r in records.records]
        assert any("component stubborn did not stop within 0.3s" in m for m in messages)
        assert any("responsible: stubborn" in m for m in messages)
    finally:
        stubborn.release.set()


def test_readiness_turns_false_at_once_and_components_run_through_the_drain() -> None:
    class Ready(Blocking):
        def ready(self) -> bool:
            return self.started.is_set()

    component = Ready()
    service = make(component, config=Config(drain_delay=1.0, shutdown_timeout=2.0))
    assert not service.ready()  # not started yet
    service.start()
    assert component.started.wait(5)
    assert service.ready()
    service.stop()
    assert not service.ready()
    # Still draining: the component has not been told to stop yet.
    assert not component.stopped.wait(0.3)
    assert service.wait(10) == EXIT_OK
    assert component.stopped.is_set()


def test_component_readiness_gates_the_service() -> None:
    gate = threading.Event()

    class Gated(Blocking):
        def ready(self) -> bool:
            return gate.is_set()

    component = Gated()
    with make(component) as service:
        assert component.started.wait(5)
        assert not service.ready()
        gate.set()
        assert service.ready()


def test_a_raising_probe_counts_as_not_ready() -> None:
    class Broken(Blocking):
        def ready(self) -> bool:
            raise OSError("probe failed")

        def alive(self) -> bool:
            raise OSError("probe failed")

    component = Broken()
    with make(component) as service:
        assert component.started.wait(5)
        assert not service.ready()
        assert not service.alive()


def test_embedded_in_a_non_main_thread_with_context_manager() -> None:
    component = Blocking()
    result: dict[str, object] = {}

    def host() -> None:
        with make(component) as service:
            result["started"] = component.started.wait(5)
            result["ready"] = service.ready()
        result["code"] = service.wait(0)

    thread = threading.Thread(target=host)
    thread.start()
    thread.join(15)
    assert result == {"started": True, "ready": True, "code": EXIT_OK}
    assert component.stopped.is_set()


def test_start_twice_is_refused() -> None:
    service = make(Blocking()).start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            service.start()
    finally:
        service.stop()
        service.wait(10)


def test_component_names_are_unique_and_non_components_refused() -> None:
    service = make(Blocking("x"), Blocking("x"), Blocking("x"))
    assert list(service.components) == ["x", "x#2", "x#3"]
    with pytest.raises(TypeError, match="no run"):
        service.add_component(object())  # type: ignore[arg-type]


def test_routes_without_the_default_http_component_are_refused() -> None:
    with pytest.raises(ValueError, match="default HTTP"):
        Service("x", routes=[object()], default_http=False, config=FAST)


def test_version_defaults_to_dev() -> None:
    assert Service("x", config=FAST, default_http=False).version == "dev"


def test_a_user_component_named_http_does_not_replace_the_default_one() -> None:
    service = Service("x", components=[Blocking("http")], config=Config(http_default_port=0))
    assert list(service.components) == ["http#2", "http"]
    assert type(service.components["http"]).__name__ == "HTTPComponent"


class StopsLast(Blocking):
    """Needed by the others to the end; notes whether they had all stopped when it was told."""

    stop_last = True

    def __init__(self, others: list[Blocking]) -> None:
        super().__init__("last")
        self.others = others
        self.others_stopped_first: bool | None = None

    def run(self, stop: threading.Event) -> None:
        self.started.set()
        stop.wait()
        self.others_stopped_first = all(o.stopped.is_set() for o in self.others)
        self.stopped.set()


def test_components_that_stop_last_are_stopped_after_every_other() -> None:
    a, b = Blocking("a"), Blocking("b")
    last = StopsLast([a, b])
    service = make(last, a, b).start()  # listed first, stopped last all the same
    assert last.started.wait(5)
    service.stop()
    assert service.wait(10) == EXIT_OK
    assert last.others_stopped_first is True


def test_the_default_http_component_is_the_one_that_stops_last() -> None:
    service = Service("x", components=[Blocking("a")], config=Config(http_default_port=0))
    assert [getattr(c, "stop_last", False) for c in service.components.values()] == [False, True]


def _imported(node: ast.AST) -> list[str]:
    """The modules (and ``module.name`` forms) an import statement names."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.module:
        return [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
    return []


def test_no_component_package_imports_the_service() -> None:
    """The Service knows components; components know only probes and the config."""
    root = Path(__file__).resolve().parent.parent / "patron"
    offenders = sorted(
        path.relative_to(root).as_posix()
        for package in ("http", "grpc", "messaging", "kafka", "amqp", "sqs")
        for path in (root / package).glob("*.py")
        for node in ast.walk(ast.parse(path.read_text()))
        if any(name.split(".")[:2] == ["patron", "service"] for name in _imported(node))
    )
    assert offenders == []


class _BrokenStream(logging.Handler):
    """A handler whose stream went away: flushing it raises (a closed stderr)."""

    def emit(self, record: logging.LogRecord) -> None:
        pass

    def flush(self) -> None:
        raise ValueError("I/O operation on closed file")


def test_wait_returns_even_when_the_shutdown_itself_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    close = tracing.close

    def broken_close(timeout: float) -> bool:
        close(timeout)  # the tracer is closed (the next test starts clean), then it fails
        raise RuntimeError("tracer gone")

    broken = _BrokenStream()
    logging.getLogger().addHandler(broken)
    try:
        service = make(Blocking()).start()
        service.stop()
        assert service.wait(10) == EXIT_OK  # the flush failing is no reason to fail
        monkeypatch.setattr("patron.tracing.close", broken_close)
        service = make(Blocking()).start()
        service.stop()
        assert service.wait(10) == EXIT_FAILURE  # the shutdown failed, and wait() says so
    finally:
        logging.getLogger().removeHandler(broken)


def test_a_failing_component_is_one_error_line_with_the_traceback_at_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="patron.service")
    release = threading.Event()
    release.set()
    service = make(Failing(release)).start()
    assert service.wait(10) == EXIT_FAILURE
    errors = [r for r in caplog.records if r.name == "patron.service"
              and r.levelno == logging.ERROR and "component failing failed" in r.getMessage()]
    assert [r.getMessage() for r in errors] == [
        "component failing failed: RuntimeError: disk on fire"]
    assert errors[0].exc_info is None
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.exc_info]
    assert debug and "disk on fire" in str(debug[0].exc_info[1])


class Flaky:
    """A component whose readiness probe raises until told otherwise."""

    name = "flaky"

    def __init__(self) -> None:
        self.broken = True

    def run(self, stop: threading.Event) -> None:
        stop.wait()

    def ready(self) -> bool:
        if self.broken:
            raise ConnectionError("probe lost its connection")
        return True


def test_a_failing_probe_is_logged_when_it_starts_and_stops_failing(
        records: pytest.LogCaptureFixture) -> None:
    flaky = Flaky()
    service = make(flaky).start()
    try:
        wait_for_probe = [service.ready() for _ in range(20)]  # the kubelet's rate
        assert wait_for_probe == [False] * 20
        flaky.broken = False
        assert service.ready() and service.ready()
    finally:
        service.stop()
        service.wait(10)
    messages = [r.getMessage() for r in records.records if "probe of component flaky" in
                r.getMessage()]
    assert len(messages) == 2, messages
    assert "raised ConnectionError" in messages[0] and "answers again" in messages[1]


class Deadlined(Blocking):
    """Records the deadline stop_by() gave it, and whether its stop event was already set."""

    def __init__(self, name: str, raises: bool = False, stop_last: bool = False) -> None:
        super().__init__(name)
        self.raises = raises
        self.stop_last = stop_last
        self.deadline: float | None = None
        self.stopped_before_deadline: bool | None = None
        self._stop: threading.Event | None = None

    def run(self, stop: threading.Event) -> None:
        self._stop = stop
        super().run(stop)

    def stop_by(self, deadline: float) -> None:
        self.deadline = deadline
        self.stopped_before_deadline = self._stop is not None and self._stop.is_set()
        if self.raises:
            raise RuntimeError("cannot bound my stop")


def test_every_component_learns_the_shutdown_deadline_before_it_is_stopped() -> None:
    first, raising, last = Deadlined("a"), Deadlined("b", raises=True), Deadlined("c",
                                                                                 stop_last=True)
    service = make(first, raising, last, config=Config(shutdown_timeout=3.0, drain_delay=0.0))
    service.start()
    assert first.started.wait(5) and raising.started.wait(5) and last.started.wait(5)
    asked = time.monotonic()
    service.stop()
    assert service.wait(10) == EXIT_OK  # a stop_by that raises does not keep it from stopping
    assert raising.stopped.is_set()
    for component in (first, raising, last):
        assert component.stopped_before_deadline is False  # told the deadline, then stopped
        assert component.deadline is not None and asked < component.deadline <= asked + 3.5
    assert first.deadline == raising.deadline  # one budget for all
    assert last.deadline is not None and last.deadline >= first.deadline  # its own, after


def test_the_span_flush_gets_what_is_left_of_the_budget_but_at_least_half_a_second(
        monkeypatch: pytest.MonkeyPatch) -> None:
    flushes: list[float] = []
    real_close = tracing.close

    def close(timeout: float) -> bool:
        flushes.append(timeout)
        return real_close(0.1)  # each Service's tracer is closed: the next one starts clean

    monkeypatch.setattr("patron.tracing.close", close)
    stubborn = Stubborn()
    service = make(stubborn, config=Config(shutdown_timeout=0.3)).start()
    service.stop()
    assert service.wait(10) == EXIT_TIMEOUT  # it used up the whole budget
    stubborn.release.set()
    assert flushes == [0.5]  # not the 5 s it gets when there is time left
    service = make(Blocking(), config=Config(shutdown_timeout=20.0)).start()
    service.stop()
    assert service.wait(10) == EXIT_OK
    assert flushes[1] == 5.0
