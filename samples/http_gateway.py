"""An HTTP gateway: every route option and the traced HTTP client, in front of an upstream.

Run it next to ``samples.hello`` (the upstream)::

    PATRON_HTTP_DEFAULT_PORT=50001 python -m patron samples.hello &
    UPSTREAM_URL=http://127.0.0.1:50001 SAMPLE_API_KEY=s3cret python -m patron samples.http_gateway

Environment:

``UPSTREAM_URL``
    required, the ``http://`` or ``https://`` base URL of a service answering
    ``GET /hello/<name>`` (such as ``samples.hello``)
``SAMPLE_API_KEY``
    required, the key ``GET /private`` asks for
``SAMPLE_RATE_LIMIT``
    optional, requests per second ``GET /limited`` allows (default 10; the burst is the same
    number of requests)

An invalid or missing value stops the start with one line naming it (exit status 2).

Routes, on ``PATRON_HTTP_DEFAULT_PORT`` (50000), every one compressed when the client accepts
it and answering with the gateway's ``X-App-Name`` and ``X-App-Version``:

``GET /proxy/<name>``
    calls ``UPSTREAM_URL/hello/<name>`` through :class:`patron.http.client.HTTPClient` (the
    request's correlation id and trace travel with it) and answers
    ``{"body": <the upstream's body>, "upstream_correlation_id": <the X-Correlation-Id it
    echoed>}``; 502 when the upstream cannot be reached or answers an error, and 503 without
    trying once the circuit breaker for it is open (after 3 failures in a row, for 10 s)
``GET /private``
    200 only with the header ``X-API-Key: $SAMPLE_API_KEY``, 401 otherwise
``GET /limited``
    at most ``SAMPLE_RATE_LIMIT`` requests a second (429 with ``Retry-After`` past it)
``GET /cached/<name>``
    cached for 60 s in memory, with an ``ETag`` (``If-None-Match`` gets 304)
``GET /big``
    100 KB of text (gzip-compressed for ``Accept-Encoding: gzip``)

Try it::

    curl -s localhost:50000/proxy/world
    curl -s -H 'X-API-Key: s3cret' localhost:50000/private
    curl -s --compressed -o /dev/null -w '%{size_download}\\n' localhost:50000/big
"""

from __future__ import annotations

import math
import os
import time
from urllib.parse import quote, urlsplit

from patron import ConfigError, Service
from patron.http import APIKeyAuth, AppHeaders, Cache, MemoryStore, RateLimit, Request, Route
from patron.http import RouteOptions as Options
from patron.http.client import (
    BreakerSettings,
    ClientError,
    HTTPClient,
    OpenCircuit,
    Retries,
    Timeout,
)

__all__ = ["service"]

NAME, VERSION = "http-gateway", "1.0.0"
BIG_BODY = ("patron gateway " * 6827)[:100_000]
UPSTREAM_DEADLINE = 5.0  # seconds for a whole upstream call, retries included


def _required(variable: str) -> str:
    value = os.environ.get(variable, "")
    if not value:
        raise ConfigError(f"{variable} is not set")
    return value


def _upstream() -> str:
    url = _required("UPSTREAM_URL").rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"UPSTREAM_URL={url!r} is invalid: expected an http:// or https:// URL "
                          "such as http://127.0.0.1:50001")
    return url


def _rate() -> float:
    text = os.environ.get("SAMPLE_RATE_LIMIT") or "10"
    try:
        rate = float(text)
    except ValueError:
        rate = math.nan
    if not (0 < rate <= 1_000_000):
        raise ConfigError(f"SAMPLE_RATE_LIMIT={text!r} is invalid: expected requests per second "
                          "above 0, such as 10 or 0.5")
    return rate


def service() -> Service:
    """The sample Service, configured from the environment when it is called."""
    upstream = _upstream()
    api_key = _required("SAMPLE_API_KEY")
    rate = _rate()
    client = HTTPClient(
        timeout=Timeout(connect=1.0, read=5.0),
        retries=Retries(attempts=2),
        breaker=BreakerSettings(consecutive_failures=3, cool_down=10.0),
    )

    def proxy(request: Request, name: str) -> tuple[dict[str, object], int]:
        try:
            reply = client.get(f"{upstream}/hello/{quote(name, safe='')}",
                               deadline=UPSTREAM_DEADLINE)
        except OpenCircuit:
            return {"error": "the upstream is failing: not tried"}, 503
        except ClientError as exc:
            return {"error": f"the upstream cannot be reached ({type(exc).__name__})"}, 502
        if not reply.ok:
            return {"error": f"the upstream answered {reply.status}"}, 502
        return {
            "body": reply.text,
            "upstream_correlation_id": reply.headers.get("X-Correlation-Id"),
        }, 200

    def private(request: Request) -> str:
        return "a secret: patron gateways check keys in constant time\n"

    def limited(request: Request) -> str:
        return "within the limit\n"

    def cached(request: Request, name: str) -> dict[str, object]:
        return {"name": name, "rendered_at": time.time()}

    def big(request: Request) -> str:
        return BIG_BODY

    return Service(
        NAME,
        VERSION,
        routes=[
            Route("GET", "/proxy/<name>", proxy),
            Route("GET", "/private", private, options=Options(auth=APIKeyAuth([api_key]))),
            Route("GET", "/limited", limited,
                  options=Options(rate_limit=RateLimit(rate, burst=max(1, math.ceil(rate))))),
            Route("GET", "/cached/<name>", cached,
                  options=Options(cache=Cache(MemoryStore(), ttl=60.0))),
            Route("GET", "/big", big),
        ],
        route_options=Options(app_headers=AppHeaders(NAME, VERSION)),
    )
