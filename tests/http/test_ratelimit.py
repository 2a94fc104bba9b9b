"""Route rate limits (patron.http.ratelimit) over real HTTP, on an injected clock."""

from __future__ import annotations

import pytest

from patron.http import Request, Route, RouteOptions
from patron.http.ratelimit import RateLimit
from tests.http.conftest import Running, Serve, sample

METRIC = "component_http_rate_limited_total"


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def ok(request: Request, **values: object) -> str:
    return "ok"


def statuses(running: Running, path: str, count: int) -> list[int]:
    return [running.get(path).status for _ in range(count)]


def test_the_burst_is_allowed_then_429_with_retry_after(serve: Serve) -> None:
    clock = Clock()
    limit = RateLimit(rate=0.5, burst=3, clock=clock)
    running = serve(routes=[Route("GET", "/limited", ok, options=RouteOptions(rate_limit=limit))])

    assert statuses(running, "/limited", 3) == [200, 200, 200]
    reply = running.get("/limited")
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "2"  # one token at 0.5/s: 2 s away
    assert reply.body.startswith(b"Too Many Requests")
    assert reply.headers["Content-Type"].startswith("text/plain")

    clock.now += 1.5  # 0.75 of a token: still refused, and the wait is rounded up to whole s
    reply = running.get("/limited")
    assert reply.status == 429
    assert reply.headers["Retry-After"] == "1"


def test_tokens_refill_at_the_rate_up_to_the_burst(serve: Serve) -> None:
    clock = Clock()
    limit = RateLimit(rate=2, burst=2, clock=clock)
    running = serve(routes=[Route("GET", "/limited", ok, options=RouteOptions(rate_limit=limit))])

    assert statuses(running, "/limited", 3) == [200, 200, 429]
    clock.now += 0.5  # one token back
    assert statuses(running, "/limited", 2) == [200, 429]
    clock.now += 3600  # a long idle time refills up to the burst, no more
    assert statuses(running, "/limited", 3) == [200, 200, 429]


def test_the_default_burst_is_one_second_of_rate() -> None:
    assert RateLimit(rate=5).burst == 5
    assert RateLimit(rate=2.5).burst == 3
    assert RateLimit(rate=0.1).burst == 1
    for bad in ({"rate": 0}, {"rate": -1}, {"rate": float("inf")}, {"rate": 1, "burst": 0}):
        with pytest.raises(ValueError):
            RateLimit(**bad)


def test_refusals_are_counted_by_route_pattern(serve: Serve) -> None:
    clock = Clock()
    limit = RateLimit(rate=1, burst=1, clock=clock)
    pattern = "/counted/<int:n>"
    running = serve(routes=[Route("GET", pattern, ok, options=RouteOptions(rate_limit=limit))])
    before = sample(METRIC, path=pattern)

    assert statuses(running, "/counted/1", 4) == [200, 429, 429, 429]
    assert sample(METRIC, path=pattern) == before + 3


def test_each_route_has_a_bucket_of_its_own(serve: Serve) -> None:
    clock = Clock()
    limit = RateLimit(rate=1, burst=1, clock=clock)  # one instance on both routes
    options = RouteOptions(rate_limit=limit)
    running = serve(routes=[
        Route("GET", "/a", ok, options=options),
        Route("GET", "/b", ok, options=options),
    ])

    assert statuses(running, "/a", 2) == [200, 429]
    assert statuses(running, "/b", 2) == [200, 429]


def test_a_router_wide_limit_applies_to_routes_and_false_turns_it_off(serve: Serve) -> None:
    clock = Clock()
    running = serve(
        routes=[
            Route("GET", "/limited", ok),
            Route("GET", "/free", ok, options=RouteOptions(rate_limit=False)),
        ],
        route_options=RouteOptions(rate_limit=RateLimit(rate=1, burst=2, clock=clock)),
    )

    assert statuses(running, "/limited", 3) == [200, 200, 429]
    assert statuses(running, "/free", 5) == [200] * 5


def test_a_key_gives_each_client_a_bucket_of_its_own(serve: Serve) -> None:
    clock = Clock()
    limit = RateLimit(
        rate=1, burst=1, clock=clock, max_keys=2,
        key=lambda request: request.headers.get("X-Client", ""),
    )
    running = serve(routes=[Route("GET", "/keyed", ok, options=RouteOptions(rate_limit=limit))])

    def status(client: str) -> int:
        return running.get("/keyed", headers={"X-Client": client}).status

    assert [status("a"), status("a"), status("b"), status("b")] == [200, 429, 200, 429]
    # A third client pushes out the least recently seen one ("a"); "b" is remembered, and "a",
    # forgotten, starts afresh.
    assert [status("c"), status("b"), status("a")] == [200, 429, 200]
