"""A deadline on a route's handler: 503 at once when it is not met.

A :class:`Timeout` goes in :class:`~patron.http.RouteOptions` (``timeout=``), on a route or
router-wide. It is the innermost option: it covers the route's middlewares and handler, not the
rate limit, the authentication or a cache hit.

How it works: the server's worker thread hands the call of the middlewares and handler to a
thread of the Timeout's bounded pool and waits for it up to ``seconds``. The pool's threads are
daemon threads named ``patron-timeout-N``, each started for one call and ended when that call
returns, at most ``max_threads`` at a time (a semaphore): a ``ThreadPoolExecutor`` keeps idle
threads until it is shut down, and a route option has no shutdown, so a stopped Service would
leave them behind; starting a thread costs tens of microseconds.

In time, the worker returns the handler's answer (or re-raises its exception, which is then
answered as without a timeout). Past it, the worker answers ``503 Service
Unavailable`` at once, logs a WARNING with the route, and is free for the next request.

What happens to the handler meanwhile: Python cannot stop a thread from outside, so the handler
runs on in its pool thread until it returns by itself; its answer (or exception) is then
discarded, logged at DEBUG (an exception at ERROR, with its traceback, as nobody else sees it),
and only then is the thread's slot back in the pool. A handler that never returns holds its slot
for good, and a Service that stops does not wait for it (the thread is a daemon). The pool is
bounded (``max_threads``, shared by every route the Timeout is on): when
all its slots are held by handlers still running, a request is answered 503 at once (logged at
WARNING) rather than queued behind them. A handler that must stop early has to watch a deadline
of its own (a timeout on its socket, its query, its lock). Past its deadline the request is
over for the server: a handler still running should not read the request body any more (the
server may have released it).

The handler thread runs in a copy of the worker's ``contextvars`` context, so the correlation id
(and so the ``correlationID`` of log records) is the request's, and the request's span is active
there: it is in the context with patron's tracer (a ``contextvars`` scope manager), and it is
activated explicitly for a tracer whose scope manager keeps it per thread (OpenTracing's
default, thread-local one).

Not covered: a streamed response body. The deadline is on the call that returns the response;
a body that is an iterator is produced later, by the server's worker thread, for as long as it
takes.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import math
import threading
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Response

from patron import tracing

if TYPE_CHECKING:
    from patron.http.options import NextHandler
    from patron.http.routes import Request

__all__ = ["Timeout"]

logger = logging.getLogger("patron.http")

_TIMED_OUT = b"Service Unavailable: the handler did not answer in time\n"
_EXHAUSTED = b"Service Unavailable: too many handlers are running past their timeout\n"
_thread_numbers = itertools.count(1)


def _unavailable(body: bytes) -> Response:
    return Response(body, status=503, content_type="text/plain; charset=utf-8")


class _Call:
    """One handler call handed to a pool thread, and its outcome."""

    __slots__ = ("abandoned", "done", "error", "finished", "lock", "response")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.finished = False
        self.abandoned = False
        self.response: Response | None = None
        self.error: BaseException | None = None

    def abandon(self) -> bool:
        """Give up on the call (worker thread); False when it finished just in time."""
        with self.lock:
            if self.finished:
                return False
            self.abandoned = True
            return True

    def finish(self) -> bool:
        """Record the end of the call (pool thread); True when it was abandoned."""
        with self.lock:
            self.finished = True
            abandoned = self.abandoned
        self.done.set()
        return abandoned


def _in_context(following: NextHandler, request: Request, parent: Any) -> Response:
    """``following(request)`` with ``parent`` the active span (pool thread, copied context)."""
    if parent is None:
        return following(request)
    tracer = parent.tracer
    if tracer.active_span is parent:  # the contextvars scope manager: already in the context
        return following(request)
    with tracer.scope_manager.activate(parent, finish_on_close=False):
        return following(request)


class Timeout:
    """At most ``seconds`` for the route's middlewares and handler, else 503 at once.

    ``max_threads`` bounds the pool (shared by all the routes this Timeout is on): how many
    handlers may run at once behind it, including those already past their deadline. See the
    module docstring for what happens to a handler past its deadline.

    Raises ``ValueError`` for ``seconds`` that is not a positive finite number, or
    ``max_threads`` below 1.
    """

    def __init__(self, seconds: float, max_threads: int = 64) -> None:
        if not (seconds > 0 and math.isfinite(seconds)):
            raise ValueError(f"seconds must be a positive number: {seconds!r}")
        if max_threads < 1:
            raise ValueError(f"max_threads must be at least 1: {max_threads!r}")
        self.seconds = float(seconds)
        self.max_threads = max_threads
        self._slots = threading.BoundedSemaphore(max_threads)

    def __repr__(self) -> str:
        return f"Timeout(seconds={self.seconds}, max_threads={self.max_threads})"

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        """``following`` run in the pool under the deadline. Called once per route when the
        router is built; the returned callable runs in the server's worker threads, and
        ``following`` in a ``patron-timeout-N`` thread. Re-raises what ``following`` raised in
        time; may raise ``RuntimeError`` when no thread can be started."""
        seconds = self.seconds
        slots = self._slots

        def run(call: _Call, request: Request, context: contextvars.Context, parent: Any) -> None:
            try:
                call.response = context.run(_in_context, following, request, parent)
            except BaseException as exc:  # handed to the worker thread, or logged if late
                call.error = exc
            finally:
                slots.release()
                if call.finish():
                    _late(call, request, pattern)

        def call_with_timeout(request: Request) -> Response:
            if not slots.acquire(blocking=False):
                logger.warning(
                    "%s %s: all %d timeout threads are busy, answering 503",
                    request.method, pattern, self.max_threads,
                )
                return _unavailable(_EXHAUSTED)
            call = _Call()
            parent = tracing.tracer().active_span
            thread = threading.Thread(
                target=run,
                args=(call, request, contextvars.copy_context(), parent),
                name=f"patron-timeout-{next(_thread_numbers)}",
                daemon=True,
            )
            try:
                thread.start()
            except BaseException:
                slots.release()
                raise
            if not call.done.wait(seconds) and call.abandon():
                logger.warning(
                    "%s %s: no answer within %gs, answering 503 (the handler runs on)",
                    request.method, pattern, seconds,
                )
                return _unavailable(_TIMED_OUT)
            if call.error is not None:
                error, call.error = call.error, None  # no cycle through the traceback
                raise error
            assert call.response is not None
            return call.response

        return call_with_timeout


def _late(call: _Call, request: Request, pattern: str) -> None:
    """A handler that returned after its deadline (pool thread): its outcome is dropped."""
    if call.error is not None:
        logger.error(
            "%s %s: the handler failed after its timeout", request.method, pattern,
            exc_info=call.error,
        )
    else:
        logger.debug(
            "%s %s: the handler answered after its timeout, answer discarded",
            request.method, pattern,
        )
        response = call.response
        if response is not None:
            response.close()  # release what a discarded body holds (a file, a generator)
    call.error = call.response = None
