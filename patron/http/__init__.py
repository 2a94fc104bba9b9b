"""HTTP: a component serving werkzeug routes and mounted WSGI apps on waitress.

Usage::

    from patron import Service
    from patron.http import Route

    def hello(request, name):
        return f"hello, {name}"

    service = Service("hello", "1.0", routes=[Route("GET", "/hello/<name>", hello)])
"""

from patron.http.component import HTTPComponent
from patron.http.routes import Handler, Middleware, Mount, Request, Route, to_response

__all__ = ["HTTPComponent", "Handler", "Middleware", "Mount", "Request", "Route", "to_response"]
