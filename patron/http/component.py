"""The HTTP component: user routes and mounts behind the observability chain, on waitress."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from werkzeug.exceptions import HTTPException

from patron.component import Probes
from patron.config import DEFAULT_GRACE, DEFAULT_HOST, Config, StatusCodes
from patron.http.management import management_routes
from patron.http.observe import Observer, WSGIApp
from patron.http.options import NO_OPTIONS, RouteOptions
from patron.http.routes import Middleware, Mount, Route, Router
from patron.http.server import Server

__all__ = ["HTTPComponent", "WSGIMiddleware"]

#: a WSGI middleware: takes the app and returns the app wrapped (werkzeug's ``ProxyFix``, say)
WSGIMiddleware = Callable[[WSGIApp], WSGIApp]
#: where the router's dispatch hands the matched app to the WSGI middlewares' innermost call
_MATCHED_APP = "patron.matched_app"

logger = logging.getLogger("patron.http")
_DEFAULTS = Config()


class HTTPComponent:
    """Serves routes and mounted WSGI apps until its stop event is set, then drains.

    ``run(stop)`` binds ``host``:``port`` (port 0 picks a free one), serves, and on stop closes
    the listener at once, lets every request already received finish (for at most ``grace``
    seconds, or until the deadline given to :meth:`stop_by` when that comes first), closes idle
    keep-alive connections and those that have not delivered a whole request, and returns. It
    raises ``OSError("cannot listen on HOST:PORT: ...")`` when the port cannot be bound.
    Handlers run in the server's worker threads (``threads`` of them); ``ready()`` is true while
    listening; ``stop_last`` makes the Service stop it after every other component.

    At most ``max_connections`` client connections are open; when another arrives the idlest
    one is closed to make room (see :mod:`patron.http.server`). While ``probes.draining`` is
    true (the Service's shutdown has begun), every response carries ``Connection: close``.

    Management routes (given by :meth:`default`) are matched first and get recovery only; user
    routes and mounts get the full chain described in :mod:`patron.http.observe`.
    """

    def __init__(
        self,
        port: int,
        routes: Iterable[Route | Mount] = (),
        middlewares: Sequence[Middleware] = (),
        *,
        route_options: RouteOptions = NO_OPTIONS,
        wsgi_middlewares: Sequence[WSGIMiddleware] = (),
        host: str = DEFAULT_HOST,
        name: str = "http",
        threads: int = _DEFAULTS.http_threads,
        read_timeout: float = _DEFAULTS.http_read_timeout,
        write_timeout: float = _DEFAULTS.http_write_timeout,
        idle_timeout: float = _DEFAULTS.http_idle_timeout,
        max_body_size: int = _DEFAULTS.http_max_body_size,
        max_header_size: int = _DEFAULTS.http_max_header_size,
        max_connections: int = _DEFAULTS.http_max_connections,
        status_error_logging: StatusCodes = _DEFAULTS.http_status_error_logging,
        grace: float = DEFAULT_GRACE,
        management: Iterable[Route] = (),
        stop_last: bool = False,
        probes: Probes | None = None,
    ) -> None:
        self.name = name
        self.stop_last = stop_last
        self._host = host
        self._requested_port = port
        self._server_options: dict[str, Any] = dict(
            threads=threads,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            idle_timeout=idle_timeout,
            max_body_size=max_body_size,
            max_header_size=max_header_size,
            max_connections=max_connections,
            grace=grace,
            probes=probes,
        )
        self._router = Router(routes, middlewares, route_options)
        # Built once: the innermost call runs the app the router matched for this request.
        self._dispatch: WSGIApp | None = None
        if wsgi_middlewares:
            dispatch: WSGIApp = _call_matched_app
            for wrap in reversed(wsgi_middlewares):
                dispatch = wrap(dispatch)
            self._dispatch = dispatch
        management = list(management)
        self._management = Router(management, options=RouteOptions(compression=False))
        # Management paths are fixed (or fixed up to a variable part), so a set lookup and a
        # prefix test spare user requests a second match.
        self._management_paths = frozenset(route.pattern for route in management)
        self._management_prefixes = tuple(
            route.pattern[:route.pattern.index("<")] for route in management
            if "<" in route.pattern
        )
        self._server: Server | None = None
        self._stop_deadline: float | None = None
        self._listening = threading.Event()
        self._observe = Observer(status_error_logging)

    @classmethod
    def default(
        cls,
        config: Config,
        probes: Probes,
        routes: Iterable[Route | Mount] = (),
        middlewares: Sequence[Middleware] = (),
        host: str = DEFAULT_HOST,
        route_options: RouteOptions = NO_OPTIONS,
        wsgi_middlewares: Sequence[WSGIMiddleware] = (),
    ) -> HTTPComponent:
        """The component a Service runs: on ``config``'s ``PATRON_HTTP_DEFAULT_PORT`` and HTTP
        settings, with the management routes answering from ``probes`` (the Service), closing
        keep-alive connections from the moment it drains, and stopped last so that health
        checks and metrics stay up to the end."""
        cfg = config
        return cls(
            cfg.http_default_port,
            routes,
            middlewares,
            route_options=route_options,
            wsgi_middlewares=wsgi_middlewares,
            host=host,
            threads=cfg.http_threads,
            read_timeout=cfg.http_read_timeout,
            write_timeout=cfg.http_write_timeout,
            idle_timeout=cfg.http_idle_timeout,
            max_body_size=cfg.http_max_body_size,
            max_header_size=cfg.http_max_header_size,
            max_connections=cfg.http_max_connections,
            status_error_logging=cfg.http_status_error_logging,
            grace=cfg.shutdown_timeout,
            management=management_routes(probes.ready, probes.alive, cfg.profiling),
            stop_last=True,
            probes=probes,
        )

    def _closing(self) -> bool:
        return self._server is not None and self._server.closing.is_set()

    def ready(self) -> bool:
        return self._listening.is_set() and not self._closing()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); raises ``RuntimeError`` until it listens."""
        if self._server is None:
            raise RuntimeError(f"the HTTP component {self.name!r} is not listening yet")
        return self._server.port

    @property
    def connections(self) -> int:
        """Client connections open right now (0 until it listens)."""
        return 0 if self._server is None else self._server.connections

    def stop_by(self, deadline: float) -> None:
        """:class:`patron.component.StopsBy`: the drain ends by ``deadline``
        (``time.monotonic()``) when that comes before the grace period does. Does not block."""
        self._stop_deadline = deadline
        if self._server is not None:
            self._server.stop_by(deadline)

    def wait_started(self, timeout: float | None = None) -> bool:
        """Block until the server listens (True) or ``timeout`` passes (False)."""
        return self._listening.wait(timeout)

    def run(self, stop: threading.Event) -> None:
        self._server = Server(self, self._host, self._requested_port, **self._server_options)
        if self._stop_deadline is not None:
            self._server.stop_by(self._stop_deadline)
        self._listening.set()
        logger.info("HTTP component %s listening on %s:%d", self.name, self._host, self.port)
        self._server.serve(stop)
        logger.info("HTTP component %s stopped", self.name)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The WSGI entry point; called in a worker thread for every request."""
        path = environ.get("PATH_INFO", "")
        if path in self._management_paths or (
            self._management_prefixes and path.startswith(self._management_prefixes)
        ):
            pattern, app = self._management.match(environ)
            if not isinstance(app, HTTPException):
                try:
                    return app(environ, start_response)
                except Exception:
                    logger.exception("management route %s failed", pattern)
                    start_response(
                        "500 Internal Server Error",
                        [("Content-Type", "text/plain")],
                        sys.exc_info(),
                    )
                    return [b"Internal Server Error"]
        pattern, app = self._router.match(environ)
        if self._dispatch is not None:
            environ[_MATCHED_APP] = app
            app = self._dispatch
        return self._observe(pattern, app, environ, start_response)


def _call_matched_app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    app: WSGIApp = environ.pop(_MATCHED_APP)
    return app(environ, start_response)
