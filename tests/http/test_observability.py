"""Correlation ids, request metrics and tracing spans of user routes, over real HTTP."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from patron import Config, Service, correlation
from patron.config import parse_status_codes
from patron.http import Mount, Request, Route
from tests.conftest import wait_for
from tests.http.conftest import Running, Serve, await_sample, sample
from tests.support.jaeger import SpanCapture, trace_header

handler_logger = logging.getLogger("tests.http.handler")


def _whoami(request: Request) -> str:
    handler_logger.info("handling whoami")
    return correlation.current() or "<none>"


def _is_uuid4(value: str) -> bool:
    try:
        return uuid.UUID(value).version == 4
    except ValueError:
        return False


@pytest.fixture
def whoami(serve: Serve) -> Running:
    return serve(routes=[Route("GET", "/whoami", _whoami)])


def test_a_sane_correlation_id_is_echoed_seen_by_the_handler_and_logged(
    whoami: Running, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="tests.http.handler"):
        reply = whoami.get("/whoami", headers={correlation.HEADER: "order-42:retry/1"})
    assert reply.status == 200
    assert reply.headers[correlation.HEADER] == "order-42:retry/1"
    assert reply.text == "order-42:retry/1"  # correlation.current() in the handler
    records = [r for r in caplog.records if r.getMessage() == "handling whoami"]
    assert [getattr(r, "correlationID", None) for r in records] == ["order-42:retry/1"]


def test_a_correlation_id_of_128_characters_is_kept(whoami: Running) -> None:
    longest = "c" * 128
    reply = whoami.get("/whoami", headers={correlation.HEADER: longest})
    assert reply.headers[correlation.HEADER] == longest
    assert reply.text == longest


@pytest.mark.parametrize(
    "sent",
    [None, "", "c" * 129, "has space", "tab\there", "caf\u00e9"],
    ids=["missing", "empty", "too-long", "space", "tab", "non-ascii"],
)
def test_a_missing_or_insane_correlation_id_is_replaced_by_a_uuid4(
    whoami: Running, caplog: pytest.LogCaptureFixture, sent: str | None
) -> None:
    headers = {} if sent is None else {correlation.HEADER: sent}
    with caplog.at_level(logging.INFO, logger="tests.http.handler"):
        reply = whoami.get("/whoami", headers=headers)
    echoed = reply.headers[correlation.HEADER]
    assert _is_uuid4(echoed), echoed
    assert reply.text == echoed
    records = [r for r in caplog.records if r.getMessage() == "handling whoami"]
    assert [getattr(r, "correlationID", None) for r in records] == [echoed]


def test_every_request_without_an_id_gets_its_own(whoami: Running) -> None:
    conn = whoami.connection()
    seen = set()
    try:
        for _ in range(3):  # one keep-alive connection: likely the same worker thread
            conn.request("GET", "/whoami")
            response = conn.getresponse()
            seen.add(response.read().decode())
    finally:
        conn.close()
    assert len(seen) == 3


def _metric_samples(running: Running, name: str) -> list[dict[str, Any]]:
    """Samples of ``name`` as ``GET /metrics`` shows them."""
    text = running.get("/metrics").text
    return [
        {"labels": s.labels, "value": s.value}
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name
    ]


def test_metrics_are_labelled_by_method_route_pattern_and_status(serve: Serve) -> None:
    running = serve(routes=[
        Route("GET", "/greet/<name>", lambda request, name: f"hi {name}"),
        Route("POST", "/greet/<name>", lambda request, name: f"posted {name}"),
    ])
    greet = {"method": "GET", "path": "/greet/<name>", "status_code": "200"}
    unmatched_404 = {"method": "GET", "path": "unmatched", "status_code": "404"}
    unmatched_405 = {"method": "PUT", "path": "unmatched", "status_code": "405"}
    before = {
        key: sample("component_http_handled_total", **labels)
        for key, labels in (("greet", greet), ("404", unmatched_404), ("405", unmatched_405))
    }
    seconds_before = sample("component_http_handled_seconds_count", **greet)

    for name in ("ann", "bob", "cy"):
        assert running.get(f"/greet/{name}").status == 200
    assert running.get("/no/such/route").status == 404
    assert running.request("PUT", "/greet/ann").status == 405

    await_sample("component_http_handled_total", before["greet"] + 3, **greet)
    await_sample("component_http_handled_seconds_count", seconds_before + 3, **greet)
    await_sample("component_http_handled_total", before["404"] + 1, **unmatched_404)
    await_sample("component_http_handled_total", before["405"] + 1, **unmatched_405)

    # The client chooses the method: unknown ones share one label value.
    odd = {"method": "OTHER", "path": "unmatched", "status_code": "404"}
    odd_before = sample("component_http_handled_total", **odd)
    for verb in ("BREW", "SCAN1", "SCAN2"):
        assert running.request(verb, "/no/such/route").status == 404
    await_sample("component_http_handled_total", odd_before + 3, **odd)

    # The same figures as a scrape sees them, and no raw URL anywhere in the path label.
    served = _metric_samples(running, "component_http_handled_total")
    by_labels = {tuple(sorted(s["labels"].items())): s["value"] for s in served}
    assert by_labels[tuple(sorted(greet.items()))] == before["greet"] + 3
    paths = {s["labels"]["path"] for s in served}
    assert "/greet/<name>" in paths and "unmatched" in paths
    assert not {"/greet/ann", "/greet/bob", "/no/such/route"} & paths


def test_request_log_lines_are_errors_only_for_the_configured_statuses(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    running = serve(
        routes=[Route("GET", "/fine", lambda request: "fine")],
        http_status_error_logging=parse_status_codes("404;[500,600)"),
    )
    with caplog.at_level(logging.DEBUG, logger="patron.http"):
        assert running.get("/fine", headers={correlation.HEADER: "log-cid"}).status == 200
        assert running.get("/missing").status == 404

    def by_status() -> dict[int, logging.LogRecord]:
        # The request line is logged when the server closes the response, maybe just after
        # the client read it.
        lines = [r for r in caplog.records if r.name == "patron.http" and hasattr(r, "status")]
        return {r.__dict__["status"]: r for r in lines}

    wait_for(lambda: {200, 404} <= by_status().keys(), timeout=5)
    lines = by_status()
    assert lines[200].levelno == logging.DEBUG
    assert lines[200].getMessage().startswith("GET /fine 200 ")
    assert getattr(lines[200], "correlationID", None) == "log-cid"
    assert lines[404].levelno == logging.ERROR
    assert lines[404].getMessage().startswith("GET unmatched 404 ")


# -- tracing ---------------------------------------------------------------------------------


def _legacy(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"legacy"]


def _hello(request: Request, name: str) -> str:
    if name == "fail":
        raise RuntimeError("traced failure")
    return f"hello {name}"


@contextlib.contextmanager
def _traced(config: Config) -> Iterator[Running]:
    """A Service with ``GET /hello/<name>``; stopped (so its spans are flushed) on exit."""
    routes = [Route("GET", "/hello/<name>", _hello), Mount("/legacy", _legacy)]
    service = Service("traced", "1.0", routes=routes, config=config)
    service.start()
    try:
        running = Running(service, 0)
        assert running.component.wait_started(5)
        running.port = running.component.port
        yield running
    finally:
        service.stop()
        assert service.wait(10) == 0


def test_spans_are_named_after_the_route_and_continue_the_callers_trace() -> None:
    caller_trace = random.getrandbits(63) | 1
    caller_span = random.getrandbits(63) | 1
    with SpanCapture() as capture:
        with _traced(capture.config(http_default_port=0)) as running:
            headers = {"uber-trace-id": trace_header(caller_trace, caller_span)}
            assert running.get("/hello/world", headers=headers).status == 200
            assert running.get("/hello/nobody").status == 200
            assert running.get("/hello/fail").status == 500
            assert running.get("/legacy/x/y").status == 200
            assert running.get("/ready").status == 200  # management: no span
        spans = capture.spans(count=4)

    assert len(spans) == 4, [s.operation for s in spans]
    mounted = [s for s in spans if s.operation == "GET /legacy/*"]
    assert len(mounted) == 1 and mounted[0].tags["http.status_code"] == 200
    spans.remove(mounted[0])
    assert {s.operation for s in spans} == {"GET /hello/<name>"}
    assert {s.service for s in spans} == {"traced"}
    continued = [s for s in spans if s.trace_id_low == caller_trace]
    assert len(continued) == 1
    child = continued[0]
    assert child.parent_span_id == caller_span
    assert child.span_id != caller_span
    assert child.tags["http.status_code"] == 200
    assert child.tags["http.method"] == "GET"
    assert child.tags["span.kind"] == "server"
    assert child.tags["component"] == "http"
    assert _is_uuid4(str(child.tags["correlationID"]))
    assert "error" not in child.tags

    fresh = [s for s in spans if s is not child]
    assert all(s.parent_span_id == 0 and s.trace_id_low != caller_trace for s in fresh)
    assert sorted(s.tags["http.status_code"] for s in fresh) == [200, 500]  # type: ignore[type-var]
    failed = next(s for s in fresh if s.tags["http.status_code"] == 500)
    assert failed.tags.get("error") is True


def test_a_malformed_trace_header_starts_a_new_trace_and_the_request_succeeds() -> None:
    with SpanCapture() as capture:
        with _traced(capture.config(http_default_port=0)) as running:
            reply = running.get("/hello/x", headers={"uber-trace-id": "not:a:trace:id"})
            assert reply.status == 200
        (span,) = capture.spans(count=1)
    assert span.parent_span_id == 0
    assert span.tags["http.status_code"] == 200


def test_a_const_sampler_from_the_environment_samples() -> None:
    """PATRON_JAEGER_SAMPLER_TYPE=const and PATRON_JAEGER_SAMPLER_PARAM=1 trace every request.

    Config.from_env parses the param to the float 1.0, the way an operator's variables arrive.
    """
    with SpanCapture() as capture:
        config = dataclasses.replace(Config.from_env(capture.env()), http_default_port=0)
        with _traced(config) as running:
            assert running.get("/hello/env").status == 200
        spans = capture.spans(count=1, timeout=2)
    assert [s.operation for s in spans] == ["GET /hello/<name>"]


def test_a_sampled_request_is_an_exemplar_of_the_duration_histogram(serve: Serve) -> None:
    running = serve(routes=[Route("GET", "/traced/<name>", lambda request, name: name)],
                    jaeger_sampler_type="const", jaeger_sampler_param=1)
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    reply = running.get("/traced/x", headers={
        "traceparent": f"00-{trace_id}-b7ad6b7169203331-01"})
    assert reply.status == 200

    def exemplars() -> list[str]:
        text = running.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        ).text
        return [line for line in text.splitlines()
                if line.startswith("component_http_handled_seconds_bucket")
                and 'path="/traced/<name>"' in line and "# {" in line]

    found = wait_for(exemplars, timeout=5)
    assert any(f'trace_id="{trace_id}"' in line for line in found), found
    plain = running.get("/metrics").text  # the classic format has no exemplars
    assert trace_id not in plain
