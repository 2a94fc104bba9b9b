"""Routes, mounts, middlewares and the dispatch of a request to its handler.

A handler is called in a worker thread of the HTTP server as ``handler(request, **url_values)``
with a werkzeug :class:`~werkzeug.wrappers.Request`, and returns a werkzeug ``Response``, a
``str`` (text/plain), ``bytes`` (application/octet-stream), a ``dict``/``list`` (JSON) or
``None`` (204 No Content), or, as in Flask, a tuple ``(body, status)`` or
``(body, status, headers)`` of those (``status`` an ``int`` or a status line such as
``"201 Created"``, ``headers`` a mapping or a list of pairs). A
``werkzeug.exceptions.HTTPException`` raised by a handler or middleware becomes its response.

A middleware is ``middleware(request, next_handler) -> Response``: it may change the request,
call ``next_handler(request)`` (or not) and change the response. Router-wide middlewares run
first, in the order given, then the route's own, then the handler.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Union

from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, MapAdapter, Rule
from werkzeug.wrappers import Request as _Request
from werkzeug.wrappers import Response

from patron.http.compression import Compression
from patron.http.options import NO_OPTIONS, RouteOptions

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
else:
    WSGIApplication = Callable[..., Iterable[bytes]]

__all__ = [
    "DEFAULT_OPTIONS", "Handler", "Middleware", "Mount", "Request", "Route", "Router",
    "to_response",
]

#: what a route gets when neither it nor the router sets an option: compression, as Go Patron
DEFAULT_OPTIONS = RouteOptions(compression=Compression())


class Request(_Request):
    """A werkzeug request that also carries the values matched from the route's pattern."""

    url_values: dict[str, Any] = {}

Body = Union[Response, str, bytes, dict, list, None]  # noqa: UP007 - a runtime alias on 3.10
ResponseLike = Union[  # noqa: UP007
    Body, tuple[Body, Union[int, str]], tuple[Body, Union[int, str], Any]  # noqa: UP007
]
Handler = Callable[..., ResponseLike]
NextHandler = Callable[[Request], Response]
Middleware = Callable[[Request, NextHandler], ResponseLike]


@dataclasses.dataclass(frozen=True)
class Route:
    """``methods`` (one or several, e.g. ``"GET"`` or ``("PUT", "PATCH")``) on a werkzeug rule
    ``pattern`` such as ``/users/<int:user_id>``; ``GET`` routes answer ``HEAD`` too."""

    methods: str | Sequence[str]
    pattern: str
    handler: Handler
    middlewares: Sequence[Middleware] = ()
    #: compression, rate limit, authentication, cache and timeout (see :mod:`patron.http.options`)
    options: RouteOptions = NO_OPTIONS

    def method_list(self) -> list[str]:
        methods = [self.methods] if isinstance(self.methods, str) else list(self.methods)
        return [m.upper() for m in methods]


@dataclasses.dataclass(frozen=True)
class Mount:
    """Any WSGI application (a Flask or Django app, say) served under ``prefix``.

    The application sees ``SCRIPT_NAME`` = prefix and ``PATH_INFO`` = the rest of the path, and
    gets the same observability as routes; its metrics use the path label ``<prefix>/*``, so
    they stay bounded whatever URLs it serves. ``Mount("/", app)`` puts a whole legacy app
    behind the service: the management routes and the service's own routes answer first, and
    every other request, whatever its path or method, goes to the app (label ``/*``). Route
    options do not apply to mounts: the app answers as it would on its own.
    """

    prefix: str
    app: WSGIApplication

    def __post_init__(self) -> None:
        if self.prefix != "/" and (not self.prefix.startswith("/") or self.prefix.endswith("/")):
            raise ValueError(f"mount prefix {self.prefix!r} must be '/', or start but not end "
                             "with '/'")

    @property
    def pattern(self) -> str:
        return "/*" if self.prefix == "/" else f"{self.prefix}/*"

    @property
    def script_name(self) -> str:
        """What the prefix adds to ``SCRIPT_NAME``: nothing for the root mount."""
        return "" if self.prefix == "/" else self.prefix

    def matches(self, path: str) -> bool:
        return (
            self.prefix == "/" or path == self.prefix or path.startswith(self.prefix + "/")
        )


def _encode(result: object) -> tuple[bytes, str]:
    """The body and content type of a plain (non-Response, non-tuple) handler result."""
    if isinstance(result, str):
        return result.encode(), "text/plain; charset=utf-8"
    if isinstance(result, bytes):
        return result, "application/octet-stream"
    if isinstance(result, (dict, list)):
        return json.dumps(result).encode(), "application/json"
    raise TypeError(f"a handler returned {type(result).__name__}, not a response")


def to_response(result: ResponseLike) -> Response:
    """A werkzeug Response for any value a handler may return."""
    if isinstance(result, Response):
        return result
    if result is None:
        return Response(status=204)
    if isinstance(result, tuple):
        return _from_tuple(result)
    body, content_type = _encode(result)
    return Response(body, content_type=content_type)


def _from_tuple(result: tuple[Any, ...]) -> Response:
    """Flask's ``(body, status)`` and ``(body, status, headers)``."""
    if len(result) not in (2, 3):
        raise TypeError(f"a handler returned a tuple of {len(result)}, not (body, status) or "
                        "(body, status, headers)")
    body, status = result[0], result[1]
    if not isinstance(status, (int, str)) or isinstance(status, bool):
        raise TypeError(f"a handler returned the status {status!r}: an int or a status line")
    if isinstance(body, tuple):
        raise TypeError("a handler returned a tuple inside a tuple")
    response = to_response(body)
    response.status = status  # werkzeug takes an int or a status line
    if len(result) == 3:  # as Flask: replacing a header the body set (Content-Type, say)
        response.headers.update(result[2])
    return response


class _Endpoint:
    """A route's handler behind its middlewares and options, as matched by the router."""

    def __init__(
        self,
        handler: Handler,
        middlewares: Sequence[Middleware],
        options: RouteOptions,
        pattern: str,
    ) -> None:
        self.handler = handler
        self.chain: NextHandler | None = None
        layers = options.layers()
        if middlewares or layers:
            chain: NextHandler = self._call_handler
            for middleware in reversed(middlewares):
                chain = _wrap(middleware, chain)
            if layers:  # each layer sees what is inside it as a response, never an exception
                chain = _handled(chain)
            for layer in reversed(layers):
                chain = _handled(layer.wrap(chain, pattern))
            self.chain = chain
        self.compressor = options.compressor()
        # Below this a plain result skips compression, and so keeps the fast path.
        self._min_compressed = self.compressor.min_size if self.compressor else 1 << 62

    def _call_handler(self, request: Request) -> Response:
        return to_response(self.handler(request, **request.url_values))

    def respond(
        self, environ: dict[str, Any], start_response: Any, values: Mapping[str, Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        request.url_values = dict(values)
        try:
            if self.chain is not None:
                result: ResponseLike = self.chain(request)
            else:
                result = self.handler(request, **request.url_values)
        except HTTPException as exc:
            result = exc.get_response(environ)
        if isinstance(result, (str, bytes, dict, list)):
            # A plain result is written straight to the server: the same status, headers and
            # body a werkzeug Response would send, at a fraction of the cost on a hot path.
            body, content_type = _encode(result)
            # Too small to compress, unless the client refuses identity (a 406 to decide).
            if len(body) < self._min_compressed and (
                self.compressor is None or "q=0" not in environ.get("HTTP_ACCEPT_ENCODING", "")
            ):
                start_response(
                    "200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))]
                )
                return [] if environ.get("REQUEST_METHOD") == "HEAD" else [body]
            response = Response(body, content_type=content_type)
        else:
            response = to_response(result)
        if self.compressor is not None:
            response = self.compressor.apply(request, response)
        return response(environ, start_response)


def _wrap(middleware: Middleware, following: NextHandler) -> NextHandler:
    def call(request: Request) -> Response:
        return to_response(middleware(request, following))

    return call


def _handled(chain: NextHandler) -> NextHandler:
    """``chain`` answering an ``HTTPException`` it raises, so a layer around it sees it as the
    response it is (a 404 is not cached as a failure, a 401 is not an error)."""

    def call(request: Request) -> Response:
        try:
            return chain(request)
        except HTTPException as exc:
            return exc.get_response(request.environ)

    return call


class Router:
    """Matches a WSGI environ to a route or mount. Built once; read-only afterwards."""

    def __init__(
        self,
        routes: Iterable[Route | Mount],
        middlewares: Sequence[Middleware] = (),
        options: RouteOptions = NO_OPTIONS,
    ) -> None:
        self.mounts: list[Mount] = []
        rules: list[Rule] = []
        defaults = options.over(DEFAULT_OPTIONS)
        for item in routes:
            if isinstance(item, Mount):
                self.mounts.append(item)
            elif isinstance(item, Route):
                endpoint = _Endpoint(
                    item.handler, [*middlewares, *item.middlewares],
                    item.options.over(defaults), item.pattern,
                )
                rules.append(Rule(item.pattern, methods=item.method_list(), endpoint=endpoint))
            else:
                raise TypeError(f"{item!r} is neither a Route nor a Mount")
        # Longest prefix first, so /api/v2 wins over /api.
        self.mounts.sort(key=lambda m: len(m.prefix), reverse=True)
        self.map = Map(rules, strict_slashes=False)
        # Binding the map to every request's environ costs more than matching; the bound
        # adapter depends only on the values in _adapter_key, so it is reused per key.
        self._adapters: dict[tuple[Any, ...], MapAdapter] = {}

    def match(self, environ: dict[str, Any]) -> tuple[str, WSGIApplication]:
        """``(pattern, wsgi_app)`` for the route or mount that fits the request: routes first,
        then mounts, the longest prefix first.

        When none fits, the app is the werkzeug exception (404 or 405, itself a WSGI app) and
        the pattern is ``"unmatched"``, so metrics never carry a raw URL.
        """
        try:
            return self._match_route(environ)
        except HTTPException as exc:  # no route: a mount, or the 404/405 itself
            path = environ.get("PATH_INFO", "") or "/"
            for mount in self.mounts:
                if mount.matches(path):
                    return mount.pattern, _mounted(mount)
            return "unmatched", exc

    def _match_route(self, environ: dict[str, Any]) -> tuple[str, WSGIApplication]:
        method = environ["REQUEST_METHOD"]
        key = _adapter_key(environ)
        adapter = self._adapters.get(key)
        if adapter is None or not method:
            # A bad Host header raises BadHost here, exactly as an unshared adapter would.
            adapter = self.map.bind_to_environ(environ)
            if len(self._adapters) < _ADAPTER_CACHE_SIZE:
                self._adapters[key] = adapter
        # Pass what bind_to_environ would have bound for this request, so a shared adapter
        # matches (and builds redirect URLs) exactly as a fresh one.
        path_info = environ.get("PATH_INFO")
        query = environ.get("QUERY_STRING")
        rule, values = adapter.match(
            "/" if path_info is None else _wsgi_decode(path_info),
            method or None,
            return_rule=True,
            query_args=_wsgi_decode(query) if query else {},
        )
        endpoint = rule.endpoint
        return rule.rule, _routed(endpoint, values)


_ADAPTER_CACHE_SIZE = 64  # distinct hosts/schemes/script names; more are bound per request
# Everything Map.bind_to_environ reads except PATH_INFO, QUERY_STRING and REQUEST_METHOD,
# which Router.match passes to MapAdapter.match for each request.
_ADAPTER_ENVIRON_KEYS = (
    "wsgi.url_scheme", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT", "SCRIPT_NAME",
    "HTTP_CONNECTION", "HTTP_UPGRADE",
)


def _adapter_key(environ: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(environ.get(name) for name in _ADAPTER_ENVIRON_KEYS)


def _wsgi_decode(value: str) -> str:
    # What werkzeug does to WSGI strings (latin-1 code points carrying UTF-8 bytes).
    return value.encode("latin1").decode(errors="replace")


def _routed(endpoint: _Endpoint, values: Mapping[str, Any]) -> WSGIApplication:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        return endpoint.respond(environ, start_response, values)

    return app


def _mounted(mount: Mount) -> WSGIApplication:
    prefix = mount.script_name

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
        environ["PATH_INFO"] = environ.get("PATH_INFO", "")[len(prefix):]
        return mount.app(environ, start_response)

    return app
