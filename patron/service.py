"""The Service: runs components in threads, supervises them and shuts them down in order.

Threads
    Each component runs in a thread of its own, named ``patron-<component name>``. The
    supervisor loop runs in the thread that called :meth:`Service.run`, or in a thread named
    ``patron-supervisor`` after :meth:`Service.start`. Everything the supervisor learns arrives
    on one queue: component exits (with or without an error), signals and stop requests.

Shutdown
    The first component error, the first unexpected exit (a component returning before it was
    told to stop), SIGTERM, SIGINT, SIGHUP without a hook, or :meth:`Service.stop` starts it:

    1. readiness turns false at once (``GET /ready`` answers 503);
    2. the drain delay passes, so load balancers stop sending new work;
    3. the stop event of every component is set and they are joined, then those that stop last
       (:class:`patron.component.StopsLast`: the default HTTP component, so health and metrics
       stay up until the end) are stopped; all of this shares one shutdown timeout, whose
       deadline each component learns first (:class:`patron.component.StopsBy`), and a
       component still running at the deadline is named in the log and its thread abandoned;
    4. buffered spans are flushed, within what is left of the same timeout (at least 0.5 s).

    The exit status (returned by :meth:`run` and :meth:`wait`) is :data:`EXIT_OK` after a clean
    stop, :data:`EXIT_FAILURE` when a component failed or exited unexpectedly (or the shutdown
    itself failed) and :data:`EXIT_TIMEOUT` when a component did not stop in time. A second
    SIGTERM or SIGINT during shutdown exits the process at once with status 128 + the signal
    number; a SIGHUP during shutdown changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from patron import log, tracing
from patron.component import Component, is_alive, is_ready, name_of, stops_last
from patron.config import Config

if TYPE_CHECKING:  # an HTTP-less service never imports werkzeug
    from patron.http.component import WSGIMiddleware
    from patron.http.options import RouteOptions
    from patron.http.routes import Middleware, Mount, Route

__all__ = ["EXIT_FAILURE", "EXIT_OK", "EXIT_TIMEOUT", "Service"]

logger = logging.getLogger("patron.service")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_TIMEOUT = 3
TRACE_FLUSH_TIMEOUT = 5.0
TRACE_FLUSH_MINIMUM = 0.5
LAST_STOP_MINIMUM = 1.0
EVENT_POLL = 0.1  # longest a signal may wait for its handler


@dataclasses.dataclass(frozen=True)
class _Exited:
    name: str
    error: BaseException | None
    asked_to_stop: bool


@dataclasses.dataclass(frozen=True)
class _Signal:
    signum: int


class _StopRequested:
    pass


_Event = _Exited | _Signal | _StopRequested


class Service:
    """A named, versioned set of components with shared logging, metrics, tracing and health.

    ``routes`` (``patron.http.Route`` and ``patron.http.Mount``), ``middlewares``,
    ``route_options`` (router-wide :class:`patron.http.RouteOptions`) and ``wsgi_middlewares``
    go to the default HTTP component on ``PATRON_HTTP_DEFAULT_PORT``, which also serves ``/alive``,
    ``/ready``, ``/metrics`` and ``/debug/``; pass ``default_http=False`` to run without it.
    ``sighup`` is called in the supervisor thread on SIGHUP and the service keeps running; an
    exception from it is logged. ``config`` defaults to :meth:`Config.from_env`, which raises
    :class:`patron.config.ConfigError` on a bad variable. ``tracer`` (an OpenTracing tracer or
    an OpenTelemetry ``TracerProvider`` the host set up) is used instead of the one
    ``PATRON_TRACING`` names, and never closed by the Service (see :mod:`patron.tracing`).
    """

    def __init__(
        self,
        name: str,
        version: str = "",
        *,
        components: Iterable[Component] = (),
        routes: Iterable[Route | Mount] = (),
        middlewares: Sequence[Middleware] = (),
        route_options: RouteOptions | None = None,
        wsgi_middlewares: Sequence[WSGIMiddleware] = (),
        config: Config | None = None,
        sighup: Callable[[], None] | None = None,
        handle_signals: bool = True,
        default_http: bool = True,
        log_fields: Mapping[str, str] | None = None,
        tracer: Any = None,
    ) -> None:
        if not name:
            raise ValueError("a service needs a name")
        self.name = name
        self.version = version or "dev"
        self.config = config if config is not None else Config.from_env()
        if tracer is None:
            tracing.check(self.config)
        self._tracer = tracer
        self._sighup = sighup
        self._handle_signals = handle_signals
        self._log_fields = dict(log_fields or {})
        self._components: dict[str, Component] = {}
        self._default_http: Component | None = None
        if default_http:
            # an HTTP-less service never imports werkzeug
            from patron.http import NO_OPTIONS, HTTPComponent

            self._default_http = HTTPComponent.default(
                self.config, self, routes, middlewares,
                route_options=route_options or NO_OPTIONS,
                wsgi_middlewares=wsgi_middlewares,
            )
        elif any(True for _ in routes) or middlewares or route_options or wsgi_middlewares:
            raise ValueError("routes, middlewares and route options need the default HTTP "
                             "component")
        for component in components:
            self.add_component(component)

        self._events: queue.SimpleQueue[_Event] = queue.SimpleQueue()
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._started = False
        # A plain flag: the signal handler sets it, and an Event's lock could deadlock there.
        self._draining = False
        self._done = threading.Event()
        self._exit_code: int | None = None
        self._supervisor: threading.Thread | None = None
        self._signal_count = 0
        self._failing_probes: set[tuple[str, str]] = set()
        self._probe_lock = threading.Lock()

    # -- composition -------------------------------------------------------------------------

    def add_component(self, component: Component) -> None:
        """Add a component before the service starts; names are made unique with a suffix."""
        if not callable(getattr(component, "run", None)):
            raise TypeError(f"{component!r} is not a component: it has no run(stop) method")
        if getattr(self, "_started", False):
            raise RuntimeError("components must be added before the service starts")
        base = name_of(component)
        taken = set(self._components)
        if self._default_http is not None:
            taken.add(name_of(self._default_http))
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}#{n}"
        self._components[name] = component

    @property
    def components(self) -> dict[str, Component]:
        """Every component by name, the default HTTP component last."""
        everything = dict(self._components)
        if self._default_http is not None:
            everything[name_of(self._default_http)] = self._default_http
        return everything

    # -- health ------------------------------------------------------------------------------

    def ready(self) -> bool:
        """True while the service is not shutting down and every component is ready."""
        return (
            self._started
            and not self._draining
            and all(self._probe(is_ready, n, c) for n, c in self.components.items())
        )

    def alive(self) -> bool:
        """True while every component reports itself alive."""
        return not self._done.is_set() and all(
            self._probe(is_alive, n, c) for n, c in self.components.items()
        )

    def _probe(self, probe: Callable[[object], bool], name: str, component: object) -> bool:
        """``probe(component)``; False when it raises. Probes run at the kubelet's rate, so a
        failing one is logged when it starts failing and when it answers again, not at every
        call (the traceback at DEBUG)."""
        kind = probe.__name__.removeprefix("is_")
        key = (kind, name)
        try:
            answer = probe(component)
        except Exception as exc:
            with self._probe_lock:  # HTTP worker threads probe at the same time
                first = key not in self._failing_probes
                self._failing_probes.add(key)
            if first:
                logger.warning("%s probe of component %s raised %r; logged again once it "
                               "answers", kind, name, exc)
                logger.debug("%s probe of component %s raised", kind, name, exc_info=True)
            return False
        if key in self._failing_probes:
            with self._probe_lock:
                recovered = key in self._failing_probes
                self._failing_probes.discard(key)
            if recovered:
                logger.info("%s probe of component %s answers again", kind, name)
        return answer

    @property
    def draining(self) -> bool:
        return self._draining

    # -- lifecycle ---------------------------------------------------------------------------

    def run(self) -> int:
        """Start, supervise in the calling thread until shutdown ends; return the exit status.

        Installs SIGTERM, SIGINT and SIGHUP handlers when called in the main thread and
        ``handle_signals`` is true, and restores the previous handlers before returning.
        """
        previous = self._install_signals()  # first, so no signal finds the default handler
        try:
            self._start_components()
            return self._supervise()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def start(self) -> Service:
        """Start the components and a supervisor thread; return at once. Takes no signals."""
        self._start_components()
        self._supervisor = threading.Thread(
            target=self._supervise, name="patron-supervisor", daemon=True
        )
        self._supervisor.start()
        return self

    def stop(self) -> None:
        """Ask for an orderly shutdown; safe from any thread, and more than once.

        Readiness is false when this returns; the rest happens in the supervisor thread.
        """
        self._draining = True
        self._events.put(_StopRequested())

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until shutdown ends; return the exit status, or None on ``timeout``."""
        if not self._done.wait(timeout):
            return None
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()  # it has nothing left to do but return
        return self._exit_code

    def __enter__(self) -> Service:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self.wait()

    # -- internals ---------------------------------------------------------------------------

    def _start_components(self) -> None:
        if self._started:
            raise RuntimeError(f"service {self.name!r} was already started")
        cfg = self.config
        log.setup(self.name, self.version, cfg.log_level, cfg.log_format, self._log_fields)
        tracing.setup(self.name, cfg, self.version, self._tracer)
        self._started = True
        for name, component in self.components.items():
            stop = threading.Event()
            thread = threading.Thread(
                target=self._run_component,
                args=(name, component, stop),
                name=f"patron-{name}",
                daemon=True,  # joined at shutdown; daemon only so an abandoned one can't hang exit
            )
            self._stops[name] = stop
            self._threads[name] = thread
            thread.start()
        logger.info(
            "service %s %s started with components: %s",
            self.name, self.version, ", ".join(self._threads),
        )

    def _run_component(self, name: str, component: Component, stop: threading.Event) -> None:
        error: BaseException | None = None
        try:
            component.run(stop)
        except BaseException as exc:  # the supervisor decides; nothing may vanish silently
            error = exc
            # One line an operator can act on; the traceback is for whoever debugs it.
            logger.error("component %s failed: %s: %s", name, type(exc).__name__, exc)
            logger.debug("component %s failed", name, exc_info=exc)
        self._events.put(_Exited(name, error, stop.is_set()))

    def _install_signals(self) -> dict[int, Any]:
        if not self._handle_signals or threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            previous[signum] = signal.signal(signum, self._on_signal)
        return previous

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # SIGHUP runs its hook, or shuts down like SIGTERM; during a shutdown it changes nothing
        # (a terminal closing is no operator insisting on a fast exit).
        if signum != signal.SIGHUP or (self._sighup is None and not self._draining):
            self._signal_count += 1
            if self._signal_count > 1:
                _exit_at_once(signum)
            self._draining = True
        self._events.put(_Signal(signum))

    def _next_event(self, deadline: float | None = None) -> _Event | None:
        """The next event, or None once ``deadline`` (monotonic) has passed.

        Waits in short slices: a signal that arrives just before a blocking wait begins does
        not interrupt it, and its Python handler only runs once the wait returns.
        """
        while True:
            left = EVENT_POLL if deadline is None else min(EVENT_POLL, deadline - time.monotonic())
            if left <= 0:
                return None
            try:
                return self._events.get(timeout=left)
            except queue.Empty:
                continue

    def _supervise(self) -> int:
        """Wait for what starts the shutdown, then shut down; ``wait()`` returns whatever
        happens here, so a failure of the shutdown itself cannot leave it waiting forever."""
        code = EXIT_FAILURE
        try:
            code = self._shutdown(self._until_shutdown())
        except Exception as exc:
            with contextlib.suppress(Exception):  # logging itself may be what failed
                logger.critical("service %s: the shutdown failed: %r", self.name, exc)
        finally:
            self._exit_code = code
            self._done.set()
        return code

    def _until_shutdown(self) -> dict[str, _Exited]:
        """Handle events until one starts the shutdown; the component exits seen so far."""
        exits: dict[str, _Exited] = {}
        while True:
            event = self._next_event()
            if isinstance(event, _Signal):
                if event.signum == signal.SIGHUP and self._sighup is not None:
                    self._run_sighup_hook()
                    continue
                logger.info("received %s: shutting down", signal.Signals(event.signum).name)
            elif isinstance(event, _Exited):
                exits[event.name] = event
                if event.error is None:
                    logger.error("component %s returned before it was asked to stop", event.name)
            else:
                logger.info("stop requested: shutting down")
            return exits

    def _run_sighup_hook(self) -> None:
        logger.info("received SIGHUP: running the hook")
        try:
            assert self._sighup is not None
            self._sighup()
        except Exception:
            logger.exception("the SIGHUP hook failed; the service keeps running")

    def _drain(self, exits: dict[str, _Exited]) -> None:
        self._draining = True
        delay = self.config.drain_delay
        if delay > 0:
            logger.info("draining for %.1fs before stopping components", delay)
        deadline = time.monotonic() + delay
        while (event := self._next_event(deadline)) is not None:
            if isinstance(event, _Exited):
                exits[event.name] = event

    def _stop_and_join(self, names: list[str], deadline: float, exits: dict[str, _Exited]) -> None:
        components = self.components
        for name in names:
            stop_by = getattr(components[name], "stop_by", None)
            if stop_by is not None:
                try:
                    stop_by(deadline)
                except Exception as exc:
                    logger.warning("stop_by() of component %s raised %r; stopping it anyway",
                                   name, exc)
                    logger.debug("stop_by() of component %s raised", name, exc_info=True)
            self._stops[name].set()
        pending = {n for n in names if n not in exits}
        while pending and (event := self._next_event(deadline)) is not None:
            if isinstance(event, _Exited):
                exits[event.name] = event
                pending.discard(event.name)
        for name in names:
            if name in exits:
                self._threads[name].join()

    def _shutdown(self, exits: dict[str, _Exited]) -> int:
        self._drain(exits)
        started = time.monotonic()
        deadline = started + self.config.shutdown_timeout
        components = self.components
        last = [n for n in self._threads if stops_last(components[n])]
        self._stop_and_join([n for n in self._threads if n not in last], deadline, exits)
        if last:
            # When another component used up the whole timeout, these still get a moment to
            # close (the HTTP listener), so they are not blamed for someone else's hang.
            last_deadline = max(deadline, time.monotonic() + LAST_STOP_MINIMUM)
            self._stop_and_join(last, last_deadline, exits)

        code = EXIT_OK
        for name in self._threads:
            exit_ = exits.get(name)
            if exit_ is None:
                logger.error(
                    "component %s did not stop within %.1fs; abandoning its thread",
                    name, self.config.shutdown_timeout,
                )
                code = max(code, EXIT_TIMEOUT)
            elif exit_.error is not None or not exit_.asked_to_stop:
                code = EXIT_FAILURE if code == EXIT_OK else code
        failed = [n for n, e in exits.items() if e.error is not None or not e.asked_to_stop]
        # Spans are flushed within the same budget, so the whole stop fits the grace period
        # an orchestrator gives; they get a moment even when the components used it all.
        tracing.close(min(TRACE_FLUSH_TIMEOUT,
                          max(TRACE_FLUSH_MINIMUM, deadline - time.monotonic())))
        took = time.monotonic() - started
        if code == EXIT_OK:
            logger.info("service %s stopped cleanly in %.2fs", self.name, took)
        else:
            culprits = failed + [n for n in self._threads if n not in exits]
            logger.error(
                "service %s stopped with status %d in %.2fs; responsible: %s",
                self.name, code, took, ", ".join(culprits),
            )
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):  # a closed stream must not hang wait()
                handler.flush()
        return code


def _exit_at_once(signum: int) -> None:
    """The operator insists: skip the orderly shutdown. Runs in the signal handler, so it takes
    no lock (logging's could be held by the very frame it interrupted) and writes stderr raw."""
    with contextlib.suppress(OSError):
        os.write(2, f"patron: second {signal.Signals(signum).name}: exiting at once\n".encode())
    os._exit(128 + signum)
