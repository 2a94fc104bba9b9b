"""Management routes of the default HTTP component: health, metrics and profiling.

``GET /alive`` and ``GET /ready`` answer 200 or 503 from the Service's probes; ``GET /metrics``
is prometheus_client's own WSGI app (gzip when asked, OpenMetrics when the scraper accepts it,
``name[]=`` to select metrics). Under ``/debug/``:

* ``GET /debug/threads``: the current stack of every thread, as text;
* ``GET /debug/profile?seconds=N&format=html|text``: a wall-clock profile of every thread,
  sampled for N seconds (default 5, at most 30) in the worker thread that serves the request and
  rendered by pyinstrument. One runs at a time: another request meanwhile gets 409;
* ``GET /debug/log``: the root logger's level (what ``PATRON_LOG_LEVEL`` set);
  ``POST /debug/log/<level>`` changes it at run time (``debug``, ``info``, ``warning``,
  ``error``, ``critical``; anything else gets 400), logged at WARNING with the client's address.
  For the whole process: an embedding program's own loggers under the root follow it too.

Who reaches ``/debug/`` is ``PATRON_PROFILING`` (:attr:`patron.Config.profiling`): ``loopback``
(the default) serves only clients connecting from a loopback address (127.0.0.0/8, ``::1``, or
``::ffff:127.x``), which is what ``kubectl port-forward`` and ``curl localhost`` are; every other
client gets the same 404 as a path that does not exist. ``on`` serves every client; ``off``
registers no ``/debug/`` route at all. The address is the TCP peer's: no forwarding header is
read, so a proxy on the same host makes its clients local.

A profile's memory is bounded whatever its length or the number of threads: samples are
aggregated as they are taken (an identical stack is kept once, with its accumulated time), at
most :data:`PROFILE_MAX_FRAMES` frames are kept across the distinct stacks (time in stacks
beyond that is shown as one ``[stacks beyond the limit]`` entry), and the answer is at most
:data:`PROFILE_MAX_BYTES`: an HTML rendering over it is replaced by the text rendering with a
note saying so, and a text rendering over it is cut at a line, with a last line saying so.
Aggregation drops the order of samples, so pyinstrument's timeline view shows no timeline.

These routes get recovery only: no metrics, traces or request logs, so probes and scrapes do not
drown the service's own figures.
"""

from __future__ import annotations

import ipaddress
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

import prometheus_client
from werkzeug.exceptions import BadRequest, Conflict, NotFound
from werkzeug.wrappers import Request, Response

from patron.config import LOG_LEVELS, PROFILING_MODES
from patron.http.routes import Handler, ResponseLike, Route

if TYPE_CHECKING:
    from pyinstrument.session import Session

__all__ = ["PROFILE_MAX_BYTES", "PROFILE_MAX_FRAMES", "management_routes"]

PROFILE_DEFAULT_SECONDS = 5.0
PROFILE_MAX_SECONDS = 30.0
PROFILE_INTERVAL = 0.005
#: frames kept across a profile's distinct stacks: what bounds its memory while sampling and
#: while pyinstrument builds its tree (measured: about 1 KB of peak RSS per frame kept)
PROFILE_MAX_FRAMES = 50_000
#: the largest answer of /debug/profile, in bytes
PROFILE_MAX_BYTES = 8 * 1024 * 1024

logger = logging.getLogger("patron.http")

# pyinstrument frame infos are "function\x00file\x00line": this one names the overflow bucket.
_OVERFLOW_INFO = "[stacks beyond the limit]\x00<profile>\x000"


def management_routes(
    ready: Callable[[], bool], alive: Callable[[], bool], profiling: str
) -> list[Route]:
    """The management routes; ``profiling`` is ``off``, ``loopback`` or ``on``."""
    if profiling not in PROFILING_MODES:
        raise ValueError(f"profiling must be one of {PROFILING_MODES}, not {profiling!r}")

    def alive_handler(request: Request) -> Response:
        ok = alive()
        return Response("alive" if ok else "unhealthy", status=200 if ok else 503)

    def ready_handler(request: Request) -> Response:
        ok = ready()
        return Response("ready" if ok else "not ready", status=200 if ok else 503)

    scrape = prometheus_client.make_wsgi_app()

    def metrics_handler(request: Request) -> Response:
        return Response.from_app(scrape, request.environ)

    routes = [
        Route("GET", "/alive", alive_handler),
        Route("GET", "/ready", ready_handler),
        Route("GET", "/metrics", metrics_handler),
    ]
    if profiling != "off":
        profiler = _Profiler()
        debug: list[tuple[str, str, Handler]] = [
            ("GET", "/debug/threads", _threads_handler),
            ("GET", "/debug/profile", profiler.handle),
            ("GET", "/debug/log", _log_level_handler),
            ("POST", "/debug/log/<level>", _log_level_handler),
        ]
        for method, pattern, handler in debug:
            if profiling == "loopback":
                handler = _loopback_only(handler)
            routes.append(Route(method, pattern, handler))
    return routes


def _log_level_handler(request: Request, level: str | None = None) -> Response:
    root = logging.getLogger()
    if level is not None:
        name = level.upper()
        if name not in LOG_LEVELS:
            raise BadRequest(f"unknown log level {level!r}: one of {', '.join(LOG_LEVELS)}")
        previous = logging.getLevelName(root.level)
        root.setLevel(name)
        logger.warning("log level changed from %s to %s by %s", previous, name,
                       request.remote_addr)
    return Response(logging.getLevelName(root.getEffectiveLevel()) + "\n", mimetype="text/plain")


def _loopback_only(handler: Handler) -> Handler:
    def guarded(request: Request, **values: str) -> ResponseLike:
        if not _is_loopback(request.remote_addr):
            # The 404 of an unknown path, so a remote client cannot tell the route exists.
            raise NotFound()
        return handler(request, **values)

    return guarded


def _is_loopback(address: str | None) -> bool:
    """Whether a WSGI ``REMOTE_ADDR`` is a loopback address (IPv4-mapped IPv6 included)."""
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def _threads_handler(request: Request) -> Response:
    names = {t.ident: t.name for t in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        parts.append(f'Thread "{names.get(ident, "?")}" ({ident}):\n')
        parts.extend(traceback.format_stack(frame))
        parts.append("\n")
    return Response("".join(parts), mimetype="text/plain")


class _Profiler:
    """Samples every thread's stack and hands the samples to pyinstrument for rendering.

    No pause is imposed between profiles: each one's memory is freed once it is answered, so
    back-to-back profiles cost no more memory than one, and their CPU is that of one sampling
    thread (about a tenth of a core with twenty threads under light load).
    """

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
        # Rendering stays under the lock too, so at most one profile's memory is alive at once.
        try:
            return _render(_sample_all_threads(seconds), fmt)
        finally:
            self._busy.release()


def _render(session: Session, fmt: str) -> Response:
    from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer

    limit = PROFILE_MAX_BYTES
    note = ""
    if fmt == "html":
        page = HTMLRenderer().render(session).encode()
        if len(page) <= limit:
            return Response(page, mimetype="text/html")
        note = (
            f"[The HTML rendering of this profile is {len(page)} bytes, over the {limit}-byte"
            " limit of /debug/profile: this is the text rendering.]\n\n"
        )
        del page
    body = (note + ConsoleRenderer(unicode=False, color=False).render(session)).encode()
    if len(body) > limit:
        tail = (
            f"[Truncated: the text rendering is {len(body)} bytes, over the {limit}-byte limit.]\n"
        )
        # Cut after a newline: never inside a line, nor inside a UTF-8 sequence.
        cut = body.rfind(b"\n", 0, limit - len(tail)) + 1
        body = body[:cut] + tail.encode()
    return Response(body, mimetype="text/plain")


def _sample_all_threads(seconds: float) -> Session:
    from pyinstrument.frame_info import frame_info_get_identifier
    from pyinstrument.low_level.stat_profile import get_frame_info
    from pyinstrument.session import Session

    me = threading.get_ident()
    # Aggregated while sampling: each distinct stack (thread label first, root to leaf) once,
    # with the time spent in it, so memory follows the code's shape, not the profile's length.
    stacks: dict[tuple[str, ...], float] = {}
    infos: dict[str, str] = {}  # one copy of each frame info across the stacks kept
    frames_kept = 0
    overflow = 0.0
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
            leaf_first: list[str] = []
            current: FrameType | None = frame
            while current is not None:
                leaf_first.append(get_frame_info(current))
                current = current.f_back
            leaf_first.append(f"thread {names.get(ident, ident)}\x00<thread>\x000")
            key = tuple(reversed(leaf_first))
            so_far = stacks.get(key)
            if so_far is not None:
                stacks[key] = so_far + elapsed
            elif frames_kept + len(key) <= PROFILE_MAX_FRAMES:
                stacks[tuple(infos.setdefault(info, info) for info in key)] = elapsed
                frames_kept += len(key)
            else:
                overflow += elapsed
        samples += 1
        time.sleep(PROFILE_INTERVAL)
    duration = time.perf_counter() - start
    del infos
    # pyinstrument merges a record into the tree only where it shares a prefix with the record
    # before it (it builds a timeline), so sorting by frame identifiers makes one node per
    # distinct call path; unsorted, every sample of every thread would add a full branch.
    ordered = sorted(
        stacks.items(), key=lambda item: tuple(map(frame_info_get_identifier, item[0]))
    )
    del stacks
    records = [(list(stack), spent) for stack, spent in ordered]
    del ordered
    if overflow:
        records.append(([_OVERFLOW_INFO], overflow))
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
