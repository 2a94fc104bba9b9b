"""The HTTP component: user routes and mounts behind the observability chain, on waitress."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException

from patron.config import Config, StatusCodes
from patron.http.management import management_routes
from patron.http.observe import Observer
from patron.http.routes import Middleware, Mount, Route, Router
from patron.http.server import Server

if TYPE_CHECKING:
    from patron.service import Service

__all__ = ["HTTPComponent"]

logger = logging.getLogger("patron.http")
_DEFAULTS = Config()


class HTTPComponent:
    """Serves routes and mounted WSGI apps until its stop event is set, then drains.

    ``run(stop)`` binds the port, serves, and on stop closes the listener at once, lets every
    request already received finish (for at most ``grace`` seconds), closes idle keep-alive
    connections and returns. It raises when the port cannot be bound. Handlers run in the
    server's worker threads (``threads`` of them); ``ready()`` is true while listening.

    Management routes (given by :meth:`default`) are matched first and get recovery only; user
    routes and mounts get the full chain described in :mod:`patron.http.observe`.
    """

    def __init__(
        self,
        port: int,
        routes: Iterable[Route | Mount] = (),
        middlewares: Sequence[Middleware] = (),
        *,
        host: str = "0.0.0.0",
        name: str = "http",
        threads: int = _DEFAULTS.http_threads,
        read_timeout: float = _DEFAULTS.http_read_timeout,
        write_timeout: float = _DEFAULTS.http_write_timeout,
        idle_timeout: float = _DEFAULTS.http_idle_timeout,
        max_body_size: int = _DEFAULTS.http_max_body_size,
        max_header_size: int = _DEFAULTS.http_max_header_size,
        status_error_logging: StatusCodes = _DEFAULTS.http_status_error_logging,
        grace: float = _DEFAULTS.shutdown_timeout,
        management: Iterable[Route] = (),
    ) -> None:
        self.name = name
        self._host = host
        self._requested_port = port
        self._server_options = dict(
            threads=threads,
            read_timeout=read_timeout,
            write_timeout=write_timeout,
            idle_timeout=idle_timeout,
            max_body_size=max_body_size,
            max_header_size=max_header_size,
            grace=grace,
        )
        self._router = Router(routes, middlewares)
        management = list(management)
        self._management = Router(management)
        # Management paths are fixed, so a set lookup spares user requests a second match.
        self._management_paths = frozenset(route.pattern for route in management)
        self._server: Server | None = None
        self._listening = threading.Event()
        self._observe = Observer(status_error_logging)

    @classmethod
    def default(
        cls,
        service: Service,
        routes: Iterable[Route | Mount],
        middlewares: Sequence[Middleware],
        host: str = "0.0.0.0",
    ) -> HTTPComponent:
        """The component a Service runs on ``PATRON_HTTP_DEFAULT_PORT``, with management routes."""
        cfg = service.config
        return cls(
            cfg.http_default_port,
            routes,
            middlewares,
            host=host,
            threads=cfg.http_threads,
            read_timeout=cfg.http_read_timeout,
            write_timeout=cfg.http_write_timeout,
            idle_timeout=cfg.http_idle_timeout,
            max_body_size=cfg.http_max_body_size,
            max_header_size=cfg.http_max_header_size,
            status_error_logging=cfg.http_status_error_logging,
            grace=cfg.shutdown_timeout,
            management=management_routes(service.ready, service.alive, cfg.profiling),
        )

    def _closing(self) -> bool:
        return self._server is not None and self._server.closing.is_set()

    def ready(self) -> bool:
        return self._listening.is_set() and not self._closing()

    @property
    def port(self) -> int:
        """The bound port (useful with port 0); raises until the component listens."""
        if self._server is None:
            raise RuntimeError("the HTTP component is not listening yet")
        return self._server.port

    def wait_listening(self, timeout: float | None = None) -> int:
        """Block until the server listens; return its port. Raises TimeoutError."""
        if not self._listening.wait(timeout):
            raise TimeoutError("the HTTP component did not start listening in time")
        return self.port

    def run(self, stop: threading.Event) -> None:
        self._server = Server(self, self._host, self._requested_port, **self._server_options)  # type: ignore[arg-type]
        self._listening.set()
        logger.info("HTTP component %s listening on %s:%d", self.name, self._host, self.port)
        self._server.serve(stop)
        logger.info("HTTP component %s stopped", self.name)

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        """The WSGI entry point; called in a worker thread for every request."""
        if environ.get("PATH_INFO") in self._management_paths:
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
        return self._observe(pattern, app, environ, start_response)
