"""Management routes of the default HTTP component: health, metrics and profiling.

``GET /alive`` and ``GET /ready`` answer 200 or 503 from the Service's probes; ``GET /metrics``
serves Prometheus; under ``/debug/`` (off with ``PATRON_PROFILING=false``):

* ``GET /debug/threads``: the current stack of every thread, as text;
* ``GET /debug/profile?seconds=N&format=html|text``: a wall-clock profile of every thread,
  sampled for N seconds (default 5, at most 30) and rendered by pyinstrument. One runs at a
  time: another request meanwhile gets 409.

These routes get recovery only: no metrics, traces or request logs, so probes and scrapes do not
drown the service's own figures.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

from werkzeug.exceptions import BadRequest, Conflict
from werkzeug.wrappers import Request, Response

from patron import metrics
from patron.http.routes import Route

if TYPE_CHECKING:
    from pyinstrument.session import Session

__all__ = ["management_routes"]

PROFILE_DEFAULT_SECONDS = 5.0
PROFILE_MAX_SECONDS = 30.0
PROFILE_INTERVAL = 0.005


def management_routes(
    ready: Callable[[], bool], alive: Callable[[], bool], profiling: bool
) -> list[Route]:
    def alive_handler(request: Request) -> Response:
        ok = alive()
        return Response("alive" if ok else "unhealthy", status=200 if ok else 503)

    def ready_handler(request: Request) -> Response:
        ok = ready()
        return Response("ready" if ok else "not ready", status=200 if ok else 503)

    def metrics_handler(request: Request) -> Response:
        return Response(metrics.exposition(), content_type=metrics.CONTENT_TYPE)

    routes = [
        Route("GET", "/alive", alive_handler),
        Route("GET", "/ready", ready_handler),
        Route("GET", "/metrics", metrics_handler),
    ]
    if profiling:
        profiler = _Profiler()
        routes += [
            Route("GET", "/debug/threads", _threads_handler),
            Route("GET", "/debug/profile", profiler.handle),
        ]
    return routes


def _threads_handler(request: Request) -> Response:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f'Thread "{names.get(ident, "?")}" ({ident}):\n')
        parts.extend(traceback.format_stack(frame))
        parts.append("\n")
    return Response("".join(parts), mimetype="text/plain")


class _Profiler:
    """Samples every thread's stack and hands the samples to pyinstrument for rendering."""

    def __init__(self) -> None:
        self._busy = threading.Lock()

    def handle(self, request: Request) -> Response:
        raw = request.args.get("seconds", str(PROFILE_DEFAULT_SECONDS))
        try:
            seconds = float(raw)
        except ValueError:
            seconds = -1.0
        if not 0 < seconds <= PROFILE_MAX_SECONDS:
            raise BadRequest(f"seconds must be above 0 and at most {PROFILE_MAX_SECONDS:g}")
        fmt = request.args.get("format", "html")
        if fmt not in ("html", "text"):
            raise BadRequest("format must be html or text")
        if not self._busy.acquire(blocking=False):
            raise Conflict("a profile is already running")
        try:
            session = _sample_all_threads(seconds)
        finally:
            self._busy.release()
        from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer

        if fmt == "text":
            text = ConsoleRenderer(unicode=False, color=False).render(session)
            return Response(text, mimetype="text/plain")
        return Response(HTMLRenderer().render(session), mimetype="text/html")


def _sample_all_threads(seconds: float) -> Session:
    from pyinstrument.low_level.stat_profile import get_frame_info
    from pyinstrument.session import Session

    me = threading.get_ident()
    records: list[tuple[list[str], float]] = []
    start_wall, start = time.time(), time.perf_counter()
    cpu_start = time.process_time()
    deadline = start + seconds
    last = start
    samples = 0
    while (now := time.perf_counter()) < deadline:
        elapsed, last = now - last, now
        names = {t.ident: t.name for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident == me:
                continue
            stack: list[str] = []
            current: FrameType | None = frame
            while current is not None:
                stack.append(get_frame_info(current))
                current = current.f_back
            stack.append(f"thread {names.get(ident, ident)}\x00<thread>\x000")
            stack.reverse()
            records.append((stack, elapsed))
        samples += 1
        time.sleep(PROFILE_INTERVAL)
    duration = time.perf_counter() - start
    return Session(
        frame_records=records,
        start_time=start_wall,
        duration=duration,
        min_interval=PROFILE_INTERVAL,
        max_interval=PROFILE_INTERVAL,
        sample_count=samples,
        start_call_stack=["all threads\x00<profile>\x000"],  # pyinstrument pops one; none matches
        target_description=f"all threads for {seconds:g}s",
        cpu_time=time.process_time() - cpu_start,
        sys_path=list(sys.path),
        sys_prefixes=[sys.prefix, sys.base_prefix, sys.exec_prefix],
    )
