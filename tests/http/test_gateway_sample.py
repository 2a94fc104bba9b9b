"""``samples.http_gateway`` end to end: ``python -m patron`` processes for the gateway and for
``samples.hello`` as its upstream, real HTTP between them."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
from collections.abc import Callable, Iterator, Mapping

import pytest

from tests.conftest import ServiceProcess, start_ready

API_KEY = "gateway-test-key"
RATE_LIMIT = "0.2"  # one request, then the next token in 5 s: the second request is refused


def _request(port: int, path: str, headers: Mapping[str, str] | None = None) -> tuple[
    int, http.client.HTTPMessage, bytes
]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()



@pytest.fixture
def gateway(service_process: Callable[..., ServiceProcess]) -> Iterator[
    tuple[int, ServiceProcess]
]:
    """The gateway's port, and the upstream it calls."""
    upstream, upstream_port = start_ready(service_process, "samples.hello")
    _, port = start_ready(
        service_process, "samples.http_gateway",
        UPSTREAM_URL=f"http://127.0.0.1:{upstream_port}", SAMPLE_API_KEY=API_KEY,
        SAMPLE_RATE_LIMIT=RATE_LIMIT,
    )
    yield port, upstream


def test_proxy_calls_the_upstream_with_the_requests_correlation_id(
    gateway: tuple[int, ServiceProcess],
) -> None:
    port, _ = gateway
    status, headers, body = _request(port, "/proxy/world", {"X-Correlation-Id": "gw-cid-1"})
    assert status == 200, body
    assert json.loads(body) == {"body": "Hello, world!\n", "upstream_correlation_id": "gw-cid-1"}
    assert headers["X-Correlation-Id"] == "gw-cid-1"
    assert (headers["X-App-Name"], headers["X-App-Version"]) == ("http-gateway", "1.0.0")


def test_private_needs_the_api_key(gateway: tuple[int, ServiceProcess]) -> None:
    port, _ = gateway
    for headers in ({}, {"X-API-Key": "wrong"}):
        status, reply_headers, _ = _request(port, "/private", headers)
        assert status == 401, headers
        assert reply_headers["WWW-Authenticate"]
    status, _, body = _request(port, "/private", {"X-API-Key": API_KEY})
    assert status == 200
    assert body.startswith(b"a secret")


def test_limited_refuses_past_the_rate(gateway: tuple[int, ServiceProcess]) -> None:
    port, _ = gateway
    assert _request(port, "/limited")[0] == 200
    status, headers, _ = _request(port, "/limited")
    assert status == 429
    assert int(headers["Retry-After"]) >= 1


def test_cached_answers_from_the_cache_with_an_etag(gateway: tuple[int, ServiceProcess]) -> None:
    port, _ = gateway
    status, headers, first = _request(port, "/cached/x")
    assert status == 200
    etag = headers["ETag"]
    assert etag
    again = _request(port, "/cached/x")
    assert again[2] == first  # rendered once: the same rendered_at
    assert int(again[1]["Age"]) >= 0
    status, _, body = _request(port, "/cached/x", {"If-None-Match": etag})
    assert (status, body) == (304, b"")
    assert json.loads(_request(port, "/cached/y")[2])["name"] == "y"


def test_big_is_compressed_for_clients_that_accept_gzip(
    gateway: tuple[int, ServiceProcess],
) -> None:
    port, _ = gateway
    status, headers, body = _request(port, "/big", {"Accept-Encoding": "gzip"})
    assert status == 200
    assert headers["Content-Encoding"] == "gzip"
    assert len(body) < 10_000
    plain = gzip.decompress(body)
    assert len(plain) == 100_000
    status, headers, identity = _request(port, "/big")
    assert headers["Content-Encoding"] is None
    assert identity == plain


def test_an_unreachable_upstream_is_502_then_503_once_the_breaker_opens(
    gateway: tuple[int, ServiceProcess],
) -> None:
    port, upstream = gateway
    assert _request(port, "/proxy/a")[0] == 200
    upstream.signal(signal.SIGTERM)
    assert upstream.wait(30) == 0

    statuses = [_request(port, "/proxy/a")[0] for _ in range(4)]
    assert statuses[0] == 502, statuses
    assert 503 in statuses, statuses  # 3 failed attempts open the circuit
    opened = statuses.index(503)
    assert all(status == 502 for status in statuses[:opened])
    status, _, body = _request(port, "/proxy/a")
    assert status == 503  # open for 10 s: not tried
    assert b"not tried" in body


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({"SAMPLE_API_KEY": "k"}, "patron: UPSTREAM_URL is not set"),
        ({"UPSTREAM_URL": "ftp://x", "SAMPLE_API_KEY": "k"},
         "patron: UPSTREAM_URL='ftp://x' is invalid: expected an http:// or https:// URL"),
        ({"UPSTREAM_URL": "http://127.0.0.1:9"}, "patron: SAMPLE_API_KEY is not set"),
        ({"UPSTREAM_URL": "http://127.0.0.1:9", "SAMPLE_API_KEY": "k", "SAMPLE_RATE_LIMIT": "0"},
         "patron: SAMPLE_RATE_LIMIT='0' is invalid: expected requests per second above 0"),
    ],
)
def test_a_missing_or_invalid_setting_stops_the_start_with_one_line(
    service_process: Callable[..., ServiceProcess], env: dict[str, str], line: str
) -> None:
    unset = {"UPSTREAM_URL": "", "SAMPLE_API_KEY": ""}  # whatever the environment holds
    process = service_process("samples.http_gateway", PATRON_HTTP_DEFAULT_PORT="0",
                              **{**unset, **env})
    assert process.wait(60) == 2
    lines = process.output().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(line), lines
