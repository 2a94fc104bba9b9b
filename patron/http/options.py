"""Route options: what patron can add around a route's handler, per route and router-wide.

A :class:`RouteOptions` is given to a :class:`~patron.http.Route` (``options=``) and to the
router as a whole (``HTTPComponent(route_options=...)``, ``Service(route_options=...)``). For
each field, a route's value wins over the router-wide one; ``None`` takes the router-wide value
and ``False`` turns the option off for that route. They apply to routes only: mounted WSGI apps
and the management routes get none of them.

Around a handler, outermost first (all inside the observability chain of
:mod:`patron.http.observe`, so every answer below is traced, logged and counted)::

    app headers → compression → rate limit → authentication → cache → timeout → middlewares
    → handler

So a request over the rate limit costs no authentication, a cached answer is only given to an
authenticated client, a cache hit is compressed like any answer and never waits for a timeout,
and every answer, a 429 or a 401 included, carries the app headers.

Every option but compression is a :class:`Layer`: built into the route's chain once, when the
router is built, and called for every request in the server's worker threads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from werkzeug.wrappers import Response

    from patron.http.routes import Request

__all__ = ["NO_OPTIONS", "AppHeaders", "Compressor", "Layer", "NextHandler", "RouteOptions"]

NextHandler = Callable[["Request"], "Response"]


@runtime_checkable
class Layer(Protocol):
    """One option around a route's handler."""

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        """The handler of the route ``pattern`` with this option around it. Called once per
        route when the router is built; what it returns is called for every request, in the
        server's worker threads and concurrently, so it must be thread-safe. It may answer
        without calling ``following`` (a 401, a 429, a cache hit)."""


@runtime_checkable
class Compressor(Protocol):
    """Compression of a route's answers: applied to the response the chain produced."""

    #: bodies shorter than this (bytes) are sent as they are
    min_size: int

    def apply(self, request: Request, response: Response) -> Response:
        """The response, compressed when the request accepts a coding and the response is
        worth it (or 406 when the request accepts none that can be sent). Worker threads."""


Option = Literal[False] | None


@dataclasses.dataclass(frozen=True)
class RouteOptions:
    """The options of a route, or the router-wide defaults (see the module docstring).

    ``compression``: a :class:`~patron.http.compression.Compression` (on by default for user
    routes, with its defaults) or ``False``. ``rate_limit``: a
    :class:`~patron.http.ratelimit.RateLimit`. ``auth``: an
    :class:`~patron.http.auth.Authentication` such as
    :class:`~patron.http.auth.APIKeyAuth`. ``cache``: a :class:`~patron.http.cache.Cache`.
    ``timeout``: a :class:`~patron.http.timeout.Timeout`. ``app_headers``: an
    :class:`AppHeaders`.
    """

    app_headers: Layer | Option = None
    compression: Compressor | Option = None
    rate_limit: Layer | Option = None
    auth: Layer | Option = None
    cache: Layer | Option = None
    timeout: Layer | Option = None

    def over(self, defaults: RouteOptions) -> RouteOptions:
        """These options, each unset one (``None``) taken from ``defaults``."""
        return RouteOptions(**{
            field.name: (
                getattr(defaults, field.name) if getattr(self, field.name) is None
                else getattr(self, field.name)
            )
            for field in dataclasses.fields(self)
        })

    def layers(self) -> list[Layer]:
        """The layers to build around the handler, outermost first."""
        return [
            layer
            for layer in (self.app_headers, self.rate_limit, self.auth, self.cache, self.timeout)
            if layer is not None and layer is not False
        ]

    def compressor(self) -> Compressor | None:
        return self.compression or None


#: every option unset: a route that takes the router-wide options as they are
NO_OPTIONS = RouteOptions()


@dataclasses.dataclass(frozen=True)
class AppHeaders:
    """``X-App-Name`` and ``X-App-Version`` on every answer of the route (a Service's name and
    version, say), so a client or a proxy can tell which build answered."""

    name: str
    version: str

    def wrap(self, following: NextHandler, pattern: str) -> NextHandler:
        headers = (("X-App-Name", self.name), ("X-App-Version", self.version))

        def call(request: Request) -> Response:
            response = following(request)
            for name, value in headers:
                response.headers[name] = value
            return response

        return call
