"""Fixtures for the HTTP tests: in-process Services on ephemeral ports, and small clients."""

from __future__ import annotations

import dataclasses
import http.client
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import pytest

from patron import Component, Config, Service
from patron.http import HTTPComponent, Middleware, Mount, Route, RouteOptions, WSGIMiddleware
from tests.conftest import wait_for
from tests.support.metrics import await_sample, sample

__all__ = ["Reply", "Running", "Serve", "await_sample", "sample", "serve"]


@dataclasses.dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()


@dataclasses.dataclass
class Running:
    """A started Service and the port of its default HTTP component."""

    service: Service
    port: int

    @property
    def component(self) -> HTTPComponent:
        component = self.service.components["http"]
        assert isinstance(component, HTTPComponent)
        return component

    def connection(self, timeout: float = 5.0) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 5.0,
    ) -> Reply:
        """One request on a new connection."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return Reply(response.status, response.headers, response.read())
        finally:
            conn.close()

    def get(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def raw(self, data: bytes, timeout: float = 5.0) -> bytes:
        """Send raw bytes on a new connection; everything the server sends until it closes."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks)


Serve = Callable[..., Running]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """``serve(routes=..., middlewares=..., route_options=..., wsgi_middlewares=...,
    components=..., **config)`` starts a Service.

    Config fields override the defaults (port 0, so the kernel picks one). Every Service
    started is stopped at the end of the test, and must stop within 10 s.
    """
    started: list[Service] = []

    def start(
        routes: Iterable[Route | Mount] = (),
        middlewares: Sequence[Middleware] = (),
        components: Iterable[Component] = (),
        config: Config | None = None,
        route_options: RouteOptions | None = None,
        wsgi_middlewares: Sequence[WSGIMiddleware] = (),
        **settings: Any,
    ) -> Running:
        if config is None:
            config = Config(**{"http_default_port": 0, **settings})
        service = Service(
            "http-test",
            "1.0",
            routes=routes,
            middlewares=middlewares,
            route_options=route_options,
            wsgi_middlewares=wsgi_middlewares,
            components=components,
            config=config,
        )
        service.start()
        started.append(service)
        running = Running(service, 0)
        assert running.component.wait_started(5)
        running.port = running.component.port
        return running

    yield start
    for service in started:
        service.stop()
    for service in started:
        assert service.wait(10) is not None, "a test service did not stop within 10s"
    if started:
        wait_for(lambda: not _framework_threads(), timeout=5)


def _framework_threads() -> list[str]:
    """Threads a stopped Service must not leave behind: components, supervisor, workers."""
    return [
        t.name for t in threading.enumerate() if t.name.startswith(("patron-", "waitress-"))
    ]
