"""The WSGI server under the HTTP component: waitress's parser, channels and worker threads,
driven by patron's own event loop.

waitress gives bounded worker threads, keep-alive, HTTP/1.1 parsing with 400/413/431 answers and
no traceback leaks. This module adds what a production component needs on top:

* strict request framing: a request with both ``Content-Length`` and ``Transfer-Encoding`` (or
  an HTTP/1.0 request with ``Transfer-Encoding``) gets 400 and the connection is closed, so
  nothing smuggled after it is served; a request line without an HTTP version gets 400, a
  version other than 1.0 or 1.1 gets 505; ``Expect: 100-continue`` on a request already refused
  (a ``Content-Length`` over the limit) gets its 413 at once, without ``100 Continue``;
* deadlines, kept as floats so that sub-second values hold (waitress rounds its own down to
  whole seconds; they are given values that never fire): a connection must deliver each
  request (headers and body) within the read timeout of its first byte, and its first request
  within the read timeout of being accepted, so clients that trickle bytes (slowloris) are cut
  off; a response that makes no progress for the write timeout is dropped; a keep-alive
  connection idle for the idle timeout is closed. They are checked every fifth of the shortest
  timeout (at most every second), so one fires at its time or up to that much later, never
  earlier;
* a connection limit that sheds instead of locking out: when a connection arrives and
  ``max_connections`` are open, the connection idle the longest (keep-alive between requests,
  or accepted and silent) is closed to make room, else the one whose partial request started
  first; a connection whose request is queued or running, or whose response is being written,
  is never shed (while every one is, new connections wait in the listen backlog). So health
  checks get in even while a client holds every slot;
* ``Connection: close`` on every response once the service is draining (``probes.draining``,
  from the moment readiness turns 503) or the server is stopping, so keep-alive clients move
  off during the drain delay instead of being cut when the listener closes;
* a graceful drain: on stop the connections already queued in the listen backlog are accepted
  (on Linux, with new handshakes refused meanwhile) and the listener closes; idle connections,
  and connections that have not delivered a whole request (after one non-blocking read of what
  already arrived), are closed at once, except that one accepted, or starting its request, less
  than :data:`ARRIVING_GRACE` before the stop has until it is that old (so a client that
  connected just before the stop is not cut between its ``connect`` and its ``send``); requests
  already received run to completion and are flushed; then the worker threads are joined. The
  drain ends by the grace period, or earlier by the deadline given to :meth:`Server.stop_by`,
  and a handler still running then is abandoned (its connection closed, its daemon thread left
  to finish);
* an event loop whose cost does not grow with idle connections: sockets stay registered with
  one epoll object (poll where there is none), and after each wake-up only the channels that
  had an event or have a request in a worker are looked at again (waitress's loop rebuilds its
  poll set from every channel at every wake-up). The loop sleeps until a socket is ready, a
  worker pulls waitress's trigger, the next deadline check is due or stop is set.

Threads: the event loop (accepting, reading and parsing, writing, deadlines, shedding and the
drain) runs in the thread that calls :meth:`Server.serve`; handlers run in waitress's worker
threads (``waitress-N``); a small thread (``patron-http-wake``) waits on the stop event and wakes
the loop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
import select
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from waitress import wasyncore
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.parser import HTTPRequestParser, ParsingError
from waitress.server import TcpWSGIServer
from waitress.task import ThreadedTaskDispatcher, WSGITask
from waitress.utilities import BadRequest, Error

from patron.component import STOP_RESERVE, Probes, time_left

__all__ = ["Server"]

logger = logging.getLogger("patron.http")

#: longest time between two deadline checks; shorter timeouts are checked five times as often
MAX_CHECK_INTERVAL = 1.0
MIN_CHECK_INTERVAL = 0.01
#: at the stop, a connection accepted (or whose request began) less than this before still
#: has until it is this old to deliver its request: closing it at once would cut a client
#: between its connect and its send, a race every load test at a stop would lose sometimes
ARRIVING_GRACE = 0.1
WORKER_JOIN_TIMEOUT = 5.0
QUEUE_WARNING_INTERVAL = 10.0
SHED_LOG_INTERVAL = 10.0

_EPOLL = hasattr(select, "epoll")
_SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)  # Linux; the module may lack it
_POLL_IN = select.POLLIN | select.POLLPRI
_POLL_OUT = select.POLLOUT


class _EveryInterval(logging.Filter):
    """Lets one record through per interval: waitress warns about its task queue depth on
    every request while all workers are busy, which under load floods the log."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._interval = interval
        self._clock = clock
        self._next = -math.inf

    def filter(self, record: logging.LogRecord) -> bool:
        now = self._clock()
        if now < self._next:
            return False
        self._next = now + self._interval
        return True


_queue_logger = logging.getLogger("waitress.queue")
if not any(isinstance(f, _EveryInterval) for f in _queue_logger.filters):
    _queue_logger.addFilter(_EveryInterval(QUEUE_WARNING_INTERVAL))


# -- parsing -----------------------------------------------------------------------------------


class _VersionNotSupported(Error):
    code = 505
    reason = "HTTP Version Not Supported"


# Every header line follows a CRLF (folded continuations start with a space or a tab), and a
# field name is followed by its colon directly (RFC 9112 §5.1), so this finds the header itself,
# never a value that mentions it.
_TRANSFER_ENCODING = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)


class _Parser(HTTPRequestParser):
    """waitress's request parser, refusing what RFC 9112 says a server must not serve."""

    error: Any  # waitress's: None, or the error answered instead of the request
    _refusal: Error | None = None

    def parse_header(self, header_plus: bytes) -> None:
        super().parse_header(header_plus)
        if not self.version:  # "GET /x": no HTTP/0.9 here
            raise ParsingError("request line without an HTTP version")
        if self.version not in ("1.0", "1.1"):
            self._refusal = _VersionNotSupported(f"HTTP/{self.version} is not supported")
            raise ParsingError(self._refusal.body)
        # waitress frames a 1.1 request by Transfer-Encoding (and removes the header) and a 1.0
        # one by Content-Length alone: either way a front end that reads the other header sees
        # different requests in the same bytes (RFC 9112 §6.1, §6.3).
        if "TRANSFER_ENCODING" in self.headers:  # left by waitress only on HTTP/1.0
            raise ParsingError("Transfer-Encoding in an HTTP/1.0 request")
        if "CONTENT_LENGTH" in self.headers and (
            self.chunked or _TRANSFER_ENCODING.search(header_plus)
        ):
            raise ParsingError("both Content-Length and Transfer-Encoding")

    def received(self, data: bytes) -> int:
        consumed = int(super().received(data))
        if self.error is not None:
            # waitress answers BadRequest for every ParsingError; give the precise status.
            if self._refusal is not None and isinstance(self.error, BadRequest):
                self.error = self._refusal
            # A refused request must not get "100 Continue" first (the channel sends it when
            # it sees expect_continue): the client would upload a body only to be refused.
            self.expect_continue = False
        return consumed


# -- connections -------------------------------------------------------------------------------


class _Task(WSGITask):
    channel: _Channel

    def build_response_header(self) -> bytes:
        # While draining, tell the client not to reuse the connection, and close it after this
        # response (the app itself may not send the hop-by-hop Connection header).
        if self.channel.server.draining():
            self.set_close_on_finish()
        return bytes(super().build_response_header())


class _Channel(HTTPChannel):
    """One client connection. Times are ``time.monotonic()``."""

    task_class = _Task
    parser_class = _Parser
    server: _Server
    # When the request being received began, or when the connection was accepted if it has not
    # completed a request yet; None between requests. The read deadline runs from it.
    receiving_since: float | None
    # The last time bytes moved either way or a request finished: the write deadline runs from
    # it while a response is pending, the idle timeout between requests.
    activity: float

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.activity = self.receiving_since = time.monotonic()
        self.served_any = False
        self.in_service = False  # a worker is inside service() for this connection
        super().__init__(*args, **kwargs)
        self.server.loop.watch(self)

    def del_channel(self, map: Any = None) -> None:
        self.server.loop.forget(self)  # before the socket closes and its fd is reused
        super().del_channel(map)

    def received(self, data: bytes) -> bool:
        now = time.monotonic()
        self.activity = now
        if self.request is None and self.served_any:
            self.receiving_since = now
        result = super().received(data)
        if self.request is None:
            # Nothing partial left: the deadline restarts with the next request's first byte.
            self.receiving_since = None
            self.served_any = True
        return bool(result)

    def _flush_some(self, do_close: bool = True) -> bool:
        # The time before sending: the client cannot see the bytes earlier, so connections
        # that became idle one after the other keep that order (shedding goes by it).
        before = time.monotonic()
        sent = bool(super()._flush_some(do_close=do_close))
        if sent:
            self.activity = before
        return sent

    def service(self) -> None:  # in a worker thread
        self.in_service = True
        try:
            super().service()
        finally:
            # waitress pops the request and pulls the trigger before service() returns: until
            # this flag drops the worker may still change the channel (see _Loop.watch).
            self.in_service = False
            if self.server.full and self.connected:
                self.server.pull_trigger()  # a connection waits for a slot this one may free

    def busy(self) -> bool:
        """A request is queued or running, or a response is still to be written."""
        return bool(self.requests or self.total_outbufs_len or self.close_when_flushed)


# -- the listener ------------------------------------------------------------------------------


class _Server(TcpWSGIServer):
    """The listening socket: accepts within the connection limit, shedding to make room."""

    channel_class = _Channel
    active_channels: dict[int, _Channel]
    loop: _Loop
    closing: threading.Event
    probes: Probes | None
    max_connections: int
    # Set when a connection waits and every open one is busy; cleared when one closes or
    # finishes its work, so a full server does not search for a victim on every wake-up.
    full: bool = False
    shed = 0
    _next_shed_log = 0.0

    def draining(self) -> bool:
        probes = self.probes
        return self.closing.is_set() or (probes is not None and probes.draining)

    def readable(self) -> bool:
        # Replaces waitress's: its maintenance and its connection limit are patron's here.
        return bool(self.accepting) and not self.full

    def handle_accept(self) -> None:
        if len(self.active_channels) >= self.max_connections:
            victim = self._victim()
            if victim is None:
                self.full = True  # leave the connection in the backlog until one frees up
                return
            self._shed(victim)
        super().handle_accept()

    def _victim(self) -> _Channel | None:
        """The connection to close for a new one, or None when every one is busy."""
        idle: _Channel | None = None
        partial: _Channel | None = None
        partial_since = math.inf
        for channel in self.active_channels.values():
            if channel.will_close:
                return channel  # closing anyway
            if channel.busy():
                continue
            if channel.request is None:  # between requests, or accepted and silent
                if idle is None or channel.activity < idle.activity:
                    idle = channel
            elif idle is None:  # receiving a request: the one that began first
                since = channel.receiving_since
                if since is not None and since < partial_since:
                    partial, partial_since = channel, since
        return idle or partial

    def _shed(self, channel: _Channel) -> None:
        channel.handle_close()
        self.shed += 1
        now = time.monotonic()
        if now >= self._next_shed_log:  # at most one line per interval under a flood
            self._next_shed_log = now + SHED_LOG_INTERVAL
            logger.warning(
                "HTTP server: %d connections open, the limit; closing the idlest to make room "
                "(%d closed so far)", self.max_connections, self.shed,
            )


# -- the event loop ----------------------------------------------------------------------------


class _Loop:
    """epoll (poll elsewhere) registrations kept across wake-ups, refreshed only for what may
    have changed.

    A channel's interest (readable, writable) changes when the loop handles one of its events,
    when a deadline or the drain closes it, or when a worker thread serves its request; a worker
    only touches a channel that has a request, and pulls the trigger when it is done. So after
    each wake-up the loop refreshes the channels that had an event plus those with work in a
    worker (``_working``), never the idle ones.
    """

    def __init__(self, socket_map: dict[int, Any]) -> None:
        self._map = socket_map
        # epoll's wait costs nothing per idle socket, poll's a little (in the kernel); their
        # event bits are the same numbers, which wasyncore.readwrite reads as poll's.
        self._poll: Any = select.epoll() if _EPOLL else select.poll()
        self._masks: dict[int, int] = {}
        self._working: set[_Channel] = set()
        self.listener: _Server | None = None

    def watch(self, obj: Any) -> None:
        """Register ``obj`` (new in the map) or refresh its registration."""
        fd = obj._fileno
        if fd is None or not self._is_open(fd, obj):
            return
        # Whether a worker may still change the channel, first: once it is not in a worker
        # and has no request, no worker touches it any more, so the interest read below holds
        # until the loop itself changes it. The other way round, a worker could finish in
        # between and leave a stale registration that nobody refreshes.
        if isinstance(obj, _Channel):
            if obj.in_service or obj.busy():
                self._working.add(obj)
            elif obj in self._working:
                self._working.discard(obj)
                if self.listener is not None:
                    self.listener.full = False  # a slot may be sheddable now
        mask = 0
        if obj.readable():
            mask |= _POLL_IN
        if obj.writable() and not obj.accepting:
            mask |= _POLL_OUT
        old = self._masks.get(fd, 0)
        if mask != old:
            if not mask:
                self._poll.unregister(fd)
                del self._masks[fd]
            else:
                if old:
                    self._poll.modify(fd, mask)
                else:
                    self._poll.register(fd, mask)
                self._masks[fd] = mask

    def _is_open(self, fd: int, obj: object) -> bool:
        return self._map.get(fd) is obj

    def forget(self, obj: Any) -> None:
        """Unregister ``obj``, about to close: a slot is free."""
        fd = obj._fileno
        if fd is not None and self._masks.pop(fd, None) is not None:
            self._poll.unregister(fd)
        self._working.discard(obj)
        if self.listener is not None:
            self.listener.full = False

    def run_once(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for events, handle them, refresh what changed."""
        try:
            if _EPOLL:
                events = self._poll.poll(max(0.0, timeout))
            else:
                events = self._poll.poll(max(0, math.ceil(timeout * 1000)))
        except InterruptedError:  # pragma: no cover - retried by Python itself (PEP 475)
            events = []
        # Resolve every fd first: handling one event can close a channel and accept another
        # that reuses its fd, which must not receive the closed one's event.
        targets = [(self._map.get(fd), fd, flags) for fd, flags in events]
        touched = []
        for obj, fd, flags in targets:
            if obj is not None and self._is_open(fd, obj):
                wasyncore.readwrite(obj, flags)
                touched.append(obj)
        for obj in touched:
            self.watch(obj)
        for channel in list(self._working):
            self.watch(channel)
        if self.listener is not None:
            self.watch(self.listener)

    def close(self) -> None:
        if _EPOLL:
            self._poll.close()


# -- the server --------------------------------------------------------------------------------


def _reset(channel: _Channel) -> None:
    """Close with a reset: what the kernel still holds of the response is dropped, not
    trickled out to a client that stopped reading (a plain close would keep sending it)."""
    with contextlib.suppress(OSError):
        channel.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    channel.handle_close()


def _refuse_new_connections(listener: socket.socket) -> None:
    """Linux: attach a socket filter dropping every packet the listener receives from now on,
    so no new handshake completes while the backlog is accepted and the listener closed (the
    loop thread may wait for the GIL in between, long enough for dozens of connections to be
    queued, and then reset). A client whose SYN is dropped sends it again a second later and
    finds the port closed: refused, the clean answer. Connections already queued, or accepted,
    are other sockets and keep working."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    # One classic BPF instruction, BPF_RET | BPF_K with k = 0: keep 0 bytes, drop the packet.
    drop_all = ctypes.create_string_buffer(struct.pack("HBBI", 0x06, 0, 0, 0))
    program = struct.pack("HL", 1, ctypes.addressof(drop_all))  # struct sock_fprog
    with contextlib.suppress(OSError):  # then the close may reset a late connection, as before
        listener.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, program)


def _listen_error(host: str, port: int, exc: OSError) -> OSError:
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    error = OSError(f"cannot listen on {address}: {exc}")  # one line, naming the address
    error.errno = exc.errno
    return error


class Server:
    """One listening socket and its worker threads. Build, :meth:`serve`, stop via the event.

    Raises ``OSError("cannot listen on HOST:PORT: ...")`` when the address cannot be bound.
    """

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
        max_connections: int = 1000,
        probes: Probes | None = None,
    ) -> None:
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._idle_timeout = idle_timeout
        self._check_interval = min(
            MAX_CHECK_INTERVAL,
            max(MIN_CHECK_INTERVAL, min(read_timeout, write_timeout, idle_timeout) / 5),
        )
        adjustments = Adjustments(
            host=host,
            port=port,
            threads=threads,
            # waitress keeps these as whole seconds (500ms would become 0 and close every
            # connection); patron checks its own deadlines, so they are only made harmless.
            channel_timeout=max(1, math.ceil(idle_timeout)),
            cleanup_interval=max(1, math.ceil(self._check_interval)),
            connection_limit=max_connections,
            # waitress refuses a body as large as its limit; ours is the largest body accepted.
            max_request_body_size=max_body_size + 1,
            max_request_header_size=max_header_size,
            ident="patron",
            # Forwarding headers reach the app as sent, as with any WSGI server: whom to trust
            # is the app's call (werkzeug's ProxyFix as a WSGI middleware). Nothing of patron's
            # reads them: /debug/'s loopback check is the TCP peer's address.
            clear_untrusted_proxy_headers=False,
            expose_tracebacks=False,
            asyncore_use_poll=True,
        )
        listen_socket = self._bind(adjustments, host, port)
        self._dispatcher = ThreadedTaskDispatcher()
        socket_map: dict[int, Any] = {}
        self._loop = _Loop(socket_map)
        try:
            self._server = _Server(
                app, map=socket_map, _sock=listen_socket, dispatcher=self._dispatcher,
                adj=adjustments, bind_socket=False,
            )
        except BaseException:
            listen_socket.close()
            raise
        self._server.loop = self._loop
        self._loop.listener = self._server
        self._server.max_connections = max_connections
        self._server.probes = probes
        self.closing = threading.Event()
        self._server.closing = self.closing
        self._grace = grace
        self._deadline: float | None = None
        self._finished = False
        self._finish_lock = threading.Lock()
        self._dispatcher.set_thread_count(threads)  # only once the port is ours

    @staticmethod
    def _bind(adjustments: Adjustments, host: str, port: int) -> socket.socket:
        family, socktype, _, sockaddr = adjustments.listen[0]
        sock = socket.socket(family, socktype)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(sockaddr)
        except OSError as exc:
            sock.close()
            raise _listen_error(host, port, exc) from None
        return sock

    @property
    def port(self) -> int:
        return int(self._server.effective_port)

    @property
    def connections(self) -> int:
        """Client connections open right now."""
        return len(self._server.active_channels)

    @property
    def busy_connections(self) -> int:
        """Connections with a request queued or running, or a response being written."""
        return sum(1 for c in list(self._server.active_channels.values()) if c.busy())

    def stop_by(self, deadline: float) -> None:
        """Bound the drain so that :meth:`serve` returns by ``deadline`` (``time.monotonic()``)."""
        self._deadline = deadline

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then drain for at most the grace period and return."""
        waker = threading.Thread(
            target=self._wake_on, args=(stop,), name="patron-http-wake", daemon=True
        )
        waker.start()
        for obj in list(self._server._map.values()):  # the listener and waitress's trigger
            self._loop.watch(obj)
        next_check = time.monotonic() + self._check_interval
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_check:
                    self._check_deadlines(now)
                    next_check = now + self._check_interval
                self._loop.run_once(next_check - now)
            self._drain()
        finally:
            for channel in list(self._server.active_channels.values()):
                channel.handle_close()
            if self._server.socket is not None:
                wasyncore.dispatcher.close(self._server)
            join = WORKER_JOIN_TIMEOUT
            if self._deadline is not None:  # a handler still running is abandoned, not awaited
                join = min(join, max(0.1, time_left(self._deadline, STOP_RESERVE / 2)))
            self._dispatcher.shutdown(cancel_pending=True, timeout=join)
            with self._finish_lock:
                self._finished = True
                self._server.trigger.close()
            self._loop.close()

    def _wake_on(self, stop: threading.Event) -> None:
        stop.wait()
        with self._finish_lock:
            if not self._finished:
                self._server.pull_trigger()

    def _check_deadlines(self, now: float) -> None:
        # Closed here, not flagged for the loop: waitress closes a flagged connection when its
        # socket turns writable, which one whose client stopped reading never does.
        for channel in list(self._server.active_channels.values()):
            if channel.busy():
                # Deadlines are about the client: a handler may take as long as it takes, but a
                # response the client does not read is dropped.
                if channel.total_outbufs_len and now - channel.activity > self._write_timeout:
                    logger.info("closing connection to %s: response not written in time",
                                channel.addr)
                    _reset(channel)
            elif channel.receiving_since is not None:
                if now - channel.receiving_since > self._read_timeout:
                    logger.info("closing connection from %s: request not read in time",
                                channel.addr)
                    channel.handle_close()
            elif now - channel.activity > self._idle_timeout:
                channel.handle_close()

    def _close_listener(self) -> None:
        """Close the listener, first accepting what already waits in its backlog: closing it
        resets those connections, whose clients may have sent a whole request already. On
        Linux no connection joins the backlog meanwhile (see :func:`_refuse_new_connections`);
        elsewhere one that completes its handshake between the last accept and the close is
        reset. This may go over the connection limit, by at most the backlog, for the drain."""
        server = self._server
        self._loop.listener = None
        self._loop.forget(server)
        _refuse_new_connections(server.socket)
        accepted = []
        try:
            for _ in range(server.adj.backlog):
                pair = server.accept()
                if pair is None:
                    break
                accepted.append(pair)
        finally:
            # Keep the trigger, which wakes the loop when a worker finishes.
            wasyncore.dispatcher.close(server)
        for conn, addr in accepted:
            server.set_socket_options(conn)
            server.channel_class(server, conn, server.fix_addr(addr), server.adj, map=server._map)

    def _drain(self) -> None:
        self.closing.set()
        started = time.monotonic()
        end = started + self._grace
        if self._deadline is not None:
            end = min(end, self._deadline - STOP_RESERVE)
        try:
            self._close_listener()
        except OSError:  # pragma: no cover - accept() failing otherwise than "none left"
            logger.warning("HTTP server: accepting the backlog at the stop failed", exc_info=True)
        self._loop.run_once(0)  # read the requests that have already arrived
        next_check = started + self._check_interval
        while True:
            now = time.monotonic()
            if now >= next_check:
                self._check_deadlines(now)  # deadlines still apply while draining
                next_check = now + self._check_interval
            wake = min(next_check, end)
            busy = 0
            for channel in list(self._server.active_channels.values()):
                if channel.busy():
                    busy += 1
                    continue
                since = channel.receiving_since
                if since is not None and started - since < ARRIVING_GRACE:
                    arrived_by = since + ARRIVING_GRACE
                    if now < arrived_by and now < end:
                        busy += 1  # arrived just before the stop: a moment to send
                        wake = min(wake, arrived_by)
                        continue
                channel.handle_close()  # idle, or a request that has not arrived in time
            if not busy:
                return
            if now >= end:
                break
            self._loop.run_once(wake - now)
        logger.warning(
            "HTTP server: %d connection(s) still busy after %.1fs; closing them",
            len(self._server.active_channels), time.monotonic() - started,
        )
