"""Routing, middlewares, handler results, errors and mounted WSGI apps, over real HTTP."""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from werkzeug.exceptions import Forbidden, ImATeapot
from werkzeug.wrappers import Response

from patron import correlation
from patron.http import Mount, Request, Route
from patron.http.routes import NextHandler
from tests.http.conftest import Serve, await_sample, sample


def _item(request: Request, item_id: int) -> dict[str, Any]:
    return {"item_id": item_id, "method": request.method}


def test_route_patterns_match_path_and_method(serve: Serve) -> None:
    running = serve(routes=[
        Route("GET", "/items/<int:item_id>", _item),
        Route(("PUT", "PATCH"), "/items/<int:item_id>", _item),
    ])

    reply = running.get("/items/7")
    assert reply.status == 200
    assert json.loads(reply.body) == {"item_id": 7, "method": "GET"}
    for method in ("PUT", "PATCH"):
        reply = running.request(method, "/items/8", body=b"")
        assert reply.status == 200, method
        assert json.loads(reply.body) == {"item_id": 8, "method": method}

    assert running.get("/items/not-a-number").status == 404  # the converter rejects it
    assert running.get("/nowhere").status == 404
    reply = running.request("DELETE", "/items/7")
    assert reply.status == 405
    allowed = {m.strip() for m in reply.headers["Allow"].split(",")}
    assert {"GET", "HEAD", "PUT", "PATCH"} <= allowed


def test_head_is_answered_by_get_routes_without_a_body(serve: Serve) -> None:
    calls: list[str] = []

    def handler(request: Request) -> str:
        calls.append(request.method)
        return "twelve bytes"

    running = serve(routes=[Route("GET", "/head", handler)])
    reply = running.request("HEAD", "/head")
    assert reply.status == 200
    assert reply.body == b""
    assert reply.headers["Content-Length"] == "12"
    assert calls == ["HEAD"]


def _tagging(name: str, trail: list[str]) -> Any:
    def middleware(request: Request, following: NextHandler) -> Response:
        trail.append(f"{name} in")
        response = following(request)
        trail.append(f"{name} out")
        response.headers.add("X-Trail", name)
        return response

    return middleware


def test_router_middlewares_run_first_in_order_then_route_middlewares(serve: Serve) -> None:
    trail: list[str] = []

    def handler(request: Request) -> str:
        trail.append("handler")
        return "ok"

    running = serve(
        routes=[
            Route(
                "GET", "/with", handler, middlewares=[_tagging("r1", trail), _tagging("r2", trail)]
            ),
            Route("GET", "/without", handler),
        ],
        middlewares=[_tagging("m1", trail), _tagging("m2", trail)],
    )

    reply = running.get("/with")
    assert reply.status == 200
    assert trail == [
        "m1 in", "m2 in", "r1 in", "r2 in", "handler", "r2 out", "r1 out", "m2 out", "m1 out",
    ]
    # Each middleware saw (and changed) the response on the way out, innermost first.
    assert reply.headers.get_all("X-Trail") == ["r2", "r1", "m2", "m1"]

    trail.clear()
    assert running.get("/without").status == 200
    assert trail == ["m1 in", "m2 in", "handler", "m2 out", "m1 out"]


def test_a_middleware_may_answer_without_calling_the_handler(serve: Serve) -> None:
    called = threading.Event()

    def handler(request: Request) -> str:
        called.set()
        return "secret"

    def guard(request: Request, following: NextHandler) -> Any:
        if request.headers.get("Authorization") != "Apikey good":
            return Response("no", status=401)
        return following(request)

    running = serve(routes=[Route("GET", "/guarded", handler, middlewares=[guard])])
    assert running.get("/guarded").status == 401
    assert not called.is_set()
    reply = running.get("/guarded", headers={"Authorization": "Apikey good"})
    assert (reply.status, reply.body) == (200, b"secret")


@pytest.mark.parametrize(
    ("result", "content_type", "body"),
    [
        ("text", "text/plain; charset=utf-8", b"text"),
        (b"\x00\x01", "application/octet-stream", b"\x00\x01"),
        ({"a": [1, 2]}, "application/json", b'{"a": [1, 2]}'),
        ([1, "two"], "application/json", b'[1, "two"]'),
    ],
)
def test_handler_results_become_responses(
    serve: Serve, result: Any, content_type: str, body: bytes
) -> None:
    running = serve(routes=[Route("GET", "/result", lambda request: result)])
    reply = running.get("/result")
    assert reply.status == 200
    assert reply.headers["Content-Type"] == content_type
    assert reply.body == body


def test_a_response_from_a_handler_is_sent_as_it_is(serve: Serve) -> None:
    def handler(request: Request) -> Response:
        return Response("made", status=201, headers={"X-Custom": "yes"}, mimetype="text/csv")

    reply = serve(routes=[Route("POST", "/made", handler)]).request("POST", "/made", body=b"x")
    assert reply.status == 201
    assert reply.headers["X-Custom"] == "yes"
    assert reply.headers["Content-Type"].startswith("text/csv")
    assert reply.body == b"made"


def test_http_exceptions_from_handlers_and_middlewares_become_their_responses(serve: Serve) -> None:
    def forbidden(request: Request) -> str:
        raise Forbidden("not for you")

    def teapot(request: Request, following: NextHandler) -> Response:
        raise ImATeapot()

    running = serve(routes=[
        Route("GET", "/forbidden", forbidden),
        Route("GET", "/teapot", lambda request: "unreached", middlewares=[teapot]),
    ])
    reply = running.get("/forbidden")
    assert reply.status == 403
    assert b"not for you" in reply.body
    assert running.get("/teapot").status == 418


def test_a_handler_that_raises_gets_a_generic_500_and_a_logged_traceback(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(request: Request) -> str:
        raise RuntimeError("database password is hunter2")

    running = serve(routes=[Route("GET", "/broken", broken), Route("GET", "/fine", lambda r: "ok")])
    before = sample(
        "component_http_handled_total", method="GET", path="/broken", status_code="500"
    )
    with caplog.at_level(logging.ERROR, logger="patron.http"):
        reply = running.get("/broken")

    assert reply.status == 500
    assert reply.body == b"Internal Server Error"
    assert b"hunter2" not in reply.body and b"Traceback" not in reply.body
    logged = [r for r in caplog.records if r.exc_info and "/broken" in r.getMessage()]
    assert logged, [r.getMessage() for r in caplog.records]
    assert isinstance(logged[0].exc_info[1], RuntimeError)  # type: ignore[index]
    assert "hunter2" in caplog.text  # the traceback with the real reason is in the log
    await_sample(
        "component_http_handled_total", before + 1, method="GET", path="/broken", status_code="500"
    )
    assert running.get("/fine").status == 200  # the server keeps serving


def test_a_handler_returning_an_unsupported_type_gets_a_500(serve: Serve) -> None:
    def number(request: Request) -> Any:
        return 42

    running = serve(routes=[Route("GET", "/number", number)])
    reply = running.get("/number")
    assert (reply.status, reply.body) == (500, b"Internal Server Error")


def _environ_echo(name: str) -> Any:
    """A plain WSGI app answering with what it saw of its environ."""

    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"] == "/missing":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not here"]
        seen = {
            "app": name,
            "SCRIPT_NAME": environ["SCRIPT_NAME"],
            "PATH_INFO": environ["PATH_INFO"],
            "QUERY_STRING": environ.get("QUERY_STRING", ""),
            "correlation": correlation.current(),
        }
        body = json.dumps(seen).encode()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    return app


def test_a_mounted_wsgi_app_sees_its_prefix_as_script_name(serve: Serve) -> None:
    running = serve(routes=[
        Mount("/legacy", _environ_echo("legacy")),
        Mount("/legacy/v2", _environ_echo("v2")),
        Route("GET", "/legacyish", lambda request: "route"),
    ])

    seen = json.loads(running.get("/legacy/users/7?full=1").body)
    assert seen["app"] == "legacy"
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/legacy", "/users/7")
    assert seen["QUERY_STRING"] == "full=1"

    seen = json.loads(running.get("/legacy").body)
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("/legacy", "")

    seen = json.loads(running.get("/legacy/v2/x").body)  # the longest prefix wins
    assert (seen["app"], seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("v2", "/legacy/v2", "/x")

    assert running.get("/legacyish").body == b"route"  # a prefix is a path segment


def test_a_mounted_app_gets_the_same_observability_as_routes(serve: Serve) -> None:
    running = serve(routes=[Mount("/legacy", _environ_echo("legacy"))])
    labels = {"method": "GET", "path": "/legacy/*"}
    ok_before = sample("component_http_handled_total", status_code="200", **labels)
    missing_before = sample("component_http_handled_total", status_code="404", **labels)

    reply = running.get("/legacy/a", headers={correlation.HEADER: "mount-cid-1"})
    assert reply.headers[correlation.HEADER] == "mount-cid-1"
    assert json.loads(reply.body)["correlation"] == "mount-cid-1"
    assert running.get("/legacy/missing").status == 404

    await_sample("component_http_handled_total", ok_before + 1, status_code="200", **labels)
    await_sample("component_http_handled_total", missing_before + 1, status_code="404", **labels)
    assert sample("component_http_handled_total", method="GET", path="/legacy/a",
                  status_code="200") == 0  # never the raw URL


def test_a_mounted_app_that_raises_gets_a_generic_500(serve: Serve) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        raise ValueError("mounted secret")

    reply = serve(routes=[Mount("/boom", app)]).get("/boom/x")
    assert (reply.status, reply.body) == (500, b"Internal Server Error")


def test_a_body_that_fails_midway_drops_the_connection_and_counts_a_500(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    def streaming(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first part;"
        raise OSError("the file went away")

    running = serve(routes=[Mount("/stream", streaming), Route("GET", "/ok", lambda r: "ok")])
    labels = {"method": "GET", "path": "/stream/*", "status_code": "500"}
    before = sample("component_http_handled_total", **labels)
    conn = running.connection()
    try:
        conn.request("GET", "/stream/file")
        response = conn.getresponse()
        assert response.status == 200  # the headers were already sent
        with pytest.raises(http.client.IncompleteRead):
            response.read()
    finally:
        conn.close()
    await_sample("component_http_handled_total", before + 1, **labels)
    assert any("body failed" in r.getMessage() for r in caplog.records)
    assert running.get("/ok").status == 200


def test_mount_prefixes_are_validated() -> None:
    for prefix in ("legacy", "/legacy/", ""):
        with pytest.raises(ValueError, match="mount prefix"):
            Mount(prefix, _environ_echo("x"))


# -- what Flask users expect -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "status", "body", "header"),
    [
        (("created", 201), 201, b"created", None),
        (({"id": 7}, "202 Accepted"), 202, b'{"id": 7}', None),
        (("teapot", 418, {"X-Kind": "tea"}), 418, b"teapot", "tea"),
        ((b"raw", 200, [("X-Kind", "pairs")]), 200, b"raw", "pairs"),
        ((Response("wrapped"), 203), 203, b"wrapped", None),
        ((None, 202), 202, b"", None),
    ],
)
def test_flask_style_tuples_set_the_status_and_headers(
    serve: Serve, result: Any, status: int, body: bytes, header: str | None
) -> None:
    running = serve(routes=[Route("GET", "/tuple", lambda request: result)])
    reply = running.get("/tuple")
    assert (reply.status, reply.body) == (status, body)
    assert reply.headers["X-Kind"] == header


def test_tuple_headers_replace_what_the_body_set(serve: Serve) -> None:
    result = ({"a": 1}, 200, {"Content-Type": "application/vnd.patron+json"})
    running = serve(routes=[Route("GET", "/typed", lambda request: result)])
    conn = running.connection()
    try:
        conn.request("GET", "/typed")
        response = conn.getresponse()
        response.read()
    finally:
        conn.close()
    assert response.headers.get_all("Content-Type") == ["application/vnd.patron+json"]


def test_a_handler_returning_none_answers_204_without_a_body(serve: Serve) -> None:
    running = serve(routes=[Route("DELETE", "/items/<int:item_id>", lambda request, item_id: None)])
    reply = running.request("DELETE", "/items/3")
    assert (reply.status, reply.body) == (204, b"")
    assert reply.headers["Content-Length"] in (None, "0")


@pytest.mark.parametrize("result", [("body",), ("body", 200, {}, "extra"), ("body", 2.5)])
def test_a_malformed_tuple_gets_a_500(serve: Serve, result: Any) -> None:
    reply = serve(routes=[Route("GET", "/bad", lambda request: result)]).get("/bad")
    assert (reply.status, reply.body) == (500, b"Internal Server Error")


def test_a_root_mount_serves_everything_the_routes_and_management_do_not(serve: Serve) -> None:
    running = serve(routes=[
        Mount("/", _environ_echo("legacy")),
        Mount("/admin", _environ_echo("admin")),
        Route("GET", "/orders/<int:order_id>", lambda request, order_id: f"order {order_id}"),
    ])
    labels = {"method": "GET", "path": "/*", "status_code": "200"}
    before = sample("component_http_handled_total", **labels)

    assert running.get("/orders/1").body == b"order 1"  # the service's own route wins
    assert running.get("/ready").body == b"ready"  # and the management routes
    seen = json.loads(running.get("/orders/not-a-number").body)  # no route: the app
    assert (seen["app"], seen["SCRIPT_NAME"], seen["PATH_INFO"]) == (
        "legacy", "", "/orders/not-a-number"
    )
    seen = json.loads(running.request("POST", "/orders/1", body=b"").body)  # other methods too
    assert seen["app"] == "legacy"
    assert json.loads(running.get("/admin/x").body)["app"] == "admin"  # a longer prefix wins
    seen = json.loads(running.get("/").body)
    assert (seen["SCRIPT_NAME"], seen["PATH_INFO"]) == ("", "/")

    # Counted under one bounded label, never the raw URL.
    await_sample("component_http_handled_total", before + 2, **labels)
    assert sample("component_http_handled_total", method="GET", path="/orders/not-a-number",
                  status_code="200") == 0


def test_wsgi_middlewares_wrap_routes_and_mounts_inside_the_observability_chain(
    serve: Serve,
) -> None:
    from werkzeug.middleware.proxy_fix import ProxyFix

    seen: list[BaseException] = []

    def catching(app: Any) -> Any:  # what Sentry's WSGI middleware does with an exception
        def wrapped(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            try:
                return app(environ, start_response)
            except Exception as exc:
                seen.append(exc)
                raise

        return wrapped

    def remote(request: Request) -> str:
        return f"{request.remote_addr} {request.scheme}"

    def boom(request: Request) -> str:
        raise RuntimeError("seen by the middleware")

    running = serve(
        routes=[Route("GET", "/remote", remote), Route("GET", "/boom", boom),
                Mount("/legacy", _environ_echo("legacy"))],
        wsgi_middlewares=[lambda app: ProxyFix(app, x_for=1, x_proto=1), catching],
    )
    reply = running.get("/remote", headers={"X-Forwarded-For": "203.0.113.9",
                                            "X-Forwarded-Proto": "https"})
    assert reply.body == b"203.0.113.9 https"
    assert running.get("/legacy/x").status == 200

    cid = "wsgi-mw-1"
    reply = running.get("/boom", headers={correlation.HEADER: cid})
    # The middleware saw the exception; the recovery outside it still answered a bare 500,
    # with the correlation id: the chain is around the middlewares.
    assert (reply.status, reply.body) == (500, b"Internal Server Error")
    assert reply.headers[correlation.HEADER] == cid
    assert [str(exc) for exc in seen] == ["seen by the middleware"]
    # The management routes are not behind them: a forwarded address cannot reach /debug/.
    assert running.get("/alive").status == 200


def test_app_headers_are_on_every_answer_of_the_routes_that_ask(serve: Serve) -> None:
    from patron.http import AppHeaders, RouteOptions

    def refuse(request: Request) -> str:
        raise Forbidden()

    running = serve(
        routes=[
            Route("GET", "/plain", lambda request: "plain"),
            Route("GET", "/refused", refuse),
            Route("GET", "/quiet", lambda request: "quiet",
                  options=RouteOptions(app_headers=False)),
        ],
        route_options=RouteOptions(app_headers=AppHeaders("orders", "1.2.3")),
    )
    for path, status in (("/plain", 200), ("/refused", 403)):
        reply = running.get(path)
        assert reply.status == status
        assert (reply.headers["X-App-Name"], reply.headers["X-App-Version"]) == (
            "orders", "1.2.3"
        ), path
    quiet = running.get("/quiet")
    assert quiet.headers["X-App-Name"] is None
    assert running.get("/ready").headers["X-App-Name"] is None  # management routes: untouched


def test_route_options_take_unset_fields_from_the_router_wide_ones() -> None:
    from patron.http import AppHeaders, RouteOptions

    router_wide = RouteOptions(app_headers=AppHeaders("a", "1"), compression=False)
    route = RouteOptions(compression=None, app_headers=False)
    merged = route.over(router_wide)
    assert merged.app_headers is False  # turned off by the route
    assert merged.compression is False  # taken from the router
    assert merged.layers() == []
