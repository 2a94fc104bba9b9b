"""Routes, mounts, middlewares and the dispatch of a request to its handler.

A handler is called in a worker thread of the HTTP server as ``handler(request, **url_values)``
with a werkzeug :class:`~werkzeug.wrappers.Request`, and returns a werkzeug ``Response``, a
``str`` (text/plain), ``bytes`` (application/octet-stream) or a ``dict``/``list`` (JSON). A
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
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request as _Request
from werkzeug.wrappers import Response

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIApplication
else:
    WSGIApplication = Callable[..., Iterable[bytes]]

__all__ = ["Handler", "Middleware", "Mount", "Request", "Route", "Router", "to_response"]


class Request(_Request):
    """A werkzeug request that also carries the values matched from the route's pattern."""

    url_values: dict[str, Any] = {}

ResponseLike = Union[Response, str, bytes, dict, list]  # noqa: UP007 - a runtime alias on 3.10
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

    def method_list(self) -> list[str]:
        methods = [self.methods] if isinstance(self.methods, str) else list(self.methods)
        return [m.upper() for m in methods]


@dataclasses.dataclass(frozen=True)
class Mount:
    """Any WSGI application (a Flask or Django app, say) served under ``prefix``.

    The application sees ``SCRIPT_NAME`` = prefix and ``PATH_INFO`` = the rest of the path, and
    gets the same observability as routes; its metrics use the path label ``<prefix>/*``.
    """

    prefix: str
    app: WSGIApplication

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/") or self.prefix.endswith("/"):
            raise ValueError(f"mount prefix {self.prefix!r} must start but not end with '/'")

    @property
    def pattern(self) -> str:
        return f"{self.prefix}/*"

    def matches(self, path: str) -> bool:
        return path == self.prefix or path.startswith(self.prefix + "/")


def to_response(result: ResponseLike) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, str):
        return Response(result, mimetype="text/plain")
    if isinstance(result, bytes):
        return Response(result, mimetype="application/octet-stream")
    if isinstance(result, (dict, list)):
        return Response(json.dumps(result), mimetype="application/json")
    raise TypeError(f"a handler returned {type(result).__name__}, not a response")


def _chain(handler: Handler, middlewares: Sequence[Middleware]) -> Callable[..., Response]:
    def call_handler(request: Request) -> Response:
        return to_response(handler(request, **request.url_values))

    wrapped: NextHandler = call_handler
    for middleware in reversed(middlewares):
        wrapped = _wrap(middleware, wrapped)
    return wrapped


def _wrap(middleware: Middleware, following: NextHandler) -> NextHandler:
    def call(request: Request) -> Response:
        return to_response(middleware(request, following))

    return call


class Router:
    """Matches a WSGI environ to a route or mount. Built once; read-only afterwards."""

    def __init__(
        self, routes: Iterable[Route | Mount], middlewares: Sequence[Middleware] = ()
    ) -> None:
        self.mounts: list[Mount] = []
        rules: list[Rule] = []
        for item in routes:
            if isinstance(item, Mount):
                self.mounts.append(item)
            elif isinstance(item, Route):
                chained = _chain(item.handler, [*middlewares, *item.middlewares])
                rules.append(Rule(item.pattern, methods=item.method_list(), endpoint=chained))
            else:
                raise TypeError(f"{item!r} is neither a Route nor a Mount")
        # Longest prefix first, so /api/v2 wins over /api.
        self.mounts.sort(key=lambda m: len(m.prefix), reverse=True)
        self.map = Map(rules, strict_slashes=False)

    def match(self, environ: dict[str, Any]) -> tuple[str, WSGIApplication]:
        """``(pattern, wsgi_app)`` for the route or mount that fits the request.

        When none fits, the app is the werkzeug exception (404 or 405, itself a WSGI app) and
        the pattern is ``"unmatched"``, so metrics never carry a raw URL.
        """
        path = environ.get("PATH_INFO", "") or "/"
        for mount in self.mounts:
            if mount.matches(path):
                return mount.pattern, _mounted(mount)
        adapter = self.map.bind_to_environ(environ)
        try:
            rule, values = adapter.match(return_rule=True)
        except HTTPException as exc:
            return "unmatched", exc
        endpoint = rule.endpoint
        return rule.rule, _routed(endpoint, values)


def _routed(
    endpoint: Callable[[Request], Response], values: Mapping[str, Any]
) -> WSGIApplication:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        request.url_values = dict(values)
        try:
            response = endpoint(request)
        except HTTPException as exc:
            response = exc.get_response(environ)
        return response(environ, start_response)

    return app


def _mounted(mount: Mount) -> WSGIApplication:
    prefix = mount.prefix

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
        environ["PATH_INFO"] = environ.get("PATH_INFO", "")[len(prefix):]
        return mount.app(environ, start_response)

    return app
