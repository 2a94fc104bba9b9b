"""The WSGI server under the HTTP component: waitress, run from the component's thread.

waitress gives bounded worker threads, keep-alive, HTTP/1.1 parsing with 400/413/431 answers and
no traceback leaks. This module adds what a production component needs on top:

* a read deadline: a connection must deliver each request (headers and body) within the read
  timeout of its first byte, and its first request within the read timeout of being accepted,
  so clients that trickle bytes (slowloris) are cut off;
* a write deadline: a response that makes no progress for the write timeout is dropped;
* an idle timeout for keep-alive connections between requests;
* a graceful drain: on stop the listener closes at once, requests already received run to
  completion and are flushed, idle connections close, then the worker threads are joined.

The event loop runs in the thread that calls :meth:`Server.serve`; handlers run in waitress's
worker threads (``waitress-N``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask

__all__ = ["Server"]

logger = logging.getLogger("patron.http")

LOOP_TIMEOUT = 0.05  # how often the loop looks at the stop event when nothing happens
CLEANUP_INTERVAL = 0.5
CONNECTION_LIMIT = 1000
QUEUE_WARNING_INTERVAL = 10.0


class _EveryInterval(logging.Filter):
    """Lets one record through per interval: waitress warns about its task queue depth on
    every request while all workers are busy, which under load floods the log."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self._interval = interval
        self._next = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


_queue_logger = logging.getLogger("waitress.queue")
if not any(isinstance(f, _EveryInterval) for f in _queue_logger.filters):
    _queue_logger.addFilter(_EveryInterval(QUEUE_WARNING_INTERVAL))


class _Task(WSGITask):
    def build_response_header(self) -> bytes:
        # While draining, tell the client not to reuse the connection, and close it after this
        # response (the app itself may not send the hop-by-hop Connection header).
        if self.channel.server.closing.is_set():
            self.set_close_on_finish()
        return super().build_response_header()


class _Channel(HTTPChannel):
    task_class = _Task
    # When the request being received started, or when the idle connection was accepted.
    receiving_since: float | None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.receiving_since = self.creation_time
        self.served_any = False

    def received(self, data: bytes) -> bool:
        if self.request is None and self.served_any:
            self.receiving_since = time.time()
        result = super().received(data)
        if self.request is None:
            # Nothing partial left: the deadline restarts with the next request's first byte.
            self.receiving_since = None
            self.served_any = True
        return bool(result)

    def idle(self) -> bool:
        return not (self.requests or self.request is not None or self.total_outbufs_len)


class _Server(TcpWSGIServer):
    channel_class = _Channel
    closing: threading.Event
    read_timeout: float
    write_timeout: float

    def maintenance(self, now: float) -> None:
        super().maintenance(now)  # the idle (keep-alive) timeout
        for channel in list(self.active_channels.values()):
            since = channel.receiving_since
            if since is not None and now - since > self.read_timeout:
                logger.info("closing connection from %s: request not read in time", channel.addr)
                channel.will_close = True
            elif channel.total_outbufs_len and now - channel.last_activity > self.write_timeout:
                logger.info("closing connection to %s: response not written in time", channel.addr)
                channel.will_close = True


class Server:
    """One listening socket and its worker threads. Build, :meth:`serve`, stop via the event."""

    def __init__(
        self,
        app: Callable[..., Any],
        host: str,
        port: int,
        threads: int,
        read_timeout: float,
        write_timeout: float,
        idle_timeout: float,
        max_body_size: int,
        max_header_size: int,
        grace: float,
    ) -> None:
        adjustments = Adjustments(
            host=host,
            port=port,
            threads=threads,
            channel_timeout=idle_timeout,
            cleanup_interval=CLEANUP_INTERVAL,
            connection_limit=CONNECTION_LIMIT,
            # waitress refuses a body as large as its limit; ours is the largest body accepted.
            max_request_body_size=max_body_size + 1,
            max_request_header_size=max_header_size,
            ident="patron",
            expose_tracebacks=False,
            asyncore_use_poll=True,
        )
        self._dispatcher = ThreadedTaskDispatcher()
        self._dispatcher.set_thread_count(threads)
        self._server = _Server(app, adj=adjustments, dispatcher=self._dispatcher)
        self._server.read_timeout = read_timeout
        self._server.write_timeout = write_timeout
        self._grace = grace
        self.closing = threading.Event()
        self._server.closing = self.closing

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain for at most the grace period and return."""
        socket_map = self._server._map
        try:
            while not stop.is_set():
                wasyncore.loop(LOOP_TIMEOUT, use_poll=True, map=socket_map, count=1)
            self._drain(socket_map)
        finally:
            for channel in list(self._server.active_channels.values()):
                channel.handle_close()
            self._dispatcher.shutdown(cancel_pending=True, timeout=5)
            self._server.trigger.close()
            if self._server.socket is not None:
                wasyncore.dispatcher.close(self._server)

    def _drain(self, socket_map: dict[int, Any]) -> None:
        self.closing.set()
        # Close the listener but keep the trigger, which wakes the loop when a worker finishes.
        wasyncore.dispatcher.close(self._server)
        deadline = time.monotonic() + self._grace
        while time.monotonic() < deadline:
            busy = False
            for channel in list(self._server.active_channels.values()):
                if channel.idle():
                    channel.handle_close()
                else:
                    busy = True
            if not busy:
                return
            self._server.maintenance(time.time())  # deadlines still apply while draining
            wasyncore.loop(LOOP_TIMEOUT, use_poll=True, map=socket_map, count=1)
        logger.warning(
            "HTTP server: %d connection(s) still busy after %.1fs; closing them",
            len(self._server.active_channels), self._grace,
        )
