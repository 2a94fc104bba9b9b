"""HTTP: a component serving werkzeug routes and mounted WSGI apps on waitress.

Usage::

    from patron import Service
    from patron.http import Route

    def hello(request, name):
        return f"hello, {name}"

    service = Service("hello", "1.0", routes=[Route("GET", "/hello/<name>", hello)])
"""

from patron.http.auth import APIKeyAuth, Authentication, Authenticator
from patron.http.cache import Cache, MemoryStore, RedisStore
from patron.http.component import HTTPComponent, WSGIMiddleware
from patron.http.compression import Compression
from patron.http.options import NO_OPTIONS, AppHeaders, RouteOptions
from patron.http.ratelimit import RateLimit
from patron.http.routes import Handler, Middleware, Mount, Request, Route, to_response
from patron.http.static import static_routes
from patron.http.timeout import Timeout

__all__ = [
    "NO_OPTIONS",
    "APIKeyAuth",
    "AppHeaders",
    "Authentication",
    "Authenticator",
    "Cache",
    "Compression",
    "HTTPComponent",
    "Handler",
    "MemoryStore",
    "Middleware",
    "Mount",
    "RateLimit",
    "RedisStore",
    "Request",
    "Route",
    "RouteOptions",
    "Timeout",
    "WSGIMiddleware",
    "static_routes",
    "to_response",
]
